"""omniloom.processor"""
