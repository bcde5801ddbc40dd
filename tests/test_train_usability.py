"""What a newcomer's first fine-tune runs into: too little data names the keys that would fit, a
warmup longer than the run is clipped (and said), and a validation set without answers is refused
before training instead of reporting an eval loss of 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omniloom.cli import main
from omniloom.data.shards import ShardWriter
from omniloom.tokens.vocab import Vocab

TINY = ["model.vocab_size=0", "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
        "model.ffn_dim=64", "model.max_seq_len=64", "train.dtype=fp32", "train.progress=false",
        "train.log_every=1", "train.eval_every=100", "train.ckpt_every=100"]


def _shards(d: Path, docs: int, masked: bool = True) -> Path:
    vocab = Vocab.build(text_size=100)
    rng = np.random.default_rng(0)
    with ShardWriter(d, vocab, shard_tokens=5000) as w:
        for _ in range(docs):
            L = int(rng.integers(10, 20))
            w.add([int(x) for x in rng.integers(0, 100, L)], [0] + [int(masked)] * (L - 1))
    return d


def test_too_little_data_names_the_keys_that_would_fit(tmp_path, capsys):
    data = _shards(tmp_path / "train", 6)  # ~90 tokens
    rc = main(["train", "--preset", "debug", *TINY, f"data.train={data}", "data.seq_len=32", "train.batch_size=8",
               "train.micro_batch_size=4", f"train.out_dir={tmp_path / 'run'}", "train.steps=2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "fewer than one global batch of 8 rows" in err
    assert "data.seq_len=" in err and "train.batch_size=" in err and "train.micro_batch_size=" in err
    # the suggestion works
    seq = int(err.split("data.seq_len=")[1].split()[0])
    assert main(["train", "--preset", "debug", *TINY, f"data.train={data}", f"data.seq_len={seq}",
                 "train.batch_size=8", "train.micro_batch_size=4", f"train.out_dir={tmp_path / 'run2'}",
                 "train.steps=1", "train.warmup_steps=0"]) == 0


def test_warmup_longer_than_the_run_is_clipped(tmp_path, capsys):
    data = _shards(tmp_path / "train", 60)
    assert main(["train", "--preset", "debug", *TINY, f"data.train={data}", "data.seq_len=32", "train.batch_size=2",
                 "train.micro_batch_size=2", f"train.out_dir={tmp_path / 'run'}", "train.steps=20",
                 "train.warmup_steps=100"]) == 0
    assert "warmup_steps=100 is not shorter than train.steps=20: warming up for 2 steps" in capsys.readouterr().err


def test_validation_set_without_answers_is_refused_before_training(tmp_path, capsys):
    data = _shards(tmp_path / "train", 60)
    val = _shards(tmp_path / "val", 20, masked=False)
    rc = main(["train", "--preset", "debug", *TINY, f"data.train={data}", f"data.val={val}", "data.seq_len=32",
               "train.batch_size=2", "train.micro_batch_size=2", f"train.out_dir={tmp_path / 'run'}",
               "train.steps=2", "train.warmup_steps=0"])
    assert rc == 2
    assert "holds no loss tokens" in capsys.readouterr().err
    assert not (tmp_path / "run" / "ckpt").exists()


def test_serve_help_shows_every_default(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--host", "127.0.0.1"), ("--port", "8000"), ("--workers", "1"), ("--max-queue", "8"),
                          ("--max-body-mb", "25.0"), ("--max-audio-seconds", "120.0"), ("--device", "cpu")):
        assert f"default: {default}" in out.split(flag, 1)[1], flag


def test_tokenize_takes_tokenizer_vocab_and_codecs_from_a_model(tmp_path, capsys):
    import json

    from omniloom.data.shards import ShardSet
    from omniloom.infer.generate import resolve_model_dir

    src = tmp_path / "chats.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "what is two plus three?"},
                                            {"role": "assistant", "content": "five"}]}) + "\n")
    assert main(["tokenize", "--input", str(src), "--model", "world", "--out", str(tmp_path / "s"),
                 "--no-progress", "--workers", "1"]) == 0
    world = resolve_model_dir("world")
    shards = ShardSet.open(tmp_path / "s" / "train")
    assert json.loads(shards.vocab_path().read_text()) == json.loads((world / "vocab.json").read_text())
    assert shards.manifest["codecs"] == json.loads((world / "codecs.json").read_text())
    assert main(["tokenize", "--input", str(src), "--out", str(tmp_path / "t")]) == 2
    assert "--model" in capsys.readouterr().err
