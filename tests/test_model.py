"""Decoder properties: cached decoding equals uncached, packed documents never see each other,
left-padded batched decoding equals decoding each prompt alone."""

from __future__ import annotations

import pytest
import torch

from omniloom.config import ModelConfig
from omniloom.model import Transformer


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=101, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=96,
                init_std=0.08)
    base.update(kw)
    return ModelConfig(**base)


def make(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny(**kw)).eval()


@torch.no_grad()
def greedy_uncached(model, prompt: torch.Tensor, n: int) -> list[int]:
    ids = prompt.clone()  # (1, T)
    out = []
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(-1)  # (1,)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return out


@torch.no_grad()
def greedy_cached(model, prompt: torch.Tensor, n: int, chunk: int | None = None) -> list[int]:
    T = prompt.shape[1]
    model.setup_cache(1, T + n)
    try:
        chunk = chunk or T
        for t0 in range(0, T, chunk):  # prefill, possibly in chunks
            logits = model(prompt[:, t0:t0 + chunk], input_pos=torch.arange(t0, min(T, t0 + chunk)))
        out = []
        for i in range(n):
            nxt = logits[:, -1].argmax(-1)  # (1,)
            out.append(int(nxt))
            if i < n - 1:
                logits = model(nxt[:, None], input_pos=torch.tensor([T + i]))
        return out
    finally:
        model.clear_cache()


@pytest.mark.parametrize("kw", [dict(), dict(qk_norm=True, n_kv_heads=1), dict(tie_embeddings=False, n_kv_heads=4)])
def test_cached_greedy_equals_uncached(kw):
    model = make(**kw)
    prompt = torch.randint(0, 101, (1, 9), generator=torch.Generator().manual_seed(3))
    ref = greedy_uncached(model, prompt, 32)
    assert greedy_cached(model, prompt, 32) == ref
    assert greedy_cached(model, prompt, 32, chunk=4) == ref  # chunked prefill too
    assert len(set(ref)) > 1  # the model does not just repeat one token


@torch.no_grad()
def test_cached_logits_match_full_forward():
    model = make()
    ids = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(4))
    full = model(ids)  # (2, 20, V)
    model.setup_cache(2, 20)
    steps = [model(ids[:, :12], input_pos=torch.arange(12))]
    steps += [model(ids[:, t:t + 1], input_pos=torch.tensor([t])) for t in range(12, 20)]
    model.clear_cache()
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_packed_documents_equal_separate_runs():
    model = make()
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(0, 101, (1, 10), generator=g), torch.randint(0, 101, (1, 14), generator=g)
    ids = torch.cat([a, b], dim=1)  # (1, 24)
    positions = torch.cat([torch.arange(10), torch.arange(14)])[None]
    doc_ids = torch.tensor([[0] * 10 + [1] * 14])
    packed = model(ids, positions=positions, doc_ids=doc_ids)
    torch.testing.assert_close(packed[:, :10], model(a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 10:], model(b), atol=1e-5, rtol=1e-5)
    # without the document mask the second document would see the first: logits differ
    leaky = model(ids, positions=positions)
    assert (leaky[:, 10:] - model(b)).abs().max() > 1e-3


@torch.no_grad()
def test_left_padded_batched_decode_equals_unpadded():
    model = make()
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, 101, (n,), generator=g) for n in (5, 11, 8)]
    n_new, L = 16, 11
    B, S = len(prompts), L + n_new
    ids = torch.zeros(B, L, dtype=torch.long)
    kv_mask = torch.zeros(B, S, dtype=torch.bool)
    positions = torch.zeros(B, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        pad = L - len(p)
        ids[i, pad:] = p
        kv_mask[i, pad:] = True
        positions[i, pad:] = torch.arange(len(p))
    lens = torch.tensor([len(p) for p in prompts])
    model.setup_cache(B, S)
    logits = model(ids, positions=positions, input_pos=torch.arange(L), kv_mask=kv_mask)
    batched: list[list[int]] = [[] for _ in prompts]
    last_logits = []
    for i in range(n_new):
        nxt = logits[:, -1].argmax(-1)  # (B,)
        last_logits.append(logits[:, -1])
        for r in range(B):
            batched[r].append(int(nxt[r]))
        if i < n_new - 1:
            logits = model(nxt[:, None], positions=(lens + i)[:, None], input_pos=torch.tensor([L + i]),
                           kv_mask=kv_mask)
    model.clear_cache()
    assert torch.isfinite(torch.stack(last_logits)).all()
    for r, p in enumerate(prompts):
        assert batched[r] == greedy_cached(model, p[None], n_new), f"row {r}"
        # and the first-step logits match the unpadded forward closely
        torch.testing.assert_close(last_logits[0][r], model(p[None])[0, -1], atol=1e-5, rtol=1e-5)


def test_errors_are_clear():
    model = make()
    with pytest.raises(RuntimeError, match="setup_cache"):
        model(torch.zeros(1, 3, dtype=torch.long), input_pos=torch.arange(3))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.setup_cache(1, 1000)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 97, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(tiny(vocab_size=0))


def test_training_reduces_loss():
    """A few AdamW steps on a fixed batch lower the loss (the graph is differentiable end to end)."""
    model = make().train()
    ids = torch.randint(0, 101, (4, 32), generator=torch.Generator().manual_seed(7))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 101), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


@torch.no_grad()
def test_bf16_autocast_close_to_fp32():
    """Under bf16 autocast (the training dtype policy) logits stay close to the fp32 ones."""
    model = make()
    ids = torch.randint(0, 101, (2, 24), generator=torch.Generator().manual_seed(8))
    ref = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(ids)
    assert low.dtype == torch.bfloat16
    err = (low.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, err
    assert model.embed_tokens.weight.dtype == torch.float32  # master weights untouched
