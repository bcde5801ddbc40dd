"""Train only what must be trained: LoRA adapters + the appended vocabulary rows, the base frozen
bit for bit; adapters merge for inference and export, and a killed run resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from omniloom.config import Config, ModelConfig, config_to_dict
from omniloom.data.shards import ShardWriter
from omniloom.model import Transformer
from omniloom.model.lora import LoRALinear, apply_lora, merge_lora_state
from omniloom.tokens.vocab import Vocab
from test_train_resume import kill_after_first_checkpoint

TEXT = 100  # the "base" text ids; everything after is appended rows


def _setup(root: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """Shards whose targets use both base ids and appended ids, and a random 'base' model dir."""
    vocab = Vocab.build(text_size=TEXT)
    rng = np.random.default_rng(1)
    with ShardWriter(root / "data" / "train", vocab, shard_tokens=2000) as w:
        for _ in range(150):
            L, a = int(rng.integers(8, 40)), int(rng.integers(0, 100))
            ids = [(a + 7 * k) % 100 if k % 3 else vocab.special_start + (a + k) % 40 for k in range(L)]
            w.add(ids, [0] + [1] * (L - 1))
    cfg = Config()
    cfg.model = ModelConfig(vocab_size=vocab.size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64,
                            max_seq_len=64, tie_embeddings=True)
    torch.manual_seed(5)
    base = Transformer(cfg.model)
    d = root / "base"
    d.mkdir()
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    vocab.save(d / "vocab.json")
    return root / "data" / "train", d, sd


ARGS = ["model.vocab_size=0", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
        "model.ffn_dim=64", "model.max_seq_len=64", "data.seq_len=32", "train.batch_size=4",
        "train.micro_batch_size=2", "train.dtype=fp32", "train.warmup_steps=1", "train.log_every=1",
        "train.progress=false", "train.ckpt_every=3", "train.eval_every=100000", "train.lr=0.01",
        "train.freeze_base=true", "train.lora_rank=4", "train.lora_targets=q_proj,v_proj,down_proj"]


def _cmd(data: Path, base: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "omniloom.cli", "train", "--preset", "debug", *extra, *ARGS,
            f"data.train={data}", f"train.out_dir={out}", f"train.init_from={base}"]


def _latest(out: Path) -> Path:
    root = out / "ckpt"
    return root / (root / "latest").read_text().strip()


@pytest.mark.slow
def test_frozen_base_rows_and_weights_stay_bit_identical(tmp_path):
    data, base, ref = _setup(tmp_path)
    out = tmp_path / "run"
    r = subprocess.run(_cmd(data, base, out, "--stop-after", "6") + ["train.steps=100"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "freeze_base: training" in r.stderr
    sd = load_file(str(_latest(out) / "model.safetensors"))
    emb = sd["embed_tokens.weight"]
    assert torch.equal(emb[:TEXT], ref["embed_tokens.weight"][:TEXT])  # the base rows, bit for bit
    assert not torch.equal(emb[TEXT:], ref["embed_tokens.weight"][TEXT:])  # the appended rows learnt
    for k, v in ref.items():
        if k != "embed_tokens.weight":
            assert torch.equal(sd[k], v), k  # every base weight untouched
    lora_b = [k for k in sd if k.endswith(".lora_b")]
    assert len(lora_b) == 2 * 3  # 2 layers x (q, v, down)
    assert all(sd[k].abs().sum() > 0 for k in lora_b)  # the adapters learnt (they start at zero)
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_train_rows_also_trains_the_named_rows_and_no_other(tmp_path):
    data, base, ref = _setup(tmp_path)
    out = tmp_path / "run"
    size = Vocab.build(text_size=TEXT).size
    (tmp_path / "rows.json").write_text("[9, 5, 8, 7]")  # a file, as python -m omniloom.data.row_usage writes
    r = subprocess.run(_cmd(data, base, out, "--stop-after", "6") + ["train.steps=100", f"train.train_rows_from={size}",
                                                                     f"train.train_rows_also={tmp_path / 'rows.json'}"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "and 4 more (train.train_rows_also)" in r.stderr
    emb, old = load_file(str(_latest(out) / "model.safetensors"))["embed_tokens.weight"], ref["embed_tokens.weight"]
    moved = [i for i in range(size) if not torch.equal(emb[i], old[i])]
    assert moved == [5, 7, 8, 9]
    # the checkpoint keeps the ids, not the path of a file that may change or go
    assert json.loads((_latest(out) / "config.json").read_text())["train"]["train_rows_also"] == "5,7-9"


def test_zero_rows_below_keeps_the_named_rows():
    from omniloom.train.step import zero_rows_below

    g = torch.arange(1.0, 13.0).reshape(6, 2)
    zero_rows_below(g, 5, torch.tensor([1, 3, 5]))  # row 5 is trainable anyway
    assert g[:, 0].tolist() == [0, 3, 0, 7, 0, 11]
    g = torch.ones(4, 2)
    zero_rows_below(g, 4, torch.tensor([], dtype=torch.long))
    assert not g.any()


def test_train_rows_also_is_parsed_and_checked(tmp_path):
    from omniloom.config import apply_overrides

    def rows(spec, freeze=True):
        cfg = apply_overrides(Config(), [f"train.freeze_base={str(freeze).lower()}", f"train.train_rows_also={spec}"])
        cfg.validate()
        return cfg.train.rows_also()

    assert rows("9,3-5,4") == [3, 4, 5, 9]
    (tmp_path / "r.json").write_text("[12, 2]")
    assert rows(str(tmp_path / "r.json")) == [2, 12]
    for spec, msg in [("3-x", "neither an id nor a range"), ("5-3", "runs backwards"),
                      (str(tmp_path / "none.json"), "cannot read"), ("-1", "neither an id")]:
        with pytest.raises(ValueError, match=msg):
            rows(spec)
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="JSON list of integer ids"):
        rows(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="freeze_base is false"):
        rows("3", freeze=False)
    # written out for a model directory: ranges where ids run on, the same ids read back
    (tmp_path / "many.json").write_text("[70, 65, 66, 67, 68, 424, 407, 408]")
    cfg = apply_overrides(Config(), ["train.freeze_base=true", f"train.train_rows_also={tmp_path / 'many.json'}"])
    assert cfg.train.rows_also_inline() == "65-68,70,407-408,424"
    assert rows(cfg.train.rows_also_inline()) == cfg.train.rows_also()
    cfg.train.train_rows_also = str(tmp_path / "gone.json")
    assert cfg.train.rows_also_inline() == str(tmp_path / "gone.json")  # unreadable: left as it was


def test_merged_adapters_answer_as_the_adapted_model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=32)
    model = Transformer(cfg).eval()
    apply_lora(model, ["q_proj", "o_proj", "up_proj"], rank=4, alpha=8.0)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.1)  # as if trained
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        want = model(ids)
    plain = Transformer(cfg).eval()
    plain.load_state_dict(merge_lora_state(model.state_dict(), alpha=8.0))
    with torch.no_grad():
        got = plain(ids)
    assert (got - want).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="unknown"):
        apply_lora(Transformer(cfg), ["qproj"], rank=4, alpha=8.0)


def test_bad_adapter_settings_are_refused():
    from omniloom.config import apply_overrides

    for bad, msg in (("train.lora_rank=-1", "lora_rank"), ("train.lora_targets=attn", "lora_targets"),
                     ("train.lora_alpha=0", "lora_alpha"), ("train.train_rows_from=-5", "train_rows_from")):
        with pytest.raises(ValueError, match=msg):
            apply_overrides(Config(), [bad]).validate()


@pytest.mark.slow
def test_adapter_run_killed_then_resumed_matches_uninterrupted(tmp_path):
    data, base, _ = _setup(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    k = kill_after_first_checkpoint(_cmd(data, base, killed) + ["train.steps=100000"], killed, env)
    r = subprocess.run(_cmd(data, base, killed, "--stop-after", str(k + 3)) + ["train.steps=100000"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr
    ref = tmp_path / "ref"
    r = subprocess.run(_cmd(data, base, ref, "--stop-after", str(k + 3)) + ["train.steps=100000"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a = load_file(str(_latest(killed) / "model.safetensors"))
    b = load_file(str(_latest(ref) / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical, adapters and rows included


@pytest.mark.slow
def test_adapter_checkpoint_loads_and_exports_merged(tmp_path):
    transformers = pytest.importorskip("transformers")
    from omniloom.cli import main
    data, base, _ = _setup(tmp_path)
    out = tmp_path / "run"
    r = subprocess.run(_cmd(data, base, out, "--stop-after", "3") + ["train.steps=100"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ck = _latest(out)
    cfg = json.loads((ck / "config.json").read_text())
    merged = merge_lora_state(load_file(str(ck / "model.safetensors")), cfg["train"]["lora_alpha"])
    plain = Transformer(ModelConfig(**{k: v for k, v in cfg["model"].items()})).eval()
    plain.load_state_dict(merged)
    ids = torch.tensor([[1, 5, 9, TEXT + 3, 40, 41]])
    with torch.no_grad():
        want = plain(ids)
    assert main(["export", "--checkpoint", str(ck), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(ids).logits
    assert (got - want).abs().max().item() <= 1e-4


def test_init_from_a_run_with_adapters_keeps_or_folds_them(tmp_path):
    from omniloom.train.loop import init_weights

    data, base, _ = _setup(tmp_path)
    cfg = Config()
    cfg.model = ModelConfig(vocab_size=Vocab.load(base / "vocab.json").size, dim=32, n_layers=2, n_heads=2,
                            n_kv_heads=1, ffn_dim=64, max_seq_len=64, tie_embeddings=True)
    cfg.train.lora_rank, cfg.train.lora_alpha, cfg.train.lora_targets = 4, 8.0, "q_proj,v_proj"
    src = Transformer(cfg.model)
    apply_lora(src, ["q_proj", "v_proj"], 4, 8.0)
    for m in src.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.1)
    d = tmp_path / "src"
    d.mkdir()
    sd = {k: v.detach().clone() for k, v in src.state_dict().items()}
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    (d / "vocab.json").write_text((base / "vocab.json").read_text())
    # the same adapters: they load as adapters and go on training
    same = Transformer(cfg.model)
    apply_lora(same, ["q_proj", "v_proj"], 4, 8.0)
    init_weights(same, str(d), cfg, base / "vocab.json")
    for k, v in same.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # no adapters here: the source's are folded into its weights
    plain = Transformer(cfg.model)
    init_weights(plain, str(d), cfg, base / "vocab.json")
    merged = merge_lora_state(sd, 8.0)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, merged[k]), k


def _gated_model(gate_from: int = TEXT, mode: str = "token") -> tuple[Transformer, Transformer, ModelConfig]:
    """(a random 'base', the same with position-gated adapters that have learnt something)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=160, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=32)
    base = Transformer(cfg).eval()
    gated = Transformer(cfg).eval()
    gated.load_state_dict(base.state_dict())
    apply_lora(gated, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], rank=4,
               alpha=8.0, gate_from=gate_from, gate_mode=mode)
    for m in gated.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.2)  # as if trained
    return base, gated, cfg


