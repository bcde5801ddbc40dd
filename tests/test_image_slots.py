"""The image slot embedding (model.image_pos_embed): which token gets which slot, the KV-cache path
giving the full forward's logits, switching it on for a trained model, and the Llama export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from omniloom.config import ModelConfig, load_config
from omniloom.data.shards import ShardWriter
from omniloom.infer.engine import Engine, Request
from omniloom.infer.sampling import SamplingParams
from omniloom.model.hf import export_hf, to_hf
from omniloom.model.llama import Transformer
from omniloom.tokens.vocab import Vocab
from omniloom.train.loop import train

OPEN, CLOSE, FRAME = 5, 6, 7
LO, HI = 40, 50  # image codes


def _cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=96,
                image_pos_embed=True, image_tokens=4, image_open_id=OPEN, image_code_start=LO, image_code_end=HI)
    base.update(kw)
    return ModelConfig(**base)


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(_cfg()).eval()
    torch.nn.init.normal_(m.image_pos.weight)  # trained-like, so that a wrong slot shows in the logits
    return m


def test_slots_follow_the_raster_order_of_each_span():
    m = _model()
    # text, an image span (4 codes), text, two video frames back to back, a span cut short
    ids = torch.tensor([[1, 2, OPEN, 41, 42, 43, 44, CLOSE, 3,
                         FRAME, OPEN, 45, 46, 47, 48, CLOSE, FRAME, OPEN, 49, 40, 41, 42, CLOSE, OPEN, 44]])
    slot, valid = m.image_slots(ids)
    got = [int(s) if v else None for s, v in zip(slot[0], valid[0])]
    # the opening predicts slot 0, each code the next slot, the last code (it predicts the closing) none
    assert got == [None, None, 0, 1, 2, 3, None, None, None,
                   None, 0, 1, 2, 3, None, None, None, 0, 1, 2, 3, None, None, 0, 1]
    # an image code outside any span (never in well-formed data) gets no slot
    _, valid = m.image_slots(torch.tensor([[1, 41, 42]]))
    assert not valid.any()


def test_zero_initialised_table_leaves_the_function_unchanged():
    torch.manual_seed(3)
    off = Transformer(_cfg(image_pos_embed=False)).eval()
    on = Transformer(_cfg()).eval()
    assert on.image_pos.weight.abs().sum() == 0
    on.load_state_dict(off.state_dict(), strict=False)
    ids = torch.tensor([[1, OPEN, 41, 42, 43, 44, CLOSE, 2]])
    with torch.no_grad():
        assert torch.equal(on(ids), off(ids))
        torch.nn.init.normal_(on.image_pos.weight)
        diff = (on(ids) - off(ids)).abs().amax(-1)[0]
    # the table reaches the opening and the codes and, through attention, what follows; not what precedes
    assert diff[0] == 0 and (diff[1:] > 0).all()


def test_cached_decode_carries_the_span_across_calls():
    m = _model()
    rows = [[1, 2, OPEN, 41, 42, 43, 44, CLOSE, 3, OPEN, 45, 46, 47],
            [9, OPEN, 48, 49, 40]]
    with torch.no_grad():
        for ids in rows:
            full = m(torch.tensor([ids]))
            for cut in (1, 3, 4, len(ids) - 1):  # the prefill ends before, at and inside a span
                m.setup_cache(1, 32)
                parts = [m(torch.tensor([ids[:cut]]), input_pos=torch.arange(cut))]
                for t in range(cut, len(ids)):
                    parts.append(m(torch.tensor([ids[t:t + 1]]), input_pos=torch.tensor([t])))
                torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
        # a new prefill forgets the previous request's span: the same prompt gives the same logits
        m.setup_cache(1, 32)
        a = m(torch.tensor([[1, OPEN, 41]]), input_pos=torch.arange(3))
        m(torch.tensor([[42]]), input_pos=torch.tensor([3]))
        b = m(torch.tensor([[1, OPEN, 41]]), input_pos=torch.arange(3))
        torch.testing.assert_close(a, b)


class _CodesFor:
    """A constraint that allows only image codes for ``n`` tokens (an image span being drawn)."""

    def __init__(self, n: int, vocab_size: int):
        self.left, self.mask = n, torch.zeros(vocab_size, dtype=torch.bool)
        self.mask[LO:HI] = True

    def allowed(self):
        return self.mask

    def advance(self, token: int) -> None:
        self.left -= 1

    def finished(self) -> bool:
        return self.left <= 0

    def guidance_active(self) -> bool:
        return False


def _greedy_codes(m, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            lg = m(torch.tensor([ids]))[0, -1]
            ids.append(LO + int(lg[LO:HI].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("compile", [False, True])
def test_engine_draws_the_uncached_codes_alone_and_batched(compile):
    m = _model(1)
    prompts = [[1, 2, 3, OPEN], [9, 8, 7, 6, 5, 4, 3, OPEN, 41]]
    params = SamplingParams(max_new_tokens=3, temperature=0)
    want = [_greedy_codes(m, p, 3) for p in prompts]
    eng = Engine(m, compile=compile)
    got = eng.generate([Request(p, params, constraint=_CodesFor(3, 64)) for p in prompts])
    assert got == want
    assert eng.generate([Request(prompts[1], params, constraint=_CodesFor(3, 64))]) == want[1:]


def test_config_and_export_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="image_pos_embed needs the vocabulary's image ids"):
        _cfg(image_open_id=-1).validate()
    m = _model()
    with pytest.raises(ValueError, match="drop_image_pos"):
        to_hf(m, m.cfg)
    export_hf(m, m.cfg, tmp_path / "hf", drop_image_pos=True)
    names = set(load_file(str(tmp_path / "hf" / "model.safetensors")))
    assert "model.image_pos.weight" not in names and "model.embed_tokens.weight" in names
    with pytest.raises(ValueError, match="no image codes"):
        _cfg(image_tokens=0).image_slots_from_vocab(Vocab.build(text_size=100))
    with pytest.raises(ValueError, match="do not match the vocabulary"):
        _cfg().image_slots_from_vocab(Vocab.build(text_size=100, image_codebook_size=8, image_tokens=4))
    with pytest.raises(ValueError, match="image ids must be set"):
        Transformer(_cfg(image_tokens=0))


def _image_shards(root, vocab: Vocab, n: int = 60):
    rng = np.random.default_rng(0)
    lo, _ = vocab.range_of("image")
    op, cl = vocab.special("image"), vocab.special("/image")
    for split in ("train", "val"):
        with ShardWriter(root / split, vocab, shard_tokens=1500) as w:
            for _ in range(n):
                a = int(rng.integers(0, 8))
                codes = [lo + (a + k) % 8 for k in range(vocab.image_tokens)]
                ids = [vocab.bos_id, int(rng.integers(0, 50)), op, *codes, cl]
                w.add(ids, [0, 0] + [1] * (len(ids) - 2))
    return root


@pytest.mark.slow
def test_switched_on_for_a_trained_model_through_init_from(tmp_path):
    vocab = Vocab.build(text_size=50, image_codebook_size=8, image_tokens=8)
    data = _image_shards(tmp_path / "data", vocab)
    tiny = ["model.vocab_size=0", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
            "model.ffn_dim=64", "model.max_seq_len=64", "data.seq_len=32", "train.batch_size=4",
            "train.micro_batch_size=2", "train.dtype=fp32", "train.warmup_steps=1", "train.progress=false",
            f"data.train={data}/train", f"data.val={data}/val", "train.eval_batches=2", "train.eval_every=100"]
    train(load_config("debug", overrides=tiny + ["train.steps=3", f"train.out_dir={tmp_path}/run"]))
    cfg = load_config("debug", overrides=tiny + ["train.steps=3", f"train.out_dir={tmp_path}/slots",
                                                 "model.image_pos_embed=true", f"train.init_from={tmp_path}/run"])
    train(cfg)
    saved = json.loads((tmp_path / "slots" / "config.json").read_text())["model"]
    lo, hi = vocab.range_of("image")
    assert (saved["image_pos_embed"], saved["image_tokens"], saved["image_open_id"],
            saved["image_code_start"], saved["image_code_end"]) == (True, 8, vocab.special("image"), lo, hi)
    recs = [json.loads(x) for x in (tmp_path / "slots" / "metrics.jsonl").read_text().splitlines()]
    src = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the step-0 eval of the switched-on model is the source's last eval: the zero table changes nothing
    ev0 = next(r for r in recs if r.get("step") == 0 and "eval_loss" in r)
    assert ev0["eval_loss"] == pytest.approx(next(r for r in reversed(src) if "eval_loss" in r)["eval_loss"], abs=1e-5)
    # switching it off again for a model that has it is a shape change, refused by name
    with pytest.raises(ValueError, match="image_pos_embed=False"):
        train(load_config("debug", overrides=tiny + ["train.steps=1", f"train.out_dir={tmp_path}/off",
                                                     f"train.init_from={tmp_path}/slots"]))


def test_the_slot_table_has_its_own_rate_and_no_decay():
    from omniloom.config import TrainConfig
    from omniloom.train.step import build_optimizer

    m = _model()
    opt = build_optimizer(m, TrainConfig(lr=1e-3, image_pos_lr_mult=50.0), "cpu")
    slot_groups = [g for g in opt.param_groups if any(p is m.image_pos.weight for p in g["params"])]
    assert len(slot_groups) == 1 and len(slot_groups[0]["params"]) == 1
    assert slot_groups[0]["weight_decay"] == 0.0 and slot_groups[0]["lr_scale"] == 50.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(m.parameters()))
    from omniloom.train.step import TrainStep

    step = TrainStep(m, TrainConfig(lr=1e-3, image_pos_lr_mult=50.0, dtype="fp32"), device="cpu")
    step.set_lr(2e-3)
    rates = sorted(g["lr"] for g in step.optimizer.param_groups)
    assert rates[0] == pytest.approx(2e-3) and rates[-1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="image_pos_lr_mult must be positive"):
        TrainConfig(image_pos_lr_mult=0).validate()
