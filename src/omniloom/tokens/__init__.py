"""omniloom.tokens: the global id space (:class:`Vocab`) and the chat template (ids <-> segments).

See ``docs/token-format.md`` for the layout, the spans and the loss mask.
"""

from .template import (
    TASK_TAG_PART,
    TASK_TAG_RULES,
    Encoded,
    Segment,
    build_prompt,
    decode_ids,
    drop_condition,
    encode_conversation,
    encode_part,
    has_media,
    normalize_content,
    null_condition,
    segments_to_messages,
    tag_by_rule,
    tag_prompt,
    task_tag_id,
    with_task_tag,
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
    "TASK_TAG_PART",
    "task_tag_id",
    "has_media",
    "with_task_tag",
    "tag_by_rule",
    "tag_prompt",
    "TASK_TAG_RULES",
]
