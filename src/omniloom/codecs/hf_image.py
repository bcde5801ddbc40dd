"""Image codecs from transformers: the VQ-VAEs of Chameleon, Emu3 and Janus behind the image interface.

``load_codec("hf:DIR[?size=PIXELS]")`` loads a folder written by ``save_pretrained``:

- the VQ model alone (``ChameleonVQVAE``, ``Emu3VQVAE``, ``JanusVQVAE``; config.json ``model_type``
  ``chameleon_vqgan``, ``emu3_vqgan``, ``janus_vqgan``), or
- the whole model (``chameleon``, ``emu3``, ``janus``): only its ``vq_config`` and the
  ``...vqmodel.*`` tensors are read (from ``model.safetensors`` or a sharded index), never the LLM.

Each is one codebook over a square latent grid: ``encode((B, 3, R, R) in [0, 1]) -> (B, (R/f)**2)``
row-major codes, ``f = 2 ** (len(channel_multiplier) - 1)`` (16 for Chameleon and Janus, 8 for
Emu3). ``R`` defaults to the model's own size: Chameleon's config ``resolution`` (512 -> 1024
codes of 8192), Janus's ``num_patches * 16`` (384 -> 576 codes of 16384 for Janus-Pro), and 512 for
Emu3, whose VQ config names no size (4096 codes of 32768, as in the Emu3 paper). All three are
convolutional, so ``?size=PIXELS`` picks another square size that is a multiple of ``f``.

Pixels are normalised as the model's image processor does: ``preprocessor_config.json`` in the
folder when there is one (``rescale_factor``, ``image_mean``, ``image_std``), otherwise the
family's default (Chameleon: ``x * 255 * 0.0078 - 1``; Emu3 and Janus: ``2x - 1``). Emu3's VQ is
a video tokenizer: a single image is encoded as a still clip of ``temporal_downsample_factor``
frames (one latent frame) and decoded back to its first frame, as transformers does.

Chameleon can only encode: transformers' ``ChameleonVQVAE`` has no decoder (the converted
checkpoints leave its weights out), so ``decode`` raises a ValueError and ``can_decode`` is False.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .base import register_hf_adapter


@dataclass(frozen=True)
class Family:
    """What differs between the supported VQ-VAEs."""

    name: str
    vq_model_type: str  # model_type of the standalone VQ config
    model_class: str  # transformers class of the VQ model
    config_class: str  # transformers class of its config
    codebook_key: str  # config field holding the codebook size
    can_decode: bool
    pixel_scale: float  # default normalisation: model input = pixel_scale * x + pixel_offset (x in [0, 1])
    pixel_offset: float


FAMILIES: dict[str, Family] = {
    "chameleon": Family("chameleon", "chameleon_vqgan", "ChameleonVQVAE", "ChameleonVQVAEConfig",
                        "num_embeddings", False, 255 * 0.0078, -1.0),
    "emu3": Family("emu3", "emu3_vqgan", "Emu3VQVAE", "Emu3VQVAEConfig", "codebook_size", True, 2.0, -1.0),
    "janus": Family("janus", "janus_vqgan", "JanusVQVAE", "JanusVQVAEConfig", "num_embeddings", True, 2.0, -1.0),
}
# config.json model_type -> family; the full-model types carry the VQ config under "vq_config"
MODEL_TYPES: dict[str, str] = {**{f.vq_model_type: n for n, f in FAMILIES.items()}, **{n: n for n in FAMILIES}}
EMU3_DEFAULT_SIZE = 512
OPTIONS = ("size",)


def _save_vq_hint(family: Family) -> str:
    return (f"save the VQ model alone and load that folder: "
            f"`model.get_submodule('model.vqmodel').save_pretrained(DIR)` (a {family.model_class})")


def parse_size(value: str, factor: int, where: str) -> int:
    """The ``size`` option: a positive multiple of the latent grid's ``factor``, in pixels."""
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"{where}: size={value!r} is not a whole number of pixels") from None
    if size < factor or size % factor:
        lo = max(factor, size // factor * factor)
        raise ValueError(f"{where}: size={size} must be a positive multiple of {factor} (this model downsamples "
                         f"by {factor}), e.g. {lo} or {lo + factor}")
    return size


def read_pixel_affine(directory: Path, family: Family) -> tuple[list[float], list[float], str]:
    """(scale, offset) per channel so that model input = scale * x + offset for x in [0, 1], and where
    they come from: the folder's ``preprocessor_config.json`` or the family's default."""
    f = directory / "preprocessor_config.json"
    if not f.is_file():
        return [family.pixel_scale] * 3, [family.pixel_offset] * 3, f"{family.name} default"
    try:
        pp = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: cannot read ({e})") from None
    if not isinstance(pp, dict):
        raise ValueError(f"{f}: expected a JSON object")
    rescale = float(pp.get("rescale_factor", 1 / 255)) if pp.get("do_rescale", True) else 1.0
    mean, std = [0.0] * 3, [1.0] * 3
    if pp.get("do_normalize", True):
        mean, std = pp.get("image_mean", mean), pp.get("image_std", std)
        mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else mean
        std = [float(std)] * 3 if isinstance(std, (int, float)) else std
        if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3
                and all(isinstance(v, (int, float)) for v in mean + std) and all(s > 0 for s in std)):
            raise ValueError(f"{f}: image_mean and image_std must be 3 numbers each (std > 0)")
    scale = [255 * rescale / s for s in std]
    offset = [-m / s for m, s in zip(mean, std)]
    if any(s <= 0 for s in scale):
        raise ValueError(f"{f}: rescale_factor must be positive")
    return scale, offset, str(f)


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: cannot read its weight_map ({e})") from None
        return [directory / name for name in sorted(set(weight_map.values()))]
    return []


