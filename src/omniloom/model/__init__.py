"""The decoder: knows ids and logits, nothing of modalities, files, training or HTTP."""

__all__ = ["Transformer", "KVCache"]


def __getattr__(name: str):
    # lazy, so that the CLI's table of verbs (`omniloom --help`) does not import torch
    if name in __all__:
        from . import llama

        return getattr(llama, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
