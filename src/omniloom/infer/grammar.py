"""The span grammar: which ids may come next, given the modality span the answer is in.

States of an assistant turn (``docs/token-format.md``):

* **free**: text ids, ``<|end|>``, and the openers of the output modalities the caller allows;
* **image span**: exactly ``vocab.image_tokens`` image codes, then ``<|/image|>`` is forced;
* **audio span**: a voice tag first (a named voice, never ``<|voice:none|>``), then transcript text
  ids and whole audio frames (codebook ``k`` at position ``k`` of each frame), ``<|/audio|>`` only
  on a frame boundary;
* **video span**: a time tag or ``<|frame|>``, then ``<|image|>`` and an image span, repeated,
  until ``<|/video|>``;
* **mesh span**: exactly ``vocab.mesh_tokens`` 3D shape codes, then ``<|/mesh|>`` is forced.

The grammar follows :class:`omniloom.infer.engine.Constraint`; it may start mid-span when the
prompt already opened one (``build_prompt(..., output_modality=...)``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..tokens import Vocab

__all__ = ["SpanGrammar", "OUTPUTS"]

OUTPUTS = ("text", "image", "audio", "video", "mesh")


class _Masks:
    """Boolean (V,) masks for each grammar state, built once per (vocab, model size)."""

    def __init__(self, vocab: Vocab, size: int):
        def m(ids: Iterable[int] = (), ranges: Iterable[tuple[int, int]] = ()) -> torch.Tensor:
            t = torch.zeros(size, dtype=torch.bool)
            for lo, hi in ranges:
                t[lo:hi] = True
            ids = list(ids)
            if ids:
                t[torch.tensor(ids)] = True
            return t

        sp = vocab.special
        self.text = m(ranges=[(0, vocab.text_size)])
        self.end = m([vocab.end_id])
        self.open = {"image": sp("image"), "audio": sp("audio"), "video": sp("video")}
        self.image_code = m(ranges=[vocab.range_of("image")]) if vocab.image_codebook_size else m()
        self.close_image = m([sp("/image")])
        self.audio_cb = [m(ranges=[vocab.audio_codebook_range(k)]) for k in range(vocab.audio_codebooks)]
        self.close_audio = m([sp("/audio")])
        named = [vocab.voice_id(v) for v in vocab.voices if not v.startswith("voice:")]
        self.voices = m(named or [vocab.voice_id(v) for v in vocab.voices])
        self.times = m([vocab.time_id(i * vocab.time_step) for i in range(vocab.num_time_tags)] + [sp("frame")])
        self.close_video = m([sp("/video")])
        self.open_image = m([sp("image")])
        if vocab.mesh_tokens:
            self.open["mesh"] = sp("mesh")
            self.mesh_code = m(ranges=[vocab.range_of("mesh")])
            self.close_mesh = m([sp("/mesh")])


class SpanGrammar:
    """Per-request grammar state. ``outputs``: the modalities the answer may contain."""

    _cache: dict[tuple[int, int, str], _Masks] = {}

    def __init__(self, vocab: Vocab, model_vocab_size: int | None = None, outputs: Sequence[str] = OUTPUTS,
                 prefix: Sequence[int] = ()):
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad:
            raise ValueError(f"unknown output modality {bad[0]!r}; choose from {OUTPUTS}")
        self.vocab = vocab
        size = model_vocab_size or vocab.size
        if size < vocab.size:
            raise ValueError(f"model vocabulary ({size}) is smaller than the token vocabulary ({vocab.size})")
        key = (id(vocab), size, repr(vocab))  # the layout too: an id may be reused by a later vocab
        if key not in SpanGrammar._cache:
            SpanGrammar._cache[key] = _Masks(vocab, size)
        self.m = SpanGrammar._cache[key]
        self.outputs = tuple(outputs)
        self.state = "free"
        self.count = 0  # image (mesh) codes in the current image (mesh) span / audio ids in the current frame
        self.in_video = False
        self._done = False
        heads = [b for _, b, role in vocab.find_headers(prefix) if role == "assistant"]
        start = heads[-1] if heads else len(prefix)
        for t in prefix[start:]:
            self.advance(int(t))

    # -- Constraint protocol -------------------------------------------------------------------
    def allowed(self) -> torch.Tensor:
        m = self.m
        if self.state == "free":
            mask = self.m.end.clone()
            if "text" in self.outputs:
                mask |= m.text
            for o in ("image", "audio", "video", "mesh"):
                if o in self.outputs and self._has(o):
                    mask[m.open[o]] = True
            return mask
        if self.state == "image":
            return m.image_code if self.count < self.vocab.image_tokens else m.close_image
        if self.state == "mesh":
            return m.mesh_code if self.count < self.vocab.mesh_tokens else m.close_mesh
        if self.state == "voice":
            return m.voices
        if self.state == "audio":
            k = self.count % max(self.vocab.audio_codebooks, 1)
            mask = m.audio_cb[k].clone()
            if k == 0:
                mask |= m.text | m.close_audio
            return mask
        if self.state == "video":
            return m.times | m.close_video
        if self.state == "video_frame":
            return m.open_image
        raise AssertionError(self.state)

    def advance(self, token: int) -> None:
        v = self.vocab
        sp = v.special
        if self.state == "free":
            if token == v.end_id:
                self._done = True
            elif token == sp("image"):
                self.state, self.count = "image", 0
            elif token == sp("audio"):
                self.state, self.count = "voice", 0
            elif token == sp("video"):
                self.state, self.in_video = "video", True
            elif v.mesh_tokens and token == sp("mesh"):
                self.state, self.count = "mesh", 0
        elif self.state == "mesh":
            if token == sp("/mesh"):
                self.state = "free"
            else:
                self.count += 1
        elif self.state == "image":
            if token == sp("/image"):
                self.state = "video" if self.in_video else "free"
            else:
                self.count += 1
        elif self.state == "voice":
            self.state, self.count = "audio", 0
        elif self.state == "audio":
            if token == sp("/audio"):
                self.state = "free"
            elif token >= v.text_size:  # an audio code (text ids are transcript, no frame progress)
                self.count += 1
        elif self.state == "video":
            if token == sp("/video"):
                self.state, self.in_video = "free", False
            else:
                self.state = "video_frame"
        elif self.state == "video_frame":
            self.state, self.count = "image", 0

    def finished(self) -> bool:
        return self._done

    def guidance_active(self) -> bool:
        return self.state == "image"

    # -- helpers ---------------------------------------------------------------------------------
    def _has(self, modality: str) -> bool:
        v = self.vocab
        if modality in ("image", "video"):
            return v.image_codebook_size > 0 and v.image_tokens > 0
        if modality == "audio":
            return v.audio_codebook_size > 0 and v.audio_codebooks > 0
        if modality == "mesh":
            return v.mesh_tokens > 0
        return True