def read_vq_state(directory: Path, full_model: bool, family: Family) -> dict[str, torch.Tensor]:
    """The VQ model's tensors: every tensor of a standalone folder; of a full model only those under
    ``...vqmodel.`` (prefix removed), read tensor by tensor so the LLM is never loaded."""
    from safetensors import safe_open

    files = _weight_files(directory)
    if not files:
        hint = _save_vq_hint(family) if full_model else "save it with save_pretrained (safetensors)"
        raise ValueError(f"codec hf:{directory}: no model.safetensors or model.safetensors.index.json; {hint}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            raise ValueError(f"codec hf:{directory}: the index names {path.name}, which is missing")
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if not full_model:
                    state[key] = f.get_tensor(key)
                elif "vqmodel." in key:
                    state[key.split("vqmodel.", 1)[1]] = f.get_tensor(key)
    if not state:
        raise ValueError(f"codec hf:{directory}: the weights hold no vqmodel.* tensors; {_save_vq_hint(family)}")
    return state


class HFImageCodec(nn.Module):
    """A transformers VQ-VAE (Chameleon, Emu3, Janus) implementing the image ``Codec`` protocol."""

    modality = "image"
    num_codebooks = 1
    frame_rate = None
    sample_rate = None

    def __init__(self, vq: nn.Module, family: Family, resolution: int, scale: list[float], offset: list[float],
                 normalization: str = "") -> None:
        super().__init__()
        self.vq = vq.eval()
        self.family = family
        self.can_decode = family.can_decode
        self.downsample = 2 ** (len(vq.config.channel_multiplier) - 1)
        if resolution % self.downsample:
            raise ValueError(f"{family.name} codec: resolution {resolution} is not a multiple of {self.downsample}")
        self.resolution = int(resolution)
        self.grid = self.resolution // self.downsample
        self.codebook_size = int(getattr(vq.config, family.codebook_key))
        self.tokens_per_item = self.grid**2
        self.normalization = normalization  # where the pixel scale/offset come from
        self.register_buffer("pixel_scale", torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_offset", torch.tensor(offset, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_scale.device

    @property
    def bits_per_image(self) -> float:
        return self.tokens_per_item * math.log2(self.codebook_size)

    @classmethod
    def from_hf(cls, directory: str | Path, device: str | torch.device = "cpu", **options: str) -> "HFImageCodec":
        """Load a ``save_pretrained`` folder (the VQ model alone or the whole model); ``size=PIXELS``
        picks the square image size (default: the model's own)."""
        import transformers

        directory = Path(directory)
        where = f"codec hf:{directory}"
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
        cfg_path = directory / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{where}: cannot read {cfg_path} ({e})") from None
        model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
        if model_type not in MODEL_TYPES:
            raise ValueError(f"{where}: model_type {model_type!r} is not an image VQ model "
                             f"(known: {', '.join(sorted(MODEL_TYPES))})")
        family = FAMILIES[MODEL_TYPES[model_type]]
        full_model = model_type != family.vq_model_type
        vq_dict = cfg.get("vq_config") if full_model else cfg
        if not isinstance(vq_dict, dict):
            raise ValueError(f"{where}: a full {model_type} config without a vq_config; {_save_vq_hint(family)}")
        vq_dict = {k: v for k, v in vq_dict.items() if k not in ("architectures", "transformers_version")}
        config = getattr(transformers, family.config_class).from_dict(vq_dict)
        factor = 2 ** (len(config.channel_multiplier) - 1)
        size = parse_size(options["size"], factor, where) if "size" in options else None
        if family.name == "chameleon":
            size = size or int(config.resolution)
        elif family.name == "janus":
            size = size or int(config.num_patches) * factor
            config.num_patches = size // factor  # the decoder reads codes as a num_patches^2 grid
        else:
            size = size or EMU3_DEFAULT_SIZE
        vq = getattr(transformers, family.model_class)(config).float()
        state = read_vq_state(directory, full_model, family)
        missing, unexpected = vq.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{where}: the weights do not fit its config (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
        scale, offset, source = read_pixel_affine(directory, family)
        return cls(vq, family, size, scale, offset, source).to(device).eval()

    # ---- the image codec interface ----------------------------------------------------------

    def _check_images(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.family.name} codec: expected a torch.Tensor of images, got {type(x).__name__}")
        r = self.resolution
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != r or x.shape[3] != r:
            raise ValueError(f"{self.family.name} codec: expected images of shape (B, 3, {r}, {r}), got {tuple(x.shape)}")
        return x.to(self.device, torch.float32).clamp(0, 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) float in [0, 1] -> (B, N) long codes in [0, codebook_size), row-major."""
        x = self._check_images(x)
        b = x.shape[0]
        pixels = x * self.pixel_scale + self.pixel_offset
        if self.family.name == "emu3":
            sizes = torch.tensor([[self.resolution, self.resolution]] * b)
            tokens = torch.stack(list(self.vq.encode(pixels, image_sizes=sizes, return_dict=True).image_tokens))
        else:
            tokens = self.vq.encode(pixels, return_dict=True).image_tokens
        return tokens.reshape(b, self.tokens_per_item).long()

    @torch.no_grad()
    def decode(self, codes: Any) -> torch.Tensor:
        """(B, N) long codes -> (B, 3, R, R) float in [0, 1]."""
        if not self.can_decode:
            raise ValueError(f"{self.family.name} codec: transformers' {self.family.model_class} has no decoder "
                             "(its converted checkpoints leave the decoder weights out), so its codes cannot be "
                             "turned back into pixels; use it for image input, and a codec that decodes "
                             "(emu3, janus) for image answers")
        codes = torch.as_tensor(codes, device=self.device)
        if codes.ndim == 1:
            codes = codes[None]
        n = self.tokens_per_item
        if codes.ndim != 2 or codes.shape[1] != n:
            raise ValueError(f"{self.family.name} codec: expected codes of shape (B, {n}), got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise ValueError(f"{self.family.name} codec: codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"{self.family.name} codec: codes must lie in [0, {self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        codes = codes.long()
        if self.family.name == "emu3":
            pixels = self.vq.decode(codes.view(-1, self.grid, self.grid))
        else:
            pixels = self.vq.decode(codes)
        return ((pixels.float() - self.pixel_offset) / self.pixel_scale).clamp(0, 1)


for _model_type in MODEL_TYPES:
    register_hf_adapter(_model_type, __name__, "HFImageCodec")
