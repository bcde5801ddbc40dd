"""Seeded draws fixed by a document's position, so tokenize's choices do not depend on how its
work is cut into units or spread over workers."""

from __future__ import annotations

import hashlib


def position_draw(seed: int, kind: str, input_index: int, record: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, kind, document position): the same whatever the units."""
    h = hashlib.blake2b(f"{seed}:{kind}:{input_index}:{record}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64
