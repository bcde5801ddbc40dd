"""The loom end to end on text: tokenizer -> tokenize -> train -> the checkpoint answers through generate()."""

import json

import pytest

from omniloom.cli import main as cli
from omniloom.infer.generate import Done, OmniModel, TextDelta, generate
from omniloom.infer.sampling import SamplingParams


@pytest.mark.slow
def test_checkpoint_is_a_model_directory(tmp_path):
    lines = []
    for a in range(6):
        for b in range(6):
            lines.append({"messages": [{"role": "user", "content": f"what is {a} plus {b}?"},
                                       {"role": "assistant", "content": f"{a + b}"}]})
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert cli(["tokenizer", "train", "--corpus", str(data), "--vocab-size", "300", "--out", str(tmp_path / "tok"),
                "--no-progress"]) == 0
    assert cli(["tokenize", "--input", str(data), "--tokenizer", str(tmp_path / "tok" / "tokenizer.json"),
                "--out", str(tmp_path / "shards"), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert cli(["train", "--preset", "debug", f"data.train={tmp_path / 'shards'}", f"train.out_dir={run}",
                "model.vocab_size=0", "data.seq_len=64", "train.steps=3", "train.batch_size=2",
                "train.micro_batch_size=2", "train.progress=false", "train.dtype=fp32", "train.ckpt_every=3"]) == 0
    latest = run / "ckpt" / (run / "ckpt" / "latest").read_text().strip()
    for f in ("vocab.json", "tokenizer.json", "model.safetensors", "config.json"):
        assert (latest / f).is_file(), f
    omni = OmniModel.load(latest)
    events = list(generate(omni, [{"role": "user", "content": "what is 2 plus 3?"}],
                           sampling=SamplingParams(max_new_tokens=5, temperature=0)))
    assert isinstance(events[-1], Done)
    assert events[-1].usage["completion_tokens"] >= 1
    assert all(isinstance(e, (TextDelta, Done)) for e in events)


@pytest.mark.slow
def test_chat_one_shot_and_interactive(tmp_path, capsys, monkeypatch):
    test_checkpoint_is_a_model_directory(tmp_path)
    capsys.readouterr()
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # chat's default --out-dir is ./chat_out: keep it out of the checkout
    assert cli(["chat", "--model", str(run), "--max-new-tokens", "4", "what is 1 plus 1?"]) == 0
    out = capsys.readouterr()
    assert "tokens: prompt" in out.err and "answer" in out.err
    inputs = iter(["what is 2 plus 2?", "/image /no/such.png", "/exit"])
    monkeypatch.setattr("builtins.input", lambda _prompt="": next(inputs))
    assert cli(["chat", "--model", str(run), "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr()
    assert "no such file: /no/such.png" in out.out
    assert cli(["chat", "--model", str(tmp_path / "missing"), "hi"]) == 2
    assert "neither a directory nor a bundled model" in capsys.readouterr().err
