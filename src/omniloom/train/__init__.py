"""omniloom.train"""
