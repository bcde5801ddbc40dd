"""The training loop in one process: outputs, vocab sizing, checkpoint verification and fallback,
and a corrupt shard stopping training without losing what was written."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from omniloom.config import load_config
from omniloom.data.shards import ShardWriter
from omniloom.tokens.vocab import Vocab
from omniloom.train.checkpoint import find_checkpoint
from omniloom.train.loop import train

TINY = ["model.vocab_size=0", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
        "model.ffn_dim=64", "model.max_seq_len=64", "data.seq_len=32", "train.batch_size=4",
        "train.micro_batch_size=2", "train.dtype=fp32", "train.warmup_steps=2", "train.log_every=1",
        "train.progress=false", "train.lr=3e-3"]


def make_shards(root: Path, n_train: int = 120, n_val: int = 20, text_size: int = 100) -> Path:
    vocab = Vocab.build(text_size=text_size)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        with ShardWriter(root / split, vocab, shard_tokens=1500) as w:
            for _ in range(n):
                L, a = int(rng.integers(8, 40)), int(rng.integers(0, text_size))
                w.add([(a + 3 * k) % text_size for k in range(L)], [0] + [1] * (L - 1))
    return root


def cfg_for(tmp_path: Path, data: Path, *extra: str):
    return load_config("debug", overrides=TINY + [f"data.train={data}/train", f"data.val={data}/val",
                                                 f"train.out_dir={tmp_path}/run", *extra])


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_short_run_writes_everything_and_learns(tmp_path):
    data = make_shards(tmp_path / "data")
    cfg = cfg_for(tmp_path, data, "train.steps=12", "train.eval_every=6", "train.ckpt_every=6",
                  "train.eval_batches=2")
    train(cfg)
    run = tmp_path / "run"
    assert cfg.model.vocab_size == Vocab.load(data / "train" / "vocab.json").size  # already a multiple of 64
    assert json.loads((run / "config.json").read_text())["model"]["vocab_size"] == cfg.model.vocab_size
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert {"lr", "grad_norm", "tokens_per_s", "loss/text"} <= set(steps[0])
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5
    assert [r["step"] for r in recs if "eval_loss" in r and "loss" not in r] == [6, 12]
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "ckpt" / "latest").read_text() == "step_0000012"
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["latest", "step_0000006", "step_0000012"]
    from safetensors.numpy import load_file

    w = load_file(str(run / "ckpt" / "step_0000012" / "model.safetensors"))
    assert "embed_tokens.weight" in w and "layers.1.mlp.down_proj.weight" in w


def test_vocab_bigger_than_model_is_a_clear_error(tmp_path):
    data = make_shards(tmp_path / "data", n_train=10, n_val=4)
    cfg = cfg_for(tmp_path, data, "train.steps=1")
    cfg.model.vocab_size = 64
    with pytest.raises(ValueError, match="model.vocab_size is 64"):
        train(cfg)


@pytest.mark.slow
def test_corrupt_checkpoint_falls_back_and_explicit_path_errors(tmp_path, capsys):
    data = make_shards(tmp_path / "data")
    train(cfg_for(tmp_path, data, "train.steps=4", "train.ckpt_every=2", "train.keep_checkpoints=3",
                  "train.eval_every=100"))
    root = tmp_path / "run" / "ckpt"
    f = root / "step_0000004" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])  # truncated
    found = find_checkpoint(root, "auto")
    assert found == root / "step_0000002"
    assert "step_0000004/model.safetensors is corrupt" in capsys.readouterr().err
    with pytest.raises(ValueError, match="step_0000004.*model.safetensors is corrupt"):
        find_checkpoint(root, str(root / "step_0000004"))
    # resuming continues from step 2 and redoes steps 3-4
    train(cfg_for(tmp_path, data, "train.steps=4", "train.ckpt_every=2", "train.eval_every=100"))
    assert (root / "latest").read_text() == "step_0000004"
    assert find_checkpoint(root, "auto") == root / "step_0000004"


def test_corrupt_shard_stops_training_and_keeps_outputs(tmp_path):
    data = make_shards(tmp_path / "data")
    train(cfg_for(tmp_path, data, "train.steps=2", "train.ckpt_every=2", "train.eval_every=100"))
    before = _digest(tmp_path / "run")
    shard = data / "train" / "shard_00000.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0x55
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="shard_00000.safetensors is corrupt"):
        train(cfg_for(tmp_path, data, "train.steps=4", "train.ckpt_every=2", "train.eval_every=100"))
    shard.unlink()
    with pytest.raises(ValueError, match="shard_00000.safetensors is missing"):
        train(cfg_for(tmp_path, data, "train.steps=4", "train.ckpt_every=2", "train.eval_every=100"))
    assert _digest(tmp_path / "run") == before


@pytest.mark.slow
def test_init_from_starts_a_fresh_run_at_the_source_weights(tmp_path):
    data = make_shards(tmp_path / "data")
    train(cfg_for(tmp_path, data, "train.steps=6", "train.eval_every=6", "train.eval_batches=2"))
    src = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    src_eval = src[-1]
    assert src_eval["step"] == 6 and "eval_loss" in src_eval
    # a new run from the source's checkpoint: its step-0 eval is the source's last eval, and it
    # trains from there with a new optimizer and schedule
    cfg = cfg_for(tmp_path, data, "train.steps=2", "train.eval_every=100", "train.eval_batches=2",
                  f"train.out_dir={tmp_path}/ft", f"train.init_from={tmp_path}/run")
    train(cfg)
    recs = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    step0 = [r for r in recs if r.get("step") == 0 and "eval_loss" in r]
    assert len(step0) == 1 and step0[0]["eval_loss"] == pytest.approx(src_eval["eval_loss"], abs=1e-5)
    first = next(r for r in recs if "loss" in r)
    src_first = next(r for r in src if "loss" in r)
    assert first["step"] == 1 and first["loss"] < src_first["loss"] - 0.2  # not a random model's loss
    # resuming the fine-tune keeps its own weights rather than going back to the source's
    train(cfg_for(tmp_path, data, "train.steps=3", "train.eval_every=100", "train.eval_batches=2",
                  f"train.out_dir={tmp_path}/ft", f"train.init_from={tmp_path}/run"))
    recs = [json.loads(x) for x in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("event") == "resume"] == [2]
    assert len([r for r in recs if r.get("step") == 0 and "eval_loss" in r]) == 1


def test_init_from_a_different_shape_or_vocabulary_is_a_clear_error(tmp_path):
    data = make_shards(tmp_path / "data", n_train=20, n_val=4)
    train(cfg_for(tmp_path, data, "train.steps=1", "train.eval_every=100"))
    with pytest.raises(ValueError, match=r"model.n_layers=3 \(theirs 2\)"):
        train(cfg_for(tmp_path, data, "train.steps=1", "model.n_layers=3", f"train.out_dir={tmp_path}/a",
                      f"train.init_from={tmp_path}/run"))
    other = make_shards(tmp_path / "other", n_train=20, n_val=4, text_size=90)
    with pytest.raises(ValueError, match="vocabulary .* is not the one"):
        train(cfg_for(tmp_path, other, "train.steps=1", f"train.out_dir={tmp_path}/b",
                      f"train.init_from={tmp_path}/run"))
    with pytest.raises(ValueError, match="train.init_from: model 'nosuch'"):
        train(cfg_for(tmp_path, data, "train.steps=1", f"train.out_dir={tmp_path}/c", "train.init_from=nosuch"))
    assert not (tmp_path / "a" / "ckpt").exists() and not (tmp_path / "c" / "ckpt").exists()


def test_time_budget_stops_with_a_checkpoint_and_the_same_command_resumes(tmp_path, capsys):
    """--stop-after-minutes (stop_after_s): a spent budget stops after the step in progress, with
    a checkpoint and an eval written and the LR schedule unchanged; rerunning goes on to the end."""
    data = make_shards(tmp_path / "data")
    extra = ("train.steps=6", "train.eval_every=100", "train.ckpt_every=100", "train.eval_batches=1")
    with pytest.raises(ValueError, match="time budget"):
        train(cfg_for(tmp_path, data, *extra), stop_after_s=-1)
    rec = train(cfg_for(tmp_path, data, *extra), stop_after_s=0)
    assert rec["step"] == 1 and "eval_loss" in rec
    assert "the time budget of 0 s is spent" in capsys.readouterr().err
    assert find_checkpoint(tmp_path / "run" / "ckpt").name.endswith("1")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lr_at_1 = next(r["lr"] for r in recs if r.get("step") == 1 and "lr" in r)
    rec = train(cfg_for(tmp_path, data, *extra))  # resumes at step 1 and finishes the planned 6
    assert rec["step"] == 6
    assert find_checkpoint(tmp_path / "run" / "ckpt").name.endswith("6")
    full = tmp_path / "full"
    train(cfg_for(tmp_path, data, *extra, f"train.out_dir={full}"))
    ref = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert next(r["lr"] for r in ref if r.get("step") == 1 and "lr" in r) == lr_at_1  # same schedule


def test_cpu_steps_give_the_heaps_free_pages_back_unless_turned_off(tmp_path, monkeypatch):
    import omniloom.utils.memory as memory

    calls = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(1) or True)
    data = make_shards(tmp_path / "data")
    train(cfg_for(tmp_path, data, "train.steps=3", "train.eval_every=100"))
    assert len(calls) == (3 if memory._malloc_trim() is not None else 0)  # once per step where glibc has it
    calls.clear()
    monkeypatch.setenv("OMNILOOM_TRIM_HEAP", "0")
    assert not memory.heap_trim_enabled()
    train(cfg_for(tmp_path / "again", data, "train.steps=3", "train.eval_every=100"))
    assert calls == []


def test_release_free_heap_returns_memory_to_the_os():
    import ctypes

    import omniloom.utils.memory as memory

    if memory._malloc_trim() is None:
        pytest.skip("this C library has no malloc_trim")

    def rss_mb() -> float:
        return int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS:")).split()[1]) / 1024

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024) for _ in range(3000)]  # ~190 MB from the heap (below the mmap threshold)
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)  # touched: resident
    for b in blocks[:-1]:
        libc.free(b)  # the last one pins the heap's top, so free() alone cannot shrink it
    before = rss_mb()
    assert memory.release_free_heap()
    after = rss_mb()
    libc.free(blocks[-1])
    assert before - after > 100, (before, after)
