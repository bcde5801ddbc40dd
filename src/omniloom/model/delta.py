"""Delta model directories: only what training changed on top of a pretrained base.

A run with ``train.freeze_base`` changes little: the LoRA adapters, the vocabulary rows a graft
appended, and the rows ``train.train_rows_also`` named. ``write_delta`` keeps just those
(``delta.safetensors``) plus ``base.json`` naming the base and the sha256 of its weight file(s);
:func:`read_delta` rebuilds the full weights from the base at load time. The base is

- a pretrained LLM the model was grafted from: a named base such as ``smollm2-135m``, a ``.gguf``
  file or a Hugging Face folder. SmolLM2 with the world codecs and rank-16 adapters on every
  projection is ~29 MB in bf16 instead of 576 MB;
- or an omniloom model: a bundled model's name (``world``; a bundled name wins over a folder of
  the same name in the working directory, write ``./world`` for that) or a model directory. A
  language taught to ``world`` through tag-gated adapters is 7 MB instead of a 39 MB copy.

Every verb that loads a model directory (chat, serve, eval, export, train.init_from) reads one.

    base.json          {"base": "smollm2-135m", "sha256": {...}, "text_size": 49152, "install": "..."}
    delta.safetensors  <proj>.lora_a, <proj>.lora_b, and for embed_tokens (and an untied lm_head):
                       .new_rows (n_new, dim): the rows after the base's text_size
                       .row_ids (n,) int64 + .rows (n, dim): base rows that training changed
    config.json  vocab.json  codecs.json  generation.json     (as in any model directory)

The tokenizer is the base's own, so it is not stored either.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_from_dict, config_to_dict
from ..utils.fileio import read_json
from ..utils.model_dir import MODELS_DIR
from .base_lm import NAMED_BASES, BaseLM, locate_named_base, read_base
from .lora import fold_adapters, has_lora, is_adapter_key

__all__ = ["DELTA_FILE", "BASE_FILE", "is_delta_dir", "write_delta", "read_delta", "base_files", "read_any_base",
           "omniloom_base_dir"]

DELTA_FILE = "delta.safetensors"
BASE_FILE = "base.json"


def is_delta_dir(d: str | Path) -> bool:
    d = Path(d)
    return (d / DELTA_FILE).is_file() and (d / BASE_FILE).is_file()


def omniloom_base_dir(base: str) -> Path | None:
    """The directory of an omniloom model used as a base (a bundled model's name, or a model
    directory: model.safetensors + config.json + vocab.json); None for a pretrained LLM."""
    if base in NAMED_BASES:
        return None
    if "/" not in base and (MODELS_DIR / base / "model.safetensors").is_file():
        return MODELS_DIR / base
    p = Path(base)
    if p.is_dir() and all((p / f).is_file() for f in ("model.safetensors", "config.json", "vocab.json")):
        return p
    return None


def _bundled(base: str) -> bool:
    return "/" not in base and omniloom_base_dir(base) == MODELS_DIR / base


def _read_omniloom_base(d: Path) -> BaseLM:
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    cfg = config_from_dict(read_json(d / "config.json", "model config"))
    state = {k.removeprefix("_orig_mod."): v.float() for k, v in load_file(str(d / "model.safetensors")).items()}
    state = fold_adapters(state, cfg.train)
    if has_lora(state):
        raise ValueError(f"base {d} carries position-gated adapters of its own; a delta is taken over plain "
                         "weights (a model directory without adapters, such as a bundled model)")
    return BaseLM(cfg.model, state, Tokenizer.from_file(str(d / "tokenizer.json")), None, source=str(d))


def read_any_base(base: str) -> BaseLM:
    """A delta's base: an omniloom model (see :func:`omniloom_base_dir`) or a pretrained LLM."""
    d = omniloom_base_dir(base)
    return _read_omniloom_base(d) if d is not None else read_base(base)


def base_files(base: str) -> list[Path]:
    """The weight file(s) of a base (a named base, a .gguf, an HF folder's safetensors, or an
    omniloom model's model.safetensors)."""
    if base in NAMED_BASES:
        return [locate_named_base(base)]
    d = omniloom_base_dir(base)
    if d is not None:
        return [d / "model.safetensors"]
    p = Path(base)
    if p.is_file():
        return [p]
    if (p / "model.safetensors").is_file():
        return [p / "model.safetensors"]
    files = sorted(p.glob("model-*.safetensors"))
    if not files:
        raise ValueError(f"base {base!r}: no weight file found (a named base, a .gguf file or an HF folder)")
    return files


def _sha256(files: list[Path]) -> dict[str, str]:
    out = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.name] = h.hexdigest()
    return out


