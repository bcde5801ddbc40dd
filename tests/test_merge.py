"""`omniloom merge`: weighted averages of models of one architecture and vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omniloom.cli import main
from omniloom.codecs.text import TextTokenizer
from omniloom.config import Config, ModelConfig, config_to_dict
from omniloom.infer.generate import OmniModel
from omniloom.model import Transformer
from omniloom.model.merge_cli import merge_states, parse_weights
from omniloom.tokens import Vocab

CORPUS = ["what color is the star?", "a big red circle at the top left", "draw a small blue square"] * 4


def _model_dir(d: Path, seed: int, like: Path | None = None, dim: int = 32) -> Path:
    """A random tiny model directory; ``like``: share its vocabulary and tokenizer."""
    d.mkdir(parents=True)
    if like is None:
        tok = TextTokenizer.train(CORPUS, vocab_size=280)
        Vocab.build(tok.vocab_size, image_codebook_size=16, image_tokens=4, audio_codebook_size=8,
                    audio_codebooks=2, voices=["nova"]).save(d / "vocab.json")
        tok.save(d / "tokenizer.json")
    else:
        for f in ("vocab.json", "tokenizer.json"):
            shutil.copy(like / f, d / f)
    vocab = Vocab.load(d / "vocab.json")
    cfg = Config(name="tiny")
    cfg.model = ModelConfig(vocab_size=vocab.size, dim=dim, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                            max_seq_len=64)
    torch.manual_seed(seed)
    model = Transformer(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    (d / "generation.json").write_text(json.dumps({"prompts": {"caption": f"describe it ({d.name})"}}))
    return d


def test_the_merge_is_the_weighted_average_of_every_tensor(tmp_path, capsys):
    a = _model_dir(tmp_path / "a", seed=1)
    b = _model_dir(tmp_path / "b", seed=2, like=a)
    out = tmp_path / "ab"
    assert main(["merge", str(a), str(b), "--weights", "0.25,0.75", "--out", str(out)]) == 0
    assert "merged 0.25 x" in capsys.readouterr().out
    sa, sb, so = (load_file(str(d / "model.safetensors")) for d in (a, b, out))
    assert set(so) == set(sa)
    for k in sa:
        torch.testing.assert_close(so[k], 0.25 * sa[k] + 0.75 * sb[k])
    assert json.loads((out / "merge.json").read_text())["weights"] == [0.25, 0.75]
    # the small files come from the first model; the directory loads like any model
    assert (out / "generation.json").read_text() == (a / "generation.json").read_text()
    assert (out / "vocab.json").read_bytes() == (a / "vocab.json").read_bytes()
    OmniModel.load(out, device="cpu")


def test_weights_one_and_zero_give_the_first_model_back(tmp_path):
    a = _model_dir(tmp_path / "a", seed=1)
    b = _model_dir(tmp_path / "b", seed=2, like=a)
    assert main(["merge", str(a), str(b), "--weights", "1,0", "--out", str(tmp_path / "o")]) == 0
    ids = torch.tensor([[1, 5, 9, 40, 7]])
    ma, mo = (OmniModel.load(d, device="cpu").model for d in (a, tmp_path / "o"))
    with torch.no_grad():
        torch.testing.assert_close(mo(ids), ma(ids))
    # the default is equal weights; a training run (ckpt/latest) is read as its newest checkpoint
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    shutil.copytree(b, run / "ckpt" / "step_0000010")
    (run / "ckpt" / "latest").write_text("step_0000010")
    assert main(["merge", str(a), str(run), "--out", str(tmp_path / "eq")]) == 0
    sa, sb, so = (load_file(str(d / "model.safetensors")) for d in (a, b, tmp_path / "eq"))
    k = "tok_embeddings.weight" if "tok_embeddings.weight" in sa else sorted(sa)[0]
    torch.testing.assert_close(so[k], 0.5 * sa[k] + 0.5 * sb[k])


def test_parse_weights():
    assert parse_weights(None, 4) == [0.25] * 4
    assert parse_weights("-0.2,1.2", 2) == [-0.2, 1.2]  # extrapolation is allowed
    for text, n, msg in [("0.5", 2, "1 weight(s) for 2 models"), ("0.5,0.6", 2, "sum to 1.1"),
                         ("a,b", 2, "comma-separated numbers"), ("nan,1", 2, "finite")]:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            parse_weights(text, n)


def test_merge_states_names_the_mismatch():
    a = {"w": torch.ones(2, 2), "step": torch.tensor(3)}
    with pytest.raises(ValueError, match="b and a hold different tensors.*lacks"):
        merge_states([a, {"w": torch.ones(2, 2)}], [0.5, 0.5], ["a", "b"])
    with pytest.raises(ValueError, match=r"'w' is \(3, 2\) in b"):
        merge_states([a, {"w": torch.ones(3, 2), "step": torch.tensor(3)}], [0.5, 0.5], ["a", "b"])
    out = merge_states([a, {"w": 3 * torch.ones(2, 2), "step": torch.tensor(5)}], [0.5, 0.5], ["a", "b"])
    assert torch.equal(out["w"], 2 * torch.ones(2, 2)) and out["step"].item() == 3  # integers: the first's


def test_unlike_models_are_refused_and_nothing_is_lost(tmp_path, capsys):
    a = _model_dir(tmp_path / "a", seed=1)
    b = _model_dir(tmp_path / "b", seed=2, like=a)
    out = _model_dir(tmp_path / "keep", seed=3, like=a)  # an existing directory the failures must leave alone
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    wide = _model_dir(tmp_path / "wide", seed=2, like=a, dim=48)
    assert main(["merge", str(a), str(wide), "--out", str(out)]) == 2
    assert "differ in model.dim (48 vs 32" in capsys.readouterr().err

    other_vocab = _model_dir(tmp_path / "v", seed=2, like=a)
    v = json.loads((other_vocab / "vocab.json").read_text())
    v["_changed"] = 1  # any difference at all: the check compares the whole file
    (other_vocab / "vocab.json").write_text(json.dumps(v))
    assert main(["merge", str(a), str(other_vocab), "--out", str(out)]) == 2
    assert "vocab.json differs" in capsys.readouterr().err

    assert main(["merge", str(a), "--out", str(out)]) == 2
    assert "two or more models" in capsys.readouterr().err
    assert main(["merge", str(a), str(b), "--weights", "0.5,0.6", "--out", str(out)]) == 2
    assert "sum to 1.1" in capsys.readouterr().err
    assert main(["merge", str(a), str(b), "--out", str(a)]) == 2
    assert "is one of the models" in capsys.readouterr().err
    assert main(["merge", str(a), str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
