"""`omniloom tokenize`: JSONL -> shards through the real tokenizer, template and processor."""

from __future__ import annotations

import json
from pathlib import Path

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
    """Images and speech through the shipped codecs, in 1 process and in 2 (5 units of 5 documents
    at most, run by a pool): byte-identical shards."""
    from omniloom.world.generate import generate

    jsonl = generate(tmp_path / "w", "train", 24, seed=5, mixture="draw=1,asr=1,spoken_vqa=1")
    tok = TextTokenizer.train([line for line in jsonl.read_text().splitlines()] * 3, vocab_size=300, min_frequency=1)
    tok_path = tok.save(tmp_path / "tok")
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"sh{workers}"
        rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(out),
                   "--codec", "image-world", "--codec", "audio-world", "--val-fraction", "0.3",
                   "--workers", workers, "--unit-docs", "5", "--no-progress"])
        assert rc == 0
        outs.append(out)
    for split in ("train", "val"):
        a, b = (json.loads((o / split / "manifest.json").read_text()) for o in outs)
        assert a["shards"] == b["shards"] and a["total_docs"] > 0  # same files, same sha256
    s = ShardSet.open(outs[1] / "train")
    assert s.num_docs + ShardSet.open(outs[1] / "val").num_docs == 24


def _chats_jsonl(tmp_path, n=30):
    chats = [{"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                           {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(n)]
    tok = TextTokenizer.train([m["content"] for c in chats for m in c["messages"]] * 5, vocab_size=300,
                              min_frequency=1)
    jsonl = tmp_path / "chats.jsonl"
    jsonl.write_text("\n".join(json.dumps(c) for c in chats) + "\n")
    return jsonl, tok.save(tmp_path / "tok")


def test_units_cut_anywhere_give_the_same_documents_and_split(tmp_path):
    """The split is drawn per document position: cutting the work into 4-document units or one unit
    puts the same documents in the same splits (only the shard boundaries differ)."""
    from omniloom.data.tokenize import tokenize_files

    jsonl, tok_path = _chats_jsonl(tmp_path)
    docs = {}
    for unit_docs in (4, 1000):
        out = tmp_path / f"u{unit_docs}"
        tokenize_files([jsonl], tok_path, out, val_fraction=0.3, unit_docs=unit_docs, progress=False)
        docs[unit_docs] = {split: [tuple(ShardSet.open(out / split).doc(d)[0].tolist())
                                   for d in range(ShardSet.open(out / split).num_docs)] for split in ("train", "val")}
        assert ShardSet.open(out / "train").manifest["units"] == (8 if unit_docs == 4 else 1)
    assert docs[4] == docs[1000] and docs[4]["val"] and docs[4]["train"]


def test_an_interrupted_tokenize_resumes_skipping_finished_units(tmp_path, monkeypatch, capsys):
    """Killed after 3 of 8 units: no manifest is left (the directory does not look complete); the
    rerun encodes only the 5 missing units, and its shards equal an uninterrupted run's."""
    import omniloom.data.tokenize as T

    jsonl, tok_path = _chats_jsonl(tmp_path)
    args = dict(val_fraction=0.2, unit_docs=4, shard_tokens=150, progress=False)
    T.tokenize_files([jsonl], tok_path, tmp_path / "whole", **args)

    real, calls = T._run_unit, []

    def dying(job, unit, processor, on_doc=None):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(unit.index)
        return real(job, unit, processor, on_doc)

    monkeypatch.setattr(T, "_run_unit", dying)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        T.tokenize_files([jsonl], tok_path, out, **args)
    assert not (out / "train" / "manifest.json").exists()
    calls.clear()

    def counting(job, unit, processor, on_doc=None):
        calls.append(unit.index)
        return real(job, unit, processor, on_doc)

    monkeypatch.setattr(T, "_run_unit", counting)
    T.tokenize_files([jsonl], tok_path, out, **{**args, "progress": True})
    assert calls == [3, 4, 5, 6, 7]
    assert "resuming, 3 of 8 units already done" in capsys.readouterr().out
    for split in ("train", "val"):
        a, b = (json.loads((d / split / "manifest.json").read_text()) for d in (tmp_path / "whole", out))
        assert a["shards"] == b["shards"]


def test_another_plan_removes_the_old_units_shards(tmp_path):
    """Rerun into the same folder with other settings: the earlier run's unit shards are deleted,
    not mixed in, and every shard file present is one the manifest names."""
    from omniloom.data.tokenize import tokenize_files

    jsonl, tok_path = _chats_jsonl(tmp_path)
    out = tmp_path / "o"
    tokenize_files([jsonl], tok_path, out, unit_docs=4, shard_tokens=100, progress=False)
    tokenize_files([jsonl], tok_path, out, unit_docs=10, progress=False)
    listed = {s["file"] for s in json.loads((out / "train" / "manifest.json").read_text())["shards"]}
    assert {f.name for f in (out / "train").glob("*.safetensors")} == listed and len(listed) == 3
    assert ShardSet.open(out / "train").num_docs == 30


@pytest.mark.slow
def test_ray_data_tasks_write_the_same_shards_as_the_local_run(tmp_path, capsys):
    """`--ray auto` with no cluster running starts a local Ray; its shards equal a local run's,
    images and speech included; a bad record fails with the file and line, as locally."""
    pytest.importorskip("ray")
    from omniloom.world.generate import generate

    jsonl = generate(tmp_path / "w", "train", 12, seed=5, mixture="draw=1,asr=1")
    tok = TextTokenizer.train([line for line in jsonl.read_text().splitlines()] * 3, vocab_size=300, min_frequency=1)
    tok_path = tok.save(tmp_path / "tok")
    common = ["--input", str(jsonl), "--tokenizer", str(tok_path), "--codec", "image-world", "--codec",
              "audio-world", "--val-fraction", "0.3", "--unit-docs", "4", "--no-progress"]
    assert main(["tokenize", *common, "--out", str(tmp_path / "local"), "--workers", "1"]) == 0
    import signal
    import sys

    sigterm = signal.getsignal(signal.SIGTERM)
    assert main(["tokenize", *common, "--out", str(tmp_path / "ray"), "--ray", "auto", "--workers", "2"]) == 0
    # the Ray driver ran in a child process: this one is no Ray driver and keeps its SIGTERM handler
    # (a driver here ended the test runner mid-suite, exit 1 and no report, once a Ray Data thread
    # had started a second local Ray after shutdown and that cluster went away)
    assert signal.getsignal(signal.SIGTERM) is sigterm
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    for split in ("train", "val"):
        a, b = (json.loads((tmp_path / d / split / "manifest.json").read_text()) for d in ("local", "ray"))
        assert a["shards"] == b["shards"] and a["total_docs"] > 0
    lines = jsonl.read_text().splitlines()
    lines[5] = json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "gone.png"}]},
                                        {"role": "assistant", "content": "a shape"}]})
    jsonl.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["tokenize", *common, "--out", str(tmp_path / "bad"), "--ray", "auto", "--workers", "2"]) == 2
    assert f"{jsonl}:6:" in capsys.readouterr().err


