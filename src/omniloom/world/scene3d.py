"""3D scenes of the shapes world: solids on a 3x3 ground grid, voxelized at 16^3, captioned and parsed.

A 3D scene holds 1 or 2 solid primitives: one or two on the ground in different cells, or two
stacked in one cell ("a big cube in the center with a small sphere on top"). Occupancy grids are
``(16, 16, 16)`` bool indexed ``[x, y, z]`` with ``z`` up; the ground is ``z = 0``.

**Vocabulary.** Sizes are the world's ``small`` / ``big`` (4 and 6 voxels across and tall).
Shapes are solids, three of them the 2D shapes' counterparts: square -> ``cube``, circle ->
``sphere``, triangle -> ``cone`` (its side view), and ``cylinder`` (a circle extruded; the star has
no 3D counterpart). Only flat-topped solids (cube, cylinder) carry another on top. STL has no
colour, so 3D scenes have none: 3D tasks are about shape, size, position and stacking only.

**Positions.** The 2D world's 3x3 cells lie on the ground seen from the front: the 2D "top" row
is the back (large ``y``), the "bottom" row the front. Cell ``c`` (row-major, 0 = back left) has
its centre at ``x = 3 + 5 * (c % 3)``, ``y = 13 - 5 * (c // 3)`` voxels. Phrases: "at the back
left", "at the back", "at the back right", "on the left", "in the center", "on the right", "at
the front left", "at the front", "at the front right". Two objects on the ground never touch
(``sample_scene3d`` redraws scenes where they would), so each is one connected component.

**Captions.** ``a {size} {shape} {position}[ with a {size} {shape} on top]``, objects in cell
order joined like 2D captions (``x and y``). ``parse_voxels`` reads a grid back into a scene
(connected components, stacks split at the base's height, each solid classified by its layer
profile and fill ratio), the programmatic shape judge of the 3D tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .scene import caption_phrases, join_phrases, normalize_text

GRID = 16
SHAPES3D: tuple[str, ...] = ("cube", "sphere", "cone", "cylinder")
FROM_2D: dict[str, str] = {"square": "cube", "circle": "sphere", "triangle": "cone"}
BASE_SHAPES: tuple[str, ...] = ("cube", "cylinder")  # flat tops: what may carry a second solid
SIZES3D: dict[str, int] = {"small": 4, "big": 6}  # voxels across and tall
SIZE_NAMES3D: tuple[str, ...] = tuple(SIZES3D)
CELL_PHRASES3D: tuple[str, ...] = (
    "at the back left", "at the back", "at the back right",
    "on the left", "in the center", "on the right",
    "at the front left", "at the front", "at the front right",
)
TEXT_TO_3D_PROMPT = "make a 3D model of {caption}"
DESCRIBE_3D_PROMPT = "describe the 3D model"


def cell_center(cell: int) -> tuple[float, float]:
    """Ground position (x, y) in voxel units of a cell's centre."""
    return 3.0 + 5.0 * (cell % 3), 13.0 - 5.0 * (cell // 3)


@dataclass(frozen=True, order=True)
class Solid:
    """One primitive: a shape and a size."""

    shape: str
    size: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES3D:
            raise ValueError(f"unknown 3D shape {self.shape!r}; expected one of {SHAPES3D}")
        if self.size not in SIZES3D:
            raise ValueError(f"unknown size {self.size!r}; expected one of {SIZE_NAMES3D}")

    def phrase(self) -> str:
        return f"a {self.size} {self.shape}"


@dataclass(frozen=True, order=True)
class Stack:
    """What stands in one cell: a solid on the ground and optionally one on top of it."""

    cell: int
    base: Solid
    top: Solid | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.cell < 9:
            raise ValueError(f"cell must be in 0..8, got {self.cell}")
        if self.top is not None and self.base.shape not in BASE_SHAPES:
            raise ValueError(f"only a {' or '.join(BASE_SHAPES)} carries a solid on top, not a {self.base.shape}")

    @property
    def solids(self) -> tuple[Solid, ...]:
        return (self.base,) if self.top is None else (self.base, self.top)

    def to_dict(self) -> dict:
        d: dict = {"cell": self.cell, "shape": self.base.shape, "size": self.base.size}
        if self.top is not None:
            d["top"] = {"shape": self.top.shape, "size": self.top.size}
        return d

    @staticmethod
    def from_dict(d: dict) -> "Stack":
        top = d.get("top")
        return Stack(int(d["cell"]), Solid(d["shape"], d["size"]), Solid(top["shape"], top["size"]) if top else None)


@dataclass(frozen=True)
class Scene3D:
    """1 or 2 solids in stacks in distinct cells, stored sorted by cell."""

    stacks: tuple[Stack, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        stacks = tuple(sorted(self.stacks))
        cells = [s.cell for s in stacks]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two stacks share a cell: {cells}")
        if not 1 <= sum(len(s.solids) for s in stacks) <= 2:
            raise ValueError(f"a 3D scene has 1 or 2 solids, got {sum(len(s.solids) for s in stacks)}")
        object.__setattr__(self, "stacks", stacks)

    @property
    def shapes(self) -> list[str]:
        """The shape of every solid, sorted (what the shape judge compares)."""
        return sorted(s.shape for st in self.stacks for s in st.solids)

    def to_dict(self) -> dict:
        return {"stacks": [s.to_dict() for s in self.stacks]}

    @staticmethod
    def from_dict(d: dict) -> "Scene3D":
        return Scene3D(tuple(Stack.from_dict(s) for s in d["stacks"]))


# ---------------------------------------------------------------- voxels

def primitive_voxels(shape: str, cx: float, cy: float, z0: float, size: float, grid: int = GRID) -> np.ndarray:
    """A solid of ``size`` voxels across and tall, centred at (cx, cy) with its bottom at ``z0``
    (voxel units) -> (grid, grid, grid) bool; a voxel is filled when its centre is inside.
    Round solids have vertical axes; the cone's apex points up."""
    if shape not in SHAPES3D:
        raise ValueError(f"unknown 3D shape {shape!r}; expected one of {SHAPES3D}")
    c = np.arange(grid) + 0.5
    x, y, z = np.meshgrid(c - cx, c - cy, c - z0, indexing="ij")
    r = size / 2
    rxy = np.hypot(x, y)
    inside_z = (z >= 0) & (z <= size)
    if shape == "cube":
        return (np.abs(x) <= r) & (np.abs(y) <= r) & inside_z
    if shape == "cylinder":
        return (rxy <= r) & inside_z
    if shape == "cone":
        return inside_z & (rxy <= r * (1 - z / size))
    return np.sqrt(x**2 + y**2 + (z - r) ** 2) <= r  # sphere


def voxelize(scene: Scene3D, grid: int = GRID) -> np.ndarray:
    """A scene -> (16, 16, 16) bool occupancy ([x, y, z], z up)."""
    out = np.zeros((grid, grid, grid), dtype=bool)
    for st in scene.stacks:
        cx, cy = cell_center(st.cell)
        z0 = 0.0
        for solid in st.solids:
            s = SIZES3D[solid.size]
            out |= primitive_voxels(solid.shape, cx, cy, z0, s, grid)
            z0 += s
    return out


def components(vox: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of occupancy (26-connectivity) -> (labels, count)."""
    from scipy import ndimage

    return ndimage.label(np.asarray(vox, dtype=bool), structure=np.ones((3, 3, 3), dtype=bool))


def sample_scene3d(rng: np.random.Generator, n: int | None = None) -> Scene3D:
    """A random scene of ``n`` (default 1 or 2) solids; with 2, half the scenes stack them.

    Scenes whose two ground objects would touch are redrawn.
    """
    n = int(rng.integers(1, 3)) if n is None else n
    if n not in (1, 2):
        raise ValueError(f"a 3D scene has 1 or 2 solids, got {n}")

    def solid(shapes: tuple[str, ...] = SHAPES3D) -> Solid:
        return Solid(shapes[int(rng.integers(len(shapes)))], SIZE_NAMES3D[int(rng.integers(2))])

    for _ in range(100):
        if n == 1:
            return Scene3D((Stack(int(rng.integers(9)), solid()),))
        if rng.random() < 0.5:
            return Scene3D((Stack(int(rng.integers(9)), solid(BASE_SHAPES), solid()),))
        a, b = (int(c) for c in rng.choice(9, size=2, replace=False))
        scene = Scene3D((Stack(a, solid()), Stack(b, solid())))
        if components(voxelize(scene))[1] == 2:
            return scene
    raise RuntimeError("could not sample a 3D scene whose objects do not touch")  # pragma: no cover


# ---------------------------------------------------------------- phrasing

def stack_phrase(st: Stack) -> str:
    base = f"{st.base.phrase()} {CELL_PHRASES3D[st.cell]}"
    return base if st.top is None else f"{base} with {st.top.phrase()} on top"


def caption3d(scene: Scene3D) -> str:
    """Stack phrases in cell order joined by `, ` and a final ` and `."""
    return join_phrases([stack_phrase(st) for st in scene.stacks])


_SOLID = r"an? (%s) (%s)" % ("|".join(SIZE_NAMES3D), "|".join(SHAPES3D))
_STACK_RE = re.compile(
    r"%s (%s)(?: with %s on top)?"
    % (_SOLID, "|".join(re.escape(p) for p in sorted(CELL_PHRASES3D, key=len, reverse=True)), _SOLID)
)


def parse_caption3d(text: str) -> Scene3D | None:
    """Caption text -> Scene3D, or None when it is not a caption of a valid 3D scene (any phrase order)."""
    parts = caption_phrases(normalize_text(text))
    stacks = []
    for p in parts:
        m = _STACK_RE.fullmatch(p)
        if not m:
            return None
        top = Solid(m[5], m[4]) if m[4] else None
        try:
            stacks.append(Stack(CELL_PHRASES3D.index(m[3]), Solid(m[2], m[1]), top))
        except ValueError:
            return None
    try:
        return Scene3D(tuple(stacks)) if stacks else None
    except ValueError:
        return None


# ---------------------------------------------------------------- reading voxels (the shape judge)

def classify_solid(vox: np.ndarray) -> str:
    """The shape class of one solid's voxels (any size, any place), from its horizontal layers:
    a sphere's bottom and top layers are smaller than its middle; a cone's top layer is at most half
    its bottom; of the straight solids, the cube fills its footprint's bounding square (>= 0.93) and
    its corner columns (half of them, over their height) and the cylinder (a disk: pi/4 of its square, the
    corners empty) does not. The footprint is the columns filled in more than half of the layers, so
    a stray voxel or a corner lost on one layer (a codec's reconstruction) does not flip the answer."""
    v = np.asarray(vox, dtype=bool)
    if not v.any():
        raise ValueError("classify_solid: no voxels")
    xs, ys, zs = np.nonzero(v)
    part = v[xs.min():xs.max() + 1, ys.min():ys.max() + 1, zs.min():zs.max() + 1]
    areas = part.sum(axis=(0, 1)).astype(float)
    widest = areas.max()
    if len(areas) >= 3 and areas[0] < 0.8 * widest and areas[-1] < 0.8 * widest:
        return "sphere"
    if areas[-1] <= 0.5 * areas[0]:
        return "cone"
    columns = part.sum(axis=2)
    fx, fy = np.nonzero(columns > part.shape[2] / 2)
    if len(fx) == 0:
        return "cylinder"
    core = columns[fx.min():fx.max() + 1, fy.min():fy.max() + 1] > part.shape[2] / 2
    corners = columns[[fx.min(), fx.min(), fx.max(), fx.max()], [fy.min(), fy.max(), fy.min(), fy.max()]]
    square = core.mean() >= 0.93 and corners.sum() >= 0.5 * 4 * part.shape[2]
    return "cube" if square else "cylinder"


def _size_name(extent: int) -> str:
    return "small" if extent <= (SIZES3D["small"] + SIZES3D["big"]) / 2 else "big"


MIN_PIECE = 4  # fewer voxels than this in a component: noise (the smallest solid has 20)
MAX_STACK_WIDTH = 7  # a component wider than this along x or y is two stacks joined by stray voxels


def _pieces(vox: np.ndarray) -> list[np.ndarray]:
    """The stacks of a grid: its components of at least MIN_PIECE voxels, each one wider than a
    stack cut at its thinnest slice across that axis (a bridge of stray voxels between two objects
    one voxel apart) until every piece is narrow enough."""
    labels, count = components(vox)
    out = []
    for k in range(1, count + 1):
        comp = labels == k
        if comp.sum() < MIN_PIECE:
            continue
        for axis in (0, 1):
            counts = comp.sum(axis=tuple(a for a in range(3) if a != axis))
            idx = np.nonzero(counts)[0]
            if idx.max() - idx.min() + 1 > MAX_STACK_WIDTH:
                cut = min(range(idx.min() + 2, idx.max() - 1), key=lambda i: counts[i])
                below, above = comp.copy(), comp.copy()
                lo, hi = [slice(None)] * 3, [slice(None)] * 3
                lo[axis], hi[axis] = slice(cut, None), slice(None, cut + 1)
                below[tuple(lo)] = False
                above[tuple(hi)] = False
                out += _pieces(below) + _pieces(above)
                break
        else:
            out.append(comp)
    return out


def parse_voxels(vox: np.ndarray) -> Scene3D | None:
    """Read an occupancy grid as a scene: None when it is not one (empty, more than 2 solids, two
    objects in one cell). Each connected component is one stack (`_pieces`: specks dropped, bridges
    cut); one taller than its width plus one holds two solids, split at the base's height (its
    width: bases are cubes or cylinders)."""
    pieces = _pieces(np.asarray(vox, dtype=bool))
    if not pieces:
        return None
    stacks = []
    for comp in pieces:
        xs, ys, zs = np.nonzero(comp)
        width = int(max(xs.max() - xs.min(), ys.max() - ys.min())) + 1
        height = int(zs.max() - zs.min()) + 1
        cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
        cell = min(range(9), key=lambda c: (cell_center(c)[0] - cx) ** 2 + (cell_center(c)[1] - cy) ** 2)
        z0 = int(zs.min())
        if height <= width + 1:
            solids = [comp]
        else:
            bottom = comp[:, :, z0]
            bx, by = np.nonzero(bottom)
            base_w = int(max(bx.max() - bx.min(), by.max() - by.min())) + 1
            split = z0 + SIZES3D[_size_name(base_w)]
            below, above = comp.copy(), comp.copy()
            below[:, :, split:] = False
            above[:, :, :split] = False
            if not above.any():
                return None
            solids = [below, above]
        parsed = []
        for part in solids:
            px, py, _ = np.nonzero(part)
            w = int(max(px.max() - px.min(), py.max() - py.min())) + 1
            parsed.append(Solid(classify_solid(part), _size_name(w)))
        try:
            stacks.append(Stack(cell, parsed[0], parsed[1] if len(parsed) > 1 else None))
        except ValueError:
            return None
    try:
        return Scene3D(tuple(stacks))
    except ValueError:
        return None
