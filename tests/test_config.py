"""Typed configs: presets build and validate, YAML + dotted overrides apply, bad input names the key."""

from __future__ import annotations

import pytest

from omniloom.config import (PRESETS, Config, ModelConfig, apply_overrides, config_from_dict, config_to_dict,
                             load_config, preset)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config) and cfg.name == name
    assert cfg.data.seq_len <= cfg.model.max_seq_len
    assert cfg.train.micro_batch_size <= cfg.train.batch_size


@pytest.mark.parametrize("name, lo, hi", [
    ("debug", 0.5e6, 2e6),
    ("world", 10e6, 30e6),  # with a vocabulary of 4096 (the world's is set from its data)
    ("150m", 120e6, 180e6),
    ("1b", 0.8e9, 1.5e9),
])
def test_parameter_counts_in_range(name, lo, hi):
    m = preset(name).model
    if m.vocab_size == 0:
        m.vocab_size = 4096
    assert lo <= m.num_params() <= hi, f"{name}: {m.num_params():,}"
    assert m.num_params(include_embedding=False) < m.num_params()


@pytest.mark.parametrize("kw", [dict(), dict(qk_norm=True), dict(tie_embeddings=False), dict(n_kv_heads=4)])
def test_num_params_matches_built_model(kw):
    from omniloom.model import Transformer

    m = ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=32)
    for k, v in kw.items():
        setattr(m, k, v)
    model = Transformer(m)
    assert sum(p.numel() for p in model.parameters()) == m.num_params()


def test_debug_preset_builds_a_model():
    from omniloom.model import Transformer

    m = preset("debug").model
    model = Transformer(m)
    assert sum(p.numel() for p in model.parameters()) == m.num_params()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n_layers: 5\n  dim: 96\ntrain:\n  lr: 0.001\n  compile: true\n")
    cfg = load_config("debug", yaml_path=path, overrides=["model.n_layers=6", "train.dtype=fp32", "data.mode=pretrain"])
    assert cfg.model.n_layers == 6  # override wins over YAML
    assert cfg.model.dim == 96 and cfg.train.lr == 1e-3 and cfg.train.compile is True
    assert cfg.train.dtype == "fp32" and cfg.data.mode == "pretrain"
    assert cfg.model.n_heads == preset("debug").model.n_heads  # untouched keys keep the preset


def test_yaml_preset_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: world\nmodel:\n  vocab_size: 512\n")
    cfg = load_config("debug", yaml_path=path)
    assert cfg.name == "world" and cfg.model.vocab_size == 512 and cfg.model.dim == preset("world").model.dim


@pytest.mark.parametrize("override, needle", [
    ("model.nope=3", "model.nope"),
    ("nope.dim=3", "nope"),
    ("model.dim=abc", "model.dim"),
    ("train.compile=maybe", "train.compile"),
    ("train.lr=fast", "train.lr"),
    ("model.n_layers=2.5", "model.n_layers"),
    ("model.dim", "key=value"),
])
def test_bad_override_names_the_key(override, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        load_config("debug", overrides=[override])


@pytest.mark.parametrize("override, needle", [
    ("model.n_heads=5", "n_heads"),
    ("model.n_kv_heads=3", "n_kv_heads"),
    ("train.dtype=fp8", "train.dtype"),
    ("data.mode=chat", "data.mode"),
    ("data.seq_len=100000", "data.seq_len"),
    ("train.steps=0", "train.steps"),
])
def test_invalid_values_fail_validation(override, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        load_config("debug", overrides=[override])


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config("debug", yaml_path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config("debug", yaml_path=bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  width: 3\n")
    with pytest.raises(ValueError, match="model.width"):
        load_config("debug", yaml_path=unknown)


def test_unknown_preset():
    with pytest.raises(ValueError, match="nope"):
        preset("nope")


def test_dict_round_trip():
    cfg = load_config("world", overrides=["model.vocab_size=777", "train.lr=5e-4"])
    back = config_from_dict(config_to_dict(cfg))
    assert back == cfg
    with pytest.raises(ValueError, match="model.bogus"):
        apply_overrides(Config(), {"model": {"bogus": 1}})
