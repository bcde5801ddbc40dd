"""POST /v1/3d/generations: 3D answers as STL/OBJ/GLB files, on a tiny random model with a mesh codec."""

import base64
import io

import httpx2 as httpx
import pytest
import trimesh

from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import serve_in_thread
from omniloom.serve.tiny import build_tiny_model

KEY = "sk-test-key"
H = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def url():
    app = create_app(build_tiny_model(mesh=True), ServeSettings(model_id="tiny", api_key=KEY))
    with serve_in_thread(app) as u:
        yield u


def _post(url, **body):
    return httpx.post(url + "/v1/3d/generations", json={"model": "tiny", "prompt": "make a 3D model of a cube", **body},
                      headers=H, timeout=120)


@pytest.mark.parametrize("fmt", ["stl", "obj", "glb"])
def test_3d_generation_returns_a_mesh_file(url, fmt):
    r = _post(url, n=2, output_format=fmt, seed=1)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["output_format"] == fmt and len(j["data"]) == 2 and j["usage"]["output_tokens"] > 0
    for d in j["data"]:
        data = base64.b64decode(d["b64_json"])
        if d["triangles"]:
            mesh = trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh")
            assert len(mesh.faces) == d["triangles"]
            assert mesh.is_watertight == d["watertight"]
        assert 0 <= d["voxels"] <= 16**3


def test_3d_generation_seed_repeats(url):
    a, b = _post(url, seed=7).json(), _post(url, seed=7).json()
    assert a["data"][0]["b64_json"] == b["data"][0]["b64_json"]


def test_3d_generation_bad_requests(url):
    r = _post(url, output_format="ply")
    assert r.status_code == 400 and "output_format" in r.text
    assert _post(url, n=5).status_code == 400
    assert _post(url, prompt="").status_code == 400
    assert _post(url, model="nope").status_code == 404
    models = httpx.get(url + "/v1/models", headers=H).json()["data"][0]
    assert "mesh" in models["output_modalities"] and "mesh" in models["input_modalities"]


def test_3d_generation_needs_a_mesh_codec():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny"))
    with serve_in_thread(app) as u:
        r = httpx.post(u + "/v1/3d/generations", json={"model": "tiny", "prompt": "a cube"}, timeout=60)
    assert r.status_code == 400 and "no mesh codec" in r.json()["error"]["message"]


def test_untrained_3d_answers_carry_a_warning(tmp_path):
    """A model whose generation.json marks mesh answers untrained says so with every 3D answer."""
    omni = build_tiny_model(mesh=True)
    omni.generation["untrained"] = {"mesh": "never trained on 3D"}
    app = create_app(omni, ServeSettings(model_id="tiny"))
    with serve_in_thread(app) as u:
        r = httpx.post(u + "/v1/3d/generations", json={"model": "tiny", "prompt": "a cube"}, timeout=60)
    assert r.status_code == 200 and r.json()["warnings"] == ["never trained on 3D"]


def test_generation_json_untrained_is_checked(tmp_path):
    import json

    from omniloom.infer.generate import read_generation

    (tmp_path / "generation.json").write_text(json.dumps({"untrained": {"mesh": "noise"}}))
    assert read_generation(tmp_path)["untrained"] == {"mesh": "noise"}
    (tmp_path / "generation.json").write_text(json.dumps({"untrained": {"smell": "x"}}))
    with pytest.raises(ValueError, match="untrained must be an object of output modality"):
        read_generation(tmp_path)


def test_the_bundled_world_model_says_its_3d_is_untrained():
    from omniloom.infer.generate import read_generation, resolve_model_dir

    assert "never trained" in read_generation(resolve_model_dir("world"))["untrained"]["mesh"]
