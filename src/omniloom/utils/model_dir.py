"""Where a model directory is: a bundled name, a directory, a training run, or a folder holding one run."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS_DIR", "resolve_model_dir"]

MODELS_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A bundled model name (``world``), a model directory, a training run's ``out_dir`` or its
    ``ckpt`` folder (the newest checkpoint is taken) -> the model directory."""
    p = Path(name_or_path)
    if p.is_dir():
        for root in (p, p / "ckpt"):
            if (root / "latest").is_file():
                return root / (root / "latest").read_text().strip()
        if any((p / f).is_file() for f in ("model.safetensors", "delta.safetensors", "config.json")):
            return p
        # a folder that holds a run or a model one level down (e.g. examples/quickstart.sh's OUT)
        inside = sorted(c for c in p.iterdir() if c.is_dir() and (
            (c / "ckpt" / "latest").is_file() or (c / "latest").is_file()
            or any((c / f).is_file() for f in ("model.safetensors", "delta.safetensors"))))
        if len(inside) == 1:
            return resolve_model_dir(inside[0])
        if inside:
            raise ValueError(f"{p} holds several models: {', '.join(str(c) for c in inside)}; pass one of them")
        raise ValueError(f"{p} holds no model: a model directory has model.safetensors (or delta.safetensors), "
                         "a training run has ckpt/latest; is the run still before its first checkpoint?")
    bundled = MODELS_DIR / str(name_or_path)
    shipped = ("model.safetensors", "delta.safetensors")  # a whole model, or a delta over a base
    if "/" not in str(name_or_path) and any((bundled / f).is_file() for f in shipped):
        return bundled
    names = sorted(d.name for d in MODELS_DIR.iterdir() if any((d / f).is_file() for f in shipped)) \
        if MODELS_DIR.is_dir() else []
    raise ValueError(f"model {str(name_or_path)!r} is neither a directory nor a bundled model (bundled: "
                     f"{', '.join(names) or 'none'}); pass the directory "
                     "of a trained model (a training run's out_dir works), or make a tiny random one with "
                     "`python -m omniloom.serve.tiny DIR`")
