"""omniloom.data"""
