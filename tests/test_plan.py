"""`omniloom plan`: the parameters it counts are the decoder's own, FSDP2 divides what it shards,
LoRA shrinks the optimizer as the trainer does, the activation formula is what autograd keeps,
and bad input gets a one-line error."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omniloom.cli import main
from omniloom.config import Config, ModelConfig, config_to_dict
from omniloom.model.llama import Transformer
from omniloom.model.lora import apply_lora
from omniloom.tokens.vocab import Vocab
from omniloom.train.plan import (GIB, HF_PRESETS, PlanRequest, layer_activation_bytes, model_for_preset,
                                 model_from_dir, parameter_shapes, plan, trainable_names)
from omniloom.train.step import freeze_for_adapters
from omniloom.utils.model_dir import resolve_model_dir

TINY = ModelConfig(vocab_size=1000, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=160, max_seq_len=256,
                   qk_norm=True, tie_embeddings=False, image_pos_embed=True, image_tokens=16, image_open_id=900,
                   image_code_start=910, image_code_end=990)


def _module_shapes(cfg: ModelConfig, lora_rank: int = 0, targets: tuple[str, ...] = ()) -> dict[str, tuple]:
    with torch.device("meta"):
        model = Transformer(cfg)
    if lora_rank:
        apply_lora(model, targets, lora_rank, 16.0)
    return {k: tuple(p.shape) for k, p in model.named_parameters()}


def _configs() -> list[tuple[str, ModelConfig]]:
    out = [("tiny", TINY), ("world", model_for_preset("world")[0])]
    out += [(name, model_for_preset(name)[0]) for name in HF_PRESETS]
    return out


@pytest.mark.parametrize("name,cfg", _configs(), ids=lambda x: x if isinstance(x, str) else "")
def test_parameters_are_those_of_the_module_built_from_the_config(name, cfg):
    shapes = parameter_shapes(cfg)
    assert shapes == _module_shapes(cfg)  # every name and shape, built on the meta device
    req = PlanRequest(model=cfg, title=name, seq_len=min(64, cfg.max_seq_len), micro_batch=1)
    assert plan(req)["model"]["parameters"] == sum(math.prod(s) for s in _module_shapes(cfg).values())


def test_the_reference_preset_is_the_shipped_model():
    from safetensors import safe_open

    cfg = model_for_preset("world")[0]
    with safe_open(str(resolve_model_dir("world") / "model.safetensors"), "pt") as f:
        stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert sum(math.prod(s) for s in parameter_shapes(cfg).values()) == stored


def test_lora_trains_what_the_trainer_leaves_trainable():
    targets = ("q_proj", "v_proj", "down_proj")
    with torch.device("meta"):
        model = Transformer(TINY)
    apply_lora(model, targets, 8, 16.0)
    kept = set(freeze_for_adapters(model))
    shapes = parameter_shapes(TINY, 8, targets)
    assert shapes == {k: tuple(p.shape) for k, p in model.named_parameters()}
    assert trainable_names(list(shapes), "lora") == kept

    full = plan(PlanRequest(model=TINY, title="t", seq_len=64, micro_batch=2))
    lora = plan(PlanRequest(model=TINY, title="t", seq_len=64, micro_batch=2, train="lora", lora_rank=8,
                            lora_targets=targets))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora["model"]["trainable"] == n_train
    assert lora["memory_bytes"]["optimizer"] == 8 * n_train  # two fp32 AdamW states per trainable value
    assert full["memory_bytes"]["optimizer"] == 8 * full["model"]["parameters"]
    assert lora["memory_bytes"]["optimizer"] < full["memory_bytes"]["optimizer"]
    # the frozen weights skip their weight gradient: fewer FLOPs per token
    assert lora["throughput"]["flops_per_token"]["blocks"] < full["throughput"]["flops_per_token"]["blocks"]


def test_fsdp_divides_the_sharded_terms_by_the_gpus():
    cfg = model_for_preset("smollm2-135m")[0]
    one = plan(PlanRequest(model=cfg, title="s", gpus=1, micro_batch=2, seq_len=512))
    eight = plan(PlanRequest(model=cfg, title="s", gpus=8, micro_batch=2, seq_len=512))
    replicated = plan(PlanRequest(model=cfg, title="s", gpus=8, micro_batch=2, seq_len=512, fsdp=False))
    m1, m8 = one["memory_bytes"], eight["memory_bytes"]
    shapes = parameter_shapes(cfg)
    dim0_shards = 4 * sum(-(-s[0] // 8) * math.prod(s[1:]) for s in shapes.values())  # FSDP2: dim 0, padded
    assert m8["weights"] == dim0_shards
    for key in ("weights", "gradients", "optimizer"):
        assert m1[key] / 8 <= m8[key] <= m1[key] / 8 * 1.001
    assert m8["activations"] == m1["activations"]  # each GPU runs its own micro-batch
    assert m8["fsdp_buffers"] > 0 and m1["fsdp_buffers"] == 0
    assert replicated["memory_bytes"]["weights"] == m1["weights"] and not replicated["run"]["fsdp"]
    assert eight["throughput"]["tokens_per_s"] == pytest.approx(8 * one["throughput"]["tokens_per_s"])


def test_accumulating_under_fsdp_keeps_every_gradient_unsharded():
    cfg = model_for_preset("smollm2-135m")[0]
    once = plan(PlanRequest(model=cfg, title="s", gpus=4, micro_batch=2, seq_len=256))
    twice = plan(PlanRequest(model=cfg, title="s", gpus=4, micro_batch=2, batch_size=16, seq_len=256))
    assert twice["run"]["accumulation"] == 2
    assert twice["memory_bytes"]["gradients_in_backward"] == 4 * twice["model"]["trainable"]
    assert once["memory_bytes"]["gradients_in_backward"] < twice["memory_bytes"]["gradients_in_backward"] / 2
    assert any("unsharded" in n for n in twice["notes"])


def test_dpo_adds_the_frozen_reference_and_its_forward():
    """train.objective=dpo keeps a frozen fp32 copy of the weights (sharded like them under FSDP2)
    and runs it forward: the peak grows by exactly that copy, FLOPs by one forward pass."""
    cfg = model_for_preset("smollm2-135m")[0]
    for gpus in (1, 8):
        base = dict(model=cfg, title="s", gpus=gpus, micro_batch=2, seq_len=512, train="lora")
        sft, dpo = plan(PlanRequest(**base)), plan(PlanRequest(**base, objective="dpo"))
        ms, md = sft["memory_bytes"], dpo["memory_bytes"]
        assert ms["reference_weights"] == 0 and md["reference_weights"] == md["weights"] == ms["weights"]
        assert md["peak"] - ms["peak"] == md["reference_weights"]
        assert md["optimizer"] == ms["optimizer"] and md["activations"] == ms["activations"]
    fs, fd = sft["throughput"]["flops_per_token"], dpo["throughput"]["flops_per_token"]
    shapes = parameter_shapes(cfg, 16, ("q_proj", "k_proj", "v_proj", "o_proj"))  # the copy holds the adapters too
    blocks = sum(math.prod(s) for k, s in shapes.items() if k.startswith("layers.") and len(s) == 2)
    assert fd["reference"] == pytest.approx(2 * blocks + 2 * cfg.vocab_size * cfg.dim
                                            + 4 * cfg.n_layers * cfg.n_heads * cfg.head_dim * 512)
    assert fs["reference"] == 0 and fd["total"] == pytest.approx(fs["total"] + fd["reference"])


def test_activation_checkpointing_reduces_activation_memory_and_adds_a_forward():
    cfg = model_for_preset("smollm2-360m")[0]
    base = dict(model=cfg, title="s", micro_batch=4, seq_len=2048)
    off, on = plan(PlanRequest(**base)), plan(PlanRequest(**base, activation_checkpointing=True))
    per_layer = sum(layer_activation_bytes(cfg, 4, 2048).values())
    assert off["memory_bytes"]["activations_layers"] == cfg.n_layers * per_layer
    assert on["memory_bytes"]["activations_layers"] == cfg.n_layers * 4 * 4 * 2048 * cfg.dim + per_layer
    assert on["memory_bytes"]["activations_layers"] < off["memory_bytes"]["activations_layers"] / 4
    assert on["memory_bytes"]["peak"] < off["memory_bytes"]["peak"]
    assert on["throughput"]["flops_per_token"]["total"] > off["throughput"]["flops_per_token"]["total"]
    assert any("does not checkpoint" in n for n in on["notes"])


def _saved_bytes(cfg: ModelConfig, batch: int, seq: int, autocast: bool) -> int:
    """Bytes autograd keeps for backward in one forward (each storage once, parameters excluded)."""
    torch.manual_seed(0)
    model = Transformer(cfg)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    doc = torch.zeros(batch, seq, dtype=torch.long)
    doc[:, seq // 2:] = 1
    pos = torch.arange(seq).repeat(batch, 1)
    pos[:, seq // 2:] -= seq // 2
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen.setdefault(ptr, t.untyped_storage().nbytes())
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        model(ids, positions=pos, doc_ids=doc, return_hidden=True)
    return sum(seen.values())


@pytest.mark.parametrize("autocast,qk_norm", [(True, False), (True, True), (False, False)])
def test_the_activation_formula_is_what_autograd_keeps(autocast, qk_norm):
    """Measured on CPU: the bytes one more block adds to what autograd saves. The CPU's RMSNorm is
    the unfused one, which keeps the normalised tensor too (``fused_rms_norm=False``)."""
    cfg = ModelConfig(vocab_size=512, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=160, max_seq_len=256,
                      qk_norm=qk_norm)
    cfg3 = ModelConfig(**{**cfg.__dict__, "n_layers": 3})
    B, T = 2, 128  # under 256 positions: the CPU takes SDPA as a GPU does, not its blocked attention
    per_block = (_saved_bytes(cfg3, B, T, autocast) - _saved_bytes(cfg, B, T, autocast)) / 2
    predicted = sum(layer_activation_bytes(cfg, B, T, 2 if autocast else 4, fused_rms_norm=False).values())
    assert predicted == pytest.approx(per_block, rel=0.02)


def test_a_preset_grows_the_vocabulary_as_the_world_model_was_grown():
    world = Vocab.load(resolve_model_dir("world") / "vocab.json")
    codes = {"audio_codebooks": world.audio_codebooks, "audio_codebook_size": world.audio_codebook_size,
             "image_codebook_size": world.image_codebook_size, "image_tokens": world.image_tokens, "voices": 16}
    cfg, _, summary, _, _ = model_for_preset("smollm2-135m", codes)
    assert summary["text"] == 49152
    assert summary["added"] - summary["padding"] == world.audio_end - world.text_size
    assert cfg.vocab_size == summary["size"] and cfg.vocab_size % 64 == 0
    mimi = model_for_preset("smollm2-135m")[2]
    assert mimi["audio"] == 8 * 2048


def test_a_model_directory_plans_with_its_own_settings(tmp_path):
    cfg = Config()
    cfg.model = ModelConfig(**{**TINY.__dict__, "image_pos_embed": False})
    cfg.data.seq_len = 128
    cfg.train.micro_batch_size = 4
    cfg.train.freeze_base, cfg.train.lora_rank, cfg.train.lora_targets = True, 4, "q_proj,up_proj"
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    (tmp_path / "model.safetensors").write_bytes(b"")  # resolve_model_dir looks for the weights' name only
    model, _, _, _, settings = model_from_dir(tmp_path)
    assert parameter_shapes(model) == _module_shapes(cfg.model)
    assert settings["train"] == "lora" and settings["lora_targets"] == ("q_proj", "up_proj")
    assert main(["plan", "--model", str(tmp_path), "--json"]) == 0


def test_json_output(capsys):
    assert main(["plan", "--preset", "smollm2-135m", "--gpus", "2", "--micro-batch", "2", "--seq-len", "512",
                 "--gpu", "a100-40gb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"]["gpus"] == 2 and out["run"]["gpu_memory_gib"] == 40.0
    mem = out["memory_bytes"]
    assert mem["peak"] == max(mem["peak_forward_backward"], mem["peak_optimizer_step"])
    assert out["fits"] == (mem["peak"] <= 40.0 * GIB)


def test_text_output_names_the_terms(capsys):
    assert main(["plan", "--preset", "world", "--gpus", "1"]) == 0
    text = capsys.readouterr().out
    for term in ("weights", "AdamW states", "activations", "peak", "tokens/s per GPU", "assumed"):
        assert term in text


@pytest.mark.parametrize("argv,message", [
    (["--preset", "gpt-5"], "unknown preset 'gpt-5'"),
    (["--preset", "smollm2-135m", "--gpus", "0"], "--gpus must be at least 1"),
    (["--preset", "smollm2-135m", "--gpus", "2", "--micro-batch", "4", "--batch-size", "12"], "--batch-size 12"),
    (["--preset", "smollm2-135m", "--gpu", "tpu"], "unknown --gpu 'tpu'"),
    (["--preset", "smollm2-135m", "--mfu", "2"], "--mfu must be in (0, 1]"),
    (["--preset", "smollm2-135m", "--train", "lora", "--lora-targets", "qkv"], "--lora-targets 'qkv'"),
])
def test_bad_input_is_a_one_line_error(argv, message, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_missing_model_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["plan", "--model", str(tmp_path / "nope")]) == 2
    assert "neither a directory nor a bundled model" in capsys.readouterr().err

