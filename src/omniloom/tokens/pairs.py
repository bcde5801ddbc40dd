"""Paired spans for contrastive embeddings: find (media, text) pairs in token ids, and lay out the
stand-alone sequence each side is embedded from.

A **pair** is a complete media span in a user turn (an image span, or an audio span: the user's
speech) and the text answer of the assistant turn that follows it (a caption, a transcript). It is
read from the ids alone (spans are self-delimiting, docs/token-format.md), so packed training rows
need no side information: a span cut by a row edge or a document edge (``doc_ids``) is incomplete and
not paired, an assistant turn holding media (a drawn image, a spoken answer) is not a text answer,
and the user's own text next to the media (the instruction) is not part of the pair.

**Stand-alone sequences** (:func:`embed_sequence`) are what both the ``/v1/embeddings`` endpoint and
the contrastive loss run through the decoder, so that training shapes the vectors the endpoint
serves: text is its text ids alone (no template, no BOS); an image is ``<|image|> codes <|/image|>``;
audio is ``<|audio|> <|voice:none|> codes <|/audio|>`` (codes only: an interleaved transcript is
dropped). Pooling averages the final hidden states over the span's own tokens, i.e. the text ids or
the media codes (never the delimiters), so the mean is over content in every modality.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .vocab import Vocab

__all__ = ["SpanPair", "find_pairs", "embed_sequence", "EMBED_KINDS"]

EMBED_KINDS = ("text", "image", "audio")


@dataclass(frozen=True)
class SpanPair:
    """One (media, text) pair: ``kind`` "image" or "audio", the media's global code ids (audio
    frame-major), the answer's text ids, and where the media span opens in the searched ids."""

    kind: str
    media: tuple[int, ...]
    text: tuple[int, ...]
    start: int


def _find_run(ids: list[int], run: list[int], start: int, stop: int) -> int:
    """First position in ``[start, stop)`` where ``run`` begins, else -1."""
    n = len(run)
    for i in range(start, stop - n + 1):
        if ids[i] == run[0] and ids[i:i + n] == run:
            return i
    return -1


def _media_span(ids: list[int], lo: int, hi: int, vocab: Vocab) -> tuple[str, list[int], int] | None:
    """The last complete media span inside ``ids[lo:hi]`` as (kind, code ids, opening position)."""
    img_open, img_close = vocab.special("image"), vocab.special("/image")
    aud_open, aud_close = vocab.special("audio"), vocab.special("/audio")
    i_lo, i_hi = vocab.range_of("image")
    a_lo, a_hi = vocab.range_of("audio")
    found = None
    i = lo
    while i < hi:
        t = ids[i]
        if t == img_open:
            j = i + 1 + vocab.image_tokens
            codes = ids[i + 1:j]
            if j < hi and ids[j] == img_close and all(i_lo <= c < i_hi for c in codes):
                found = ("image", codes, i)
                i = j
        elif t == aud_open:
            j = i + 1
            while j < hi and ids[j] != aud_close:
                j += 1
            if j < hi:  # closed inside the turn
                codes = [c for c in ids[i + 1:j] if a_lo <= c < a_hi]
                if codes and len(codes) % vocab.audio_codebooks == 0:
                    found = ("audio", codes, i)
                i = j
        i += 1
    return found


def find_pairs(ids: Sequence[int] | Any, vocab: Vocab, doc_ids: Sequence[int] | Any | None = None) -> list[SpanPair]:
    """Every (user media span, next assistant text answer) pair in ``ids`` (1-D), in order.

    ``doc_ids`` (same length; packed rows) keeps a pair inside one document piece. A user turn with
    several media spans contributes its last; the answer must be complete (its turn end seen) and
    hold text ids only.
    """
    ids = [int(t) for t in np.asarray(ids).reshape(-1)]
    docs = [0] * len(ids) if doc_ids is None else [int(d) for d in np.asarray(doc_ids).reshape(-1)]
    if len(docs) != len(ids):
        raise ValueError(f"find_pairs: {len(ids)} ids but {len(docs)} doc ids")
    end = vocab.end_ids
    t_lo, t_hi = vocab.range_of("text")
    out: list[SpanPair] = []
    start = 0
    while start < len(ids):  # one document piece at a time
        stop = start
        while stop < len(ids) and docs[stop] == docs[start]:
            stop += 1
        heads = vocab.find_headers(ids[start:stop])
        heads = [(a + start, b + start, role) for a, b, role in heads]
        for k in range(len(heads) - 1):
            (_, u_body, u_role), (a_head, a_body, a_role) = heads[k], heads[k + 1]
            if u_role != "user" or a_role != "assistant":
                continue
            media = _media_span(ids, u_body, a_head, vocab)
            if media is None:
                continue
            a_stop = heads[k + 2][0] if k + 2 < len(heads) else stop
            e = _find_run(ids, end, a_body, a_stop)
            text = ids[a_body:e]
            if e < 0 or not text or not all(t_lo <= t < t_hi for t in text):
                continue
            out.append(SpanPair(media[0], tuple(media[1]), tuple(text), media[2]))
        start = stop
    return out


def embed_sequence(kind: str, ids: Sequence[int], vocab: Vocab) -> tuple[list[int], list[bool]]:
    """(stand-alone ids, pool mask) for one input: ``kind`` "text" (text ids), "image" or "audio"
    (global code ids). The mask marks the positions whose hidden states are averaged."""
    ids = [int(t) for t in ids]
    if kind == "text":
        return ids, [True] * len(ids)
    if kind == "image":
        return [vocab.special("image"), *ids, vocab.special("/image")], [False, *[True] * len(ids), False]
    if kind == "audio":
        head = [vocab.special("audio"), vocab.voice_id(None)]
        return [*head, *ids, vocab.special("/audio")], [False, False, *[True] * len(ids), False]
    raise ValueError(f"embedding kind must be one of {', '.join(EMBED_KINDS)}, got {kind!r}")
