"""Image inpainting: redraw the masked part of an image, keep the rest code for code.

The image codec maps an image to a ``grid x grid`` raster of codes (row-major), each code covering
``downsample x downsample`` pixels. A mask (OpenAI's ``images.edit`` convention: the pixels whose
alpha is 0 are the ones to edit) becomes the set of code cells to regenerate
(:func:`mask_cells`). The answer is then an image span whose kept cells are forced to the source
image's own codes (:class:`KeepCodes`, a constraint around the span grammar) while the masked cells
are sampled, with the user's instruction and the whole source image in the prompt.

A decoder-only model sees only the codes *before* a cell when it samples it; the kept codes after a
masked cell are what the drawing has to fit. So several candidates are drawn and the one under which
the model finds its whole span most likely (the kept codes after the masked cells included) is kept
(:func:`inpaint`): the rest of the image conditions the choice, if not each sample.
``bench/inpaint.py`` measures it against a plain edit on the world's edit task.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..tokens import build_prompt, null_condition
from .engine import Request
from .grammar import SpanGrammar
from .sampling import SamplingParams

__all__ = ["KeepCodes", "mask_cells", "code_grid", "alpha_of", "source_image_codes", "inpaint", "span_logprobs"]


class KeepCodes:
    """A constraint that forces chosen positions of the answer's image span to given ids.

    ``keep[k]`` is the global id that image code ``k`` must be, or None where the model samples.
    Everything else (which ids may open and close the span, when the answer ends) is ``grammar``'s.
    """

    def __init__(self, grammar: SpanGrammar, keep: Sequence[int | None]):
        self.grammar = grammar
        self.keep = list(keep)
        size = grammar.m.image_code.numel()
        self._only = {}
        for k, g in enumerate(self.keep):
            if g is not None:
                if not grammar.m.image_code[g]:
                    raise ValueError(f"kept code {k} (id {g}) is not an image code")
                m = torch.zeros(size, dtype=torch.bool)
                m[g] = True
                self._only[k] = m

    def allowed(self) -> torch.Tensor:
        g = self.grammar
        if g.state == "image" and g.count in self._only:
            return self._only[g.count]
        return g.allowed()

    def advance(self, token: int) -> None:
        self.grammar.advance(token)

    def finished(self) -> bool:
        return self.grammar.finished()

    def guidance_active(self) -> bool:
        return self.grammar.guidance_active()


def alpha_of(mask: Any) -> np.ndarray:
    """A mask image (PIL image, or (H, W, 4) / (H, W) uint8 array) -> its (H, W) alpha as uint8.

    A PIL image needs transparency (an alpha channel, or a palette/greyscale with a transparent
    value): OpenAI's masks mark the area to edit by alpha 0, and an opaque image marks nothing.
    """
    from PIL import Image

    if isinstance(mask, np.ndarray):
        if mask.ndim == 3 and mask.shape[2] == 4:
            return mask[..., 3].astype(np.uint8)
        if mask.ndim == 2:
            return mask.astype(np.uint8)
        raise ValueError(f"mask array must be (H, W) alpha or (H, W, 4) RGBA, got shape {mask.shape}")
    if not isinstance(mask, Image.Image):
        raise ValueError(f"mask must be an image or an array, got {type(mask).__name__}")
    if mask.mode in ("RGBA", "LA") or "transparency" in mask.info:
        return np.asarray(mask.convert("RGBA"))[..., 3].copy()
    raise ValueError(f"mask has no alpha channel (mode {mask.mode}): make the area to edit transparent "
                     "(alpha 0) in a PNG with transparency")


def mask_cells(alpha: np.ndarray, resolution: int, grid: int) -> np.ndarray:
    """(H, W) alpha -> (grid * grid,) bool, True for a code cell to regenerate (row-major; each cell
    covers ``resolution / grid`` pixels a side, :func:`code_grid` gives a model's).

    The mask goes through the same shorter-side resize and center crop as the image
    (:func:`omniloom.utils.media.fit_square`), so each cell lines up with the code it covers; a cell
    is regenerated when any of its pixels is transparent (alpha < 128 after resizing).
    """
    from PIL import Image

    from ..utils.media import fit_square

    if alpha.ndim != 2 or alpha.size == 0:
        raise ValueError(f"mask alpha must be a non-empty (H, W) array, got shape {alpha.shape}")
    if grid < 1 or resolution % grid:
        raise ValueError(f"a {resolution}x{resolution} image cannot hold a {grid}x{grid} code grid")
    sq = np.asarray(fit_square(Image.fromarray(alpha, mode="L"), resolution))  # (R, R)
    downsample = resolution // grid
    cells = sq.reshape(grid, downsample, grid, downsample).min(axis=(1, 3)) < 128  # (grid, grid)
    return cells.reshape(-1)


def code_grid(vocab: Any) -> int:
    """The side of the model's square image code grid (``image_tokens`` codes, row-major)."""
    g = int(round(vocab.image_tokens ** 0.5))
    if g * g != vocab.image_tokens:
        raise ValueError(f"inpainting needs a square code grid; this model's images have {vocab.image_tokens} codes")
    return g


def source_image_codes(coded_messages: Sequence[dict]) -> list[int]:
    """The local codes of the last image in the last user turn of already-coded messages."""
    for m in reversed(coded_messages):
        if m.get("role") != "user":
            continue
        parts = m["content"] if isinstance(m["content"], list) else []
        for p in reversed(parts):
            if isinstance(p, dict) and p.get("type") == "image_codes":
                return [int(c) for c in p["codes"]]
        break
    raise ValueError("inpainting needs an image in the last user turn (the image whose masked part is redrawn)")


def inpaint(omni: Any, messages: Sequence[dict], regenerate: np.ndarray, candidates: int = 8,
            sampling: SamplingParams | None = None, cfg_scale: float = 1.0, temperature: float = 1.0,
            base_dir: Any = None) -> Iterator[Any]:
    """Answer ``messages`` (a user turn with an image and an instruction) with that image, its cells
    where ``regenerate`` is True redrawn. Yields one ``ImageOut`` and a ``Done`` (as ``generate``).

    ``candidates`` spans are drawn in one batch (candidate 0 as ``sampling`` says, greedy by default;
    the others at ``temperature`` with derived seeds) and the one whose whole span the model finds most
    likely is kept. ``usage["inpaint_cells"]`` says how many cells were redrawn.
    """
    from .generate import Done, _image_event

    vocab, proc = omni.vocab, omni.processor
    L = vocab.image_tokens
    regenerate = np.asarray(regenerate, dtype=bool).reshape(-1)
    if regenerate.size != L:
        raise ValueError(f"the mask covers {regenerate.size} code cells, the image codec has {L}")
    if not regenerate.any():
        raise ValueError("the mask has no transparent pixels: nothing to edit (make the area to redraw alpha 0)")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    sampling = sampling or SamplingParams(temperature=0.0)
    coded = proc.to_code_messages(messages, base_dir)
    src = source_image_codes(coded)
    if len(src) != L:
        raise ValueError(f"the source image has {len(src)} codes, the model draws {L}")
    prompt = proc.prompt_ids(coded, "image", None)
    warnings = [p["unfamiliar"]["message"] for m in coded for p in m["content"]
                if isinstance(p, dict) and "unfamiliar" in p]
    uncond = None
    if cfg_scale != 1.0:
        uncond = null_condition(vocab) + build_prompt([], vocab, omni.tok, "image", None, add_bos=False)
    lo = vocab.range_of("image")[0]
    keep = [None if r else lo + c for r, c in zip(regenerate, src)]
    close = vocab.special("/image")
    base = sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    reqs = []
    for k in range(candidates):
        sp = replace(sampling, max_new_tokens=L + 1, stop_ids=(close,), seed=(base * 1_000_003 + k) % 2**63,
                     temperature=sampling.temperature if k == 0 else (sampling.temperature or temperature))
        g = KeepCodes(SpanGrammar(vocab, omni.model.cfg.vocab_size, outputs=("image",), prefix=prompt), keep)
        reqs.append(Request(prompt, sp, g, uncond_prompt=uncond, cfg_scale=cfg_scale if uncond else 1.0))
    outs = omni.engine.generate(reqs)
    spans = [o[:L] for o in outs if len(o) >= L and all(lo <= t < lo + vocab.image_codebook_size for t in o[:L])]
    if not spans:
        raise RuntimeError("no candidate completed its image span")
    best = spans[0]
    if len(spans) > 1:
        best = spans[int(np.argmax(span_logprobs(omni.model, prompt, spans)))]
    yield _image_event(omni, [t - lo for t in best])
    n_new = sum(len(o) for o in outs)
    yield Done("stop", {"prompt_tokens": len(prompt), "completion_tokens": n_new, "image_tokens": n_new,
                        "text_tokens": 0, "audio_tokens": 0, "inpaint_cells": int(regenerate.sum()),
                        "image_candidates": len(spans)}, warnings)


@torch.inference_mode()
def span_logprobs(model: Any, prompt: list[int], spans: Sequence[Sequence[int]]) -> list[float]:
    """Sum of the model's log-probabilities of each ``span`` after ``prompt`` (one batched forward)."""
    dev = next(model.parameters()).device
    ids = torch.tensor([list(prompt) + list(s) for s in spans], device=dev)  # (B, P + L)
    P = len(prompt)
    logits = model(ids[:, :-1]).float()[:, P - 1:]  # predictions of the span positions
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, P:, None])[..., 0]
    return lp.sum(1).tolist()
