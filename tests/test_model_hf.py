"""Hugging Face parity: the exported decoder loads in `transformers` and gives the same logits."""

from __future__ import annotations

import json

import pytest
import torch

from omniloom.config import ModelConfig
from omniloom.model import Transformer
from omniloom.model.hf import export_hf, from_hf, import_hf, to_hf

transformers = pytest.importorskip("transformers")


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=64,
                norm_eps=1e-6, rope_theta=10000.0)
    base.update(kw)
    return ModelConfig(**base)


def randomize_norms(model: torch.nn.Module) -> None:
    """Norm weights start at 1; perturb them so a mis-mapped norm would show in the logits."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))


def hf_logits(out_dir, ids):
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        return hf, hf(input_ids=ids).logits


CASES = {
    "gqa-tied": dict(),
    "gqa-untied": dict(tie_embeddings=False),
    "mha-untied": dict(n_kv_heads=4, tie_embeddings=False),
    "mqa-tied": dict(n_kv_heads=1),
    "qk_norm-qwen3": dict(qk_norm=True, tie_embeddings=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_export_with_same_logits(tmp_path, case):
    torch.manual_seed(0)
    cfg = tiny(**CASES[case])
    model = Transformer(cfg).eval()
    randomize_norms(model)
    export_hf(model, cfg, tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["architectures"] == (["Qwen3ForCausalLM"] if cfg.qk_norm else ["LlamaForCausalLM"])
    ids = torch.randint(0, cfg.vocab_size, (2, 23))
    with torch.no_grad():
        ours = model(ids)
    hf, theirs = hf_logits(tmp_path / "hf", ids)
    expected_cls = "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"
    assert type(hf).__name__ == expected_cls
    assert hf.config.tie_word_embeddings == cfg.tie_embeddings
    assert ours.shape == theirs.shape == (2, 23, cfg.vocab_size)
    assert (ours - theirs).abs().max().item() <= 1e-4
    # a genuinely different model would not pass: logits are not trivially small
    assert ours.abs().max().item() > 1e-2


def test_tied_export_has_no_lm_head_and_untied_has_one():
    cfg_t, cfg_u = tiny(), tiny(tie_embeddings=False)
    _, sd_t = to_hf(Transformer(cfg_t), cfg_t)
    hf_cfg, sd_u = to_hf(Transformer(cfg_u), cfg_u)
    assert "lm_head.weight" not in sd_t and "model.embed_tokens.weight" in sd_t
    assert "lm_head.weight" in sd_u and hf_cfg["tie_word_embeddings"] is False
    assert all(k.startswith("model.") for k in sd_t)


@pytest.mark.parametrize("case", ["gqa-tied", "gqa-untied", "qk_norm-qwen3"])
def test_import_back_identical(tmp_path, case):
    torch.manual_seed(0)
    cfg = tiny(**CASES[case])
    model = Transformer(cfg).eval()
    randomize_norms(model)
    export_hf(model, cfg, tmp_path / "hf")
    cfg2, sd2 = from_hf(tmp_path / "hf")
    assert cfg2 == cfg
    back = import_hf(tmp_path / "hf").eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    ids = torch.randint(0, cfg.vocab_size, (2, 17))
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))


def test_hf_model_round_trip_through_transformers(tmp_path):
    """A model saved by transformers itself (random init) imports with the same logits."""
    torch.manual_seed(0)
    cfg = tiny(tie_embeddings=False)
    hf_cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_cfg).eval()
    hf.save_pretrained(str(tmp_path / "saved"))
    ours = import_hf(tmp_path / "saved").eval()
    assert ours.cfg.dim == cfg.dim and not ours.cfg.tie_embeddings
    ids = torch.randint(0, 97, (1, 19))
    with torch.no_grad():
        assert (ours(ids) - hf(input_ids=ids).logits).abs().max().item() <= 1e-4


def test_import_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        from_hf(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        from_hf(tmp_path / "empty")
    cfg = tiny()
    export_hf(Transformer(cfg), cfg, tmp_path / "hf")
    # corrupt the config so a tensor's shape no longer fits: the error names the tensor
    c = json.loads((tmp_path / "hf" / "config.json").read_text())
    c["intermediate_size"] = 100
    (tmp_path / "hf" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="gate_proj.weight"):
        import_hf(tmp_path / "hf")
    c["model_type"] = "gpt2"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(c))
    with pytest.raises(ValueError, match="model_type"):
        from_hf(tmp_path / "hf")


def test_export_is_atomic_and_overwrites(tmp_path):
    cfg = tiny()
    out = tmp_path / "hf"
    export_hf(Transformer(cfg), cfg, out)
    first = (out / "model.safetensors").read_bytes()
    torch.manual_seed(5)
    export_hf(Transformer(cfg), cfg, out)
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp dir left behind


def _write_checkpoint(d, cfg_model):
    from safetensors.torch import save_file

    from omniloom.config import Config, config_to_dict

    torch.manual_seed(2)
    model = Transformer(cfg_model).eval()
    randomize_norms(model)
    d.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    cfg = Config(name="t", model=cfg_model)
    cfg.data.seq_len = 32
    (d / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    return model


def main(argv: list[str]) -> int:
    """`omniloom export ...` as cli.main runs it (ValueError -> message + exit 2), without importing
    the other verbs' modules."""
    import argparse
    import sys

    from omniloom.model import export_cli

    assert argv[0] == "export"
    parser = argparse.ArgumentParser(prog="omniloom export")
    export_cli.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(export_cli.run(args) or 0)
    except ValueError as e:
        print(f"omniloom export: error: {e}", file=sys.stderr)
        return 2


