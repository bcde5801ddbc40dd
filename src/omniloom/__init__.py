"""omniloom: train, evaluate and serve any-to-any omni models over one token stream."""

__version__ = "0.1.0"
