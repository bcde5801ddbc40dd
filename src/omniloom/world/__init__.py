"""omniloom.world"""
