"""Atomic, resumable training checkpoints.

Layout (one directory per checkpoint, ``latest`` names the newest)::

    out_dir/ckpt/step_0000200/
        model.safetensors   # full, unsharded weights with HF Llama parameter names (export-ready)
        config.json         # the full Config
        optimizer.pt        # full optimizer state (parameter names as keys), torch.save
        rng.pt              # torch / numpy / python RNG states of every rank
        trainer.json        # step, loader state, world size
        checksums.json      # sha256 of every file above (written last: its presence = complete)
    out_dir/ckpt/latest     # text: "step_0000200"

A checkpoint is written into ``ckpt/.tmp-step_XXXXXXX`` and renamed into place, then ``latest``
is replaced atomically, then older checkpoints beyond ``keep`` are removed. Under FSDP2 every
rank takes part in gathering the full state dicts; rank 0 writes.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ..config import Config, config_to_dict
from ..data.shards import sha256_file
from ..utils.fileio import atomic_write_text, read_json

__all__ = ["save_checkpoint", "load_checkpoint", "find_checkpoint", "verify_checkpoint", "CKPT_FILES"]

CKPT_FILES = ("model.safetensors", "config.json", "optimizer.pt", "rng.pt", "trainer.json")


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _dist() else 0


def _rng_state() -> dict[str, Any]:
    """Plain tensors / ints only, so that ``torch.load(weights_only=True)`` reads it back."""
    key, arr, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [key, torch.from_numpy(arr.astype(np.int64)), pos, has_gauss,
                                                     gauss], "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    key, arr, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((key, arr.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in s["python"]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(ckpt_root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    cfg: Config, loader_state: dict[str, Any], keep: int = 2,
                    extra: dict[str, Any] | None = None, assets: dict[str, Path | str] | None = None) -> Path:
    """Collective under torch.distributed (every rank must call it). Returns the checkpoint dir.

    ``assets`` maps file names to copy into the checkpoint (a Path) or text to write (a str): the
    data's ``vocab.json``, ``tokenizer.json`` and ``codecs.json``, so that every checkpoint is also a
    model directory that ``omniloom chat`` / ``serve`` / ``eval`` load as it is.
    """
    root = Path(ckpt_root)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts)
    rngs: list[Any] = [_rng_state()]
    if _dist():
        gathered: list[Any] = [None] * dist.get_world_size() if _rank() == 0 else None  # type: ignore[assignment]
        dist.gather_object(rngs[0], gathered, dst=0)
        rngs = gathered if _rank() == 0 else []
    name = f"step_{step:07d}"
    final = root / name
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{name}"
        try:
            _write_checkpoint(tmp, final, root, name, step, msd, osd, rngs, cfg, loader_state, extra, assets, keep)
        except Exception as e:  # safetensors and torch.save report a full disk as their own error types
            full = _disk_full(e, root)
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a partial checkpoint behind
            if full:
                raise OSError(errno.ENOSPC, f"no space left on device while writing checkpoint {final} "
                                            f"(the partial {tmp.name} was removed; free space under {root}, then "
                                            "the same command resumes from the last good checkpoint)") from e
            raise
    if _dist():
        dist.barrier()
    return final


def _disk_full(e: BaseException, root: Path) -> bool:
    """Whether a failed write was the disk filling up: ENOSPC, its text (safetensors: "os error 28"),
    or (torch.save only says "unexpected pos") under 1 MiB left where the checkpoint was going."""
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e) or "os error 28" in str(e):
        return True
    try:
        return shutil.disk_usage(root).free < 1 << 20
    except OSError:
        return False


def _write_checkpoint(tmp: Path, final: Path, root: Path, name: str, step: int, msd: dict, osd: dict,
                      rngs: list, cfg: Config, loader_state: dict, extra: dict | None,
                      assets: dict[str, Path | str] | None, keep: int) -> None:
    """Rank 0's part of :func:`save_checkpoint`: write ``tmp``, make it durable, rename it to ``final``."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k.removeprefix("_orig_mod."): v.detach().contiguous().cpu() for k, v in msd.items()}
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(step)})
    (tmp / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=1))
    torch.save(osd, tmp / "optimizer.pt")
    torch.save(rngs, tmp / "rng.pt")
    trainer = {"step": step, "loader": loader_state,
               "world_size": dist.get_world_size() if _dist() else 1, **(extra or {})}
    (tmp / "trainer.json").write_text(json.dumps(trainer, indent=1))
    for fname, src in (assets or {}).items():
        if isinstance(src, Path):
            if src.is_file():
                shutil.copyfile(src, tmp / fname)
        else:
            (tmp / fname).write_text(src)
    sums = {f: sha256_file(tmp / f) for f in CKPT_FILES}
    (tmp / "checksums.json").write_text(json.dumps(sums, indent=1))
    for f in tmp.iterdir():  # make the content durable before it becomes visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # same step written again (e.g. the final save after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name)
    _prune(root, keep)


