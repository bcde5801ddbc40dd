"""3D codec: occupancy voxels <-> a short code sequence, and voxels <-> mesh files.

**Voxels.** A shape is a ``(16, 16, 16)`` bool occupancy grid indexed ``[x, y, z]`` with ``z`` up
(``z = 0`` is the ground). In mesh coordinates the grid fills the unit box ``[0, 1]^3``: voxel
``(i, j, k)`` is the cube ``[i/16, (i+1)/16] x [j/16, (j+1)/16] x [k/16, (k+1)/16]``.

**Codes.** ``MeshCodec`` is a small 3D-convolution autoencoder with finite scalar quantisation
(FSQ, written here: each latent channel is squashed into ``L`` equal bins and rounded, with a
straight-through gradient; no codebook to learn, so none collapses). 16^3 voxels go to a 4x4x4
latent grid of 3 channels with levels ``(5, 4, 2)``: 64 codes per shape, each in ``[0, 40)``, in
``x``-major order (index ``(x * 4 + y) * 4 + z`` of the latent grid). The codebook is kept at 40
so a mesh range fits the 40 spare ids of the shipped reference model's vocabulary.
``encode(vox) -> (64,) long`` (or ``(B, 16, 16, 16) -> (B, 64)``); ``decode(codes) -> (16, 16, 16)
bool`` (occupancy logit > 0, i.e. probability > 0.5).

**Files.** ``voxels_to_mesh`` runs marching cubes (scikit-image) on the grid padded with empty
voxels, so the surface is closed (watertight) and lies on the voxel faces, chamfered at edges;
``write_mesh`` writes ``.stl``, ``.obj`` or ``.glb`` by suffix (atomically); ``read_mesh_voxels``
reads those (or a ``.npy`` grid) back to occupancy. Needs the ``mesh`` extra (trimesh, scikit-image).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.fileio import atomic_path

GRID = 16  # voxels per axis
MESH_SUFFIXES: tuple[str, ...] = (".stl", ".obj", ".glb")


@dataclass
class MeshCodecConfig:
    """Shape of a mesh codec: ``grid`` voxels per axis, ``downsample`` per axis, FSQ ``levels``,
    ``channels[i]`` the width at ``grid / 2**i``."""

    grid: int = GRID
    downsample: int = 4
    levels: list[int] = field(default_factory=lambda: [5, 4, 2])
    channels: list[int] = field(default_factory=lambda: [16, 32, 64])

    def __post_init__(self) -> None:
        n_down = int(round(math.log2(self.downsample))) if self.downsample > 0 else -1
        if self.downsample < 1 or 2**n_down != self.downsample or self.grid % self.downsample:
            raise ValueError(f"mesh codec: downsample must be a power of two dividing grid {self.grid}, "
                             f"got {self.downsample}")
        if len(self.channels) != n_down + 1:
            raise ValueError(f"mesh codec: channels needs {n_down + 1} entries for downsample {self.downsample}, "
                             f"got {len(self.channels)}")
        if not self.levels or any(int(level) < 2 for level in self.levels):
            raise ValueError(f"mesh codec: FSQ levels must all be >= 2, got {self.levels}")

    @property
    def codebook_size(self) -> int:
        return int(math.prod(self.levels))

    @property
    def latent(self) -> int:
        return self.grid // self.downsample

    @property
    def tokens(self) -> int:
        return self.latent**3

    @classmethod
    def from_dict(cls, d: dict) -> "MeshCodecConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - {"type"}
        if unknown:
            raise ValueError(f"mesh codec config: unknown keys {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in known})


class FSQ(nn.Module):
    """Finite scalar quantisation: channel ``i`` of a latent is squashed by a sigmoid into
    ``levels[i]`` equal-width bins and rounded to the bin index (straight-through gradient).

    ``forward(z (B, d, ...)) -> (zq in [-1, 1] (B, d, ...), indices (B, ...) long)``; the index is
    the mixed-radix number of the bin indices (channel 0 least significant).
    """

    def __init__(self, levels: list[int]) -> None:
        super().__init__()
        lv = torch.tensor([int(level) for level in levels], dtype=torch.long)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.cat([lv.new_ones(1), lv[:-1]]), 0), persistent=False)

    def _shape(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.view(1, -1, *([1] * (ndim - 2)))

    def bins(self, z: torch.Tensor) -> torch.Tensor:
        """Continuous bin coordinates in ``(-0.5, L - 0.5)`` per channel, rounded straight-through."""
        lv = self._shape(self.levels, z.ndim).to(z.dtype)
        u = torch.sigmoid(z) * lv - 0.5
        q = torch.minimum(torch.round(u).clamp_min(0), lv - 1)
        return u + (q - u).detach()

    def to_unit(self, q: torch.Tensor) -> torch.Tensor:
        """Bin indices -> values in [-1, 1] (what the decoder sees)."""
        lv = self._shape(self.levels, q.ndim).to(q.dtype)
        return q / (lv - 1) * 2 - 1

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.bins(z)
        idx = (q.detach().round().long() * self._shape(self.basis, z.ndim)).sum(1)
        return self.to_unit(q), idx

    def indices_to_unit(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, ...) long -> (B, d, ...) quantised values in [-1, 1]."""
        digits = (idx.unsqueeze(1) // self._shape(self.basis, idx.ndim + 1)) % self._shape(self.levels, idx.ndim + 1)
        return self.to_unit(digits.float())


class ResBlock3d(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, 3, padding=1)
        self.conv2 = nn.Conv3d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _encoder(cfg: MeshCodecConfig) -> nn.Sequential:
    ch = cfg.channels
    layers: list[nn.Module] = [nn.Conv3d(1, ch[0], 3, padding=1)]
    for i in range(1, len(ch)):
        layers += [nn.SiLU(), nn.Conv3d(ch[i - 1], ch[i], 4, stride=2, padding=1), ResBlock3d(ch[i])]
    layers += [nn.SiLU(), nn.Conv3d(ch[-1], len(cfg.levels), 1)]
    return nn.Sequential(*layers)


def _decoder(cfg: MeshCodecConfig) -> nn.Sequential:
    ch = cfg.channels
    layers: list[nn.Module] = [nn.Conv3d(len(cfg.levels), ch[-1], 3, padding=1), ResBlock3d(ch[-1])]
    for i in reversed(range(1, len(ch))):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv3d(ch[i], ch[i - 1], 3, padding=1),
                   ResBlock3d(ch[i - 1])]
    layers += [nn.SiLU(), nn.Conv3d(ch[0], 1, 3, padding=1)]
    return nn.Sequential(*layers)