def write_delta(cfg: Config, state: dict[str, torch.Tensor], base: str, out_dir: str | Path,
                extra_files: dict[str, Path], dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Write a delta directory for ``state`` (a freeze_base run's weights, adapters unmerged) over
    ``base``; refuses when anything but the adapters and embedding/output rows differs from the base."""
    from safetensors.torch import save_file

    from .hf import _atomic_dir_write

    if base not in NAMED_BASES and not _bundled(base):
        base = str(Path(base).resolve())  # a path: absolute, so the delta loads from any working directory
    b = read_any_base(base)
    T = b.cfg.vocab_size
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    if not has_lora(state) and not cfg.train.freeze_base:
        raise ValueError("a delta holds a frozen-base run's adapters and new rows; this checkpoint has no "
                         "adapters and was not trained with train.freeze_base")
    delta: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if is_adapter_key(k):
            delta[k] = v
            continue
        if k not in b.state:
            raise ValueError(f"tensor {k!r} is not in the base {base}; not a model grafted from it")
        ref = b.state[k]
        if k in ("embed_tokens.weight", "lm_head.weight"):
            if v.shape[0] < T or v.shape[1:] != ref.shape[1:]:
                raise ValueError(f"{k} has shape {tuple(v.shape)}; the base's is {tuple(ref.shape)}")
            name = k.removesuffix(".weight")
            changed = (v[:T].float() != ref).any(dim=-1).nonzero().flatten()
            if len(changed) > T // 2:
                raise ValueError(f"{k}: {len(changed)} of the base's {T} rows changed in training; a delta holds "
                                 "a frozen-base run (train.freeze_base=true), export the whole model instead")
            if len(changed):  # rows train.train_rows_also trained
                delta[f"{name}.row_ids"], delta[f"{name}.rows"] = changed.to(torch.int64), v[changed]
            if v.shape[0] > T:
                delta[f"{name}.new_rows"] = v[T:]
        elif not torch.equal(v.float(), ref):
            raise ValueError(f"{k} differs from the base {base}: a delta needs a frozen base "
                             "(train.freeze_base=true); export the whole model instead")
    delta = {k: (v if k.endswith(".row_ids") else v.detach().to(dtype)).contiguous() for k, v in delta.items()}
    if cfg.train.train_rows_also.strip().endswith(".json"):  # the ids themselves, not a file beside the run
        cfg = copy.deepcopy(cfg)
        cfg.train.train_rows_also = cfg.train.rows_also_inline()
    install = NAMED_BASES[base][2] if base in NAMED_BASES else \
        "bundled with omniloom (pip install omniloom)" if _bundled(base) else None
    info = {"base": base, "sha256": _sha256(base_files(base)), "text_size": T, "install": install}
    files = {
        DELTA_FILE: lambda p: save_file(delta, str(p), metadata={"format": "pt"}),
        "config.json": lambda p: p.write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n"),
        BASE_FILE: lambda p: p.write_text(json.dumps(info, indent=1) + "\n"),
    }
    for name, src in extra_files.items():
        if Path(src).is_file():
            files[name] = (lambda s: (lambda p: p.write_bytes(Path(s).read_bytes())))(src)
    _atomic_dir_write(Path(out_dir), files)
    return {"tensors": len(delta), "bytes": sum(v.numel() * v.element_size() for v in delta.values()), **info}


def read_delta(d: str | Path, check_sha: bool = True) -> tuple[Config, dict[str, torch.Tensor], Any]:
    """(config, full fp32 state dict with the adapters folded in (position-gated ones kept unmerged),
    the base's tokenizers.Tokenizer)."""
    from safetensors.torch import load_file

    d = Path(d)
    info = read_json(d / BASE_FILE, "delta base")
    base = info.get("base")
    if not isinstance(base, str):
        raise ValueError(f"{d / BASE_FILE}: no \"base\"")
    try:
        files = base_files(base)
    except ValueError as e:
        raise ValueError(f"{d} is a delta over the base {base!r}, which is not here: {e}") from None
    if check_sha and info.get("sha256") and _sha256(files) != info["sha256"]:
        raise ValueError(f"{d} was trained over another copy of the base {base!r} (sha256 differs): "
                         f"reinstall it{': ' + info['install'] if info.get('install') else ''}")
    b = read_any_base(base)
    cfg = config_from_dict(read_json(d / "config.json", "model config"))
    delta = {k: v if k.endswith(".row_ids") else v.float() for k, v in load_file(str(d / DELTA_FILE)).items()}
    state = dict(b.state)
    for k in ("embed_tokens", "lm_head"):
        ids, rows = delta.pop(f"{k}.row_ids", None), delta.pop(f"{k}.rows", None)
        if (ids is None) != (rows is None) or (ids is not None and f"{k}.weight" not in state):
            raise ValueError(f"{d / DELTA_FILE}: {k}.row_ids and {k}.rows come together, over a base with {k}")
        if ids is not None:
            w = state[f"{k}.weight"]
            if ids.dim() != 1 or len(ids) != len(rows) or rows.shape[1:] != w.shape[1:] \
                    or (len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(w))):
                raise ValueError(f"{d / DELTA_FILE}: {k}.row_ids / {k}.rows do not fit the base's {k} "
                                 f"{tuple(w.shape)}")
            w = w.clone()
            w[ids.long()] = rows
            state[f"{k}.weight"] = w
        rows = delta.pop(f"{k}.new_rows", None)
        if rows is not None:
            state[f"{k}.weight"] = torch.cat([state[f"{k}.weight"], rows])
    state.update(delta)
    return cfg, fold_adapters(state, cfg.train), b.tokenizer
