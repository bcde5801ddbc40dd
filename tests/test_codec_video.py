"""Video through the image codec: frames from image files and from an MP4 written with PyAV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omniloom.codecs.image import ImageCodec, image_codec_config
from omniloom.codecs.video import VideoCodec, read_video_frames, write_video


@pytest.fixture
def video_codec() -> VideoCodec:
    torch.manual_seed(0)
    return VideoCodec(ImageCodec(image_codec_config("tiny")).eval(), fps=4, max_frames=8)


def _frames(n: int, size: int = 32) -> torch.Tensor:
    """A white square moving right one step per frame -> (n, 3, size, size)."""
    f = torch.zeros(n, 3, size, size)
    for i in range(n):
        f[i, :, 10:18, 2 + 2 * i: 10 + 2 * i] = 1.0
    return f


def test_encode_decode_shapes(video_codec):
    frames = _frames(8)
    codes = video_codec.encode(frames)
    assert codes.shape == (8, 64) and codes.dtype == torch.long
    assert int(codes.max()) < video_codec.codebook_size
    assert video_codec.decode(codes).shape == frames.shape
    # each frame goes through the image codec on its own
    assert torch.equal(codes[3], video_codec.image_codec.encode(frames[3:4])[0])
    part = video_codec.to_part(codes)
    assert part["type"] == "video_codes" and part["fps"] == 4.0 and len(part["frames"]) == 8


def test_too_many_frames_is_a_clear_error(video_codec):
    with pytest.raises(ValueError, match="9 frames, at most 8"):
        video_codec.encode(_frames(9))


def test_frames_from_image_files(video_codec, tmp_path):
    frames = _frames(10)
    paths = []
    for i, f in enumerate(frames):
        p = tmp_path / f"f{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray((f.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(p)
        paths.append(p)
    loaded = video_codec.load_frames(paths)
    assert loaded.shape == (8, 3, 32, 32)  # the first max_frames frames
    png = loaded[1::2]
    assert torch.allclose(png, frames[1:8:2], atol=1 / 255)  # PNG frames are lossless
    assert video_codec.encode_file(paths).shape == (8, 64)
    with pytest.raises(ValueError, match="does not exist"):
        video_codec.load_frames([tmp_path / "missing.png"])


def test_frames_from_mp4_sampled_at_fps(video_codec, tmp_path):
    # 16 frames at 8 fps (2 s), frame i has brightness i/16: sampling at 4 fps keeps frames 0, 2, 4, ...
    src = torch.zeros(16, 3, 64, 64)
    for i in range(16):
        src[i] = i / 16
    path = write_video(src, tmp_path / "clip.mp4", fps=8)
    frames = read_video_frames(path, fps=4, max_frames=8, resolution=32)
    assert frames.shape == (8, 3, 32, 32)
    levels = frames.mean(dim=(1, 2, 3)) * 16
    assert torch.allclose(levels, torch.arange(0, 16, 2).float(), atol=0.5)
    # a short clip gives fewer frames: 3 frames at 8 fps last 0.375 s -> samples at 0 and 0.25 s
    short = write_video(src[:3], tmp_path / "short.mp4", fps=8)
    assert read_video_frames(short, fps=4, max_frames=8, resolution=32).shape[0] == 2
    codes = video_codec.encode_file(path)
    assert codes.shape == (8, 64)


def test_missing_or_bad_video_is_a_clear_error(video_codec, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        video_codec.load_frames(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="bad.mp4"):
        video_codec.load_frames(bad)