def _prune(root: Path, keep: int) -> None:
    dirs = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in dirs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def verify_checkpoint(path: str | Path) -> str | None:
    """None when ``path`` is a complete checkpoint with matching checksums, else what is wrong."""
    p = Path(path)
    sums_path = p / "checksums.json"
    if not sums_path.is_file():
        return f"{sums_path} is missing (checkpoint incomplete)"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return f"{sums_path} is not valid JSON"
    for f in CKPT_FILES:
        fp = p / f
        if not fp.is_file():
            return f"{fp} is missing"
        if sha256_file(fp) != sums.get(f):
            return f"{fp} is corrupt (sha256 mismatch)"
    return None


def find_checkpoint(ckpt_root: str | Path, resume: str = "auto") -> Path | None:
    """Resolve ``--resume``: 'never' -> None; 'auto' -> newest good checkpoint (or None when there
    is none at all); a path -> that checkpoint. Bad checkpoints are reported on stderr and skipped in
    'auto' mode; an explicit bad path, or only bad ones, raises ValueError naming them."""
    if resume == "never":
        return None
    if resume != "auto":
        p = Path(resume)
        if (p / "latest").is_file():
            p = p / (p / "latest").read_text().strip()
        elif (p / "ckpt" / "latest").is_file():
            p = p / "ckpt" / (p / "ckpt" / "latest").read_text().strip()
        problem = verify_checkpoint(p) if p.is_dir() else f"checkpoint {p} does not exist"
        if problem:
            raise ValueError(f"cannot resume from {p}: {problem}")
        return p
    root = Path(ckpt_root)
    candidates = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    latest = root / "latest"
    if latest.is_file():
        named = root / latest.read_text().strip()
        candidates = [named] + [c for c in candidates if c != named]
    problems = []
    for c in candidates:
        problem = verify_checkpoint(c) if c.is_dir() else f"{c} (named by {latest}) does not exist"
        if problem is None:
            for msg in problems:
                print(f"warning: skipping bad checkpoint: {msg}", file=sys.stderr)
            return c
        problems.append(problem)
    if problems:
        raise ValueError("no usable checkpoint to resume from: " + "; ".join(problems)
                         + " (use --resume never to start over)")
    return None


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
                    ) -> dict[str, Any]:
    """Load weights (+ optimizer, RNG) into an already built / sharded model; returns trainer.json.

    Every rank reads the full files (shared filesystem assumed) and keeps its own shard.
    """
    p = Path(path)
    sd = load_file(str(p / "model.safetensors"))
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, sd, options=opts)
    if optimizer is not None:
        osd = torch.load(p / "optimizer.pt", weights_only=True, map_location="cpu")
        set_optimizer_state_dict(model, optimizer, osd, options=opts)
    trainer = read_json(p / "trainer.json")
    rngs = torch.load(p / "rng.pt", weights_only=True, map_location="cpu")
    r = _rank()
    if rngs:
        _set_rng_state(rngs[r] if r < len(rngs) else rngs[0])
    return trainer
