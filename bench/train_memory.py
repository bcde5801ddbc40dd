"""Resident memory of a CPU training run with and without giving the heap's free pages back.

Runs ``omniloom train`` twice from scratch on the same config and overrides for ``--steps`` steps,
once as it trains (``malloc_trim`` after every step, ``omniloom/utils/memory.py``) and once with
``OMNILOOM_TRIM_HEAP=0``, one after the other, sampling the child's resident memory every
``--every`` seconds. Prints the peak resident memory, its mean over the second half of the run
(the creep, not the start-up) and the median logged tokens/s of each,
writes the samples and the table as JSON (and a plot next to it).

    python bench/train_memory.py --steps 30 --json docs/bench/train_memory.json -- \\
        --config data/smol-graft/config.json data.train=... train.init_from=data/smol-graft ...

Everything after ``--`` goes to ``omniloom train`` (``train.out_dir`` is set here, per variant).
Last line: ``peak_ratio=<peak without trimming / peak with>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omniloom.utils.fileio import atomic_write_json


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run(train_args: list[str], steps: int, trim: bool, out: Path, every: float) -> dict:
    env = {**os.environ, "OMNILOOM_TRIM_HEAP": "1" if trim else "0"}
    cmd = [sys.executable, "-m", "omniloom.cli", "train", *train_args, "--stop-after", str(steps),
           f"train.out_dir={out}", "train.progress=false", "train.log_every=1"]
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while child.poll() is None:
        samples.append((round(time.monotonic() - t0, 1), rss_kb(child.pid)))
        time.sleep(every)
    err = child.stderr.read()
    if child.returncode != 0:
        raise SystemExit(f"omniloom train failed ({child.returncode}):\n{err[-3000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tps = [r["tokens_per_s"] for r in recs if "tokens_per_s" in r and r.get("step", 0) > 2]
    return {"trim": trim, "steps": steps, "seconds": round(time.monotonic() - t0, 1), **summary(samples),
            "median_tokens_per_s": statistics.median(tps) if tps else None, "samples": samples}


def summary(samples: list[tuple[float, int]]) -> dict:
    kb = [k for _, k in samples if k]
    late = kb[len(kb) // 2:]
    return {"peak_rss_gb": max(kb) / 1e6, "late_mean_rss_gb": sum(late) / len(late) / 1e6}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=float, default=1.0, help="seconds between resident-memory samples")
    p.add_argument("--json", default=None)
    args = p.parse_args(own)
    if not train_args:
        p.error("give the training command's arguments after --")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for trim in (True, False):
            rows.append(run(train_args, args.steps, trim, Path(tmp) / f"trim{int(trim)}", args.every))
    print(f"{'variant':<22} {'steps':>5} {'peak RSS GB':>12} {'2nd-half mean':>14} {'median tok/s':>13}")
    for r in rows:
        name = "malloc_trim each step" if r["trim"] else "OMNILOOM_TRIM_HEAP=0"
        print(f"{name:<22} {r['steps']:>5} {r['peak_rss_gb']:>12.2f} {r['late_mean_rss_gb']:>14.2f} "
              f"{r['median_tokens_per_s'] or float('nan'):>13,.0f}")
    ratio = rows[1]["peak_rss_gb"] / rows[0]["peak_rss_gb"]
    if args.json:
        atomic_write_json(args.json, {"command": "python bench/train_memory.py " + " ".join(argv), "runs": rows,
                                      "peak_ratio": ratio})
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 4))
            for r in rows:
                ax.plot([t for t, _ in r["samples"]], [k / 1e6 for _, k in r["samples"]],
                        label="malloc_trim each step" if r["trim"] else "no trim")
            ax.set_xlabel("seconds"), ax.set_ylabel("resident memory, GB"), ax.legend()
            fig.tight_layout()
            fig.savefig(Path(args.json).with_suffix(".png"), dpi=100)
        except ImportError:
            pass
    print(f"peak_ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
