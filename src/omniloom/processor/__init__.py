"""omniloom.processor: OpenAI-style messages with raw media <-> token ids (codecs + tokens)."""

from .processor import RAW_PART_TYPES, Processor

__all__ = ["Processor", "RAW_PART_TYPES"]
