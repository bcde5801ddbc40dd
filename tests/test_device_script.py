"""examples/device_train.sh, the one call prepared for a lent GPU machine, dry-run on the CPU:
every stage runs (data, tokens, training from the shipped weights, bf16 export split into parts
that fit the device tool's 16 MiB a file), a first training attempt that fails before any
checkpoint is retried without torch.compile, and --collect rebuilds a model directory that loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "device_train.sh"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


def test_device_script_dry_run_and_collect(tmp_path):
    pytest.importorskip("espeakng_loader")
    env = dict(os.environ, N="200", VAL_FRACTION="0.2", STEPS="2", BATCH="2", BUDGET="600",
               COMPILE="not-a-bool",  # the first attempt fails before a checkpoint, as a broken compile would
               WORKERS="2", PY=sys.executable, OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"),
               EVAL_EVERY="1000", CKPT_EVERY="1000")
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    parts = sorted(out.glob("model.safetensors.part-*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    assert len(list(out.iterdir())) <= 8  # the device tool returns at most 8 files
    log = (out / "device.log").read_text()
    assert "generated 200 samples" in log and "exported step_0000002" in log  # the whole log came back
    assert "train.compile: expected a boolean" in log and "once more without torch.compile" in log
    assert "(train.compile=false)" in log
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 2
    col = subprocess.run(["bash", str(SCRIPT), "--collect", str(out), str(tmp_path / "model")],
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), capture_output=True, text=True,
                         timeout=300)
    assert col.returncode == 0, col.stdout[-2000:] + col.stderr[-2000:]
    model = tmp_path / "model"
    for name in ("model.safetensors", "config.json", "vocab.json", "tokenizer.json", "codecs.json"):
        assert (model / name).is_file(), name
    # edits were trained described (RESTATE's default), so the model answers them that way
    gen = json.loads((model / "generation.json").read_text())
    assert gen["describe_edits"] is True and gen["cfg_scale"] == 2.0
    assert (model / "model.safetensors").stat().st_size == sum(p.stat().st_size for p in parts)
    # a missing part is refused, and names what is missing
    bad = subprocess.run(["bash", str(SCRIPT), "--collect", str(tmp_path / "nowhere"), str(tmp_path / "m2")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "model.safetensors.part-" in bad.stderr
