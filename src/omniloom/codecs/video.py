"""Video as timed frames through the image codec.

A clip is sampled at a fixed rate (the world: 8 frames at 4 fps, ``t = 0, 0.25, ..., 1.75 s``) and
every frame is encoded on its own by the image codec: ``encode((F, 3, H, W)) -> (F, N) long``.
Frames come from a real video file (decoded with PyAV) or from a list of image files (taken as
consecutive frames already at ``fps``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .image import ImageCodec, load_image_file, resize_crop

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".gif")


def read_video_frames(path: str | Path, fps: float, max_frames: int, resolution: int) -> torch.Tensor:
    """Decode a video file with PyAV and sample frames at ``fps`` from t=0 -> (F, 3, R, R) float in [0, 1].

    For each sample time the frame shown at that time (the last frame starting at or before it)
    is taken; sampling stops at the end of the clip or after ``max_frames`` frames.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video file {path} does not exist")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:  # type: ignore[attr-defined]
        raise ValueError(f"cannot open video {path}: {e}") from e
    times: list[float] = []
    imgs: list[np.ndarray] = []
    last_t = (max_frames - 1) / fps  # no frame after this time is needed
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else fps
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(times) / rate
                times.append(t)
                imgs.append(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
                if t - times[0] > last_t + 1e-6:
                    break
        except av.FFmpegError as e:  # type: ignore[attr-defined]
            raise ValueError(f"cannot decode video {path}: {e}") from e
    out: list[np.ndarray] = []
    if times:
        t_rel = np.asarray(times) - times[0]
        end = t_rel[-1] + 1.0 / rate  # the last frame shows until then
        for k in range(max_frames):
            tk = k / fps
            if tk >= end - 1e-6:
                break
            j = int(np.searchsorted(t_rel, tk + 1e-6, side="right")) - 1  # last frame starting at or before tk
            out.append(resize_crop(imgs[max(j, 0)], resolution))
    if not out:
        raise ValueError(f"no frames could be decoded from {path}")
    return torch.from_numpy(np.stack(out))


def write_video(frames: torch.Tensor | np.ndarray, path: str | Path, fps: float = 4.0) -> Path:
    """Write frames (F, 3, H, W) float in [0, 1] to an MP4 (MPEG-4 part 2, widely playable)."""
    import av

    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"write_video: expected frames (F, 3, H, W), got {arr.shape}")
    imgs = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)  # (F, H, W, 3)
    path = Path(path)
    from fractions import Fraction

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = imgs.shape[2], imgs.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for img in imgs:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


class VideoCodec:
    """Frames at a fixed ``fps`` through an image codec: ``encode((F, 3, H, W)) -> (F, N) long``."""

    modality = "video"
    num_codebooks = 1
    sample_rate = None

    def __init__(self, image_codec: ImageCodec, fps: float = 4.0, max_frames: int = 8) -> None:
        if fps <= 0 or max_frames < 1:
            raise ValueError(f"VideoCodec: fps must be > 0 and max_frames >= 1, got {fps} and {max_frames}")
        self.image_codec = image_codec
        self.fps = float(fps)
        self.max_frames = int(max_frames)
        self.codebook_size = image_codec.codebook_size
        self.tokens_per_item = image_codec.tokens_per_item  # codes per frame
        self.frame_rate = self.fps
        self.resolution = image_codec.resolution

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(F, 3, H, W) float in [0, 1] -> (F, N) long codes (F <= max_frames)."""
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4:
            shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
            raise ValueError(f"video codec: expected frames of shape (F, 3, H, W), got {shape}")
        if frames.shape[0] > self.max_frames:
            raise ValueError(f"video codec: {frames.shape[0]} frames, at most {self.max_frames} allowed")
        return self.image_codec.encode(frames)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(F, N) long codes -> (F, 3, H, W) float in [0, 1]."""
        return self.image_codec.decode(codes)

    def load_frames(self, source: str | Path | Sequence[str | Path]) -> torch.Tensor:
        """A video file (sampled at ``fps``) or a list of image files (consecutive frames) -> (F, 3, R, R).

        At most ``max_frames`` frames are kept (the first ones).
        """
        if isinstance(source, (str, Path)):
            p = Path(source)
            if p.suffix.lower() not in VIDEO_SUFFIXES and p.suffix.lower() in (".png", ".jpg", ".jpeg"):
                return self.load_frames([p])
            return read_video_frames(p, self.fps, self.max_frames, self.resolution)
        paths = list(source)
        if not paths:
            raise ValueError("video codec: empty list of frame images")
        for p in paths:
            if not Path(p).is_file():
                raise ValueError(f"video frame image {p} does not exist")
        return torch.from_numpy(np.stack([load_image_file(p, self.resolution) for p in paths[: self.max_frames]]))

    def encode_file(self, source: str | Path | Sequence[str | Path]) -> torch.Tensor:
        """A video file or a list of frame images -> (F, N) long codes."""
        return self.encode(self.load_frames(source))

    def to_part(self, codes: torch.Tensor) -> dict:
        """(F, N) codes -> a ``video_codes`` message part for ``tokens.template`` (frames timed at ``fps``)."""
        return {"type": "video_codes", "frames": [[int(c) for c in row] for row in codes], "fps": self.fps}
