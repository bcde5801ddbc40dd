"""The one interface every codec implements, and `load_codec` for shipped or saved codecs.

A codec turns raw media into *local* integer codes and back:

- image: ``encode((B, 3, H, W) float in [0, 1]) -> (B, N) long``; ``decode`` inverts it.
- audio: ``encode((B, samples) float at sample_rate) -> (B, frames, num_codebooks) long``;
  ``decode`` inverts it; ``stream_decoder()`` decodes chunk by chunk (chunked equals whole).
- mesh: ``encode((16, 16, 16) occupancy) -> (64,) long``; ``decode`` gives bool occupancy back
  (``omniloom.codecs.mesh``).

**The codec registry.** Every codec is named by one spec string, wherever a codec is chosen
(``tokenize --codec``, ``graft --codec``, ``codec eval``, a model directory's ``codecs.json``):

- a shipped name: ``image-world``, ``audio-world``, ``mesh-world`` (``omniloom/assets/codecs/<name>/``: a
  ``config.json`` whose ``"type": "image" | "audio" | "mesh"`` picks the class, and ``model.safetensors``);
- a folder saved by omniloom (same layout);
- ``hf:PATH``: a transformers codec saved with ``save_pretrained``; the folder's ``config.json``
  ``model_type`` picks the adapter in ``HF_ADAPTERS``. Options follow a ``?``:
  ``hf:PATH?codebooks=8`` (see each adapter).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..utils.fileio import atomic_path, atomic_write_json, read_json

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "codecs"

# config.json "type" -> (module, class); imported lazily so `import omniloom.codecs` stays light.
CODEC_CLASSES: dict[str, tuple[str, str]] = {
    "image": ("omniloom.codecs.image", "ImageCodec"),
    "audio": ("omniloom.codecs.audio", "AudioCodec"),
    "mesh": ("omniloom.codecs.mesh", "MeshCodec"),
}


# transformers config.json "model_type" -> (module, class) of the adapter that wraps it
HF_ADAPTERS: dict[str, tuple[str, str]] = {}
HF_PREFIX = "hf:"


def register_hf_adapter(model_type: str, module: str, cls: str) -> None:
    """Make ``hf:PATH`` folders whose config.json says ``model_type`` load through ``module.cls``
    (a class with ``from_hf(directory, device=..., **options)``)."""
    HF_ADAPTERS[model_type] = (module, cls)


def parse_codec_spec(spec: str | Path) -> tuple[str, str, dict[str, str]]:
    """``spec`` -> (kind, target, options): kind is ``"hf"`` (target: the folder) or ``"omniloom"``
    (target: a shipped name or folder). Options come after ``?`` as ``k=v&k=v`` (hf only)."""
    s = str(spec)
    if not s.startswith(HF_PREFIX):
        return "omniloom", s, {}
    target, _, query = s[len(HF_PREFIX):].partition("?")
    if not target:
        raise ValueError(f"codec spec {s!r}: give the folder after 'hf:' (hf:PATH)")
    opts: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise ValueError(f"codec spec {s!r}: option {item!r} is not key=value")
        opts[k] = v
    return "hf", target, opts


def canonical_codec_spec(spec: str | Path) -> str:
    """The spec with any folder made absolute, for manifests and model directories."""
    kind, target, opts = parse_codec_spec(spec)
    if kind == "hf":
        query = "&".join(f"{k}={v}" for k, v in opts.items())
        return f"{HF_PREFIX}{Path(target).resolve()}" + (f"?{query}" if query else "")
    return str(Path(target).resolve()) if Path(target).exists() else target


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


def _load_hf_codec(target: str, opts: dict[str, str], device: str) -> Codec:
    directory = Path(target)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"codec hf:{target}: {cfg_path} does not exist (save the model with save_pretrained)")
    cfg = read_json(cfg_path, "transformers config")
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type not in HF_ADAPTERS:
        raise ValueError(f"codec hf:{target}: model_type {model_type!r} has no adapter "
                         f"(known: {', '.join(sorted(HF_ADAPTERS)) or 'none'})")
    module_name, class_name = HF_ADAPTERS[model_type]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"codec hf:{target} needs {module_name}, which cannot be imported: {e}") from e
    return getattr(module, class_name).from_hf(directory, device=device, **opts)


def load_codec(name_or_path: str | Path, device: str = "cpu") -> Codec:
    """Load a codec by its spec: a shipped name (``"image-world"``, ``"audio-world"``), a saved
    omniloom codec directory, or ``hf:PATH[?options]`` (a transformers codec, see ``HF_ADAPTERS``).

    An omniloom codec's class is picked by the ``type`` field of ``config.json`` and must provide
    ``from_pretrained(directory, device=...)``.
    """
    kind, target, opts = parse_codec_spec(name_or_path)
    if kind == "hf":
        _register_builtin_adapters()
        return _load_hf_codec(target, opts, device)
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
    """A model directory's ``codecs.json`` (kind -> codec spec) with folders inside the model
    directory (``"codecs/audio"``, ``"hf:codecs/mimi?codebooks=8"``) resolved against it; {} when
    it has none."""
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
    out: dict[str, str | Path] = {}
    for kind, ref in refs.items():
        spec_kind, target, opts = parse_codec_spec(ref)
        if spec_kind == "hf" and not Path(target).is_absolute() and (d / target).is_dir():
            out[kind] = canonical_codec_spec(HF_PREFIX + str(d / target) + ref[len(HF_PREFIX) + len(target):])
        else:
            out[kind] = d / ref if (d / ref).is_dir() else ref
    return out



def _register_builtin_adapters() -> None:
    """Import the modules that register the built-in transformers adapters (lazily: they import
    transformers)."""
    for module in ("omniloom.codecs.hf_audio", "omniloom.codecs.hf_image"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but a dependency is missing
                raise ValueError(f"{module} needs a package that is not installed: {e}") from e


def save_codec_folder(codec: Any, directory: str | Path, kind: str, dtype: Any = None) -> Path:
    """Write an omniloom codec (an ``nn.Module`` with ``config_dict()``) as ``config.json`` +
    ``model.safetensors`` into ``directory``, each file atomically; ``dtype=torch.float16`` halves the
    file (shipped codecs), and loading casts back to float32."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().to(dtype or v.dtype).contiguous() for k, v in codec.state_dict().items()}
    with atomic_path(directory / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "codec": kind})
    atomic_write_json(directory / "config.json", codec.config_dict())
    return directory


def load_codec_folder(cls: Any, config_cls: Any, directory: str | Path, kind: str, device: Any = "cpu") -> Any:
    """The codec ``save_codec_folder`` wrote: ``cls(config_cls.from_dict(config))`` with its weights as
    float32, in eval mode on ``device``; a folder of another codec type or with missing or mismatched
    weights is refused by name."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = read_codec_config(directory)
    if cfg["type"] != kind:
        raise ValueError(f"{directory}/config.json: type is {cfg['type']!r}, not {kind!r}")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"codec directory {directory} has no model.safetensors")
    codec = cls(config_cls.from_dict(cfg))
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = codec.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights}: weights do not match config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return codec.to(device).eval()
