"""3D modality: the mesh codec, voxels <-> mesh files, the world's 3D scenes, tasks and judges."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("trimesh")
pytest.importorskip("skimage")

from omniloom.codecs.base import available_codecs, load_codec  # noqa: E402
from omniloom.codecs.mesh import (  # noqa: E402
    FSQ,
    MeshCodec,
    read_mesh_voxels,
    voxel_iou,
    voxels_to_mesh,
    write_mesh,
)
from omniloom.world.generate import generate, parse_mixture, read_jsonl  # noqa: E402
from omniloom.world.judges import judge  # noqa: E402
from omniloom.world.scene3d import (  # noqa: E402
    SHAPES3D,
    Scene3D,
    Solid,
    Stack,
    caption3d,
    classify_solid,
    parse_caption3d,
    parse_voxels,
    primitive_voxels,
    sample_scene3d,
    voxelize,
)


def _scenes(n: int, seed: int) -> list[Scene3D]:
    rng = np.random.default_rng(seed)
    return [sample_scene3d(rng) for _ in range(n)]


# ---- scenes -----------------------------------------------------------------------------------


def test_scene_voxels_caption_and_reader_agree():
    for s in _scenes(200, 0):
        v = voxelize(s)
        assert v.shape == (16, 16, 16) and v.dtype == bool and v.any()
        assert not v[:, :, -1].any()  # nothing reaches the ceiling: stacks are at most 12 tall
        assert parse_caption3d(caption3d(s)) == s
        assert parse_voxels(v) == s


def test_stack_caption_and_axes():
    s = Scene3D((Stack(4, Solid("cube", "big"), Solid("sphere", "small")),))
    assert caption3d(s) == "a big cube in the center with a small sphere on top"
    v = voxelize(s)
    zs = np.nonzero(v)[2]
    assert zs.min() == 0 and zs.max() == 6 + 4 - 1  # z is up: base 6 tall, sphere 4 on it
    back = voxelize(Scene3D((Stack(1, Solid("cube", "small")),)))
    assert np.nonzero(back)[1].min() > 8  # "at the back" is large y
    assert parse_caption3d("a big cone in the center with a small cube on top") is None  # cones carry nothing
    assert parse_caption3d("a red cube in the center") is None


def test_shape_classifier_on_fresh_primitives():
    rng = np.random.default_rng(7)
    right = total = 0
    for _ in range(400):
        shape = SHAPES3D[int(rng.integers(4))]
        size = float(rng.uniform(4, 8))
        cx, cy = rng.uniform(size / 2, 16 - size / 2, 2)
        v = primitive_voxels(shape, cx, cy, float(rng.uniform(0, 16 - size)), size)
        right += classify_solid(v) == shape
        total += 1
    assert right / total >= 0.95


# ---- codec ------------------------------------------------------------------------------------


def test_fsq_indices_round_trip():
    fsq = FSQ([5, 4, 2])
    z = torch.randn(3, 3, 4, 4, 4) * 3
    zq, idx = fsq(z)
    assert idx.shape == (3, 4, 4, 4) and int(idx.min()) >= 0 and int(idx.max()) < 40
    assert torch.allclose(fsq.indices_to_unit(idx), zq)
    assert zq.abs().max() <= 1


def test_codec_shapes_and_ranges(tmp_path):
    codec = MeshCodec().eval()
    assert codec.codebook_size <= 40 and codec.tokens <= 64 and codec.grid == 16
    v = voxelize(_scenes(1, 3)[0])
    codes = codec.encode(v)
    assert codes.shape == (codec.tokens,) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < codec.codebook_size
    batch = codec.encode(np.stack([v, v]))
    assert batch.shape == (2, codec.tokens) and torch.equal(batch[0], codes)
    out = codec.decode(codes)
    assert out.shape == (16, 16, 16) and out.dtype == torch.bool
    assert codec.decode(batch).shape == (2, 16, 16, 16)
    with pytest.raises(ValueError, match="codes must lie"):
        codec.decode(torch.full((codec.tokens,), codec.codebook_size))
    with pytest.raises(ValueError, match="expected shape"):
        codec.encode(np.zeros((8, 8, 8)))
    codec.save(tmp_path / "c")
    again = load_codec(tmp_path / "c")
    assert isinstance(again, MeshCodec) and torch.equal(again.encode(v), codes)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["type"] == "mesh"


def test_shipped_codec_round_trip_iou():
    assert "mesh-world" in available_codecs()
    codec = load_codec("mesh-world")
    assert codec.codebook_size <= 40 and codec.tokens <= 64
    scenes = _scenes(50, 99)
    vox = np.stack([voxelize(s) for s in scenes])
    rec = codec.decode(codec.encode(vox)).numpy()
    iou = np.mean([voxel_iou(a, b) for a, b in zip(rec, vox)])
    assert iou >= 0.85
    assert np.mean([parse_voxels(r) == s for r, s in zip(rec, scenes)]) >= 0.8  # the reader still reads them


@pytest.mark.slow
def test_codec_train_cli_checkpoints_and_resumes(tmp_path, capsys):
    from omniloom.cli import main

    args = ["codec", "train", "mesh", "--out", str(tmp_path / "m"), "--batch", "2", "--channels", "4,4,4",
            "--ckpt-every", "1", "--no-progress"]
    assert main(args + ["--steps", "2"]) == 0
    assert {"ckpt.pt", "config.json", "model.safetensors", "loss.png"} <= {p.name for p in (tmp_path / "m").iterdir()}
    assert main(args + ["--steps", "3"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert torch.load(tmp_path / "m" / "ckpt.pt", weights_only=True)["step"] == 3
    assert isinstance(load_codec(tmp_path / "m"), MeshCodec)


# ---- mesh files -------------------------------------------------------------------------------


def test_meshes_are_watertight():
    for s in _scenes(20, 5):
        mesh = voxels_to_mesh(voxelize(s))
        assert mesh.is_watertight and mesh.volume > 0
        assert mesh.bounds.min() >= 0 and mesh.bounds.max() <= 1  # the unit box


@pytest.mark.parametrize("suffix", [".stl", ".obj", ".glb"])
def test_write_read_round_trip(tmp_path, suffix):
    for i, s in enumerate(_scenes(4, 11)):
        v = voxelize(s)
        path = write_mesh(v, tmp_path / f"x{i}{suffix}")
        assert voxel_iou(read_mesh_voxels(path), v) >= 0.9
        assert voxel_iou(read_mesh_voxels(path.read_bytes()), v) >= 0.9
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_read_mesh_voxels_errors(tmp_path):
    with pytest.raises(ValueError, match="not a mesh file"):
        read_mesh_voxels(b"\x00\x01garbage that is no mesh")
    bad = tmp_path / "bad.stl"
    bad.write_bytes(b"solid x\nnot really\n")
    with pytest.raises(ValueError, match="bad.stl"):
        read_mesh_voxels(bad)
    with pytest.raises(ValueError, match="does not exist"):
        read_mesh_voxels(tmp_path / "missing.obj")
    with pytest.raises(ValueError, match="suffix"):
        write_mesh(np.zeros((16, 16, 16), bool), tmp_path / "x.ply")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="wrong.npy"):
        read_mesh_voxels(tmp_path / "wrong.npy")


# ---- tasks and judges -------------------------------------------------------------------------


def test_3d_tasks_are_opt_in():
    assert "text_to_3d" not in parse_mixture(None, None, "train")
    assert set(parse_mixture(None, ["text_to_3d", "describe_3d"], "train")) == {"text_to_3d", "describe_3d"}


def test_generate_3d_tasks_and_judges(tmp_path):
    generate(tmp_path, "val", 12, seed=4, tasks=["text_to_3d", "describe_3d"], workers=1)
    rows = read_jsonl(tmp_path / "val.jsonl")
    assert {r["task"] for r in rows} == {"text_to_3d", "describe_3d"}
    for r in rows:
        truth = r["truth"]
        scene = Scene3D.from_dict(truth["scene3d"])
        user, asst = r["messages"]
        if r["task"] == "text_to_3d":
            assert user["content"][0]["text"] == "make a 3D model of " + caption3d(scene)
            part = asst["content"][0]
            assert part["type"] == "mesh" and part["path"].endswith(".npy")
            vox = np.load(tmp_path / part["path"])
            assert vox.dtype == np.uint8 and vox.shape == (16, 16, 16)
            assert np.array_equal(vox.astype(bool), voxelize(scene))
            assert judge("text_to_3d", truth, vox)[0] == 1.0
            assert judge("text_to_3d", truth, tmp_path / part["path"])[0] == 1.0
            wrong = Scene3D(tuple(Stack(st.cell, Solid("sphere" if st.base.shape != "sphere" else "cube",
                                                       st.base.size)) for st in scene.stacks))
            assert judge("text_to_3d", truth, voxelize(wrong))[0] == 0.0
            assert judge("text_to_3d", truth, np.zeros((16, 16, 16), bool))[0] == 0.0
        else:
            assert [p["type"] for p in user["content"]] == ["mesh", "text"]
            assert user["content"][1]["text"] == "describe the 3D model"
            assert judge("describe_3d", truth, asst["content"][0]["text"])[0] == 1.0
            parts = asst["content"][0]["text"].split(" and ")
            assert judge("describe_3d", truth, " and ".join(reversed(parts)))[0] == 1.0
            other = caption3d(scene).replace("small", "tiny") if "small" in caption3d(scene) else \
                caption3d(scene).replace("big", "small")
            assert judge("describe_3d", truth, other)[0] == 0.0