def test_cfg_drop_leaves_documents_without_a_user_turn_alone(tmp_path):
    """An interleaved page (one assistant document with images) has no condition to drop."""
    from omniloom.tokens import drop_condition
    from omniloom.tokens.template import Encoded

    jsonl, tok_path = _chats_jsonl(tmp_path, 4)
    vocab = Vocab.build(TextTokenizer.load(tok_path).vocab_size, image_codebook_size=16, image_tokens=4)
    proc = Processor(vocab, TextTokenizer.load(tok_path))
    page = proc.encode_messages([{"role": "assistant", "content": [
        {"type": "text", "text": "what is 1 plus 1?"}, {"type": "image_codes", "codes": [1] * vocab.image_tokens}]}],
        mode="pretrain")
    assert drop_condition(page, vocab) is None
    chat = proc.encode_messages([{"role": "user", "content": "what is 1 plus 1?"}, {"role": "assistant", "content": [
        {"type": "image_codes", "codes": [1] * vocab.image_tokens}]}])
    assert isinstance(drop_condition(chat, vocab), Encoded)


def test_folder_inputs_split_into_files_so_units_restart_within_one_file(tmp_path):
    """A LibriSpeech tree is planned per transcript and a folder of tar shards per shard (a unit then
    re-reads only its own file up to its start); other formats stay one input."""
    from omniloom.data.readers import split_input

    for d in ("a/1", "b/2"):
        (tmp_path / "ls" / d).mkdir(parents=True)
        (tmp_path / "ls" / d / f"{d.replace('/', '-')}.trans.txt").write_text("X-1-0001 HELLO\n")
    (tmp_path / "wds").mkdir()
    for k in (1, 0):
        (tmp_path / "wds" / f"s{k}.tar").write_bytes(b"")
    assert [Path(f).name for f in split_input(tmp_path / "ls", "librispeech")] == ["a-1.trans.txt", "b-2.trans.txt"]
    assert [Path(f).name for f in split_input(tmp_path / "wds", "webdataset")] == ["s0.tar", "s1.tar"]
    assert split_input(tmp_path / "x.jsonl", "messages") == [str(tmp_path / "x.jsonl")]


def _driver_that_dies_first(job, units, address, workers, q):
    """A stand-in Ray driver (run in the spawned child): ends silently on its first start, as a
    driver does when the cluster it joined goes away; the second start reports one record."""
    import os
    from pathlib import Path

    starts = Path(address)
    n = int(starts.read_text() or 0) + 1 if starts.exists() else 1
    starts.write_text(str(n))
    if n == 1 or "always" in starts.name:
        os._exit(1)
    q.put(("record", {"docs": 3}))
    q.put(("end", None))


def test_a_ray_driver_that_ends_before_its_first_unit_is_started_once_more(tmp_path, monkeypatch, capsys):
    import omniloom.data.tokenize as tk

    pytest.importorskip("ray")

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    monkeypatch.setattr(tk, "_ray_driver", _driver_that_dies_first)
    starts = tmp_path / "starts"
    assert list(tk._run_ray(None, ["unit"], str(starts), 1, Bar())) == [{"docs": 3}]
    assert starts.read_text() == "2" and "starting it again" in capsys.readouterr().err
    always = tmp_path / "starts-always"  # a driver that never lives: the second end is an error
    with pytest.raises(RuntimeError, match="ended \\(exit code 1\\) before the last unit"):
        list(tk._run_ray(None, ["unit"], str(always), 1, Bar()))
    assert always.read_text() == "2"
