"""omniloom.tokens"""