def test_gated_adapters_leave_text_only_input_to_the_base():
    base, gated, _ = _gated_model()
    text = torch.randint(0, TEXT, (2, 12))
    with torch.no_grad():
        assert torch.equal(gated(text), base(text))  # text-only: the base's logits, bit for bit
        mixed = text.clone()
        mixed[:, 4:8] = torch.randint(TEXT, 160, (2, 4))  # a media span in the middle
        a, b = gated(mixed), base(mixed)
    assert torch.equal(a[:, :4], b[:, :4])  # before the span: causal, so still the base
    assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3  # the span and the text after it (attention) move
    # the ungated adapters would have moved the text-only logits too
    plain = Transformer(gated.cfg).eval()
    plain.load_state_dict(merge_lora_state(gated.state_dict(), alpha=8.0))
    with torch.no_grad():
        assert (plain(text) - base(text)).abs().max() > 1e-3


def test_gated_adapters_decode_with_a_kv_cache_as_the_full_forward():
    _, gated, _ = _gated_model()
    ids = torch.tensor([[3, 7, TEXT + 5, TEXT + 9, 11, 2, TEXT + 1, 40]])
    with torch.no_grad():
        want = gated(ids)
        gated.setup_cache(1, 16)
        got = [gated(ids[:, :3], input_pos=torch.arange(3))]  # prefill, then one id at a time
        for t in range(3, ids.shape[1]):
            got.append(gated(ids[:, t:t + 1], input_pos=torch.tensor([t])))
    assert (torch.cat(got, 1) - want).abs().max().item() < 1e-5


