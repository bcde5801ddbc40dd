"""Image codec: a small convolutional autoencoder with finite scalar quantization (FSQ).

``encode((B, 3, H, W) float in [0, 1]) -> (B, N) long`` with ``N = (H / downsample) ** 2`` codes in
row-major latent order, each in ``[0, prod(levels))``; ``decode`` maps codes back to pixels.
The quantizer is ``FSQ`` from vector-quantize-pytorch (no codebook to learn, no collapse).

Named configs (``IMAGE_CODEC_CONFIGS``): ``world`` (64x64, 8x down -> 64 codes of 1000) for the
bundled shapes world, ``photo-256`` (256x256, 16x down -> 256 codes of 15360) for real photos.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # annotations only: numpy is imported where it is used
    import numpy as np


@dataclass
class ImageCodecConfig:
    """Shape of an image codec. ``channels[i]`` is the width at resolution ``resolution / 2**i``."""

    resolution: int = 64
    downsample: int = 8
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    channels: list[int] = field(default_factory=lambda: [24, 48, 96, 128])
    res_blocks: list[int] = field(default_factory=lambda: [0, 0, 1, 2])  # per resolution, encoder and decoder
    # per resolution, the decoder's residual blocks when it differs from the encoder's (None: ``res_blocks``);
    # a decoder may grow after training without changing a code (``ImageCodec.with_decoder_res_blocks``)
    decoder_res_blocks: list[int] | None = None

    def __post_init__(self) -> None:
        n_down = int(round(math.log2(self.downsample))) if self.downsample > 0 else -1
        if self.downsample < 1 or 2**n_down != self.downsample:
            raise ValueError(f"image codec: downsample must be a power of two, got {self.downsample}")
        if self.resolution % self.downsample:
            raise ValueError(f"image codec: resolution {self.resolution} is not divisible by downsample {self.downsample}")
        if len(self.channels) != n_down + 1 or len(self.res_blocks) != n_down + 1:
            raise ValueError(
                f"image codec: channels and res_blocks need {n_down + 1} entries for downsample {self.downsample}, "
                f"got {len(self.channels)} and {len(self.res_blocks)}"
            )
        if self.decoder_res_blocks is not None and (
            len(self.decoder_res_blocks) != n_down + 1 or any(int(n) < 0 for n in self.decoder_res_blocks)
        ):
            raise ValueError(
                f"image codec: decoder_res_blocks needs {n_down + 1} counts >= 0 for downsample {self.downsample}, "
                f"got {self.decoder_res_blocks}"
            )
        if not self.levels or any(int(l) < 3 for l in self.levels):
            raise ValueError(f"image codec: FSQ levels must all be >= 3, got {self.levels}")

    @property
    def dec_res_blocks(self) -> list[int]:
        """Residual blocks per resolution in the decoder."""
        return list(self.res_blocks if self.decoder_res_blocks is None else self.decoder_res_blocks)

    def to_dict(self) -> dict:
        """The config as JSON-ready values; ``decoder_res_blocks`` only when set (older configs stay byte-identical)."""
        d = asdict(self)
        if d["decoder_res_blocks"] is None:
            del d["decoder_res_blocks"]
        return d

    @property
    def codebook_size(self) -> int:
        return int(math.prod(self.levels))

    @property
    def grid(self) -> int:
        return self.resolution // self.downsample

    @property
    def tokens_per_image(self) -> int:
        return self.grid**2

    @property
    def bits_per_image(self) -> float:
        return self.tokens_per_image * math.log2(self.codebook_size)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageCodecConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"type"}
        if unknown:
            raise ValueError(f"image codec config: unknown keys {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})


IMAGE_CODEC_CONFIGS: dict[str, ImageCodecConfig] = {
    "world": ImageCodecConfig(),
    "tiny": ImageCodecConfig(resolution=32, downsample=4, levels=[5, 5, 5], channels=[8, 16, 16], res_blocks=[0, 0, 1]),
    "photo-256": ImageCodecConfig(
        resolution=256, downsample=16, levels=[8, 8, 8, 6, 5],
        channels=[32, 64, 128, 192, 256], res_blocks=[0, 1, 1, 2, 2],
    ),
}


def image_codec_config(name: str) -> ImageCodecConfig:
    """A fresh copy of a named config."""
    if name not in IMAGE_CODEC_CONFIGS:
        raise ValueError(f"unknown image codec config {name!r} (known: {sorted(IMAGE_CODEC_CONFIGS)})")
    return ImageCodecConfig.from_dict(asdict(IMAGE_CODEC_CONFIGS[name]))


def resize_crop(img: "np.ndarray", resolution: int) -> "np.ndarray":
    """(H, W, 3) uint8 -> (3, R, R) float32 in [0, 1]: shorter side to R (bicubic), center crop."""
    import numpy as np
    from PIL import Image

    from ..utils.media import fit_square

    im = fit_square(Image.fromarray(img, "RGB"), resolution)
    return (np.asarray(im, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()  # (3, R, R)


def load_image_file(path: str | Path, resolution: int) -> "np.ndarray":
    """Read an image file, resize its shorter side to ``resolution``, center-crop -> (3, R, R) float32 in [0, 1]."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    return resize_crop(arr, resolution)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: ImageCodecConfig) -> None:
        super().__init__()
        ch, nres = cfg.channels, cfg.res_blocks
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i in range(len(ch)):
            blocks += [ResBlock(ch[i]) for _ in range(nres[i])]
            if i + 1 < len(ch):
                blocks += [nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1)]
        self.blocks = nn.Sequential(*blocks)
        self.conv_out = nn.Conv2d(ch[-1], len(cfg.levels), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, d, h, w)
        return self.conv_out(F.silu(self.blocks(self.conv_in(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: ImageCodecConfig) -> None:
        super().__init__()
        ch, nres = cfg.channels, cfg.dec_res_blocks
        self.conv_in = nn.Conv2d(len(cfg.levels), ch[-1], 3, padding=1)
        blocks: list[nn.Module] = []
        for i in reversed(range(len(ch))):
            blocks += [ResBlock(ch[i]) for _ in range(nres[i])]
            if i > 0:
                blocks += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[i], ch[i - 1], 3, padding=1)]
        self.blocks = nn.Sequential(*blocks)
        self.conv_out = nn.Conv2d(ch[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, d, h, w) -> (B, 3, H, W)
        return self.conv_out(F.silu(self.blocks(self.conv_in(z))))


class ImageCodec(nn.Module):
    """FSQ image autoencoder implementing the ``Codec`` protocol (modality ``"image"``)."""

    modality = "image"
    num_codebooks = 1
    frame_rate = None
    sample_rate = None

    def __init__(self, cfg: ImageCodecConfig | None = None) -> None:
        super().__init__()
        from vector_quantize_pytorch import FSQ

        self.cfg = cfg or ImageCodecConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.fsq = FSQ(levels=list(self.cfg.levels), dim=len(self.cfg.levels))
        self.codebook_size = self.cfg.codebook_size
        self.tokens_per_item = self.cfg.tokens_per_image
        self.resolution = self.cfg.resolution

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    def _check_images(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"image codec: expected a torch.Tensor of images, got {type(x).__name__}")
        r = self.cfg.resolution
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != r or x.shape[3] != r:
            raise ValueError(f"image codec: expected images of shape (B, 3, {r}, {r}), got {tuple(x.shape)}")
        return x.to(self.device, torch.float32)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] -> (quantized latents (B, d, h, w), indices (B, N) long); differentiable."""
        z = self.encoder(x * 2 - 1)  # (B, d, h, w)
        b, d, h, w = z.shape
        zq, idx = self.fsq(z.permute(0, 2, 3, 1).reshape(b, h * w, d))  # (B, N, d), (B, N)
        return zq.reshape(b, h, w, d).permute(0, 3, 1, 2), idx.long()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: images (B, 3, H, W) in [0, 1] -> (reconstruction (B, 3, H, W), unclamped; codes (B, N))."""
        zq, idx = self.quantize(x)
        return (self.decoder(zq) + 1) / 2, idx

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, N) long codes in [0, codebook_size)."""
        x = self._check_images(x).clamp(0, 1)
        return self.quantize(x)[1]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N) long codes -> (B, 3, H, W) float in [0, 1]."""
        codes = torch.as_tensor(codes, device=self.device)
        if codes.ndim == 1:
            codes = codes[None]
        n = self.cfg.tokens_per_image
        if codes.ndim != 2 or codes.shape[1] != n:
            raise ValueError(f"image codec: expected codes of shape (B, {n}), got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise ValueError(f"image codec: codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"image codec: codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        g = self.cfg.grid
        zq = self.fsq.indices_to_codes(codes.long())  # (B, N, d)
        zq = zq.reshape(codes.shape[0], g, g, -1).permute(0, 3, 1, 2)  # (B, d, h, w)
        return ((self.decoder(zq) + 1) / 2).clamp(0, 1)

    # ---- persistence -------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return {"type": "image", **self.cfg.to_dict()}

    def with_decoder_res_blocks(self, res_blocks: list[int]) -> "ImageCodec":
        """A copy of this codec whose decoder has ``res_blocks[i]`` residual blocks at resolution level ``i``.

        Counts may only grow. The encoder, the quantizer and every existing decoder layer are copied;
        each added block sits after the existing ones at its level and starts as the identity (its
        last convolution is zero), so the copy decodes exactly as this codec does until it is trained.
        """
        old_n, new_n = self.cfg.dec_res_blocks, [int(n) for n in res_blocks]
        if len(new_n) != len(old_n) or any(n < o for n, o in zip(new_n, old_n)):
            raise ValueError(
                f"image codec: the decoder's residual blocks can only grow, level by level: have {old_n}, asked {new_n}"
            )
        cfg = ImageCodecConfig.from_dict({**asdict(self.cfg), "decoder_res_blocks": new_n})
        grown = ImageCodec(cfg).to(self.device)

        def layout(counts: list[int]) -> list[tuple]:  # one tag per entry of Decoder.blocks, in order
            tags: list[tuple] = []
            for i in reversed(range(len(counts))):
                tags += [("res", i, k) for k in range(counts[i])]
                if i > 0:
                    tags += [("up", i), ("conv", i)]
            return tags

        where = {tag: j for j, tag in enumerate(layout(new_n))}
        index = {j: where[tag] for j, tag in enumerate(layout(old_n))}
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith("decoder.blocks."):
                j, rest = key[len("decoder.blocks."):].split(".", 1)
                key = f"decoder.blocks.{index[int(j)]}.{rest}"
            state[key] = value
        missing, unexpected = grown.load_state_dict(state, strict=False)
        added = {f"decoder.blocks.{where[t]}." for t in layout(new_n) if t[0] == "res" and t[2] >= old_n[t[1]]}
        if unexpected or any(not any(m.startswith(a) for a in added) for m in missing):
            raise RuntimeError(f"image codec: growing the decoder lost weights (missing {missing}, unexpected {unexpected})")
        return grown.train(self.training)

    def save(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (each file atomically);
        ``dtype=torch.float16`` halves the file (shipped codecs); loading casts back to float32."""
        from .base import save_codec_folder

        return save_codec_folder(self, directory, "image", dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ImageCodec":
        """Load a codec written by ``save`` (or a shipped one, by folder); eval mode, float32."""
        from .base import load_codec_folder

        return load_codec_folder(cls, ImageCodecConfig, directory, "image", device)
