"""Render shapes-world scenes and videos to 64x64 RGB uint8 arrays.

Drawing is supersampled (4x) with Pillow and downsampled with a box filter, which gives
anti-aliased edges. Each render varies: position jitter inside the cell, a slight per-object
color shift and faint per-pixel noise, all drawn from the caller's `rng`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .scene import COLORS, DIRECTIONS, SIZES, Object, Scene

IMAGE_SIZE = 64
CELL_PX = IMAGE_SIZE / 3  # 21.33 px
SUPERSAMPLE = 4
JITTER_PX = 2.0  # max position jitter (pixels, each axis)
COLOR_JITTER = 12  # max per-channel color shift of an object
PIXEL_NOISE = 2.0  # std of per-pixel gaussian noise on lit pixels
VIDEO_FRAMES = 8
VIDEO_FPS = 4.0
VIDEO_STEP_PX = 4.0  # motion per frame


def cell_center(cell: int) -> tuple[float, float]:
    """Pixel (x, y) center of a grid cell."""
    row, col = divmod(cell, 3)
    return ((col + 0.5) * CELL_PX, (row + 0.5) * CELL_PX)


def shape_points(shape: str, cx: float, cy: float, extent: float) -> list[tuple[float, float]]:
    """Polygon vertices (image pixels) of a square/triangle/star of the given extent."""
    r = extent / 2
    if shape == "square":
        h = r * 0.9
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        h = extent * math.sqrt(3) / 2
        top = cy - h * 2 / 3 + h * 0.1  # centroid-ish centering, nudged so the box is centered
        return [(cx, top), (cx + r, top + h), (cx - r, top + h)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.05 * extent + rad * math.sin(a)))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


def _draw(draw: ImageDraw.ImageDraw, obj: Object, cx: float, cy: float, color: tuple[int, int, int]) -> None:
    s = SUPERSAMPLE
    extent = SIZES[obj.size]
    if obj.shape == "circle":
        r = extent / 2
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=color)
    else:
        draw.polygon([(x * s, y * s) for x, y in shape_points(obj.shape, cx, cy, extent)], fill=color)


def _object_color(obj: Object, rng: np.random.Generator) -> tuple[int, int, int]:
    base = np.array(COLORS[obj.color], dtype=np.int64)
    shifted = np.clip(base + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3), 0, 255)
    return tuple(int(v) for v in shifted)  # type: ignore[return-value]


def render_placed(
    placed: list[tuple[Object, float, float, tuple[int, int, int]]], rng: np.random.Generator
) -> np.ndarray:
    """Draw objects at explicit pixel centers with explicit colors -> (64, 64, 3) uint8."""
    big = Image.new("RGB", (IMAGE_SIZE * SUPERSAMPLE,) * 2, (0, 0, 0))
    draw = ImageDraw.Draw(big)
    for obj, cx, cy, color in placed:
        _draw(draw, obj, cx, cy, color)
    img = np.asarray(big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), dtype=np.float32)  # (64, 64, 3)
    if PIXEL_NOISE > 0:
        lit = img.max(axis=2, keepdims=True) > 0
        img = img + lit * rng.normal(0.0, PIXEL_NOISE, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Scene -> (64, 64, 3) uint8 image with jitter, color noise and anti-aliasing."""
    placed = []
    for obj in scene.objects:
        cx, cy = cell_center(obj.cell)
        # keep the object (plus a pixel of anti-aliasing) inside its cell: big shapes jitter less
        lim = min(JITTER_PX, CELL_PX / 2 - SIZES[obj.size] / 2 - 0.75)
        jx, jy = rng.uniform(-lim, lim, size=2)
        placed.append((obj, cx + jx, cy + jy, _object_color(obj, rng)))
    return render_placed(placed, rng)


def video_path(direction: str, rng: np.random.Generator, extent: float) -> list[tuple[float, float]]:
    """Pixel centers of a steady motion over VIDEO_FRAMES frames, kept inside the image."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    travel = VIDEO_STEP_PX * (VIDEO_FRAMES - 1)
    margin = extent / 2 + 2
    lo, hi = margin, IMAGE_SIZE - margin - travel  # start range along the motion axis
    start = float(rng.uniform(lo, hi))
    across = float(rng.uniform(margin + 4, IMAGE_SIZE - margin - 4))
    sign = 1 if direction in ("right", "down") else -1
    if sign < 0:
        start = IMAGE_SIZE - start
    pts = []
    for f in range(VIDEO_FRAMES):
        along = start + sign * VIDEO_STEP_PX * f
        pts.append((along, across) if direction in ("left", "right") else (across, along))
    return pts


def render_video(obj: Object, direction: str, rng: np.random.Generator) -> list[np.ndarray]:
    """One object moving steadily in `direction` -> VIDEO_FRAMES frames (64, 64, 3) uint8 at VIDEO_FPS.

    The object's cell is ignored: the path is sampled to keep it inside the image.
    """
    color = _object_color(obj, rng)
    return [render_placed([(obj, x, y, color)], rng) for x, y in video_path(direction, rng, SIZES[obj.size])]


def to_png_bytes(img: np.ndarray) -> bytes:
    """(64, 64, 3) uint8 -> PNG bytes (deterministic)."""
    from ..utils.media import rgb_to_png_bytes

    return rgb_to_png_bytes(img)