def test_onward_gate_opens_at_the_first_appended_id_of_each_document():
    _, gated, _ = _gated_model(mode="onward")
    ids = torch.tensor([[3, 7, TEXT + 5, 9, 11, 4, 2, TEXT + 1, 40],
                        [3, 7, 8, 9, 11, 4, 2, 6, 40]])
    doc = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1],
                        [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert gated.lora_gate(ids).tolist() == [[False, False] + [True] * 7, [False] * 9]
    # a packed second document starts shut and opens at its own first appended id
    assert gated.lora_gate(ids, doc).tolist()[0] == [False, False, True, True, False, False, False, True, True]
    gated.lora_gate_mode = "token"  # the token gate: the appended ids' own positions only
    assert gated.lora_gate(ids, doc).tolist()[0] == [False, False, True, False, False, False, False, True, False]


def test_onward_gate_adapts_the_answer_after_media_and_leaves_text_to_the_base():
    base, onward, _ = _gated_model(mode="onward")
    _, token, _ = _gated_model(mode="token")  # same seed: the same adapters
    text = torch.randint(0, TEXT, (2, 12))
    mixed = text.clone()
    mixed[:, 4:6] = torch.randint(TEXT, 160, (2, 2))
    with torch.no_grad():
        assert torch.equal(onward(text), base(text))
        a, b, c = onward(mixed), token(mixed), base(mixed)
    assert torch.equal(a[:, :4], c[:, :4])
    assert torch.equal(a[:, 4:6], b[:, 4:6])  # the span itself: both gates open
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3  # after it: only the onward gate adapts the text


def test_onward_gate_with_a_kv_cache_matches_the_full_forward_across_requests_and_padding():
    base, gated, _ = _gated_model(mode="onward")
    ids = torch.tensor([[3, 7, TEXT + 5, TEXT + 9, 11, 2, 6, 40]])
    with torch.no_grad():
        want = gated(ids)
        gated.setup_cache(1, 16)
        got = [gated(ids[:, :3], input_pos=torch.arange(3))]  # prefill (opens the gate), then one at a time
        for t in range(3, ids.shape[1]):
            got.append(gated(ids[:, t:t + 1], input_pos=torch.tensor([t])))
        assert (torch.cat(got, 1) - want).abs().max().item() < 1e-5
        # the next request reuses the cache: a text-only prefill from slot 0 runs shut, as the base
        text = torch.tensor([[3, 7, 8, 9]])
        base.setup_cache(1, 16)
        want = base(text, input_pos=torch.arange(4))
        assert torch.equal(gated(text, input_pos=torch.arange(4)), want)
        # a rewind to before the opening (slot 2) forgets it: slot 0 holds the same id in both
        gated(ids[:, :4], input_pos=torch.arange(4))
        base(text, input_pos=torch.arange(4))
        slots = torch.arange(1, 4)
        assert torch.equal(gated(text[:, 1:], input_pos=slots), base(text[:, 1:], input_pos=slots))
        # a batch: the left-padded row (padding is an appended id here) stays shut
        batch = torch.tensor([[TEXT + 2, TEXT + 2, 3, 7], [3, TEXT + 5, 9, 11]])
        kv_mask = torch.zeros(2, 16, dtype=torch.bool)
        kv_mask[0, 2:4], kv_mask[1, :4] = True, True
        gated.setup_cache(2, 16)
        out = gated(batch, positions=torch.tensor([[0, 0, 0, 1], [0, 1, 2, 3]]), input_pos=torch.arange(4),
                    kv_mask=kv_mask)
        assert gated.lora_open_slot.tolist() == [-1, 1]  # the padded row stays shut
        assert (out[0, 2:] - base(batch[:1, 2:])[0]).abs().max().item() < 1e-5
        assert (out[1] - gated(batch[1:])[0]).abs().max().item() < 1e-5


def test_tag_gate_opens_at_the_tag_only_and_leaves_every_untagged_input_to_the_base():
    """lora_gate_mode='tag': media ids (>= the tag's id or not) keep the gate shut; the tag opens it
    for the rest of its document, with or without a KV cache."""
    tag = TEXT + 7
    base, gated, _ = _gated_model(gate_from=tag, mode="tag")
    media = torch.tensor([[3, 7, TEXT + 20, TEXT + 30, 11, TEXT + 2, 6, 40]])  # ids above and below the tag
    with torch.no_grad():
        assert not gated.lora_gate(media).any()
        assert torch.equal(gated(media), base(media))  # media and all: the base, bit for bit
        tagged = media.clone()
        tagged[0, 3] = tag
        assert gated.lora_gate(tagged).tolist()[0] == [False] * 3 + [True] * 5
        a, b = gated(tagged), base(tagged)
        assert torch.equal(a[:, :3], b[:, :3]) and (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3
        doc = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])  # a packed second document starts shut
        assert gated.lora_gate(tagged, doc).tolist()[0] == [False] * 3 + [True] * 2 + [False] * 3
        gated.setup_cache(1, 16)
        got = [gated(tagged[:, :2], input_pos=torch.arange(2))]
        for t in range(2, tagged.shape[1]):
            got.append(gated(tagged[:, t:t + 1], input_pos=torch.tensor([t])))
    assert (torch.cat(got, 1) - a).abs().max().item() < 1e-5


