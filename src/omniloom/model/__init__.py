"""The decoder: knows ids and logits, nothing of modalities, files, training or HTTP."""

from .llama import KVCache, Transformer

__all__ = ["Transformer", "KVCache"]
