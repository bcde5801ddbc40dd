"""Byte-level BPE text codec and the `omniloom tokenizer` verb."""

from __future__ import annotations

import argparse
import functools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniloom.codecs import text_cli
from omniloom.codecs.text import TextTokenizer

CORPUS = ["a big red circle at the top left", "what shape is in the center?", "the quick brown fox",
          "Ünïcödé text — 日本語, emoji 🎉"] * 30


@functools.lru_cache(maxsize=1)
def trained() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, 400, min_frequency=2)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_round_trip_arbitrary_unicode(s):
    tok = trained()
    ids = tok.encode(s)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == s


def test_train_learns_merges_and_respects_size():
    tok = trained()
    assert 256 < tok.vocab_size <= 400
    s = "a big red circle at the top left"
    assert len(tok.encode(s)) < len(s.encode()) / 2  # merges compress seen text


def test_save_load_round_trip(tmp_path):
    tok = trained()
    path = tok.save(tmp_path / "tok")
    assert path.name == "tokenizer.json" and not list(tmp_path.glob("tok/.*tmp"))
    back = TextTokenizer.load(tmp_path / "tok")
    for s in CORPUS[:4]:
        assert back.encode(s) == tok.encode(s)
    assert back.vocab_size == tok.vocab_size


def test_load_gpt2_style_tokenizer_json(tmp_path):
    """Any tokenizer.json written by `tokenizers` loads, e.g. a GPT-2-style BPE with <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=350, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(str(tmp_path / "tokenizer.json"))
    tok = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert tok.vocab_size == t.get_vocab_size()
    s = "the quick brown fox 🎉"
    assert tok.encode(s) == t.encode(s).ids
    assert tok.decode(tok.encode(s)) == s


def test_errors():
    with pytest.raises(ValueError, match="too small"):
        TextTokenizer.train(CORPUS, 100)
    with pytest.raises(ValueError, match="empty corpus"):
        TextTokenizer.train([], 300)
    with pytest.raises(ValueError, match="does not exist"):
        TextTokenizer.load("/nonexistent/tokenizer.json")
    with pytest.raises(ValueError, match="outside"):
        trained().decode([10**6])


def _run(argv):
    p = argparse.ArgumentParser()
    text_cli.add_arguments(p)
    return text_cli.run(p.parse_args(argv))


def test_cli_train_and_info(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("\n".join(CORPUS[:4]) + "\n")
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "text": "what color is the star?"},
                                                     {"type": "image_url", "image_url": {"url": "x.png"}}]},
                        {"role": "assistant", "content": "zzzqqq zzzqqq zzzqqq"}]}
    (tmp_path / "b.jsonl").write_text(json.dumps(rec) + "\n" + json.dumps(rec) + "\n")
    assert _run(["train", "--corpus", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"), "--vocab-size", "300",
                 "--min-frequency", "1", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    tok = TextTokenizer.load(tmp_path / "out")
    assert "zzzqqq" in "".join(tok.id_to_token(i) for i in range(tok.vocab_size))  # JSONL text was used
    assert "x.png" not in "".join(tok.id_to_token(i) for i in range(tok.vocab_size))
    assert _run(["info", str(tmp_path / "out" / "tokenizer.json"), "--text", "héllo"]) == 0
    out = capsys.readouterr().out
    assert f"vocab size: {tok.vocab_size}" in out and "round trip: exact" in out


def test_cli_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="missing.txt does not exist"):
        _run(["train", "--corpus", str(tmp_path / "missing.txt"), "--vocab-size", "300", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="holds no text"):
        _run(["train", "--corpus", str(tmp_path / "empty.txt"), "--vocab-size", "300", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="too small"):
        _run(["train", "--corpus", str(tmp_path / "empty.txt"), "--vocab-size", "12", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        _run(["train", "--corpus", str(tmp_path / "bad.jsonl"), "--vocab-size", "300", "--out", str(tmp_path)])
