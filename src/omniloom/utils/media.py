"""Media loading and writing: images, audio, data URLs (Pillow, soundfile and soxr, imported lazily).

Sources may be a file path, raw bytes, a ``data:`` URL, or an in-memory array/tensor.

- images -> ``(3, H, W)`` float32 tensors in [0, 1] (optionally resized: shorter side, center crop)
- audio -> ``(samples,)`` float32 mono tensors at the requested sample rate (resampled with soxr)
"""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "parse_data_url",
    "to_data_url",
    "read_source_bytes",
    "load_image",
    "load_audio",
    "fit_square",
    "image_to_png_bytes",
    "audio_to_wav_bytes",
]


def parse_data_url(url: str) -> tuple[str, bytes]:
    """``data:<mime>;base64,<data>`` -> (mime, bytes). ValueError if malformed."""
    if not url.startswith("data:") or "," not in url:
        raise ValueError(f"not a data URL: {url[:40]!r}")
    header, data = url[5:].split(",", 1)
    mime = header.split(";")[0] or "text/plain"
    if ";base64" in header:
        try:
            return mime, base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"data URL ({mime}) holds invalid base64: {e}") from e
    from urllib.parse import unquote_to_bytes

    return mime, unquote_to_bytes(data)


def to_data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def read_source_bytes(src: str | Path | bytes, base_dir: str | Path | None = None, what: str = "media") -> bytes:
    """Bytes of a data URL, a ``file://`` URL, a path (relative to ``base_dir``) or bytes."""
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    s = str(src)
    if s.startswith("data:"):
        return parse_data_url(s)[1]
    if s.startswith(("http://", "https://")):
        raise ValueError(f"{what} URL {s[:60]!r}: remote URLs are not fetched; give a file path or a data URL")
    if s.startswith("file://"):
        s = s[7:]
    p = Path(s)
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    if not p.is_file():
        raise ValueError(f"{what} file {p} does not exist")
    return p.read_bytes()


FIT_MAX_ASPECT = 4  # fit_square center-crops longer strips to this aspect before resizing


def fit_square(im: Any, resolution: int) -> Any:
    """PIL image -> resolution x resolution: shorter side to ``resolution`` (bicubic), center crop.

    Images longer than 4:1 are center-cropped to 4:1 first (the final square lies inside that crop),
    so the resized image never holds more than 4 x resolution^2 pixels whatever the input's shape.
    """
    from PIL import Image

    w, h = im.size
    if (w, h) == (resolution, resolution):
        return im
    if max(w, h) > FIT_MAX_ASPECT * min(w, h):  # a 1 x 16M strip would grow to 64 x 1G pixels: cut it first
        long = FIT_MAX_ASPECT * min(w, h)
        left, top = (w - min(w, long)) // 2, (h - min(h, long)) // 2
        im = im.crop((left, top, left + min(w, long), top + min(h, long)))
        w, h = im.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))


def load_image(src: Any, resolution: int | None = None, base_dir: str | Path | None = None) -> torch.Tensor:
    """An image (path, bytes, data URL, PIL image, (H, W, 3) uint8 array or (3, H, W) tensor) -> (3, H, W) in [0, 1]."""
    from PIL import Image

    if isinstance(src, torch.Tensor):
        x = src.detach().float()
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"image tensor must have shape (3, H, W), got {tuple(x.shape)}")
        if resolution is None or tuple(x.shape[1:]) == (resolution, resolution):
            return x.clamp(0, 1)
        src = Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    if isinstance(src, np.ndarray):
        if src.ndim != 3 or src.shape[2] not in (3, 4):
            raise ValueError(f"image array must have shape (H, W, 3), got {src.shape}")
        arr = src[..., :3]
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        src = Image.fromarray(arr)
    if isinstance(src, Image.Image):
        im = src.convert("RGB")
    else:
        data = read_source_bytes(src, base_dir, "image")
        try:
            with Image.open(io.BytesIO(data)) as opened:
                im = opened.convert("RGB")
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {str(src)[:60]!r}: {e}") from e
    if resolution is not None:
        im = fit_square(im, resolution)
    arr = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())  # (3, H, W)


def decode_audio_av(data: bytes) -> tuple[np.ndarray, int]:
    """Encoded audio bytes -> (mono float32 samples, rate), through PyAV (FFmpeg)."""
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        parts = [f.to_ndarray().reshape(-1) for frame in container.decode(stream) for f in resampler.resample(frame)]
        parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        rate = stream.rate
    if not parts:
        raise ValueError("the audio stream has no samples")
    return np.concatenate(parts).astype(np.float32), rate


def load_audio(src: Any, sample_rate: int, base_dir: str | Path | None = None,
               source_rate: int | None = None) -> torch.Tensor:
    """Audio (path, bytes, data URL, or an array/tensor at ``source_rate``) -> mono (samples,) float32 at ``sample_rate``."""
    if isinstance(src, (np.ndarray, torch.Tensor)):
        x = src.detach().cpu().numpy() if isinstance(src, torch.Tensor) else src
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2:  # (samples, channels)
            x = x.mean(axis=1)
        if x.ndim != 1:
            raise ValueError(f"audio array must have shape (samples,) or (samples, channels), got {x.shape}")
        sr = source_rate or sample_rate
    else:
        import soundfile as sf

        data = read_source_bytes(src, base_dir, "audio")
        try:
            x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (N, C)
            x = x.mean(axis=1)
        except Exception as e:  # soundfile raises its own error types
            try:  # what libsndfile cannot read (m4a/mp4 AAC, WebM, MPEG audio in other boxes): FFmpeg's decoders
                x, sr = decode_audio_av(data)
            except Exception as e2:  # noqa: BLE001 - both readers' reasons go to the user
                raise ValueError(f"cannot read audio {str(src)[:60]!r}: {e}; FFmpeg: {e2}") from e
    if sr != sample_rate:
        import soxr

        x = soxr.resample(x, sr, sample_rate)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def image_to_png_bytes(img: torch.Tensor | np.ndarray) -> bytes:
    """(3, H, W) float in [0, 1] (tensor or array) -> PNG bytes."""
    x = img.detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {x.shape}")
    return rgb_to_png_bytes((np.clip(x, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8))


def rgb_to_png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 pixels -> PNG bytes (deterministic: the same pixels give the same bytes)."""
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"pixels must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def audio_to_wav_bytes(wav: torch.Tensor | np.ndarray, sample_rate: int) -> bytes:
    """(samples,) float in [-1, 1] -> 16-bit PCM WAV bytes."""
    import soundfile as sf

    x = wav.detach().cpu().float().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.clip(x.reshape(-1), -1, 1), sample_rate, subtype="PCM_16", format="WAV")
    return buf.getvalue()
