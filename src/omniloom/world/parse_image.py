"""The scene parser: a deterministic judge that reads a 64x64 world image back into a Scene.

Steps: a brightness mask, connected components (8-neighbour), then per component the color
(nearest palette color of its bright core), the shape by geometry (how much of its bounding box
it fills, and whether it narrows towards the top), the size by extent and the cell by centroid.
It knows nothing of any model; `parse_image_detail` also returns the measured features.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .scene import COLORS, Object, Scene

FG_THRESHOLD = 60  # a pixel with max channel above this is foreground
MIN_COMPONENT = 12  # components with fewer pixels are noise
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (6, 3)
_PALETTE_NAMES = list(COLORS)


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean (H, W) mask -> list of (K, 2) arrays of (y, x)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        q, pix = deque([(y0, x0)]), []
        while q:
            y, x = q.popleft()
            pix.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        q.append((ny, nx))
        out.append(np.array(pix, dtype=np.int64))
    return out


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (K, 2) points (Andrew's monotone chain + shoelace)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):  # noqa: ANN001, ANN202
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _classify_shape(f: dict) -> str:
    """solidity = area / convex hull area (a star is concave); corners = coverage of the box
    corners (a square fills them, a circle and a triangle's top do not); taper = bottom third
    minus top third width, in box widths (a triangle narrows upwards); corner_min = the emptiest corner."""
    if f["corner_min"] > 0.25:
        return "square"
    if f["taper"] > 0.3 and f["corners"] >= 0.27:
        return "triangle"
    if f["solidity"] >= 0.8:
        return "circle"
    return "star"


# nominal extent (px) a shape of each size reads as; the size threshold sits between them
_SIZE_SPLIT = {"circle": 14.0, "square": 12.8, "triangle": 13.5, "star": 12.5}


def measure(img: np.ndarray, pix: np.ndarray) -> dict:
    """Geometry and color features of one component."""
    ys, xs = pix[:, 0], pix[:, 1]
    rgb = img[ys, xs].astype(np.float32)  # (K, 3)
    inten = rgb.max(axis=1)  # (K,)
    core = float(np.percentile(inten, 90))
    cover = np.clip(inten / max(core, 1.0), 0.0, 1.0)  # fraction of each pixel the shape covers
    area = float(cover.sum())
    bright = rgb[inten >= 0.85 * core].mean(axis=0)
    # nearest palette color after scaling the core to the palette's brightness
    scaled = bright * (_PALETTE.max(axis=1, keepdims=True) / max(float(bright.max()), 1.0))  # (6, 3)
    color = _PALETTE_NAMES[int(np.argmin(((scaled - _PALETTE) ** 2).sum(axis=1)))]
    solid = cover >= 0.5
    sy, sx = ys[solid], xs[solid]
    # sub-pixel extent: the solid box plus the partial coverage along its edges
    w = float(sx.max() - sx.min() + 1)
    h = float(sy.max() - sy.min() + 1)
    cx = float((xs * cover).sum() / area)
    cy = float((ys * cover).sum() / area)
    # width profile: rows of the top third vs the bottom third of the box
    top_rows = sy < sy.min() + h / 3
    bot_rows = sy >= sy.max() + 1 - h / 3
    top_w = float(np.ptp(sx[top_rows]) + 1) if top_rows.any() else 0.0
    bot_w = float(np.ptp(sx[bot_rows]) + 1) if bot_rows.any() else 0.0
    grid = np.zeros((int(h) + 2, int(w) + 2), np.float32)  # coverage in the solid box, 1 px margin
    gy, gx = ys - sy.min() + 1, xs - sx.min() + 1
    keep = (gy >= 0) & (gy < grid.shape[0]) & (gx >= 0) & (gx < grid.shape[1])
    grid[gy[keep], gx[keep]] = cover[keep]
    inner = grid[1:-1, 1:-1]
    corner_cov = [float(c.mean()) for c in (inner[:2, :2], inner[:2, -2:], inner[-2:, :2], inner[-2:, -2:])]
    corners = sum(corner_cov) / 4
    corner_pts = np.concatenate([np.stack([sx + dx, sy + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    hull = _hull_area(corner_pts)
    return {
        "area": area, "w": w, "h": h, "fill": area / (w * h), "taper": (bot_w - top_w) / w,
        "solidity": area / max(hull, 1.0), "corners": corners, "corner_min": min(corner_cov),
        "cx": cx, "cy": cy, "color": color, "pixels": int(len(pix)),
    }


def parse_image_detail(img: np.ndarray) -> tuple[Scene | None, list[dict]]:
    """(64, 64, 3) uint8 -> (Scene or None when it is not a valid world scene, per-object features)."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    H, W = img.shape[:2]
    mask = img.max(axis=2) > FG_THRESHOLD
    feats = []
    for pix in components(mask):
        if len(pix) < MIN_COMPONENT:
            continue
        f = measure(img, pix)
        f["shape"] = _classify_shape(f)
        f["size"] = "big" if max(f["w"], f["h"]) >= _SIZE_SPLIT[f["shape"]] * W / 64 else "small"
        col = min(2, max(0, int(f["cx"] * 3 / W)))
        row = min(2, max(0, int(f["cy"] * 3 / H)))
        f["cell"] = row * 3 + col
        feats.append(f)
    try:
        objs = tuple(Object(f["cell"], f["size"], f["color"], f["shape"]) for f in feats)
        if not 1 <= len(objs) <= 3:
            return None, feats
        return Scene(objs), feats
    except ValueError:  # two objects in one cell
        return None, feats


def parse_image(img: np.ndarray) -> Scene | None:
    """(64, 64, 3) uint8 world image -> Scene, or None when it does not read as a valid scene."""
    return parse_image_detail(img)[0]
