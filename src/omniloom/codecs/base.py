"""The one interface every codec implements, and `load_codec` for shipped or saved codecs.

A codec turns raw media into *local* integer codes and back:

- image: ``encode((B, 3, H, W) float in [0, 1]) -> (B, N) long``; ``decode`` inverts it.
- audio: ``encode((B, samples) float at sample_rate) -> (B, frames, num_codebooks) long``;
  ``decode`` inverts it; ``stream_decoder()`` decodes chunk by chunk (chunked equals whole).

Shipped codecs live in ``omniloom/assets/codecs/<name>/`` as ``config.json`` (with a
``"type": "image" | "audio"`` field that picks the class) and ``model.safetensors``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..utils.fileio import read_json

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "codecs"

# config.json "type" -> (module, class); imported lazily so `import omniloom.codecs` stays light.
CODEC_CLASSES: dict[str, tuple[str, str]] = {
    "image": ("omniloom.codecs.image", "ImageCodec"),
    "audio": ("omniloom.codecs.audio", "AudioCodec"),
}


@runtime_checkable
class Codec(Protocol):
    """Raw media <-> local integer codes (see the module docstring for shapes)."""

    modality: str  # "text" | "image" | "audio"
    codebook_size: int  # size of each codebook; codes lie in [0, codebook_size)
    num_codebooks: int  # 1 for images; several for audio (frame-major)
    tokens_per_item: int | None  # image: codes per image (e.g. 64); None for audio
    frame_rate: float | None  # audio: code frames per second; None for images
    sample_rate: int | None  # audio: waveform rate (16000); None for images

    def encode(self, x: Any) -> Any:
        """Media -> long codes."""
        ...

    def decode(self, codes: Any) -> Any:
        """Long codes -> media."""
        ...


def available_codecs() -> list[str]:
    """Names of the codecs shipped in ``omniloom/assets/codecs``."""
    if not ASSETS_DIR.is_dir():
        return []
    return sorted(p.name for p in ASSETS_DIR.iterdir() if (p / "config.json").is_file())


def read_codec_config(directory: str | Path) -> dict:
    """Read and check ``<directory>/config.json``; raise ValueError naming what is wrong."""
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"codec directory {directory} has no config.json")
    cfg = read_json(cfg_path, "codec config")
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"{cfg_path}: missing the 'type' key (one of {sorted(CODEC_CLASSES)})")
    if cfg["type"] not in CODEC_CLASSES:
        raise ValueError(f"{cfg_path}: unknown codec type {cfg['type']!r} (known: {sorted(CODEC_CLASSES)})")
    return cfg


def resolve_codec_dir(name_or_path: str | Path) -> Path:
    """A shipped codec name (``image-world``) or a directory path -> the directory."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    shipped = ASSETS_DIR / str(name_or_path)
    if isinstance(name_or_path, str) and "/" not in name_or_path and shipped.is_dir():
        return shipped
    raise ValueError(
        f"unknown codec {str(name_or_path)!r}: not a directory and not a shipped codec "
        f"(shipped: {', '.join(available_codecs()) or 'none'})"
    )


def load_codec(name_or_path: str | Path, device: str = "cpu") -> Codec:
    """Load a shipped codec by name (``"image-world"``, ``"audio-world"``) or a saved codec directory.

    The class is picked by the ``type`` field of ``config.json`` and must provide
    ``from_pretrained(directory, device=...)``.
    """
    directory = resolve_codec_dir(name_or_path)
    cfg = read_codec_config(directory)
    module_name, class_name = CODEC_CLASSES[cfg["type"]]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"codec type {cfg['type']!r} needs {module_name}, which cannot be imported: {e}") from e
    cls = getattr(module, class_name)
    return cls.from_pretrained(directory, device=device)


def model_codec_refs(model_dir: str | Path) -> dict[str, str | Path]:
    """A model directory's ``codecs.json`` (kind -> codec name or folder) with folders inside the
    model directory resolved against it; {} when it has none."""
    import json

    d = Path(model_dir)
    f = d / "codecs.json"
    if not f.is_file():
        return {}
    try:
        refs = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: cannot read ({e})") from None
    if not isinstance(refs, dict) or not all(isinstance(v, str) for v in refs.values()):
        raise ValueError(f"{f} must map each modality to a codec name or folder")
    return {kind: d / ref if (d / ref).is_dir() else ref for kind, ref in refs.items()}

