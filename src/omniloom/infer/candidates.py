"""K sampled answers to one prompt, in one batch: the raw material of best-of-N and preference data.

:func:`sample_candidates` builds the prompt once (media encoded once), then samples ``n`` answers
as ``n`` requests of one engine batch (with classifier-free guidance each answer brings its
unconditional row, so ``2n`` rows), each with its own seed. Every :class:`Candidate` keeps the ids
it sampled after the prompt, which is what a verifier scores and what preference training learns
from, and its media decoded by the model's codecs.

It samples the model's *direct* answer, one id sequence per candidate: the two-step answers of
:func:`omniloom.infer.generate.generate` (``speak_via_text``: write then speak; ``describe_edits``:
describe then draw) and its self-captioned drawing search (``image_candidates``) are not applied,
because each would make a candidate out of several generations that no single sequence of the
model produced.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .engine import Request
from .grammar import OUTPUTS, SpanGrammar
from .sampling import SamplingParams

__all__ = ["Candidate", "sample_candidates", "candidate_seed", "default_outputs", "default_voice"]


@dataclass
class Candidate:
    """One sampled answer: its ids after the prompt and, in order, the parts they decode to.

    ``parts``: ``{"type": "text", "text"}``, ``{"type": "image", "image": (H, W, 3) uint8, "codes"}``
    and ``{"type": "audio", "audio": (samples,) float32, "sample_rate", "voice", "transcript"}``.
    """

    index: int
    seed: int
    ids: list[int]  # the sampled ids after the prompt, the closing <|end|> included when the model stopped
    finish_reason: str  # "stop" (the model ended its turn) or "length"
    parts: list[dict] = field(default_factory=list)
    latency_s: float = 0.0  # wall time of the batch that sampled it (its candidates finish together)
    batch: int = 1  # how many candidates that batch held
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(p["text"] for p in self.parts if p["type"] == "text")

    @property
    def transcript(self) -> str:
        return "".join(p["transcript"] for p in self.parts if p["type"] == "audio")

    @property
    def images(self) -> list[np.ndarray]:
        return [p["image"] for p in self.parts if p["type"] == "image"]


def candidate_seed(base: int, index: int) -> int:
    """The seed of candidate ``index`` of a prompt whose base seed is ``base`` (stable across runs)."""
    digest = hashlib.sha256(f"{base}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def default_voice(vocab: Any) -> str:
    """The voice a spoken answer gets when none is asked for: the vocabulary's first named voice."""
    named = [v for v in vocab.voices if not v.startswith("voice:")]
    return named[0] if named else vocab.voices[0]


def default_outputs(output_modality: str | None) -> tuple[str, ...]:
    """What an answer forced to ``output_modality`` may contain (as ``omniloom eval`` asks): text and
    speech answers stay in their modality, an image answer may go on in speech or text."""
    if output_modality in ("text", "audio"):
        return (output_modality,)
    if output_modality == "image":
        return ("image", "audio", "text")
    return OUTPUTS


