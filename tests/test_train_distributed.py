"""Two CPU ranks (torchrun, gloo, FSDP2) reproduce the single-rank losses at the same global batch.

Tolerance: 5e-6 absolute on the loss in fp32 (the ranks sum the same numbers in another order).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omniloom.data.shards import ShardWriter
from omniloom.tokens.vocab import Vocab

TOL = 5e-6
TINY = ["model.vocab_size=0", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
        "model.ffn_dim=64", "model.max_seq_len=64", "data.seq_len=32", "train.batch_size=4",
        "train.micro_batch_size=1", "train.dtype=fp32", "train.warmup_steps=1", "train.log_every=1",
        "train.progress=false", "train.steps=4", "train.ckpt_every=100", "train.lr=1e-2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shards(root: Path) -> Path:
    vocab = Vocab.build(text_size=100)
    rng = np.random.default_rng(2)
    with ShardWriter(root / "train", vocab, shard_tokens=2000) as w:
        for _ in range(100):
            L, a = int(rng.integers(8, 40)), int(rng.integers(0, 100))
            w.add([(a + 5 * k) % 100 for k in range(L)], (rng.random(L) > 0.2).astype(int).tolist())
    return root / "train"


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def _run(cmd: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.slow
def test_two_ranks_match_one_rank(tmp_path):
    """FSDP2 (default) and the replicate + all-reduce fallback both match one rank (4 micro-batches
    of 1 row on one rank vs 2 ranks x 2 micro-batches)."""
    data = _shards(tmp_path / "data")
    args = ["train", "--preset", "debug"]
    overrides = [*TINY, f"data.train={data}"]
    _run([sys.executable, "-m", "omniloom.cli", *args, *overrides, f"train.out_dir={tmp_path / 'one'}"])
    one = _losses(tmp_path / "one")
    assert sorted(one) == [1, 2, 3, 4] and one[4] < one[1]  # it trains
    from safetensors.numpy import load_file

    w1 = load_file(str(tmp_path / "one" / "ckpt" / "step_0000004" / "model.safetensors"))
    for parallel in ("fsdp", "replicate"):
        out = tmp_path / parallel
        _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(_free_port()), "-m", "omniloom.cli", *args, "--parallel", parallel,
              *overrides, f"train.out_dir={out}"])
        two = _losses(out)
        assert sorted(two) == [1, 2, 3, 4]
        for s in one:
            assert abs(one[s] - two[s]) <= TOL, (parallel, s, one[s], two[s])
        # the 2-rank checkpoint holds the full, unsharded weights, equal to the 1-rank ones
        w2 = load_file(str(out / "ckpt" / "step_0000004" / "model.safetensors"))
        assert w1.keys() == w2.keys()
        for k in w1:
            np.testing.assert_allclose(w1[k], w2[k], atol=1e-4, err_msg=f"{parallel}: {k}")


@pytest.mark.slow
def test_two_ranks_with_a_frozen_base_and_adapters(tmp_path):
    """train.freeze_base + LoRA under FSDP2 (frozen and trainable parameters in one sharded block,
    the row mask applied to each rank's shard of the embedding): the same losses as one rank, and
    the frozen rows and weights unchanged from step 1 to step 4 on both."""
    data = _shards(tmp_path / "data")
    args = ["train", "--preset", "debug"]
    overrides = [*TINY, f"data.train={data}", "train.ckpt_every=1", "train.keep_checkpoints=10",
                 "train.freeze_base=true", "train.lora_rank=2", "train.lora_targets=q_proj,down_proj"]
    _run([sys.executable, "-m", "omniloom.cli", *args, *overrides, f"train.out_dir={tmp_path / 'one'}"])
    out = tmp_path / "two"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
          "--master-port", str(_free_port()), "-m", "omniloom.cli", *args, "--parallel", "fsdp",
          *overrides, f"train.out_dir={out}"])
    one, two = _losses(tmp_path / "one"), _losses(out)
    assert sorted(two) == [1, 2, 3, 4]
    for s in one:
        assert abs(one[s] - two[s]) <= TOL, (s, one[s], two[s])
    from safetensors.numpy import load_file

    for run in (tmp_path / "one", out):
        a = load_file(str(run / "ckpt" / "step_0000001" / "model.safetensors"))
        b = load_file(str(run / "ckpt" / "step_0000004" / "model.safetensors"))
        for k in a:
            if k.endswith((".lora_a", ".lora_b")):
                assert not np.array_equal(a[k], b[k]), (run.name, k)  # adapters train
            elif k == "embed_tokens.weight":
                np.testing.assert_array_equal(a[k][:100], b[k][:100])  # the text rows are frozen
                assert not np.array_equal(a[k][100:], b[k][100:])  # the appended rows train
            else:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{run.name}: {k}")
