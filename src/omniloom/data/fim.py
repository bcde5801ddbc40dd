"""Fill-in-the-middle (FIM) for text: the transform ``omniloom tokenize --fim-rate`` applies.

Following Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the Middle"), a
chosen share of documents has one text span cut at two character positions into
``prefix | middle | suffix`` and moved so that the middle comes last:

- **PSM** ``<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle``
- **SPM** (the paper's variant for joint training) ``<|fim_prefix|> <|fim_suffix|> suffix
  <|fim_middle|> prefix middle`` -- the prefix runs straight into the middle.

What is split: the longest run of text ids that is a training target (``loss_mask`` 1): in ``sft``
documents the text of an assistant answer, in ``pretrain`` documents the longest text run. The run is
decoded to characters, cut at two uniform character positions (the paper's character-level split),
and each of the three pieces is tokenized again. The ids around the run stay in place, so the middle
is followed by what followed the run (the answer's ``<|end|>``, or what came next), which teaches
the model where a middle stops. The sentinels are the reserved specials 0-2
(:data:`omniloom.tokens.vocab.RESERVED_NAMES`).

Loss mask: every id that replaces the run is a target (prefix, suffix, middle and sentinels), as in
the paper, which trains on the whole transformed document; the ids around it keep their mask.

Draws are seeded by (seed, document position) like the train/val split, so a document gets the
same transform however the work is cut into units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .draws import position_draw

__all__ = ["FimSettings", "apply_fim", "fim_layout", "psm_prompt"]


@dataclass(frozen=True)
class FimSettings:
    """``rate``: share of documents transformed; ``spm_rate``: share of those laid out SPM."""

    rate: float = 0.0
    spm_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"--fim-rate must be in [0, 1], got {self.rate}")
        if not 0.0 <= self.spm_rate <= 1.0:
            raise ValueError(f"--fim-spm-rate must be in [0, 1], got {self.spm_rate}")


def _longest_text_target(ids: list[int], mask: list[int], text_size: int) -> tuple[int, int]:
    """``[start, stop)`` of the longest run of text ids with loss mask 1 (empty run: (0, 0))."""
    best, start = (0, 0), None
    for i, (t, m) in enumerate(zip(ids + [-1], mask + [0])):
        inside = 0 <= t < text_size and m
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def fim_layout(prefix: list[int], middle: list[int], suffix: list[int], vocab: Any, spm: bool) -> list[int]:
    """The ids of one FIM span in PSM or SPM order (see the module docstring)."""
    pre, suf, mid = (vocab.special(n) for n in ("fim_prefix", "fim_suffix", "fim_middle"))
    if spm:
        return [pre, suf] + suffix + [mid] + prefix + middle
    return [pre] + prefix + [suf] + suffix + [mid] + middle


def psm_prompt(prefix: str, suffix: str, vocab: Any, tok: Any) -> list[int]:
    """A PSM infill prompt: ``<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|>`` (the
    model writes the middle next)."""
    return fim_layout(tok.encode(prefix) if prefix else [], [], tok.encode(suffix) if suffix else [], vocab, spm=False)


def apply_fim(ids: list[int], mask: list[int], vocab: Any, tok: Any, settings: FimSettings, seed: int,
              input_index: int, record: int) -> tuple[list[int], list[int], str | None]:
    """The document at (``input_index``, ``record``) with FIM applied when its draw falls under
    ``settings.rate``: ``(ids, loss_mask, "psm" | "spm" | None)``. A document without a text target
    of at least two characters is returned unchanged (None)."""
    if settings.rate <= 0 or position_draw(seed, "fim", input_index, record) >= settings.rate:
        return ids, mask, None
    a, b = _longest_text_target(list(ids), list(mask), vocab.text_size)
    text = tok.decode(ids[a:b]) if b > a else ""
    if len(text) < 2:
        return ids, mask, None
    cuts = sorted(int(position_draw(seed, f"fim-cut{k}", input_index, record) * (len(text) + 1)) for k in (0, 1))
    pieces = (text[:cuts[0]], text[cuts[0]:cuts[1]], text[cuts[1]:])
    prefix, middle, suffix = (tok.encode(p) if p else [] for p in pieces)
    spm = position_draw(seed, "fim-spm", input_index, record) < settings.spm_rate
    span = fim_layout(prefix, middle, suffix, vocab, spm)
    return list(ids[:a]) + span + list(ids[b:]), list(mask[:a]) + [1] * len(span) + list(mask[b:]), \
        "spm" if spm else "psm"