def test_tag_gate_resolves_minus_one_to_the_task_tag():
    from omniloom.config import apply_overrides
    from omniloom.model.lora import lora_gate_from
    from omniloom.tokens import task_tag_id

    v = Vocab.build(text_size=TEXT)
    tc = apply_overrides(Config(), ["train.lora_rank=4", "train.lora_gate_from=-1", "train.lora_gate_mode=tag"])
    tc.validate()
    assert lora_gate_from(tc.train, v) == task_tag_id(v)
    tc.train.lora_gate_mode = "onward"
    assert lora_gate_from(tc.train, v) == TEXT
    tc.train.lora_gate_mode, tc.train.lora_gate_from = "tag", 123
    assert lora_gate_from(tc.train, v) == 123
    tc.train.lora_gate_from = -1
    with pytest.raises(ValueError, match="task"):
        lora_gate_from(tc.train, Vocab.build(text_size=TEXT, num_reserved_specials=5))


def test_gated_adapter_settings_are_checked():
    from omniloom.config import apply_overrides

    with pytest.raises(ValueError, match="lora_gate_mode must be one of"):
        apply_overrides(Config(), ["train.lora_rank=4", "train.lora_gate_from=-1",
                                   "train.lora_gate_mode=after"]).validate()
    with pytest.raises(ValueError, match="lora_gate_from is 0"):
        apply_overrides(Config(), ["train.lora_rank=4", "train.lora_gate_mode=onward"]).validate()

    with pytest.raises(ValueError, match="lora_rank is 0"):
        apply_overrides(Config(), ["train.lora_gate_from=-1"]).validate()
    with pytest.raises(ValueError, match="lora_gate_from must be"):
        apply_overrides(Config(), ["train.lora_rank=4", "train.lora_gate_from=-2"]).validate()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["token", "onward"])
