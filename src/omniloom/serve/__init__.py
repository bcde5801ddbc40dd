"""omniloom.serve"""
