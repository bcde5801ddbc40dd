"""TrainStep: loss, accumulation equivalence, LR schedule, per-modality losses."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from omniloom.config import ModelConfig, TrainConfig
from omniloom.model.llama import Transformer
from omniloom.train.step import TrainStep, lr_at, resolve_dtype


def _model(seed: int = 0, vocab: int = 96) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                   max_seq_len=64))


def _batch(B: int, T: int, seed: int, vocab: int = 96) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T + 1), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    return {"ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask,
            "positions": torch.arange(T).expand(B, T).clone(), "doc_ids": torch.zeros(B, T, dtype=torch.long)}


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=20, lr=1e-2, warmup_steps=2, dtype="fp32", grad_clip=1.0)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_when_overfitting_one_batch():
    step = TrainStep(_model(), _cfg())
    b = _batch(4, 16, 0)
    first = step([b])["loss"]
    for _ in range(9):
        out = step([b])
    assert out["loss"] < first - 0.5
    assert step.step == 10 and out["tokens"] == 64


def test_accumulation_equals_one_big_batch():
    """Two micro-batches of 2 rows == one micro-batch of 4 rows (global-token-mean loss)."""
    big = _batch(4, 16, 1)
    halves = [{k: v[:2] for k, v in big.items()}, {k: v[2:] for k, v in big.items()}]
    m1 = _model()
    m2 = copy.deepcopy(m1)
    s1, s2 = TrainStep(m1, _cfg()), TrainStep(m2, _cfg())
    for _ in range(3):
        o1, o2 = s1([big]), s2(halves)
        assert abs(o1["loss"] - o2["loss"]) < 1e-5
        assert abs(o1["grad_norm"] - o2["grad_norm"]) < 1e-5
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-5, rtol=1e-5)


def test_masked_tokens_do_not_count():
    b = _batch(2, 16, 2)
    b2 = dict(b)
    t = b["targets"].clone()
    t[~b["loss_mask"]] = 0  # change only targets that do not count
    b2["targets"] = t
    o1 = TrainStep(_model(), _cfg())([b])
    o2 = TrainStep(_model(), _cfg())([b2])
    assert o1["loss"] == pytest.approx(o2["loss"], abs=1e-6)


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = _cfg(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_dtype_resolution():
    assert resolve_dtype("fp32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") in (torch.bfloat16, torch.float32)
    with pytest.raises(ValueError, match="train.dtype"):
        resolve_dtype("fp16", "cpu")


def test_bf16_autocast_step_runs_and_is_finite():
    out = TrainStep(_model(), _cfg(dtype="bf16"))([_batch(2, 16, 3)])
    assert np.isfinite(out["loss"]) and np.isfinite(out["grad_norm"])


def test_per_modality_losses_weighted_mean_equals_total():
    from omniloom.tokens.vocab import Vocab

    vocab = Vocab.build(text_size=40, image_codebook_size=8, image_tokens=4)
    b = _batch(3, 16, 4, vocab=vocab.size)
    model = _model(vocab=((vocab.size + 63) // 64) * 64)
    out = TrainStep(model, _cfg(), vocab=vocab)([b])
    mods = vocab.modality_of(b["targets"][b["loss_mask"]].numpy())
    names = type(vocab).MODALITIES
    total = 0.0
    for j, name in enumerate(names):
        n = int((mods == j).sum())
        assert (f"loss/{name}" in out) == (n > 0)
        if n:
            total += out[f"loss/{name}"] * n
    assert total / int(b["loss_mask"].sum()) == pytest.approx(out["loss"], rel=1e-6)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_at_loss_positions_only_match_full_logits(tied):
    """Projecting only the loss positions gives the full-logits loss and gradients exactly."""
    from omniloom.train.step import loss_index, masked_loss

    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=96, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=64,
                      tie_embeddings=tied)
    m_full = Transformer(cfg)
    m_sel = copy.deepcopy(m_full)
    b = _batch(3, 16, 7)
    idx = loss_index(b["loss_mask"])
    assert idx.numel() == int(b["loss_mask"].sum()) < b["loss_mask"].numel()
    sel = m_sel(b["ids"], positions=b["positions"], doc_ids=b["doc_ids"], logits_index=idx)
    assert sel.shape == (idx.numel(), 96)
    s_full, ce_full, t_full = masked_loss(m_full(b["ids"], positions=b["positions"], doc_ids=b["doc_ids"]),
                                          b["targets"], b["loss_mask"])
    s_sel, ce_sel, t_sel = masked_loss(sel, b["targets"], b["loss_mask"])
    torch.testing.assert_close(ce_sel, ce_full, atol=1e-6, rtol=1e-6)
    assert torch.equal(t_sel, t_full)
    s_full.backward()
    s_sel.backward()
    for (name, p1), p2 in zip(m_full.named_parameters(), m_sel.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-5, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="logit rows"):
        masked_loss(sel[:-1], b["targets"], b["loss_mask"])


def test_optimizer_is_fused_on_cpu_and_a_foreach_checkpoint_resumes_into_it(tmp_path):
    """A checkpoint written by a foreach AdamW loads into the (fused) one build_optimizer makes: the
    moments come back exactly and the optimizer keeps its own implementation flags."""
    from omniloom.config import preset
    from omniloom.train.checkpoint import load_checkpoint, save_checkpoint
    from omniloom.train.step import build_optimizer

    cfg = preset("debug")
    cfg.model = ModelConfig(vocab_size=96, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=64)
    m_old = _model()
    old = torch.optim.AdamW(m_old.parameters(), lr=1e-2, foreach=True)
    TrainStep(m_old, _cfg(), optimizer=old)([_batch(2, 16, 0)])
    save_checkpoint(tmp_path / "ckpt", 1, m_old, old, cfg, {"epoch": 0, "batch": 1})

    m_new = _model(seed=5)
    new = build_optimizer(m_new, _cfg(), "cpu")
    assert new.param_groups[0]["fused"] is True
    load_checkpoint(next((tmp_path / "ckpt").glob("step_*")), m_new, new)
    assert new.param_groups[0]["fused"] is True and not new.param_groups[0]["foreach"]
    for p_old, p_new in zip(m_old.parameters(), m_new.parameters()):
        assert torch.equal(p_old, p_new)
        assert torch.equal(old.state[p_old]["exp_avg_sq"], new.state[p_new]["exp_avg_sq"])
    TrainStep(m_new, _cfg(), optimizer=new)([_batch(2, 16, 1)])  # and it steps


def test_compiled_step_matches_eager_across_changing_loss_counts():
    """train.compile=true (decoder and loss compiled together, the loss-row count dynamic) trains
    the same as eager: equal losses and weights after steps whose loss-position counts differ."""
    m_eager = _model(seed=4)
    m_comp = copy.deepcopy(m_eager)
    eager, comp = TrainStep(m_eager, _cfg()), TrainStep(m_comp, _cfg(compile=True))
    batches = [_batch(2, 16, s) for s in (10, 11, 12)]
    counts = {int(b["loss_mask"].sum()) for b in batches}
    assert len(counts) == 3
    for b in batches:
        o1, o2 = eager([b]), comp([b])
        assert abs(o1["loss"] - o2["loss"]) < 1e-4
    for p1, p2 in zip(m_eager.parameters(), m_comp.parameters()):
        torch.testing.assert_close(p2, p1, atol=1e-4, rtol=1e-4)
