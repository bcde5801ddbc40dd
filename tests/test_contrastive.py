"""Contrastive embeddings: pair finding in ids, pooled states, and the InfoNCE term of TrainStep."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from omniloom.config import ModelConfig, TrainConfig
from omniloom.infer.embed import pack_rows, pooled_states
from omniloom.model.llama import Transformer
from omniloom.tokens.pairs import embed_sequence, find_pairs
from omniloom.tokens.vocab import Vocab
from omniloom.train.step import TrainStep

VOCAB = Vocab.build(32, image_codebook_size=16, image_tokens=4, audio_codebook_size=32, audio_codebooks=1,
                    voices=["nova"])
S = VOCAB.special


def _img(codes):
    return [S("image"), *[VOCAB.image_start + c for c in codes], S("/image")]


def _aud(codes, voice=None, transcript=()):
    return [S("audio"), VOCAB.voice_id(voice), *transcript, *[VOCAB.audio_start + c for c in codes], S("/audio")]


def _doc(media, answer, question=(5, 6)):
    """<|bos|> <|user|> media question <|end|> <|assistant|> answer <|end|> <|eos|>"""
    return [S("bos"), S("user"), *media, *question, S("end"), S("assistant"), *answer, S("end"), S("eos")]


def test_find_pairs_on_hand_built_ids():
    a = _doc(_img([1, 2, 3, 4]), [10, 11, 12])
    b = _doc(_aud([7, 8, 9]), [20, 21])
    c = _doc(_img([5, 5, 5, 5]), [])  # empty answer: no pair
    d = [S("bos"), S("user"), 3, 4, S("end"), S("assistant"), *_img([1, 1, 1, 1]), S("end"), S("eos")]  # text -> image
    e = _doc(_aud([3], voice="nova"), _aud([4], voice="nova", transcript=(9,)))  # spoken answer: not text
    ids = a + b + c + d + e
    pairs = find_pairs(ids, VOCAB)
    assert [(p.kind, p.text) for p in pairs] == [("image", (10, 11, 12)), ("audio", (20, 21))]
    assert pairs[0].media == tuple(VOCAB.image_start + c for c in [1, 2, 3, 4])
    assert pairs[1].media == tuple(VOCAB.audio_start + c for c in [7, 8, 9])
    assert pairs[0].start == 2 and pairs[1].start == len(a) + 2
    # a document cut before its answer's <|end|> (a row edge) gives no pair; doc ids keep pairs apart
    assert find_pairs(a[:-2], VOCAB) == []
    docs = [0] * 9 + [1] * (len(a) - 9)  # the user turn and the answer in different document pieces
    assert find_pairs(a, VOCAB, docs) == []
    # an image span with a code missing is not complete
    bad = _doc([S("image"), *[VOCAB.image_start + c for c in [1, 2, 3]], S("/image")], [10])
    assert find_pairs(bad, VOCAB) == []


def test_embed_sequence_layout_and_pool_mask():
    codes = [VOCAB.audio_start + 3, VOCAB.audio_start + 4]
    ids, mask = embed_sequence("audio", codes, VOCAB)
    assert ids == [S("audio"), VOCAB.voice_id(None), *codes, S("/audio")]
    assert mask == [False, False, True, True, False]
    ids, mask = embed_sequence("image", [VOCAB.image_start] * 4, VOCAB)
    assert ids[0] == S("image") and ids[-1] == S("/image") and sum(mask) == 4
    assert embed_sequence("text", [3, 4], VOCAB) == ([3, 4], [True, True])
    with pytest.raises(ValueError, match="embedding kind"):
        embed_sequence("video", [1], VOCAB)


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=VOCAB.size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64,
                                   max_seq_len=128))


def test_pooled_states_packing_matches_one_at_a_time():
    model = _model().eval()
    seqs = [[3, 4, 5], [7] * 30, [1, 2], list(range(10, 40))]
    masks = [[True] * len(s) for s in seqs]
    masks[1] = [False] * 29 + [True]
    assert pack_rows([len(s) for s in seqs], 64) == [[0, 1, 2], [3]]
    with torch.no_grad():
        packed = pooled_states(model, seqs, masks, max_len=64)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            h = model(torch.tensor([s]), return_hidden=True)[0]
            torch.testing.assert_close(packed[i], h[torch.tensor(m)].mean(0), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="more than the context"):
        pack_rows([65], 64)


def _pair_batch(n_docs: int, seed: int, rows: int = 2) -> dict[str, torch.Tensor]:
    """Rows of caption-like documents: random image codes, a random 3-id text answer per image."""
    g = torch.Generator().manual_seed(seed)
    per_row = n_docs // rows
    out_ids, out_docs = [], []
    for _ in range(rows):
        ids: list[int] = []
        docs: list[int] = []
        for d in range(per_row):
            codes = torch.randint(0, 16, (4,), generator=g).tolist()
            text = torch.randint(0, 32, (3,), generator=g).tolist()
            doc = _doc(_img(codes), text)
            ids += doc
            docs += [d] * len(doc)
        out_ids.append(ids)
        out_docs.append(docs)
    T = max(len(x) for x in out_ids) + 1
    pad = S("pad")
    full = torch.tensor([x + [pad] * (T - len(x)) for x in out_ids])
    doc_ids = torch.tensor([d + [per_row] * (T - len(d)) for d in out_docs])
    mask = (full != pad)[:, 1:]
    pos = torch.zeros_like(doc_ids)
    for b in range(rows):
        for t in range(1, T):
            pos[b, t] = pos[b, t - 1] + 1 if doc_ids[b, t] == doc_ids[b, t - 1] else 0
    return {"ids": full[:, :-1], "targets": full[:, 1:], "loss_mask": mask, "positions": pos[:, :-1],
            "doc_ids": doc_ids[:, :-1]}


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=50, lr=3e-3, warmup_steps=0, dtype="fp32", grad_clip=1.0)
    base.update(kw)
    return TrainConfig(**base)


def test_zero_weight_is_the_plain_step_bit_for_bit(monkeypatch):
    """weight 0: the contrastive code never runs, the model sees one forward per micro-batch, and the
    weights after a few steps equal those of a step whose contrastive path would raise."""
    batch = _pair_batch(6, 0)
    halves = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]
    m1 = _model()
    m2 = copy.deepcopy(m1)
    calls = []
    m1.register_forward_hook(lambda *a: calls.append(1))
    s1 = TrainStep(m1, _cfg(contrastive_weight=0.0), vocab=VOCAB)
    s2 = TrainStep(m2, _cfg(), vocab=VOCAB)
    monkeypatch.setattr(s2, "_contrastive", lambda mbs: (_ for _ in ()).throw(AssertionError("ran")))
    for _ in range(3):
        o1, o2 = s1(halves), s2(halves)
        assert o1 == o2 and "loss/contrastive" not in o1
    assert len(calls) == 3 * 2
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_positive_weight_lowers_the_contrastive_loss():
    batch = _pair_batch(8, 1)
    step = TrainStep(_model(), _cfg(contrastive_weight=1.0), vocab=VOCAB)
    first = step([batch])
    assert first["contrastive_pairs"] == 8
    for _ in range(11):
        out = step([batch])
    assert out["loss/contrastive"] < 0.5 * first["loss/contrastive"]
    assert out["contrastive_acc"] > first["contrastive_acc"]


def test_contrastive_gradient_is_the_same_whatever_the_micro_batching():
    """The pairs of all micro-batches of a step are one set of negatives: 1 x 2 rows == 2 x 1 row."""
    batch = _pair_batch(6, 2)
    halves = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]
    m1 = _model()
    m2 = copy.deepcopy(m1)
    s1 = TrainStep(m1, _cfg(contrastive_weight=0.5), vocab=VOCAB)
    s2 = TrainStep(m2, _cfg(contrastive_weight=0.5), vocab=VOCAB)
    for _ in range(2):
        o1, o2 = s1([batch]), s2(halves)
        assert o1["loss/contrastive"] == pytest.approx(o2["loss/contrastive"], abs=1e-5)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-5, rtol=1e-4)


def test_identical_texts_are_not_negatives():
    """Two pairs sharing their answer: the loss is that of the others alone plus their own terms,
    finite, and a batch of one repeated answer gives zero loss (every negative masked)."""
    batch = _pair_batch(4, 3, rows=1)
    ids = batch["ids"].clone()
    pairs = find_pairs(ids[0], VOCAB, batch["doc_ids"][0])
    first = pairs[0].text
    for p in pairs[1:]:  # give every document the first one's answer
        at = [i for i in range(p.start, ids.shape[1] - 2) if ids[0, i] == S("assistant")][0] + 1
        ids[0, at:at + 3] = torch.tensor(first)
    batch["ids"] = ids
    out = TrainStep(_model(), _cfg(contrastive_weight=1.0), vocab=VOCAB)([batch])
    assert out["contrastive_pairs"] == 4 and out["loss/contrastive"] == pytest.approx(0.0, abs=1e-6)


def test_config_checks_the_weight():
    with pytest.raises(ValueError, match="contrastive_weight"):
        _cfg(contrastive_weight=-1.0).validate()
    with pytest.raises(ValueError, match="contrastive_temperature"):
        _cfg(contrastive_temperature=0.0).validate()


@pytest.mark.slow
@pytest.mark.parametrize("parallel, pair_docs", [("fsdp", 60), ("replicate", 60), ("fsdp", 1)])
def test_two_ranks_train_with_the_contrastive_term(tmp_path, parallel, pair_docs):
    """torchrun, 2 CPU ranks: the sharded forward of the paired spans is collective, so ranks with
    fewer than 2 pairs (pair_docs=1: nearly every step) still run it; the run must finish, train,
    and log a finite contrastive loss whenever rank 0 had pairs."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from omniloom.data.shards import ShardWriter

    g = torch.Generator().manual_seed(0)
    with ShardWriter(tmp_path / "train", VOCAB, shard_tokens=4000) as w:
        for d in range(80):
            if d < pair_docs:
                ids = _doc(_img(torch.randint(0, 16, (4,), generator=g).tolist()),
                           torch.randint(0, 32, (3,), generator=g).tolist())
            else:
                ids = [S("bos"), *torch.randint(0, 32, (12,), generator=g).tolist(), S("eos")]
            w.add(ids, [1] * len(ids))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "omniloom.cli", "train", "--preset", "debug", "--parallel", parallel,
           "model.vocab_size=0", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
           "model.ffn_dim=64", "model.max_seq_len=128", "data.seq_len=64", "train.batch_size=4",
           "train.micro_batch_size=1", "train.dtype=fp32", "train.warmup_steps=1", "train.log_every=1",
           "train.progress=false", "train.steps=4", "train.ckpt_every=100", "train.lr=1e-2",
           "train.contrastive_weight=1.0", f"data.train={tmp_path / 'train'}", f"train.out_dir={out}"]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in recs if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2, 3, 4]
    with_pairs = [x for x in steps if x["contrastive_pairs"] >= 2]
    assert all(np.isfinite(x["loss/contrastive"]) for x in with_pairs)
    assert (len(with_pairs) == 4) if pair_docs == 60 else (len(with_pairs) == 0)
