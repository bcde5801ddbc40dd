"""Verifier-guided decoding: sample N answers, return the one a learned verifier scores highest.

:class:`Verifier` is a head trained by ``omniloom verifier train`` (:mod:`omniloom.model.verifier`)
on the hidden states of the model that generates, so scoring N candidates is one more batched
forward of the same weights. :func:`generate_best_of` yields the chosen answer as the events of
:func:`omniloom.infer.generate.generate` (all at once, after the N candidates are sampled and
scored), and its :class:`Done` carries ``best_of``: how many were drawn, which was chosen, every
score and the seconds spent.

The verifier is the model-side judge; nothing here knows the world or its judges.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .candidates import Candidate, sample_candidates
from .sampling import SamplingParams

__all__ = ["Verifier", "generate_best_of"]


class Verifier:
    """A loaded verifier head; it scores candidates with the hidden states of the model it is given."""

    def __init__(self, head: Any, meta: dict, path: str | Path | None = None):
        self.head, self.meta, self.path = head, dict(meta), path

    @classmethod
    def load(cls, path: str | Path, model_dir: str | Path | None = None) -> "Verifier":
        """A verifier directory; with ``model_dir``, checked to be trained on that model's weights."""
        from ..model.verifier import load_verifier

        head, meta = load_verifier(path, model_dir)
        return cls(head, meta, path)

    def check(self, omni: Any) -> None:
        if int(self.head.dim) != int(omni.model.cfg.dim):
            raise ValueError(f"verifier {self.path} reads hidden states of width {self.head.dim}, the model's are "
                             f"{omni.model.cfg.dim}")

    def score(self, omni: Any, prompt: Sequence[int], candidates: Sequence[Candidate]) -> list[float]:
        """One score per candidate (higher: more likely judged good), from one batched forward."""
        import torch

        from ..model.verifier import answer_features

        self.check(omni)
        feats = answer_features(omni.model, [list(prompt) + c.ids for c in candidates], [len(prompt)] * len(candidates),
                                pad_id=omni.vocab.end_id)
        with torch.inference_mode():
            return [float(s) for s in self.head(feats)]


def generate_best_of(
    omni: Any,
    verifier: Verifier,
    messages: Sequence[dict],
    n: int,
    output_modality: str | None = None,
    outputs: Sequence[str] | None = None,
    voice: str | None = None,
    sampling: SamplingParams | None = None,
    cfg_scale: float = 1.0,
    base_dir: str | Path | None = None,
) -> Iterator[Any]:
    """Answer ``messages`` with the best of ``n`` sampled candidates by ``verifier``, as events.

    ``sampling`` must sample (temperature > 0): greedy decoding would give ``n`` copies of one
    answer. Its seed (random when None) fixes every candidate's, so a seeded call repeats.
    """
    from .generate import AudioChunk, Done, ImageOut, TextDelta, TranscriptDelta

    sampling = sampling or SamplingParams()
    if n < 1:
        raise ValueError(f"best_of must be >= 1, got {n}")
    if n > 1 and sampling.temperature == 0:
        raise ValueError("best-of-N needs sampled candidates: give a temperature > 0 (greedy decoding gives N "
                         "copies of one answer)")
    t0 = time.perf_counter()
    prompt, cands, warnings = sample_candidates(omni, messages, n, output_modality, outputs, voice, sampling, cfg_scale,
                                      base_dir)
    t1 = time.perf_counter()
    scores = verifier.score(omni, prompt, cands)
    best = max(range(len(cands)), key=lambda i: scores[i])
    c = cands[best]
    for p in c.parts:
        if p["type"] == "text":
            yield TextDelta(p["text"])
        elif p["type"] == "image":
            yield ImageOut(p["image"], list(p["codes"]))
        elif p["type"] == "audio":
            if p["transcript"]:
                yield TranscriptDelta(p["transcript"])
            if p["audio"].size:
                yield AudioChunk(p["audio"], p["sample_rate"], p["voice"])
    usage = dict(c.usage)
    usage["completion_tokens_all_candidates"] = sum(x.usage["completion_tokens"] for x in cands)
    info = {"n": n, "chosen": best, "scores": [round(s, 4) for s in scores],
            "sample_s": round(t1 - t0, 4), "verify_s": round(time.perf_counter() - t1, 4),
            "seconds": round(time.perf_counter() - t0, 4)}
    yield Done(c.finish_reason, usage, warnings, best_of=info)
