"""Shards and the packed loader: packing, document isolation, rank sharding, resume, corruption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniloom.data.loader import PackedLoader
from omniloom.data.shards import ShardSet, ShardWriter, filter_shards
from omniloom.tokens.vocab import Vocab


def _write(tmp_path, n_docs=40, shard_tokens=200, seed=0):
    vocab = Vocab.build(text_size=100)
    rng = np.random.default_rng(seed)
    docs = []
    with ShardWriter(tmp_path / "sh", vocab, shard_tokens=shard_tokens) as w:
        for i in range(n_docs):
            n = int(rng.integers(3, 40))
            ids = rng.integers(0, 100, n)
            mask = (rng.random(n) > 0.3).astype(np.uint8)
            w.add(ids.tolist(), mask.tolist())
            docs.append((ids, mask))
    return tmp_path / "sh", docs


def test_shards_roundtrip_and_manifest(tmp_path):
    path, docs = _write(tmp_path)
    s = ShardSet.open(path)
    assert len(s.manifest["shards"]) > 1
    assert s.num_docs == len(docs)
    for d, (ids, mask) in enumerate(docs):
        a, b = s.doc_offsets[d], s.doc_offsets[d + 1]
        np.testing.assert_array_equal(s.ids[a:b], ids)
        np.testing.assert_array_equal(s.loss_mask[a:b], mask)
    assert (path / "vocab.json").is_file()


def test_rows_pack_documents_and_never_cross_them(tmp_path):
    path, docs = _write(tmp_path)
    L = 31
    loader = PackedLoader(path, seq_len=L, batch_size=4, seed=3)
    starts = {tuple(ids[:3].tolist()) for ids, _ in docs}
    seen_pieces = 0
    for _ in range(loader.batches_per_epoch):
        (mb,) = loader.next_batch()
        assert mb["ids"].shape == (4, L) and mb["ids"].dtype == torch.long
        torch.testing.assert_close(mb["targets"][:, :-1], mb["ids"][:, 1:])
        for r in range(4):
            doc, pos = mb["doc_ids"][r], mb["positions"][r]
            new = torch.cat([torch.tensor([True]), doc[1:] != doc[:-1]])
            assert torch.equal(pos == 0, new)  # positions restart exactly where a piece starts
            # a target in a different piece than its input never counts
            crossing = torch.cat([doc[1:] != doc[:-1], torch.tensor([False])])
            assert not mb["loss_mask"][r][crossing].any()
            seen_pieces += int(new.sum())
            for j in torch.nonzero(new[1:]).flatten().tolist():  # a new document (not a continuation)
                if j + 4 < L:
                    assert tuple(mb["ids"][r, j + 1:j + 4].tolist()) in starts
    assert seen_pieces >= 8


def test_targets_mask_follows_shard_mask(tmp_path):
    path, docs = _write(tmp_path, n_docs=1, shard_tokens=1000)
    ids, mask = docs[0]
    loader = PackedLoader(path, seq_len=len(ids) - 1, batch_size=1, shuffle=False)
    (mb,) = loader.next_batch()
    np.testing.assert_array_equal(mb["targets"][0].numpy(), ids[1:])
    np.testing.assert_array_equal(mb["loss_mask"][0].numpy(), mask[1:].astype(bool))


def test_deterministic_and_epochs_differ(tmp_path):
    path, _ = _write(tmp_path)
    a = PackedLoader(path, seq_len=15, batch_size=4, seed=1)
    b = PackedLoader(path, seq_len=15, batch_size=4, seed=1)
    assert torch.equal(a.batch_at(0, 2)[0]["ids"], b.batch_at(0, 2)[0]["ids"])
    assert not torch.equal(a.batch_at(0, 0)[0]["ids"], a.batch_at(1, 0)[0]["ids"])
    c = PackedLoader(path, seq_len=15, batch_size=4, seed=2)
    assert not torch.equal(a.batch_at(0, 0)[0]["ids"], c.batch_at(0, 0)[0]["ids"])


def test_ranks_split_the_global_batch_exactly(tmp_path):
    path, _ = _write(tmp_path)
    one = PackedLoader(path, seq_len=15, batch_size=8, micro_batch_size=2, seed=5)
    ranks = [PackedLoader(path, seq_len=15, batch_size=8, micro_batch_size=2, rank=r, world_size=2, seed=5)
             for r in range(2)]
    assert one.accumulation_steps == 4 and ranks[0].accumulation_steps == 2
    for _ in range(one.batches_per_epoch + 2):  # crosses an epoch boundary
        full = torch.cat([mb["ids"] for mb in one.next_batch()])
        split = torch.cat([mb["ids"] for r in ranks for mb in r.next_batch()])
        assert torch.equal(full, split)


def test_resume_gives_the_same_next_batch(tmp_path):
    path, _ = _write(tmp_path)
    a = PackedLoader(path, seq_len=15, batch_size=4, seed=7)
    for _ in range(a.batches_per_epoch + 1):
        a.next_batch()
    state = a.state_dict()
    expected = a.next_batch()
    b = PackedLoader(path, seq_len=15, batch_size=4, seed=7)
    b.load_state_dict(state)
    got = b.next_batch()
    for k in expected[0]:
        assert torch.equal(expected[0][k], got[0][k])


def test_bad_batch_arithmetic_is_a_clear_error(tmp_path):
    path, _ = _write(tmp_path)
    with pytest.raises(ValueError, match="divisible by the world size"):
        PackedLoader(path, seq_len=15, batch_size=3, world_size=2)
    with pytest.raises(ValueError, match="micro_batch_size"):
        PackedLoader(path, seq_len=15, batch_size=6, micro_batch_size=4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PackedLoader(path, seq_len=15, batch_size=10_000)


def test_corrupt_or_missing_shard_names_the_file(tmp_path):
    path, _ = _write(tmp_path)
    f = path / "shard_00001.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard_00001.safetensors is corrupt"):
        ShardSet.open(path)
    f.unlink()
    with pytest.raises(ValueError, match="shard_00001.safetensors is missing"):
        ShardSet.open(path)
    (path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="manifest.json"):
        ShardSet.open(path)


def test_several_shard_directories_read_as_one_set(tmp_path):
    a, docs_a = _write(tmp_path / "a", n_docs=30, seed=1)
    b, docs_b = _write(tmp_path / "b", n_docs=20, seed=2)
    s = ShardSet.open(f"{a},{b}")
    docs = docs_a + docs_b
    assert s.num_docs == len(docs)
    assert s.num_tokens == sum(len(d[0]) for d in docs)
    for d, (ids, mask) in enumerate(docs):
        got_ids, got_mask = s.doc(d)
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_mask, mask)
    assert s.manifest["directories"] == [str(a), str(b)]
    # the loader packs the documents of both directories, in shuffled order
    loader = PackedLoader(s, seq_len=16, batch_size=2)
    assert loader.rows_per_epoch == s.num_tokens // 17
    perm, _ = loader._order(0)
    assert sorted(perm.tolist()) == list(range(len(docs)))
    assert ShardSet.open([a, b]).num_docs == len(docs)


def test_shard_directories_with_different_vocabularies_are_refused(tmp_path):
    a, _ = _write(tmp_path / "a")
    vocab = Vocab.build(text_size=120)
    with ShardWriter(tmp_path / "c", vocab) as w:
        w.add([1, 2, 3], [1, 1, 1])
    with pytest.raises(ValueError, match="different vocabularies"):
        ShardSet.open(f"{a},{tmp_path / 'c'}")


def test_shard_directories_with_different_text_tokenizers_are_refused(tmp_path):
    a, _ = _write(tmp_path / "a", seed=1)
    b, _ = _write(tmp_path / "b", seed=2)
    (a / "tokenizer.json").write_text('{"model": {"vocab": {"x": 0}}}')
    (b / "tokenizer.json").write_text('{"model": {"vocab": {"x": 0}}}')
    assert ShardSet.open(f"{a},{b}").num_docs == 80  # the same tokenizer: fine
    (b / "tokenizer.json").write_text('{"model": {"vocab": {"y": 0}}}')
    with pytest.raises(ValueError, match="different text tokenizers"):
        ShardSet.open(f"{a},{b}")


def test_filter_shards_copies_the_kept_documents_in_order(tmp_path):
    path, docs = _write(tmp_path, n_docs=40)
    keep = [ids for ids, _ in docs if ids[0] % 2 == 0]
    kept, total = filter_shards(path, tmp_path / "even", lambda ids: ids[0] % 2 == 0, note="even", progress=False)
    assert (kept, total) == (len(keep), 40) and 0 < kept < 40
    s = ShardSet.open(tmp_path / "even")
    assert s.num_docs == kept and s.manifest["filter"] == "even" and s.manifest["sources"] == [str(path)]
    for d, ids in enumerate(keep):
        np.testing.assert_array_equal(s.doc(d)[0], ids)
    with pytest.raises(ValueError, match="exists"):  # never writes over a finished set
        filter_shards(path, tmp_path / "even", lambda ids: True, progress=False)
    with pytest.raises(ValueError, match="kept none"):
        filter_shards(path, tmp_path / "none", lambda ids: False, progress=False)
    assert not (tmp_path / "none").exists() and not (tmp_path / "none.partial").exists()
