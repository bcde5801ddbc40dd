"""Wire formats of the API: base64 pcm16 at 24 kHz, wav/flac/mp3 files, PNG data URLs, input checks.

The codecs speak float32 at 16 kHz; the OpenAI API speaks pcm16 at 24 kHz. Resampling is soxr's
(streaming resamplers keep chunk boundaries seamless).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from ..utils.media import decode_audio_av, parse_data_url, to_data_url
from .errors import bad_request

__all__ = ["API_RATE", "Resampler", "pcm16_bytes", "pcm16_to_float", "encode_audio", "png_data_url",
           "check_image_bytes", "check_image_url", "audio_seconds", "check_duration", "b64decode", "AUDIO_MIME",
           "TempFiles"]

API_RATE = 24000  # the OpenAI API's pcm16 rate
AUDIO_MIME = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "pcm": "audio/pcm",
              "pcm16": "audio/pcm"}


class TempFiles:
    """Temp files owned by one request. ``write(data, suffix)`` makes one; ``close()`` removes them all.

    ``close()`` is idempotent and runs on every path: a refused request (400/429), a job cancelled
    before a worker took it, a finished or failed job (the scheduler calls it when the job ends).
    """

    def __init__(self) -> None:
        self.paths: list[str] = []

    def write(self, data: bytes, suffix: str) -> str:
        import os
        import tempfile

        fd, path = tempfile.mkstemp(prefix="omniloom-", suffix=suffix)
        self.paths.append(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    def close(self) -> None:
        import os

        while self.paths:
            try:
                os.unlink(self.paths.pop())
            except OSError:
                pass

    def __enter__(self) -> "TempFiles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Resampler:
    """Chunked float32 resampling (soxr.ResampleStream); ``push(x)`` then ``flush()``."""

    def __init__(self, src: int, dst: int):
        import soxr

        self.same = src == dst
        self._rs = None if self.same else soxr.ResampleStream(src, dst, 1, dtype="float32")

    def push(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.same:
            return x
        return self._rs.resample_chunk(x, last=last)

    def flush(self) -> np.ndarray:
        return self.push(np.zeros(0, dtype=np.float32), last=True)


def pcm16_bytes(x: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian int16 bytes."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def pcm16_to_float(data: bytes) -> np.ndarray:
    if len(data) % 2:
        data = data[:-1]
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def b64decode(data: str, what: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise bad_request(f"{what} is not valid base64 ({e})", what) from None


def encode_audio(pcm: np.ndarray, rate: int, fmt: str) -> bytes:
    """float32 mono -> bytes of ``fmt`` (wav, flac, mp3: 16-bit files; pcm/pcm16: raw int16)."""
    if fmt in ("pcm", "pcm16"):
        return pcm16_bytes(pcm)
    import soundfile as sf

    kind = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III")}.get(fmt)
    if kind is None:
        raise bad_request(f"audio format {fmt!r} is not supported (wav, flac, mp3, pcm16)", "format")
    buf = io.BytesIO()
    sf.write(buf, np.clip(pcm, -1, 1), rate, format=kind[0], subtype=kind[1])
    return buf.getvalue()


def _wav_truncation(data: bytes) -> str | None:
    """Why a RIFF/WAVE file's ``data`` chunk is cut short, or None (streaming sizes 0 / 0xFFFFFFFF pass)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if cid == b"data":
            have = len(data) - pos - 8
            if size not in (0, 0xFFFFFFFF) and size > have:
                return f"WAV header promises {size} bytes of samples but only {have} follow (truncated or garbled)"
            return None
        pos += 8 + size + (size & 1)
    return None


def check_duration(samples: int, rate: int, what: str, min_seconds: float = 0.0,
                   max_seconds: float = float("inf")) -> float:
    """Seconds of ``samples`` at ``rate``; a 400 when there are none, fewer than ``min_seconds`` (the
    codec's frame) or more than ``max_seconds``."""
    if samples <= 0:
        raise bad_request(f"{what}: the audio has no samples", what, "audio_too_short")
    secs = samples / rate
    if secs < min_seconds:
        raise bad_request(f"{what}: {1000 * secs:.1f} ms of audio is shorter than the codec's frame of "
                          f"{1000 * min_seconds:.0f} ms", what, "audio_too_short")
    if secs > max_seconds:
        raise bad_request(f"{what}: {secs:.1f} s of audio exceeds the limit of {max_seconds:g} s", what,
                          "audio_too_long")
    return secs


def audio_seconds(data: bytes, what: str, min_seconds: float = 0.0, max_seconds: float = float("inf")) -> float:
    """Duration of an encoded audio file (wav, flac, mp3, ogg by libsndfile; m4a, mp4, webm and the
    rest by FFmpeg); a 400 naming the problem when it is unreadable, truncated, or out of bounds
    (:func:`check_duration`)."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:  # soundfile raises its own error types
        try:  # decoded whole: container durations are often absent (a browser's WebM) or untrue
            samples, rate = decode_audio_av(data)
        except Exception as e2:  # noqa: BLE001 - both readers' reasons go to the client
            raise bad_request(f"{what}: cannot read audio ({e}; FFmpeg: {e2})", what, "invalid_audio") from None
        return check_duration(len(samples), rate, what, min_seconds, max_seconds)
    if not info.samplerate:
        raise bad_request(f"{what}: audio has no sample rate", what, "invalid_audio")
    cut = _wav_truncation(data)
    if cut:
        raise bad_request(f"{what}: {cut}", what, "invalid_audio")
    return check_duration(info.frames, info.samplerate, what, min_seconds, max_seconds)


def check_image_bytes(data: bytes, max_pixels: int, what: str, max_aspect: float = 32.0) -> tuple[int, int]:
    """(width, height) of an encoded image; 400 if unreadable, over ``max_pixels`` or longer than
    ``max_aspect`` : 1 (checked from the header, before anything is decoded or resized)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise bad_request(f"{what}: cannot read image ({e})", what) from None
    if w < 1 or h < 1:
        raise bad_request(f"{what}: image of {w}x{h} pixels is empty", what, "invalid_image")
    if w * h > max_pixels:
        raise bad_request(f"{what}: image of {w}x{h} pixels exceeds the limit of {max_pixels} pixels", what,
                          "image_too_large")
    if max(w, h) > max_aspect * min(w, h):
        raise bad_request(f"{what}: image of {w}x{h} pixels is longer than the limit of {max_aspect:g}:1", what,
                          "image_aspect_ratio")
    return w, h


def check_image_url(url: str, max_pixels: int, what: str, max_aspect: float = 32.0) -> bytes:
    """Bytes of a ``data:image/...`` URL (remote URLs and paths are refused), size-checked."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise bad_request(f"{what}: only data URLs (data:image/png;base64,...) are accepted", what,
                          "invalid_image_url")
    try:
        _, data = parse_data_url(url)
    except ValueError as e:
        raise bad_request(f"{what}: {e}", what, "invalid_image_url") from None
    check_image_bytes(data, max_pixels, what, max_aspect)
    return data


def png_data_url(image: np.ndarray) -> str:
    """(H, W, 3) uint8 -> ``data:image/png;base64,...``."""
    from ..utils.media import rgb_to_png_bytes

    return to_data_url(rgb_to_png_bytes(image), "image/png")
