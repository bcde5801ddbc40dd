"""`omniloom world bench`: generator throughput (samples/s) for image-only, speech and 3D tasks."""

from __future__ import annotations

import os
import tempfile
import time

from .generate import generate
from ..utils.fileio import atomic_write_json

GROUPS: dict[str, list[str]] = {
    "image-only (caption,vqa,draw,edit,video)": ["caption", "vqa", "draw", "edit", "video"],
    "speech (asr,tts,spoken_vqa,spoken_math,spoken_draw)": ["asr", "tts", "spoken_vqa", "spoken_math", "spoken_draw"],
    "3D, opt-in (text_to_3d,describe_3d)": ["text_to_3d", "describe_3d"],
    "all (default mixture)": [],
}


def main_bench(n: int, workers: int, json_out: str | None) -> int:
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, tasks) in enumerate(GROUPS.items()):
            t = time.perf_counter()
            generate(os.path.join(tmp, str(i)), "train", n, seed=0, tasks=tasks or None, workers=workers)
            dt = time.perf_counter() - t
            rows.append({"group": name, "n": n, "workers": workers, "seconds": dt, "samples_per_s": n / dt})
    print(f"{'group':55s} {'n':>5s} {'workers':>7s} {'samples/s':>10s}")
    for r in rows:
        print(f"{r['group']:55s} {r['n']:5d} {r['workers']:7d} {r['samples_per_s']:10.1f}")
    if json_out:
        atomic_write_json(json_out, rows)
    return 0
