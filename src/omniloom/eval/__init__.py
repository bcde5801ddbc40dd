"""omniloom.eval"""