def test_cli_export_and_import_round_trip(tmp_path, capsys):
    from safetensors.torch import load_file

    cfg = tiny(tie_embeddings=False)
    model = _write_checkpoint(tmp_path / "ckpt", cfg)
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    ids = torch.randint(0, cfg.vocab_size, (1, 15))
    with torch.no_grad():
        ours = model(ids)
    _, theirs = hf_logits(tmp_path / "hf", ids)
    assert (ours - theirs).abs().max().item() <= 1e-4

    assert main(["export", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(model.state_dict())
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    from omniloom.config import config_from_dict

    assert config_from_dict(json.loads((tmp_path / "back" / "config.json").read_text())).model == cfg


def test_cli_errors(tmp_path, capsys):
    from safetensors.torch import save_file

    assert main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["export", "--checkpoint", str(tmp_path / "half"), "--out", str(tmp_path / "o")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    model = _write_checkpoint(tmp_path / "ckpt", tiny())
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(sd, str(tmp_path / "ckpt" / "model.safetensors"))
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "o")]) == 2
    assert "layers.1.mlp.up_proj.weight" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written
    with pytest.raises(SystemExit):
        main(["export", "--out", str(tmp_path / "o")])  # needs --checkpoint or --from-hf


def test_cli_export_model_directory_for_bundling(tmp_path, capsys):
    # --format omniloom: a checkpoint -> an inference model dir (bf16 weights, vocab, tokenizer,
    # codecs that live inside the checkpoint travel along) that OmniModel.load answers from
    from safetensors.torch import load_file

    from omniloom.infer.engine import Request
    from omniloom.infer.generate import OmniModel
    from omniloom.infer.sampling import SamplingParams
    from omniloom.serve.tiny import build_tiny_model, save_model

    src = save_model(build_tiny_model(), tmp_path / "ckpt")
    (src / "generation.json").unlink()  # a training checkpoint of data without task prompts
    (src / "optimizer.pt").write_bytes(b"not for inference")
    out = tmp_path / "bundled"
    assert main(["export", "--checkpoint", str(src), "--format", "omniloom", "--dtype", "bfloat16",
                 "--out", str(out)]) == 0
    assert "omniloom model directory" in capsys.readouterr().out
    assert not (out / "optimizer.pt").exists()
    assert all(v.dtype == torch.bfloat16 for v in load_file(str(out / "model.safetensors")).values())
    a, b = OmniModel.load(src), OmniModel.load(out)
    assert set(b.codecs) == set(a.codecs) == {"image", "audio"}
    assert b.vocab.size == a.vocab.size
    a.model.to(torch.bfloat16).float()  # the same rounding as the export
    prompt = [a.vocab.bos_id, 5, 6, 7]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    assert b.engine.generate([Request(prompt, params)]) == a.engine.generate([Request(prompt, params)])
    # shipping new weights over a model directory keeps its decoding defaults
    (out / "generation.json").write_text('{"cfg_scale": 2.0}')
    assert main(["export", "--checkpoint", str(src), "--format", "omniloom", "--out", str(out)]) == 0
    assert "kept its generation.json" in capsys.readouterr().out
    assert OmniModel.load(out).generation == {"cfg_scale": 2.0}

    _write_checkpoint(tmp_path / "bare", tiny())
    assert main(["export", "--checkpoint", str(tmp_path / "bare"), "--format", "omniloom", "--out",
                 str(tmp_path / "x")]) == 2
    assert "vocab.json is missing" in capsys.readouterr().err


def test_long_sequence_logits_match_transformers(tmp_path):
    """Past BLOCKED_ATTENTION_MIN tokens our CPU forward takes blocked causal attention; the
    exported model still gives transformers' logits."""
    from omniloom.model.llama import BLOCKED_ATTENTION_MIN

    torch.manual_seed(0)
    T = BLOCKED_ATTENTION_MIN + 45
    cfg = tiny(max_seq_len=T + 8)
    model = Transformer(cfg).eval()
    randomize_norms(model)
    export_hf(model, cfg, tmp_path / "hf")
    ids = torch.randint(0, cfg.vocab_size, (2, T))
    with torch.no_grad():
        ours = model(ids)
    _, theirs = hf_logits(tmp_path / "hf", ids)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert ours.abs().max().item() > 1e-2
