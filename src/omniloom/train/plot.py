"""Loss curve (train + eval) from ``metrics.jsonl`` into a PNG, with the Agg backend."""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.fileio import atomic_path

__all__ = ["read_metrics", "plot_metrics"]


def read_metrics(path: str | Path) -> tuple[dict[int, dict], dict[int, float]]:
    """(train records by step, eval loss by step); a later record for the same step wins (resumes)."""
    train, evals = {}, {}
    p = Path(path)
    if not p.is_file():
        return train, evals
    for line in p.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: skip it
            continue
        if "event" in r or "step" not in r:
            continue
        if "eval_loss" in r and "loss" not in r:
            evals[int(r["step"])] = float(r["eval_loss"])
        elif "loss" in r:
            train[int(r["step"])] = r
    return train, evals


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        steps = sorted(train)
        ax.plot(steps, [train[s]["loss"] for s in steps], label="train", lw=1.2)
    if evals:
        steps = sorted(evals)
        ax.plot(steps, [evals[s] for s in steps], "o-", label="eval", lw=1.2, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    png = Path(png_path)
    with atomic_path(png) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
