"""examples/merge_weights.py: the interpolated weights, and the refusals that keep it from mixing models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omniloom.serve.tiny import build_tiny_model, save_model

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("merge_weights", ROOT / "examples" / "merge_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    return save_model(build_tiny_model(seed=0), d / "a"), save_model(build_tiny_model(seed=1), d / "b")


def test_merge_interpolates_every_tensor_and_loads(two_models, tmp_path):
    from omniloom.infer.generate import OmniModel

    a, b = two_models
    out = tmp_path / "m"
    assert _script().main([str(a), str(b), "--t", "0.25", "--out", str(out), "--dtype", "float32"]) == 0
    sa, sb, sm = (load_file(str(d / "model.safetensors")) for d in (a, b, out))
    assert sm.keys() == sa.keys()
    differ = 0
    for k in sa:
        torch.testing.assert_close(sm[k], 0.75 * sa[k] + 0.25 * sb[k], rtol=0, atol=1e-6)
        differ += not torch.equal(sa[k], sb[k])
    assert differ > 0  # the two seeds really gave different weights
    assert json.loads((out / "vocab.json").read_text()) == json.loads((b / "vocab.json").read_text())
    OmniModel.load(out)  # a complete model directory


def test_merge_refuses_mismatched_models(two_models, tmp_path, capsys):
    import shutil

    a, b = two_models
    script = _script()
    other = tmp_path / "other"
    shutil.copytree(b, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["n_layers"] += 1
    (other / "config.json").write_text(json.dumps(cfg))
    assert script.main([str(a), str(other), "--t", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "different architectures (model.n_layers)" in capsys.readouterr().err

    shutil.copytree(b, tmp_path / "vocab", dirs_exist_ok=True)
    vocab = json.loads((tmp_path / "vocab" / "vocab.json").read_text())
    vocab["voices"] = list(reversed(vocab["voices"]))
    (tmp_path / "vocab" / "vocab.json").write_text(json.dumps(vocab))
    assert script.main([str(a), str(tmp_path / "vocab"), "--t", "0.5", "--out", str(tmp_path / "y")]) == 2
    assert "differ: the two models read different token ids" in capsys.readouterr().err

    assert script.main([str(a), str(b), "--t", "1.5", "--out", str(tmp_path / "z")]) == 2
    assert "--t must lie in [0, 1]" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("x", "y", "z"))  # nothing written on refusal
