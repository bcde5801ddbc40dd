"""An optional decode backend: token generation through llama.cpp (llama-cpp-python), with the
logits of omniloom's GGUF export of the same model and omniloom's own per-token rules.

:class:`LlamaCppEngine` has the :class:`~omniloom.infer.engine.Engine` interface (``stream``,
``generate``) that :func:`~omniloom.infer.generate.generate` and the image reranker call, so
swapping ``omni.engine`` moves every answer's decoding to llama.cpp. What stays omniloom's:
sampling, the span grammar's masks, classifier-free guidance and the stop rules (one
:class:`~omniloom.infer.engine.SamplerState` per request, as in the torch engine), so an answer is
the same id sequence in either backend up to the GGUF type's rounding. What differs: requests run
one after another (batch 1), and a guided request evaluates its unconditional prompt in a second
llama.cpp context. Media encoding/decoding and the reranker's scoring stay on the torch model.

    omni = OmniModel.load("world")
    use_llama_cpp(omni, gguf_type="q8_0")            # exports to a temporary .gguf first
    use_llama_cpp(omni, gguf="world.q8_0.gguf")      # or takes one written by export --format gguf

llama-cpp-python is not an omniloom dependency: :func:`llama_cpp_available` says whether it imports.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .engine import Request, SamplerState, check_request

__all__ = ["LlamaCppEngine", "use_llama_cpp", "llama_cpp_available", "export_omni_gguf"]


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise ValueError("the llama.cpp backend needs llama-cpp-python, which omniloom does not install: "
                         "pip install llama-cpp-python (docs/export.md says how to build it here)") from None
    return llama_cpp


class LlamaCppEngine:
    """``Engine.stream`` / ``generate`` over a llama.cpp context of a ``.gguf``."""

    compiled = False

    def __init__(self, gguf: str | Path, vocab_size: int, max_seq_len: int, threads: int | None = None):
        self._lib = _require()
        self.gguf = str(gguf)
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.threads = threads
        self._ctx = self._open()
        if self._ctx.n_vocab() != vocab_size:
            raise ValueError(f"{gguf} has {self._ctx.n_vocab()} tokens, the model {vocab_size}: not its export")
        self._uncond: Any = None  # a second context, opened by the first guided request

    def _open(self) -> Any:
        return self._lib.Llama(self.gguf, n_ctx=self.max_seq_len, n_threads=self.threads,
                               n_threads_batch=self.threads, verbose=False)

    def _logits(self, llm: Any) -> torch.Tensor:
        """(V,) logits of the last evaluated position (copied out of llama.cpp's buffer)."""
        ptr = self._lib.llama_get_logits_ith(llm.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.vocab_size,)).copy())

    def _prefill(self, llm: Any, prompt: list[int]) -> torch.Tensor:
        llm.reset()
        llm.eval(prompt)
        return self._logits(llm)

    def _one(self, r: Request) -> Iterator[int]:
        if len(r.prompt) >= self.max_seq_len:
            raise ValueError(f"prompt of {len(r.prompt)} tokens leaves no room in a context of {self.max_seq_len}")
        guided = r.uncond_prompt is not None and r.cfg_scale != 1.0
        logits = self._prefill(self._ctx, r.prompt)
        uncond = None
        if guided:
            if self._uncond is None:
                self._uncond = self._open()
            uncond = self._prefill(self._uncond, r.uncond_prompt)
        state = SamplerState.start(r, self.vocab_size)
        produced = 0
        while True:
            tok = state.pick(r, logits, uncond)
            produced += 1
            yield tok
            if state.stops(r, tok, produced) or self._ctx.n_tokens >= self.max_seq_len or (
                    guided and self._uncond.n_tokens >= self.max_seq_len):
                return
            self._ctx.eval([tok])
            logits = self._logits(self._ctx)
            if guided:
                self._uncond.eval([tok])
                uncond = self._logits(self._uncond)

    def stream(self, requests: list[Request]) -> Iterator[tuple[int, int]]:
        """Yield ``(request_index, token_id)``: the requests one after another."""
        for i, r in enumerate(requests):
            check_request(r, i, self.vocab_size)
        for i, r in enumerate(requests):
            for tok in self._one(r):
                yield i, tok

    def generate(self, requests: list[Request]) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in requests]
        for i, tok in self.stream(requests):
            out[i].append(tok)
        return out


def export_omni_gguf(omni: Any, out: str | Path, gguf_type: str = "f16") -> Path:
    """Write a loaded :class:`~omniloom.infer.generate.OmniModel`'s decoder and vocabulary as a GGUF."""
    from ..model.gguf_io import write_gguf
    from ..model.quant import is_quantized

    if is_quantized(omni.model):
        raise ValueError("the model is int8-quantised (--int8); the llama.cpp backend quantises with --gguf-type q8_0 "
                         "instead")
    files = {"vocab.json": json.dumps(omni.vocab.to_dict(), indent=1), "tokenizer.json": omni.tok.tok.to_str()}
    state = {k: v for k, v in omni.model.state_dict().items()}
    write_gguf(out, omni.model.cfg, state, files, gguf_type=gguf_type, name="omniloom")
    return Path(out)


def use_llama_cpp(omni: Any, gguf: str | Path | None = None, gguf_type: str = "f16",
                  threads: int | None = None) -> LlamaCppEngine:
    """Make ``omni`` decode through llama.cpp: with ``gguf`` (a file of ``export --format gguf`` of
    this model), or a fresh export of ``gguf_type`` in a temporary directory. Returns the engine."""
    _require()
    tmp = None
    if gguf is None:  # removed with the engine (or at exit)
        tmp = tempfile.TemporaryDirectory(prefix="omniloom-gguf-")
        gguf = export_omni_gguf(omni, Path(tmp.name) / f"model.{gguf_type}.gguf", gguf_type)
    elif not Path(gguf).is_file():
        raise ValueError(f"GGUF file {gguf} does not exist")
    engine = LlamaCppEngine(gguf, omni.model.cfg.vocab_size, omni.engine.max_seq_len, threads)
    engine._tmp = tmp  # type: ignore[attr-defined]
    omni.engine = engine
    return engine
