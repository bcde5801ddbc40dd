"""omniloom.tokens: the global id space (:class:`Vocab`) and the chat template (ids <-> segments).

See ``docs/token-format.md`` for the layout, the spans and the loss mask.
"""

from .template import (
    Encoded,
    Segment,
    build_prompt,
    decode_ids,
    drop_condition,
    encode_conversation,
    encode_part,
    normalize_content,
    null_condition,
    segments_to_messages,
)
from .vocab import NAMED_SPECIALS, Vocab

__all__ = [
    "Vocab",
    "NAMED_SPECIALS",
    "Encoded",
    "Segment",
    "encode_conversation",
    "encode_part",
    "build_prompt",
    "decode_ids",
    "segments_to_messages",
    "normalize_content",
    "null_condition",
    "drop_condition",
]
