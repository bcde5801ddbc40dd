"""omniloom.utils"""
