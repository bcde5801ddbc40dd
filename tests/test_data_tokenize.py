"""`omniloom tokenize`: JSONL -> shards through the real tokenizer, template and processor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omniloom.cli import main
from omniloom.codecs.text import TextTokenizer
from omniloom.data.shards import ShardSet
from omniloom.processor import Processor
from omniloom.tokens.vocab import Vocab

CHATS = [
    {"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
    for i in range(30)
]


@pytest.fixture()
def setup(tmp_path):
    texts = [m["content"] for c in CHATS for m in c["messages"]]
    tok = TextTokenizer.train(texts * 5, vocab_size=300, min_frequency=1)
    tok_path = tok.save(tmp_path / "tok")
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text("\n".join(json.dumps(c) for c in CHATS) + "\n")
    return tmp_path, tok_path, jsonl


def test_tokenize_cli_writes_verified_shards_matching_the_processor(setup):
    tmp, tok_path, jsonl = setup
    out = tmp / "shards"
    rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(out),
               "--shard-tokens", "200", "--val-fraction", "0.2", "--no-progress"])
    assert rc == 0
    train, val = ShardSet.open(out / "train"), ShardSet.open(out / "val")
    assert train.num_docs + val.num_docs == len(CHATS) and val.num_docs > 0
    assert len(train.manifest["shards"]) > 1
    assert (out / "train" / "tokenizer.json").read_text() == tok_path.read_text()
    vocab = Vocab.load(out / "train" / "vocab.json")
    proc = Processor(vocab, TextTokenizer.load(tok_path))
    expected = {tuple(proc.encode_messages(c["messages"], mode="sft").ids): c for c in CHATS}
    for d in range(train.num_docs):
        a, b = train.doc_offsets[d], train.doc_offsets[d + 1]
        ids = tuple(train.ids[a:b].tolist())
        assert ids in expected
        enc = proc.encode_messages(expected[ids]["messages"], mode="sft")
        np.testing.assert_array_equal(train.loss_mask[a:b], enc.loss_mask)
    # sft masks the user turn: some tokens do not count, some do
    assert 0 < train.loss_mask.mean() < 1


def test_bad_jsonl_line_names_file_and_line(setup, capsys):
    tmp, tok_path, jsonl = setup
    lines = jsonl.read_text().splitlines()
    lines[6] = '{"messages": [oops'
    jsonl.write_text("\n".join(lines) + "\n")
    rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(tmp / "o"),
               "--no-progress"])
    assert rc == 2
    assert f"{jsonl}:7: invalid JSON" in capsys.readouterr().err
    assert not (tmp / "o" / "train" / "manifest.json").exists()  # nothing that looks complete


def test_missing_codec_for_media_names_the_line(setup, capsys):
    tmp, tok_path, jsonl = setup
    bad = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                        {"role": "assistant", "content": "a shape"}]}
    jsonl.write_text(json.dumps(CHATS[0]) + "\n" + json.dumps(bad) + "\n")
    rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(tmp / "o"),
               "--no-progress"])
    assert rc == 2
    assert f"{jsonl}:2:" in capsys.readouterr().err


def test_cfg_drop_replaces_the_condition_of_a_share_of_image_answers(tmp_path, capsys):
    from omniloom.tokens import null_condition

    chats = []
    for i in range(40):
        chats.append({"messages": [{"role": "user", "content": f"draw shape {i}"},
                                   {"role": "assistant", "content": [{"type": "image_codes", "codes": [i % 7] * 64}]}]})
    chats += CHATS  # text answers are never dropped
    tok = TextTokenizer.train([c["messages"][0]["content"] for c in chats] * 5, vocab_size=300, min_frequency=1)
    tok_path = tok.save(tmp_path / "tok")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(c) for c in chats) + "\n")
    out = tmp_path / "sh"
    rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(out),
               "--codec", "image-world", "--cfg-drop", "0.5", "--no-progress"])
    assert rc == 0
    s = ShardSet.open(out / "train")
    vocab = Vocab.load(out / "train" / "vocab.json")
    head = null_condition(vocab)
    starts = [tuple(s.doc(d)[0][:4].tolist()) for d in range(s.num_docs)]
    dropped = sum(1 for x in starts if list(x) == head)
    assert 8 <= dropped <= 32  # about half of the 40 image answers, none of the 30 text answers
    assert s.manifest["cfg_drop"] == 0.5
    rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(tmp_path / "x"),
               "--codec", "image-world", "--cfg-drop", "2", "--no-progress"])
    assert rc != 0 and "--cfg-drop must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "x" / "train" / "manifest.json").exists()


def test_worker_processes_write_the_same_shards_as_one_process(tmp_path):
    """Images and speech through the shipped codecs, in 1 process and in 2: byte-identical shards."""
    from omniloom.world.generate import generate

    jsonl = generate(tmp_path / "w", "train", 24, seed=5, mixture="draw=1,asr=1,spoken_vqa=1")
    tok = TextTokenizer.train([line for line in jsonl.read_text().splitlines()] * 3, vocab_size=300, min_frequency=1)
    tok_path = tok.save(tmp_path / "tok")
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"sh{workers}"
        rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(out),
                   "--codec", "image-world", "--codec", "audio-world", "--val-fraction", "0.3",
                   "--workers", workers, "--no-progress"])
        assert rc == 0
        outs.append(out)
    for split in ("train", "val"):
        a, b = (json.loads((o / split / "manifest.json").read_text()) for o in outs)
        assert a["shards"] == b["shards"] and a["total_docs"] > 0  # same files, same sha256
    s = ShardSet.open(outs[1] / "train")
    assert s.num_docs + ShardSet.open(outs[1] / "val").num_docs == 24
