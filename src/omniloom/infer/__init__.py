"""omniloom.infer"""