def test_gated_adapter_run_serves_text_as_the_base_and_refuses_a_merged_export(tmp_path, capsys, mode):
    from omniloom.cli import main
    from omniloom.infer.generate import OmniModel

    data, base, ref = _setup(tmp_path)
    (base / "tokenizer.json").write_text(_tiny_tokenizer_json())
    out = tmp_path / "run"
    r = subprocess.run(_cmd(data, base, out, "--stop-after", "6") + ["train.steps=100", "train.lora_gate_from=-1", f"train.lora_gate_mode={mode}"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ck = _latest(out)
    sd = load_file(str(ck / "model.safetensors"))
    assert all(sd[k].abs().sum() > 0 for k in sd if k.endswith(".lora_b"))  # the adapters learnt
    (ck / "tokenizer.json").write_text(_tiny_tokenizer_json())
    omni = OmniModel.load(ck)
    assert omni.model.lora_gate_from == TEXT  # -1 resolved to the vocabulary's first appended id
    assert omni.model.lora_gate_mode == mode
    assert any(isinstance(m, LoRALinear) for m in omni.model.modules())  # kept, not folded
    plain = Transformer(omni.model.cfg).eval()
    plain.load_state_dict(ref)
    text, media = torch.tensor([[1, 5, 9, 40, 41]]), torch.tensor([[1, 5, TEXT + 3, 40, 41]])
    with torch.no_grad():
        # text-only: the base's logits over its own ids, after training (the appended rows moved)
        assert torch.equal(omni.model(text)[..., :TEXT], plain(text)[..., :TEXT])
        assert (omni.model(media) - plain(media)).abs().max() > 1e-4
    assert main(["export", "--checkpoint", str(ck), "--format", "hf", "--out", str(tmp_path / "hf")]) != 0
    assert "position-gated (train.lora_gate_from=-1" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
    assert main(["export", "--checkpoint", str(ck), "--format", "omniloom", "--out", str(tmp_path / "dir")]) == 0
    again = OmniModel.load(tmp_path / "dir")
    with torch.no_grad():
        assert torch.equal(again.model(media), omni.model(media))


def _tiny_tokenizer_json() -> str:
    """A byte-level BPE with no merges over TEXT ids would need 256; a word-level one fits in 100."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(TEXT)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


def test_rows_lr_mult_gives_the_trained_rows_their_own_rate():
    from omniloom.config import TrainConfig
    from omniloom.train.step import TrainStep, build_optimizer, freeze_for_adapters

    def model() -> Transformer:
        torch.manual_seed(3)
        m = Transformer(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                    max_seq_len=32, tie_embeddings=True))
        apply_lora(m, ["q_proj", "v_proj"], rank=4, alpha=8)
        freeze_for_adapters(m)
        return m

    # at the default rate the rows share the no-decay group: the optimizer keeps its old group layout
    m = model()
    plain = build_optimizer(m, TrainConfig(lr=1e-3, freeze_base=True, weight_decay=0.1), "cpu")
    assert len(plain.param_groups) == 2
    m = model()
    cfg = TrainConfig(lr=1e-3, freeze_base=True, rows_lr_mult=10.0, weight_decay=0.0, dtype="fp32")
    step = TrainStep(m, cfg, device="cpu")
    groups = step.optimizer.param_groups
    assert len(groups) == 3
    rows = [g for g in groups if any(p is m.embed_tokens.weight for p in g["params"])]
    assert len(rows) == 1 and len(rows[0]["params"]) == 1 and rows[0]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in m.parameters())
    step.set_lr(2e-3)
    assert rows[0]["lr"] == pytest.approx(2e-2)
    assert all(g["lr"] == pytest.approx(2e-3) for g in groups if g is not rows[0])
    # one AdamW step moves every element by about its group's rate (the first step is sign-like)
    before_rows = m.embed_tokens.weight.detach().clone()
    lora_a = next(p for n, p in m.named_parameters() if n.endswith("lora_a"))
    before_a = lora_a.detach().clone()
    for p in m.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    step.optimizer.step()
    moved_rows = (m.embed_tokens.weight.detach() - before_rows).abs().max().item()
    moved_a = (lora_a.detach() - before_a).abs().max().item()
    assert moved_rows == pytest.approx(2e-2, rel=1e-3) and moved_a == pytest.approx(2e-3, rel=1e-3)


def test_rows_lr_mult_is_checked():
    from omniloom.config import Config, apply_overrides

    with pytest.raises(ValueError, match="rows_lr_mult must be positive"):
        apply_overrides(Config(), ["train.freeze_base=true", "train.rows_lr_mult=0"]).train.validate()
    with pytest.raises(ValueError, match="train.freeze_base is false"):
        apply_overrides(Config(), ["train.rows_lr_mult=5"]).train.validate()
