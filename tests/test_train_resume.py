"""A real `omniloom train` process killed with SIGKILL after a checkpoint resumes to exactly the
losses of an uninterrupted run (fp32, tolerance 1e-6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from omniloom.data.shards import ShardWriter
from omniloom.tokens.vocab import Vocab

TINY = ["model.vocab_size=0", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
        "model.ffn_dim=64", "model.max_seq_len=64", "data.seq_len=32", "train.batch_size=4",
        "train.micro_batch_size=2", "train.dtype=fp32", "train.warmup_steps=2", "train.log_every=1",
        "train.progress=false", "train.steps=100000", "train.ckpt_every=3", "train.eval_every=100000"]


def _shards(root: Path) -> Path:
    vocab = Vocab.build(text_size=100)
    rng = np.random.default_rng(1)
    with ShardWriter(root / "train", vocab, shard_tokens=2000) as w:
        for _ in range(150):
            L, a = int(rng.integers(8, 40)), int(rng.integers(0, 100))
            w.add([(a + 7 * k) % 100 for k in range(L)], [0] + [1] * (L - 1))
    return root / "train"


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "omniloom.cli", "train", "--preset", "debug", *extra,
            *TINY, f"data.train={data}", f"train.out_dir={out}"]


def _losses_after_last_start(out: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = max(i for i, r in enumerate(lines) if "event" in r)
    return {r["step"]: r["loss"] for r in lines[last + 1:] if "loss" in r}


def kill_after_first_checkpoint(cmd: list[str], out: Path, env: dict[str, str]) -> int:
    """Start a training ``cmd`` writing to ``out``, SIGKILL it once a checkpoint exists; returns that step."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = out / "ckpt" / "latest"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert latest.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return int(latest.read_text().split("_")[-1])


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data = _shards(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    k = kill_after_first_checkpoint(_cmd(data, killed), killed, env)
    assert k >= 3 and k % 3 == 0

    r = subprocess.run(_cmd(data, killed, "--stop-after", str(k + 2)), env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {killed / 'ckpt' / f'step_{k:07d}'}" in r.stderr
    resumed = _losses_after_last_start(killed)

    ref = tmp_path / "ref"
    r = subprocess.run(_cmd(data, ref, "--stop-after", str(k + 2)), env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    reference = _losses_after_last_start(ref)

    assert sorted(resumed) == [k + 1, k + 2]
    for s in (k + 1, k + 2):
        assert abs(resumed[s] - reference[s]) <= 1e-6, (s, resumed[s], reference[s])


@pytest.mark.slow
def test_a_resume_logs_each_step_once(tmp_path):
    """Steps logged after the checkpoint a run resumes from are replayed; metrics.jsonl keeps one copy."""
    data = _shards(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    r = subprocess.run(_cmd(data, out, "--stop-after", "5"), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # as if killed after logging step 5 but before its checkpoint: the newest checkpoint is step 3
    ckpt = out / "ckpt"
    import shutil

    shutil.rmtree(ckpt / "step_0000005")
    (ckpt / "latest").write_text("step_0000003")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.2')  # a line cut by the kill
    r = subprocess.run(_cmd(data, out, "--stop-after", "6"), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == [1, 2, 3, 4, 5, 6]
    resume = [x for x in lines if x.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 3 and resume[0]["replaced_records"] == 3


def _save_tiny_checkpoint(root: Path):
    import torch

    from omniloom.config import Config
    from omniloom.train.checkpoint import save_checkpoint

    model = torch.nn.Linear(512, 512)  # 1 MiB of weights, 2 more of Adam state
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 512)).sum().backward()
    opt.step()
    return save_checkpoint(root, 7, model, opt, Config(), {"pos": 0})


def test_disk_full_during_checkpoint_says_so_and_leaves_no_partial(tmp_path, monkeypatch):
    import omniloom.train.checkpoint as ck

    def full(*a, **kw):  # what safetensors raises when the disk fills up
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(OSError) as e:
        _save_tiny_checkpoint(tmp_path / "ckpt")
    assert e.value.errno == 28 and "no space left on device while writing checkpoint" in str(e.value)
    assert str(tmp_path / "ckpt" / "step_0000007") in str(e.value)
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped where the machine does not allow it)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mnt / "ckpt").mkdir()
        (mnt / "ckpt" / "keep.txt").write_text("stored before")  # nothing already there is lost
        with pytest.raises(OSError) as e:
            _save_tiny_checkpoint(mnt / "ckpt")
        assert e.value.errno == 28 and f".tmp-step_0000007 was removed; free space under {mnt / 'ckpt'}" in str(e.value)
        assert sorted(p.name for p in (mnt / "ckpt").iterdir()) == ["keep.txt"]
        assert (mnt / "ckpt" / "keep.txt").read_text() == "stored before"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_train_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    import omniloom.train.checkpoint as ck
    from omniloom.cli import main

    def full(*a, **kw):
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ck, "save_file", full)
    data = _shards(tmp_path / "data")
    out = tmp_path / "run"
    assert main(_cmd(data, out, "--stop-after", "3")[3:]) == 1
    err = capsys.readouterr().err
    assert f"omniloom train: error: no space left on device while writing checkpoint {out / 'ckpt' / 'step_0000003'}" in err
    assert "Traceback" not in err and not list((out / "ckpt").glob(".tmp-*"))
