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


def _doc_mask(B: int, T: int, seed: int) -> torch.Tensor:
    from omniloom.model.llama import doc_causal_mask

    g = torch.Generator().manual_seed(seed)
    starts = torch.zeros(B, T, dtype=torch.long)
    starts[:, 1:] = (torch.rand(B, T - 1, generator=g) < 0.08).long()  # a new document at ~8% of positions
    return doc_causal_mask(starts.cumsum(1))


@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (6, 1)])
@pytest.mark.parametrize("T,block", [(7, 16), (64, 16), (100, 32), (90, 7)])
@pytest.mark.parametrize("docs", [False, True])
def test_blocked_causal_attention_equals_sdpa(heads, T, block, docs):
    """The CPU training path (query blocks against the keys they can see, grouped query heads
    folded into rows) gives SDPA's outputs and gradients, causal or with packed documents."""
    import torch.nn.functional as F

    from omniloom.model.llama import blocked_causal_attention

    H, G = heads
    B, D = 2, 8
    g = torch.Generator().manual_seed(T * 31 + block)
    q = torch.randn(B, H, T, D, generator=g, requires_grad=True)
    k = torch.randn(B, G, T, D, generator=g, requires_grad=True)
    v = torch.randn(B, G, T, D, generator=g, requires_grad=True)
    grad = torch.randn(B, H, T, D, generator=g)
    mask = _doc_mask(B, T, T) if docs else None
    ours = blocked_causal_attention(q, k, v, mask, block=block)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    kw = dict(attn_mask=mask) if docs else dict(is_causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=H != G, **kw)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # a future position would change the answer: the result is causal, not merely equal on noise
    k2 = k.detach().clone()
    k2[:, :, -1] += 5.0
    moved = blocked_causal_attention(q.detach(), k2, v.detach(), mask, block=block)
    assert torch.equal(moved[:, :, :-1], ours.detach()[:, :, :-1])
    assert not torch.equal(moved[:, :, -1], ours.detach()[:, :, -1])


def test_long_sequences_take_the_blocked_path_with_the_same_logits(monkeypatch):
    """At T >= BLOCKED_ATTENTION_MIN on CPU the decoder uses blocked attention; logits equal SDPA's."""
    from omniloom.model import llama

    model = make(max_seq_len=320)
    ids = torch.randint(0, 101, (1, 300), generator=torch.Generator().manual_seed(3))
    calls = []
    real = llama.blocked_causal_attention
    monkeypatch.setattr(llama, "blocked_causal_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    with torch.no_grad():
        blocked = model(ids)
        assert len(calls) == 2  # one per layer
        monkeypatch.setattr(llama, "BLOCKED_ATTENTION_MIN", 10**9)
        plain = model(ids)
    assert len(calls) == 2
    torch.testing.assert_close(blocked, plain, atol=1e-5, rtol=1e-5)


def test_compiled_forward_with_a_symbolic_length_keeps_sdpa():
    """Under torch.compile a second length makes the sequence length symbolic; the blocked path
    (whose block edges need a concrete T) then steps aside for SDPA instead of failing to lower,
    and the logits still match eager."""
    torch._dynamo.reset()
    model = make(max_seq_len=800, n_layers=1)
    compiled = torch.compile(model)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for T in (300, 768):  # static first, then dynamic (automatic dynamic shapes)
            ids = torch.randint(0, 101, (2, T), generator=g)
            doc_ids = (torch.rand(2, T, generator=g) < 0.02).long().cumsum(1)
            torch.testing.assert_close(compiled(ids, doc_ids=doc_ids), model(ids, doc_ids=doc_ids),
                                       atol=1e-4, rtol=1e-4)