def as_voxels(vox: Any, grid: int = GRID) -> np.ndarray:
    """A (g, g, g) or (B, g, g, g) array-like of occupancy (bool, 0/1 ints or floats > 0.5) -> bool numpy."""
    if isinstance(vox, torch.Tensor):
        vox = vox.detach().cpu().numpy()
    a = np.asarray(vox)
    if a.ndim not in (3, 4) or a.shape[-3:] != (grid, grid, grid):
        raise ValueError(f"mesh voxels: expected shape ({grid}, {grid}, {grid}) or (B, {grid}, {grid}, {grid}), "
                         f"got {a.shape}")
    if a.dtype == bool:
        return a
    if not (np.issubdtype(a.dtype, np.number)):
        raise ValueError(f"mesh voxels: expected a bool or numeric grid, got dtype {a.dtype}")
    return a > 0.5


class MeshCodec(nn.Module):
    """FSQ occupancy autoencoder implementing the ``Codec`` protocol (modality ``"mesh"``)."""

    modality = "mesh"
    num_codebooks = 1
    frame_rate = None
    sample_rate = None

    def __init__(self, cfg: MeshCodecConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MeshCodecConfig()
        self.encoder = _encoder(self.cfg)
        self.decoder = _decoder(self.cfg)
        self.fsq = FSQ(self.cfg.levels)
        self.codebook_size: int = self.cfg.codebook_size
        self.tokens: int = self.cfg.tokens
        self.tokens_per_item: int = self.cfg.tokens
        self.grid: int = self.cfg.grid

    @property
    def device(self) -> torch.device:
        return self.encoder[0].weight.device

    @property
    def bits_per_shape(self) -> float:
        return self.tokens * math.log2(self.codebook_size)

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Occupancy (B, g, g, g) float in [0, 1] -> (quantised latent (B, d, l, l, l), codes (B, tokens))."""
        zq, idx = self.fsq(self.encoder(x[:, None] * 2 - 1))
        return zq, idx.flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: occupancy (B, g, g, g) -> (logits (B, g, g, g), codes (B, tokens))."""
        zq, idx = self.quantize(x)
        return self.decoder(zq)[:, 0], idx

    @torch.no_grad()
    def encode(self, vox: Any) -> torch.Tensor:
        """(g, g, g) occupancy -> (tokens,) long codes in [0, codebook_size); (B, g, g, g) -> (B, tokens)."""
        a = as_voxels(vox, self.grid)
        x = torch.from_numpy(a.astype(np.float32)).to(self.device)
        single = x.ndim == 3
        codes = self.quantize(x[None] if single else x)[1]
        return codes[0] if single else codes

    @torch.no_grad()
    def decode_logits(self, codes: Any) -> torch.Tensor:
        """(B, tokens) codes -> (B, g, g, g) occupancy logits."""
        c = torch.as_tensor(codes, device=self.device)
        if c.dtype.is_floating_point:
            raise ValueError(f"mesh codec: codes must be integers, got {c.dtype}")
        if c.ndim != 2 or c.shape[1] != self.tokens:
            raise ValueError(f"mesh codec: expected {self.tokens} codes per shape, got shape {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.codebook_size):
            raise ValueError(f"mesh codec: codes must lie in [0, {self.codebook_size}), "
                             f"got [{int(c.min())}, {int(c.max())}]")
        n = self.cfg.latent
        zq = self.fsq.indices_to_unit(c.long().view(-1, n, n, n))
        return self.decoder(zq)[:, 0]

    @torch.no_grad()
    def decode(self, codes: Any) -> torch.Tensor:
        """(tokens,) codes -> (g, g, g) bool occupancy; (B, tokens) -> (B, g, g, g)."""
        c = torch.as_tensor(codes)
        single = c.ndim == 1
        occ = self.decode_logits(c[None] if single else c) > 0
        return occ[0].cpu() if single else occ.cpu()

    # ---- persistence -------------------------------------------------------------------------

    def config_dict(self) -> dict:
        return {"type": "mesh", **asdict(self.cfg)}

    def save(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (each file atomically);
        ``dtype=torch.float16`` halves the file (shipped codecs); loading casts back to float32."""
        from .base import save_codec_folder

        return save_codec_folder(self, directory, "mesh", dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "MeshCodec":
        """Load a codec written by ``save`` (or a shipped one, by folder); eval mode, float32."""
        from .base import load_codec_folder

        return load_codec_folder(cls, MeshCodecConfig, directory, "mesh", device)

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu") -> "MeshCodec":
        """A shipped name (``mesh-world``) or a folder written by ``save``."""
        from .base import resolve_codec_dir

        return cls.from_pretrained(resolve_codec_dir(directory), device=device)


# ---- voxels <-> meshes -------------------------------------------------------------------------


def voxels_to_mesh(vox: Any) -> "Any":
    """(16, 16, 16) occupancy -> a closed ``trimesh.Trimesh`` in unit-box coordinates (see the module
    docstring). Marching cubes runs on the grid padded with one empty voxel on every side, so the
    surface never touches the border and is watertight. An empty grid gives an empty mesh."""
    import trimesh
    from skimage.measure import marching_cubes

    a = as_voxels(vox)
    if a.ndim != 3:
        raise ValueError(f"voxels_to_mesh takes one grid, got shape {a.shape}")
    g = a.shape[0]
    if not a.any():
        return trimesh.Trimesh(vertices=np.zeros((0, 3)), faces=np.zeros((0, 3), dtype=np.int64))
    padded = np.pad(a.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5)
    # padded index p is voxel p - 1, whose centre sits at (p - 1 + 0.5) / g in unit coordinates
    verts = (verts - 0.5) / g
    mesh = trimesh.Trimesh(vertices=verts, faces=faces[:, ::-1], process=True)
    mesh.fix_normals()
    return mesh


def _suffix(path: str | Path) -> str:
    s = Path(path).suffix.lower()
    if s not in MESH_SUFFIXES:
        raise ValueError(f"{path}: mesh files are {', '.join(MESH_SUFFIXES)}, got suffix {s!r}")
    return s


def mesh_bytes(mesh_or_vox: Any, file_type: str) -> bytes:
    """A mesh (or an occupancy grid, meshed first) as the bytes of a ``stl``/``obj``/``glb`` file."""
    import trimesh

    mesh = mesh_or_vox if isinstance(mesh_or_vox, trimesh.Trimesh) else voxels_to_mesh(mesh_or_vox)
    data = mesh.export(file_type=file_type.lstrip("."))
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def write_mesh(mesh_or_vox: Any, path: str | Path) -> Path:
    """Write a mesh (or occupancy grid) to ``path``; the format follows the suffix (.stl binary,
    .obj, .glb). Written to a temporary name and renamed, so a failure leaves no partial file."""
    path = Path(path)
    data = mesh_bytes(mesh_or_vox, _suffix(path))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def _sniff(data: bytes) -> str:
    """File type of mesh bytes: npy, glb, stl or obj; ValueError when none fits."""
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data.startswith(b"glTF"):
        return "glb"
    if len(data) >= 84 and len(data) == 84 + 50 * int.from_bytes(data[80:84], "little"):
        return "stl"  # binary STL: header, count, 50 bytes per triangle
    head = data[:2048].lstrip()
    if head.startswith(b"solid") and b"facet" in data[:4096]:
        return "stl"
    try:
        text = data[:65536].decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if any(line.startswith("v ") for line in text.splitlines()):
        return "obj"
    raise ValueError("not a mesh file: expected STL, OBJ, GLB or a .npy occupancy grid")


def _load_npy(data: bytes, name: str, grid: int) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"{name}: not a readable .npy array ({e})") from None
    try:
        return as_voxels(arr, grid)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def mesh_to_voxels(mesh: Any, grid: int = GRID) -> np.ndarray:
    """A closed mesh -> (grid, grid, grid) bool: a voxel is filled when its centre is inside.

    Meshes inside the unit box (with a 2% margin) keep their position (what ``write_mesh`` wrote);
    any other mesh is scaled uniformly to fit the box, centred in x and y and set on the ground
    (min z = 0). Inside is an even-odd count of crossings of a vertical ray through each column of
    centres (nudged off the voxel lattice so it never runs along an edge).
    """
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    if len(v) == 0 or len(f) == 0:
        raise ValueError("the mesh has no triangles")
    lo, hi = v.min(0), v.max(0)
    if not np.isfinite(v).all():
        raise ValueError("the mesh has non-finite vertices")
    if (lo < -0.02).any() or (hi > 1.02).any():
        ext = float((hi - lo).max())
        if ext <= 0:
            raise ValueError("the mesh is flat (zero extent)")
        v = (v - lo) / ext
        v[:, :2] += (1 - (hi - lo)[:2] / ext) / 2
    tri = v[f] * grid  # (F, 3, 3) in voxel units
    centres = np.arange(grid) + 0.5
    px, py = np.meshgrid(centres + 1.37e-4, centres + 2.91e-4, indexing="ij")  # (g, g) ray positions
    p = np.stack([px.ravel(), py.ravel()], 1)  # (R, 2)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    out = np.zeros((grid * grid, grid), dtype=bool)
    for start in range(0, len(tri), 4096):
        sl = slice(start, start + 4096)
        a2, b2, c2 = a[sl, :2], b[sl, :2], c[sl, :2]
        det = (b2[:, 0] - a2[:, 0]) * (c2[:, 1] - a2[:, 1]) - (c2[:, 0] - a2[:, 0]) * (b2[:, 1] - a2[:, 1])  # (F,)
        ok = np.abs(det) > 1e-12
        if not ok.any():
            continue
        dx = p[:, None, 0] - a2[None, :, 0]
        dy = p[:, None, 1] - a2[None, :, 1]  # (R, F)
        safe = np.where(ok, det, 1.0)  # flat (edge-on) triangles are never hit
        w1 = (dx * (c2[:, 1] - a2[:, 1]) - dy * (c2[:, 0] - a2[:, 0])) / safe
        w2 = (dy * (b2[:, 0] - a2[:, 0]) - dx * (b2[:, 1] - a2[:, 1])) / safe
        hit = ok & (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1)
        z = a[sl, 2] + w1 * (b[sl, 2] - a[sl, 2]) + w2 * (c[sl, 2] - a[sl, 2])  # (R, F)
        r_idx, f_idx = np.nonzero(hit)
        zs = z[r_idx, f_idx]
        # every crossing below a centre flips that centre's inside/outside parity
        below = zs[:, None] < centres[None, :]  # (hits, g)
        flips = np.zeros((grid * grid, grid), dtype=np.int64)
        np.add.at(flips, r_idx, below.astype(np.int64))
        out ^= (flips % 2).astype(bool)
    return out.reshape(grid, grid, grid)


def read_mesh_voxels(src: str | Path | bytes, grid: int = GRID) -> np.ndarray:
    """An STL/OBJ/GLB file (or a ``.npy`` occupancy grid), given as a path or bytes -> (g, g, g) bool.

    Meshes are voxelized by ``mesh_to_voxels`` (unit-box meshes keep their place, others are fitted
    into the box). A missing file, unknown suffix, or bytes that are no mesh raise ValueError naming them.
    """
    import trimesh

    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "mesh bytes"
        kind = _sniff(data)
    else:
        path = Path(src)
        name = str(path)
        if not path.is_file():
            raise ValueError(f"mesh file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix not in MESH_SUFFIXES + (".npy",):
            raise ValueError(f"{path}: mesh files are {', '.join(MESH_SUFFIXES)} or .npy, got suffix {suffix!r}")
        data, kind = path.read_bytes(), suffix.lstrip(".")
    if kind == "npy":
        return _load_npy(data, name, grid)
    try:
        loaded = trimesh.load(io.BytesIO(data), file_type=kind, force="mesh", process=True)
    except Exception as e:  # trimesh raises many kinds on malformed files
        raise ValueError(f"{name}: cannot read as {kind.upper()} ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise ValueError(f"{name}: the {kind.upper()} file holds no triangles")
    try:
        return mesh_to_voxels(loaded, grid)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def voxel_iou(a: Any, b: Any) -> float:
    """Intersection over union of two occupancy grids (1.0 when both are empty)."""
    x, y = as_voxels(a), as_voxels(b)
    union = np.logical_or(x, y).sum()
    return 1.0 if union == 0 else float(np.logical_and(x, y).sum() / union)