def sample_candidates(
    omni: Any,
    messages: Sequence[dict],
    n: int,
    output_modality: str | None = None,
    outputs: Sequence[str] | None = None,
    voice: str | None = None,
    sampling: SamplingParams | None = None,
    cfg_scale: float = 1.0,
    base_dir: str | Path | None = None,
    batch: int | None = None,
) -> tuple[list[int], list[Candidate], list[str]]:
    """``n`` answers to ``messages`` -> (the prompt's ids, the candidates in index order, warnings
    about input unlike the model's training data).

    ``sampling``: temperature, top-p/top-k, length; its ``seed`` is the base from which each
    candidate's seed derives (:func:`candidate_seed`; random when None). ``batch``: candidates per
    engine batch (default: all ``n`` at once). ``cfg_scale`` > 1: guidance inside image spans.
    """
    vocab, proc = omni.vocab, omni.processor
    if n < 1:
        raise ValueError(f"the number of candidates must be >= 1, got {n}")
    if output_modality is not None and output_modality not in OUTPUTS:
        raise ValueError(f"output {output_modality!r} is not one of {OUTPUTS}")
    outputs = tuple(outputs) if outputs is not None else default_outputs(output_modality)
    if output_modality in ("image", "audio") and output_modality not in omni.codecs:
        raise ValueError(f"this model has no {output_modality} codec, so it cannot answer with {output_modality}")
    if output_modality == "audio" and voice is None:
        voice = default_voice(vocab)
    sampling = (sampling or SamplingParams()).validate()
    base = sampling.seed if sampling.seed is not None else int(np.random.default_rng().integers(2**62))
    stops = tuple(set(sampling.stop_ids) | {vocab.end_id})
    coded = proc.to_code_messages(messages, base_dir)
    prompt = proc.prompt_ids(coded, output_modality, voice)
    warnings = [p["unfamiliar"]["message"] for m in coded for p in m["content"]
                if isinstance(p, dict) and "unfamiliar" in p]
    if omni.on_prompt is not None:
        omni.on_prompt(prompt)
    uncond = None
    if cfg_scale != 1.0:
        from ..tokens import build_prompt, null_condition

        uncond = null_condition(vocab) + build_prompt([], vocab, omni.tok, output_modality, voice, add_bos=False)
    size = max(1, min(batch or n, n))
    out: list[Candidate] = []
    for first in range(0, n, size):
        idx = list(range(first, min(n, first + size)))
        seeds = [candidate_seed(base, k) for k in idx]
        reqs = [Request(prompt, replace(sampling, seed=s, stop_ids=stops),
                        SpanGrammar(vocab, omni.model.cfg.vocab_size, outputs=outputs, prefix=prompt),
                        uncond_prompt=uncond, cfg_scale=cfg_scale if uncond else 1.0) for s in seeds]
        t0 = time.perf_counter()
        ids = omni.engine.generate(reqs)
        cands = [_decode(omni, prompt, k, s, got) for k, s, got in zip(idx, seeds, ids)]
        took = time.perf_counter() - t0
        for c in cands:
            c.latency_s, c.batch = took, len(idx)
        out.extend(cands)
    return prompt, out, warnings


def _decode(omni: Any, prompt: list[int], index: int, seed: int, ids: list[int]) -> Candidate:
    """Parse one answer's ids (after ``prompt``, which may have opened its span) and decode its media."""
    from .generate import _image_event

    vocab = omni.vocab
    stopped = bool(ids) and ids[-1] == vocab.end_id
    cand = Candidate(index, seed, list(ids), "stop" if stopped else "length")
    segs = omni.processor.decode_ids(prompt + list(ids))
    turn = max((s.turn for s in segs), default=-1)
    if not segs or segs[-1].role != "assistant":  # an answer that is only <|end|>: nothing parsed in its turn
        turn = -2
    for seg in segs:
        if seg.turn != turn or seg.role != "assistant":
            continue
        if seg.modality == "text":
            if cand.parts and cand.parts[-1]["type"] == "text":
                cand.parts[-1]["text"] += seg.text or ""
            else:
                cand.parts.append({"type": "text", "text": seg.text or ""})
        elif seg.modality == "image":
            ev = _image_event(omni, list(seg.codes or []))
            if ev.image.size:
                cand.parts.append({"type": "image", "image": ev.image, "codes": ev.codes})
        elif seg.modality == "audio" and "audio" in omni.codecs:
            pcm = np.zeros(0, dtype=np.float32)  # a span cut off before its first whole frame: no sound
            if seg.codes:
                import torch

                with torch.inference_mode():
                    pcm = omni.processor.decode_media(seg).float().numpy().astype(np.float32)
            cand.parts.append({"type": "audio", "audio": pcm, "sample_rate": int(omni.codecs["audio"].sample_rate),
                               "voice": seg.voice, "transcript": seg.transcript or ""})
    kinds = vocab.modality_of(ids) if ids else np.zeros(0, dtype=int)
    names = vocab.MODALITIES
    cand.usage = {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                  **{f"{m}_tokens": int((kinds == names.index(m)).sum()) for m in ("text", "audio", "image")}}
    return cand
