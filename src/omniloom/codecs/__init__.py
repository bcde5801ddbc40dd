"""omniloom.codecs"""
