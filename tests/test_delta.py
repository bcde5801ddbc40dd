"""Deltas over an omniloom model (not only over a grafted LLM): a frozen-base run of a model directory
or a bundled model exports as adapters + the rows it trained, and loads back as the trained model."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from omniloom.cli import main
from omniloom.config import config_from_dict, config_to_dict
from omniloom.infer.generate import OmniModel
from omniloom.model import Transformer
from omniloom.model.delta import omniloom_base_dir, read_any_base
from omniloom.model.lora import LoRALinear, apply_lora, merge_lora_state
from omniloom.serve.tiny import build_tiny_model, save_model


def _trained_checkpoint(tmp_path):
    """A tiny model directory (the base) and a checkpoint of a freeze_base run over it: rank-2
    adapters, and two base rows trained (train.train_rows_also)."""
    base = save_model(build_tiny_model(seed=3), tmp_path / "base")
    omni = OmniModel.load(base)
    cfg = config_from_dict(json.loads((base / "config.json").read_text()))
    cfg.train.freeze_base, cfg.train.lora_rank, cfg.train.lora_alpha = True, 2, 4.0
    (tmp_path / "rows.json").write_text("[40, 7]")
    cfg.train.train_rows_also = str(tmp_path / "rows.json")
    apply_lora(omni.model, ["q_proj", "down_proj"], 2, 4.0)
    torch.manual_seed(1)
    for m in omni.model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.2)  # as if trained
    with torch.no_grad():
        omni.model.embed_tokens.weight[[7, 40]] += 0.3
    state = {k: v.detach().clone() for k, v in omni.model.state_dict().items()}
    ck = tmp_path / "ck"
    ck.mkdir()
    save_file(state, str(ck / "model.safetensors"))
    (ck / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    (ck / "vocab.json").write_text((base / "vocab.json").read_text())
    (ck / "generation.json").write_text(json.dumps({"prompts": {"speak": "di {text}"}}))
    return base, ck, cfg, state


def test_a_delta_over_a_model_directory_rebuilds_the_trained_model(tmp_path, monkeypatch):
    base, ck, cfg, state = _trained_checkpoint(tmp_path)
    monkeypatch.chdir(tmp_path)  # --base given relative: base.json keeps it absolute
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--base", "base", "--dtype", "float32",
                 "--out", str(tmp_path / "delta")]) == 0
    info = json.loads((tmp_path / "delta" / "base.json").read_text())
    assert info["base"] == str(base.resolve()) and info["text_size"] == cfg.model.vocab_size
    delta = load_file(str(tmp_path / "delta" / "delta.safetensors"))
    assert delta["embed_tokens.row_ids"].tolist() == [7, 40] and delta["embed_tokens.rows"].shape[0] == 2
    # the rows file the run read is written into the delta's config as ids
    assert json.loads((tmp_path / "delta" / "config.json").read_text())["train"]["train_rows_also"] == "7,40"
    assert not any(k.endswith(".new_rows") or k.endswith(".weight") for k in delta)  # no base tensor copied
    monkeypatch.chdir(tmp_path / "delta")  # loads from anywhere
    back = OmniModel.load(tmp_path / "delta")
    assert back.generation == {"prompts": {"speak": "di {text}"}}
    full = Transformer(cfg.model).eval()
    full.load_state_dict(merge_lora_state(state, 4.0))
    ids = torch.tensor([[1, 7, 40, 9, 12, 200]])
    with torch.no_grad():
        assert (back.model(ids) - full(ids)).abs().max().item() <= 1e-5
        plain = OmniModel.load(base).model
        assert (back.model(ids) - plain(ids)).abs().max().item() > 1e-3  # the delta is not the base
    # a rebuilt base of another content is refused by its hash, naming the file
    w = load_file(str(base / "model.safetensors"))
    w["norm.weight"] = w["norm.weight"] + 1
    save_file(w, str(base / "model.safetensors"))
    with pytest.raises(ValueError, match="another copy"):
        OmniModel.load(tmp_path / "delta")


def test_a_delta_refuses_a_run_that_trained_most_rows_or_a_base_with_gated_adapters(tmp_path, capsys):
    base, ck, cfg, state = _trained_checkpoint(tmp_path)
    state = dict(state)
    state["embed_tokens.weight"] = state["embed_tokens.weight"] + 0.01  # every row: a full fine-tune
    save_file(state, str(ck / "model.safetensors"))
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--base", str(base),
                 "--out", str(tmp_path / "d")]) == 2
    assert "rows changed in training" in capsys.readouterr().err and not (tmp_path / "d").exists()
    # a model directory that still carries position-gated adapters is no base
    cfg.train.lora_gate_from = 5
    (ck / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    with pytest.raises(ValueError, match="position-gated adapters of its own"):
        read_any_base(str(ck))


def test_bundled_model_names_are_bases_and_win_over_a_folder_of_that_name(tmp_path, monkeypatch):
    from omniloom.utils.model_dir import MODELS_DIR

    monkeypatch.chdir(tmp_path)
    (tmp_path / "world").mkdir()  # a folder named like the bundled model, without a model in it
    assert omniloom_base_dir("world") == MODELS_DIR / "world"
    assert omniloom_base_dir("smollm2-135m") is None and omniloom_base_dir(str(tmp_path)) is None
    b = read_any_base("world")
    assert b.cfg.vocab_size == b.state["embed_tokens.weight"].shape[0]


def test_a_delta_refuses_codecs_that_live_inside_the_checkpoint(tmp_path, capsys):
    base, ck, cfg, state = _trained_checkpoint(tmp_path)
    (ck / "codec-image").mkdir()
    (ck / "codecs.json").write_text(json.dumps({"image": "codec-image"}))
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--base", str(base),
                 "--out", str(tmp_path / "d")]) == 2
    assert "codec-image" in capsys.readouterr().err and not (tmp_path / "d").exists()
    (ck / "codecs.json").unlink()
    assert main(["export", "--checkpoint", str(ck), "--format", "delta", "--out", str(tmp_path / "d")]) == 2
    assert "needs --base" in capsys.readouterr().err
