"""Scaling laws: train a ladder of model sizes on one token budget (or read finished runs), measure
each model's validation loss per modality, and fit L(N) and L(D) per modality.

    omniloom sweep --sizes 50k,120k,300k,700k,1.5M,3M --tokens 600k --data data/world --out runs/sweep \\
        data.seq_len=256 train.batch_size=8
    omniloom sweep --runs runs/a runs/b runs/c --out runs/sweep-read

--sizes is a comma-separated list; each entry is one of
  * a non-embedding parameter count, with an optional k/M/G suffix (50k, 1.5M, 3e6): the shape
    (dim a multiple of 32, heads of 32 dims, GQA 2:1, ffn ~8/3 dim) whose count is nearest, with
    dim / n_layers kept near 64;
  * DIMxLAYERS (128x4): that width and depth, heads and ffn derived the same way;
  * a preset name (debug, world, 150m, 1b): the preset's model shape.
Every size trains in DIR/d<dim>-l<layers>, an ordinary `omniloom train` run directory, with the
same settings (--preset, --config, key=value overrides) and train.steps set from --tokens
(tokens = steps x train.batch_size x data.seq_len). A finished run is read, not retrained; an
interrupted one resumes from its last checkpoint when the same command is run again.

For each run the whole validation set (--val, else data.val) is scored by the last checkpoint and
the loss split by the modality of the target token (text, image, audio; Vocab.modality_of).
N = non-embedding parameters, D = tokens seen. Fitted per modality, by least squares with
bootstrap errors over the points (omniloom.train.scaling):
  L(N) = (N_c / N)^alpha_N + L_inf   over the runs' final losses (needs >= 3 sizes); also with
                                     L_inf = 0 (Kaplan et al.'s form: L_N_no_floor)
  L(D) = (D_c / D)^alpha_D + L_inf   over each run's training curve (the loss of each logged
                                     batch before its update, binned in log D, after warm-up)
Writes DIR/fits.json, DIR/scaling_N.png and DIR/scaling_D.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Size",
    "fit_sweep",
    "modality_losses",
    "non_embedding_params",
    "parse_count",
    "parse_sizes",
    "shape_for",
    "shape_for_params",
    "sweep",
    "training_curves",
]

#: modalities of the vocabulary that are not fitted (end-of-turn and other structure tokens)
SKIP_MODALITIES = ("special",)
#: the shape fields a size sets (an override of one of them would break the ladder)
SHAPE_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim")
HEAD_DIM = 32
ASPECT = 64.0  # dim / n_layers preferred when a size is a parameter count
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}


@dataclass(frozen=True)
class Size:
    """One rung of the ladder: a model shape and the text it came from."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    spec: str = ""

    @property
    def label(self) -> str:
        return f"d{self.dim}-l{self.n_layers}"

    def overrides(self) -> dict[str, int]:
        return {f"model.{k}": getattr(self, k) for k in SHAPE_KEYS}

    def non_embedding_params(self) -> int:
        from ..config import ModelConfig

        return non_embedding_params(ModelConfig(**{k: getattr(self, k) for k in SHAPE_KEYS}))


def non_embedding_params(model: Any) -> int:
    """Parameters outside the token embedding/output head and the image slot table (Kaplan's N)."""
    n = model.num_params(include_embedding=False)
    return n - (model.image_tokens * model.dim if model.image_pos_embed else 0)


def parse_count(text: str) -> float | None:
    """'300k' -> 3e5, '1.5M' -> 1.5e6, '3e6' -> 3e6; None when ``text`` is not a count."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*([kKmMgGbB]?)\s*", text)
    if not m:
        return None
    return float(m.group(1)) * _SUFFIX[m.group(2).lower()]


def shape_for(dim: int, n_layers: int, spec: str = "") -> Size:
    """The ladder's shape of width ``dim`` and depth ``n_layers``: heads of 32 dims (16 when ``dim``
    is not a multiple of 32), half as many KV heads when the count is even, ffn ~8/3 dim."""
    if dim < 16 or dim % 16 or n_layers < 1:
        raise ValueError(f"size {spec or f'{dim}x{n_layers}'!r}: dim must be a positive multiple of 16 and "
                         f"n_layers >= 1, got dim={dim}, n_layers={n_layers}")
    head = HEAD_DIM if dim % HEAD_DIM == 0 else 16
    heads = dim // head
    kv = heads // 2 if heads % 2 == 0 else heads
    ffn = max(32, round(dim * 8 / 3 / 32) * 32)
    return Size(dim, n_layers, heads, kv, ffn, spec or f"{dim}x{n_layers}")


def shape_for_params(target: float, spec: str = "") -> Size:
    """The shape whose non-embedding count is nearest ``target`` (in log), dim / n_layers near 64."""
    if target < 1000:
        raise ValueError(f"size {spec or target!r}: a parameter count must be at least 1k "
                         "(a one-layer model of width 16 has ~3k)")
    best: tuple[float, Size] | None = None
    for layers in range(1, 97):
        for dim in range(32, 8193, 32):
            s = shape_for(dim, layers)
            err = abs(math.log(s.non_embedding_params() / target))
            if err > 0.25 and s.non_embedding_params() > target:
                break  # wider only moves further away
            cost = err + 0.3 * abs(math.log(dim / layers / ASPECT))
            if best is None or cost < best[0]:
                best = (cost, dataclasses.replace(s, spec=spec or f"{target:g}"))
    assert best is not None
    return best[1]


def parse_sizes(text: str | list[str]) -> list[Size]:
    """``--sizes`` -> shapes (see the module help for the syntax); ValueError names a bad entry."""
    from ..config import PRESETS, preset

    items = [t.strip() for part in ([text] if isinstance(text, str) else text) for t in part.split(",")]
    items = [t for t in items if t]
    if not items:
        raise ValueError("--sizes is empty; give e.g. 50k,200k,1M or 64x2,128x4")
    sizes, seen = [], {}
    for item in items:
        shape = re.fullmatch(r"(\d+)[xX](\d+)", item)
        if item in PRESETS:
            m = preset(item).model
            size = Size(m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_dim, item)
        elif shape:
            size = shape_for(int(shape.group(1)), int(shape.group(2)), item)
        elif (count := parse_count(item)) is not None:
            size = shape_for_params(count, item)
        else:
            raise ValueError(f"unknown size {item!r}: give a non-embedding parameter count (50k, 1.5M, 3e6), "
                             f"DIMxLAYERS (128x4) or a preset ({', '.join(sorted(PRESETS))})")
        if size.label in seen:
            raise ValueError(f"sizes {seen[size.label]!r} and {item!r} are the same shape ({size.label}); "
                             "give sizes further apart")
        seen[size.label] = item
        sizes.append(size)
    return sorted(sizes, key=lambda s: s.non_embedding_params())


# ---------------------------------------------------------------------------------------------
# runs


@dataclass
class Run:
    """A run directory of the ladder (or a finished run given with --runs) and its settings."""

    path: Path
    cfg: Any  # omniloom.config.Config

    @property
    def label(self) -> str:
        return self.path.name

    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.data.seq_len

    def done_steps(self) -> int:
        """Steps of the newest checkpoint (ckpt/latest), 0 when there is none."""
        latest = self.path / "ckpt" / "latest"
        if not latest.is_file():
            return 0
        m = re.fullmatch(r"step_(\d+)", latest.read_text().strip())
        return int(m.group(1)) if m else 0

    def finished(self) -> bool:
        return self.done_steps() >= self.cfg.train.steps


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


#: settings the trainer fills in or adjusts itself, so a saved config.json may differ in them
_RESOLVED = ("model.vocab_size", "model.image_tokens", "model.image_open_id", "model.image_code_start",
             "model.image_code_end", "train.warmup_steps", "train.progress")


def _check_same(run_dir: Path, cfg: Any) -> None:
    """A run directory that exists must hold a run of the same settings (else its losses would be
    another experiment's)."""
    from ..config import config_to_dict
    from ..utils.fileio import read_json

    saved = _flat(read_json(run_dir / "config.json", "run config"))
    wanted = _flat(config_to_dict(cfg))
    diff = [f"{k}={wanted[k]!r} (the run has {saved.get(k)!r})" for k in wanted
            if k not in _RESOLVED and saved.get(k) != wanted[k]
            and not (k == "model.vocab_size" and wanted[k] == 0)]
    if diff:
        raise ValueError(f"{run_dir} holds a run with other settings: {', '.join(diff[:5])}; give another --out, "
                         "or delete that run directory to train it again")


def ladder_config(size: Size, tokens: int, out: Path, preset_name: str = "debug", config_yaml: str | None = None,
                  overrides: list[str] | None = None, data: str | None = None) -> Any:
    """The training config of one rung: preset -> YAML -> sweep defaults -> key=value overrides ->
    the rung's shape, with train.steps from the token budget."""
    from ..config import apply_overrides, load_config

    overrides = list(overrides or [])
    shaped = [o for o in overrides if o.split("=", 1)[0].strip() in {f"model.{k}" for k in SHAPE_KEYS}]
    if shaped:
        raise ValueError(f"{', '.join(shaped)}: the model shape is set by --sizes, not by an override")
    cfg = load_config(preset_name, config_yaml, [])
    defaults: dict[str, Any] = {"model.vocab_size": 0, "train.progress": False}
    if data is not None:
        d = Path(data)
        for split in ("train", "val"):
            if not (d / split).is_dir():
                raise ValueError(f"--data {d}: no {split}/ folder (give the --out of `omniloom tokenize`, which "
                                 "holds train/ and val/, or set data.train=... data.val=...)")
        defaults.update({"data.train": str(d / "train"), "data.val": str(d / "val")})
    apply_overrides(cfg, defaults)
    apply_overrides(cfg, overrides)
    apply_overrides(cfg, size.overrides())
    per_step = cfg.train.batch_size * cfg.data.seq_len
    steps = max(1, math.ceil(tokens / per_step))
    given = {o.split("=", 1)[0].strip() for o in overrides}
    bookkeeping = {"train.steps": steps, "train.out_dir": str(out / size.label)}
    for key, value in (("train.eval_every", steps), ("train.ckpt_every", max(1, steps // 10)),
                       ("train.log_every", max(1, steps // 64))):
        if key not in given:
            bookkeeping[key] = value
    apply_overrides(cfg, bookkeeping)
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, cfg.data.seq_len)
    return cfg.validate()


def read_run(path: str | Path) -> Run:
    """A finished run directory (config.json + a checkpoint at train.steps); ValueError otherwise."""
    from ..config import config_from_dict
    from ..utils.fileio import read_json

    p = Path(path)
    if not (p / "config.json").is_file():
        raise ValueError(f"{p} is not a training run directory (no config.json)")
    run = Run(p, config_from_dict(read_json(p / "config.json", "run config")))
    if not run.finished():
        raise ValueError(f"run {p} is not finished (checkpoint at step {run.done_steps()} of "
                         f"{run.cfg.train.steps}); finish it (rerun its `omniloom train` command) or leave it out")
    return run


# ---------------------------------------------------------------------------------------------
# measurements


def modality_losses(run: Run, val: str | Path) -> dict[str, Any]:
    """Mean cross-entropy of the run's last checkpoint over every row of the validation set, overall
    (``all``) and per modality of the target token. Returns ``{"loss": {...}, "tokens": {...}}``."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from ..data.loader import PackedLoader
    from ..data.shards import ShardSet
    from ..model.llama import Transformer
    from ..tokens.vocab import Vocab
    from .checkpoint import find_checkpoint
    from .step import loss_index

    ckpt = find_checkpoint(run.path / "ckpt", "auto")
    if ckpt is None:
        raise ValueError(f"run {run.path} has no checkpoint to evaluate")
    val_set = ShardSet.open(val)
    vocab_path = ckpt / "vocab.json" if (ckpt / "vocab.json").is_file() else val_set.vocab_path()
    if (ckpt / "vocab.json").is_file() and \
            (ckpt / "vocab.json").read_bytes() != val_set.vocab_path().read_bytes():
        raise ValueError(f"the validation set {val_set.path} has another vocabulary than run {run.path}")
    vocab = Vocab.load(vocab_path)
    model = Transformer(run.cfg.model)
    model.load_state_dict({k: v.float() for k, v in load_file(str(ckpt / "model.safetensors")).items()})
    model.eval()
    seq_len = run.cfg.data.seq_len
    rows = val_set.num_tokens // (seq_len + 1)
    if rows == 0:
        raise ValueError(f"validation set {val_set.path} has fewer than data.seq_len+1={seq_len + 1} tokens")
    batch = max(b for b in range(1, min(16, rows) + 1) if rows % b == 0)  # every row, in equal batches
    loader = PackedLoader(val_set, seq_len, batch, batch, shuffle=False)
    names = list(Vocab.MODALITIES)
    sums, counts = np.zeros(len(names)), np.zeros(len(names))
    with torch.no_grad():
        for i in range(loader.batches_per_epoch):
            for mb in loader.batch_at(0, i):
                index = loss_index(mb["loss_mask"])
                if index.numel() == 0:
                    continue
                targets = mb["targets"].reshape(-1).index_select(0, index)
                logits = model(mb["ids"], positions=mb["positions"], doc_ids=mb["doc_ids"], logits_index=index)
                ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none").double().numpy()
                mod = np.asarray(vocab.modality_of(targets.numpy()), dtype=np.int64)
                ok = mod >= 0
                np.add.at(sums, mod[ok], ce[ok])
                np.add.at(counts, mod[ok], 1.0)
    if counts.sum() == 0:
        raise ValueError(f"validation set {val_set.path} holds no loss tokens")
    loss = {"all": float(sums.sum() / counts.sum())}
    loss.update({n: float(sums[j] / counts[j]) for j, n in enumerate(names) if counts[j]})
    tokens = {"all": int(counts.sum())}
    tokens.update({n: int(counts[j]) for j, n in enumerate(names) if counts[j]})
    return {"loss": loss, "tokens": tokens, "checkpoint": str(ckpt), "val": str(val_set.path)}


def training_curves(run: Run, bins: int = 12) -> dict[str, list[tuple[float, float]]]:
    """Per modality, (tokens seen D, loss) from the run's metrics.jsonl: the loss of each logged
    batch (measured before the update on it, so on unseen tokens during the first epoch), after
    warm-up, averaged in ``bins`` log-spaced bins of D."""
    import numpy as np

    from .plot import read_metrics

    records, _ = read_metrics(run.path / "metrics.jsonl")
    per_step = run.tokens_per_step()
    start = max(run.cfg.train.warmup_steps, 1) * per_step
    series: dict[str, list[tuple[float, float]]] = {}
    for step in sorted(records):
        d = step * per_step
        if d <= start:
            continue
        r = records[step]
        series.setdefault("all", []).append((d, float(r["loss"])))
        for k, v in r.items():
            if k.startswith("loss/") and k[5:] not in SKIP_MODALITIES:
                series.setdefault(k[5:], []).append((d, float(v)))
    out = {}
    for mod, pts in series.items():
        arr = np.asarray(pts)
        edges = np.geomspace(arr[:, 0].min(), arr[:, 0].max() * (1 + 1e-9), bins + 1)
        which = np.digitize(arr[:, 0], edges) - 1
        out[mod] = [(float(np.exp(np.log(arr[which == b, 0]).mean())), float(arr[which == b, 1].mean()))
                    for b in range(bins) if np.any(which == b)]
    return out


def _fit_or_error(x: list[float], y: list[float], what: str, n_boot: int, floor: bool = True) -> dict[str, Any]:
    from .scaling import bootstrap_power_law

    try:
        return bootstrap_power_law(x, y, n_boot=n_boot, what=what, floor=floor)
    except ValueError as e:
        return {"error": str(e)}


def fit_sweep(runs: list[Run], evals: list[dict[str, Any]], n_boot: int = 500) -> dict[str, Any]:
    """Everything fits.json holds: the points, L(N) per modality and L(D) per run and modality."""
    if len(runs) < 3:
        raise ValueError(f"a scaling fit needs at least 3 model sizes, got {len(runs)}")
    ns = [non_embedding_params(r.cfg.model) for r in runs]
    if len(set(ns)) < 3:
        raise ValueError(f"a scaling fit needs at least 3 different model sizes, got {len(set(ns))} "
                         f"({', '.join(r.label for r in runs)})")
    points = []
    for r, ev, n in zip(runs, evals, ns):
        train_tokens = _train_tokens(r)
        tokens = r.cfg.train.steps * r.tokens_per_step()
        points.append({"run": str(r.path), "label": r.label, "dim": r.cfg.model.dim, "n_layers": r.cfg.model.n_layers,
                       "n_heads": r.cfg.model.n_heads, "ffn_dim": r.cfg.model.ffn_dim,
                       "params_non_embedding": n, "params_total": r.cfg.model.num_params(),
                       "steps": r.cfg.train.steps, "tokens": tokens,
                       "epochs": tokens / train_tokens if train_tokens else None,
                       "loss": ev["loss"], "loss_tokens": ev["tokens"]})
    mods = [m for m in evals[0]["loss"] if m not in SKIP_MODALITIES and all(m in ev["loss"] for ev in evals)]
    l_n = {m: _fit_or_error(ns, [ev["loss"][m] for ev in evals], f"L(N) {m}", n_boot) for m in mods}
    # Kaplan et al.'s form, without the floor: its exponents are the ones published for language
    l_n_pure = {m: _fit_or_error(ns, [ev["loss"][m] for ev in evals], f"L(N) {m}", n_boot, floor=False)
                for m in mods}
    l_d: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in runs:
        curves[r.label] = training_curves(r)
        l_d[r.label] = {m: _fit_or_error([d for d, _ in pts], [v for _, v in pts], f"L(D) {r.label} {m}", n_boot)
                        for m, pts in curves[r.label].items() if m in mods}
    tokens = {p["tokens"] for p in points}
    return {"formula": "L(x) = (x_c / x)^alpha + L_inf; x = N (non-embedding parameters) for L_N, "
                       "D (tokens seen) for L_D; losses in nats per target token",
            "modalities": mods, "same_tokens": len(tokens) == 1, "points": points, "L_N": l_n,
            "L_N_no_floor": l_n_pure, "L_D": l_d,
            "curves": {k: {m: [list(p) for p in v] for m, v in c.items()} for k, c in curves.items()}}


def _train_tokens(run: Run) -> int:
    from ..data.shards import ShardSet

    try:
        return ShardSet.open(run.cfg.data.train, verify=False).num_tokens
    except (ValueError, OSError):  # the training data moved away: epochs unknown
        return 0


# ---------------------------------------------------------------------------------------------
# plots


def _fmt(fit: dict[str, Any], sym: str) -> str:
    if "error" in fit or fit.get("alpha") is None:
        return "no fit"
    err = f"±{fit['alpha_std']:.2f}" if "alpha_std" in fit else ""
    return f"α_{sym}={fit['alpha']:.3f}{err}, L∞={fit['l_inf']:.2f}"


def _human(n: float) -> str:
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:g}"


def _log_x(ax: Any) -> None:
    """Log x axis labelled at 1, 2, 5 x 10^k; the loss axis stays linear (its range is narrow)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _human(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_sweep(fits: dict[str, Any], out: Path) -> list[Path]:
    """scaling_N.png (final loss vs N with the fit, per modality) and scaling_D.png (training
    curves vs D, the largest run's fit dashed), small enough to commit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..utils.fileio import atomic_path
    from .scaling import power_law_log

    mods = fits["modalities"]
    pts = fits["points"]
    n = np.array([p["params_non_embedding"] for p in pts], dtype=float)
    paths = []
    fig, axes = plt.subplots(1, len(mods), figsize=(3.2 * len(mods), 3.2), dpi=90, squeeze=False)
    for ax, m in zip(axes[0], mods):
        ax.plot(n, [p["loss"][m] for p in pts], "o", color="C0", ms=5)
        f = fits["L_N"][m]
        if f.get("alpha") is not None:
            grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 100)
            ax.plot(grid, power_law_log(grid, f["alpha"], f["log_x_c"], f["l_inf"]), "-", color="C1", lw=1.2)
        _log_x(ax)
        ax.set_title(f"{m}: {_fmt(f, 'N')}", fontsize=8)
        ax.set_xlabel("non-embedding parameters N", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("validation loss (nats/token)", fontsize=8)
    fig.tight_layout()
    paths.append(out / "scaling_N.png")
    with atomic_path(paths[-1]) as tmp:
        fig.savefig(tmp)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(mods), figsize=(3.2 * len(mods), 3.2), dpi=90, squeeze=False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(pts)))
    largest = pts[-1]["label"]
    for ax, m in zip(axes[0], mods):
        for p, c in zip(pts, colors):
            curve = fits["curves"][p["label"]].get(m, [])
            if curve:
                d, v = zip(*curve)
                ax.plot(d, v, "-", color=c, lw=1.2, label=_human(p["params_non_embedding"]))
        f = fits["L_D"].get(largest, {}).get(m, {})
        curve = fits["curves"][largest].get(m, [])
        if f.get("alpha") is not None and curve:
            grid = np.geomspace(curve[0][0], curve[-1][0], 100)
            ax.plot(grid, power_law_log(grid, f["alpha"], f["log_x_c"], f["l_inf"]), "--", color="C3", lw=1)
        _log_x(ax)
        ax.set_title(f"{m}: {_fmt(f, 'D')} ({largest})", fontsize=8)
        ax.set_xlabel("tokens seen D", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("training loss (nats/token)", fontsize=8)
    axes[0][0].legend(fontsize=6, title="N", title_fontsize=6)
    fig.tight_layout()
    paths.append(out / "scaling_D.png")
    with atomic_path(paths[-1]) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------
# the sweep


def _eval_cached(run: Run, val: str, cache_path: Path) -> dict[str, Any]:
    """modality_losses, remembered in ``cache_path`` per checkpoint and validation set."""
    import json

    from ..utils.fileio import atomic_write_json

    cache: dict[str, Any] = {}
    if cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except json.JSONDecodeError:
            cache = {}
    latest = run.path / "ckpt" / "latest"
    key = f"{(run.path / 'ckpt' / latest.read_text().strip()).resolve()}|{Path(val).resolve()}"
    if key not in cache:
        cache[key] = modality_losses(run, val)
        atomic_write_json(cache_path, cache)
    return cache[key]


def _train_runs(runs: list[Run], progress: bool, say: Any) -> None:
    """Train (or resume) every unfinished run, with one progress bar over all their steps."""
    from .loop import train

    todo = [r for r in runs if not r.finished()]
    for r in runs:
        if r.finished():
            say(f"{r.label}: finished ({r.cfg.train.steps} steps), reading it")
    if not todo:
        return
    from tqdm import tqdm

    total = sum(r.cfg.train.steps - r.done_steps() for r in todo)
    bar = tqdm(total=total, unit="step", desc="sweep", dynamic_ncols=True, disable=not progress)
    note = (lambda msg: bar.write(msg, file=sys.stderr)) if progress else say  # lines above the bar
    for i, r in enumerate(todo):
        first = r.done_steps()
        bar.set_description(f"sweep {i + 1}/{len(todo)} {r.label}")
        r.path.mkdir(parents=True, exist_ok=True)
        seen = [first]
        with open(r.path / "train.log", "a") as log:
            def write(msg: str, log=log, seen=seen) -> None:
                log.write(msg + "\n")
                log.flush()
                m = re.match(r"step (\d+)/", msg)
                if m and int(m.group(1)) > seen[0]:
                    bar.update(int(m.group(1)) - seen[0])
                    seen[0] = int(m.group(1))
            note(f"{r.label}: training {non_embedding_params(r.cfg.model):,} non-embedding parameters for "
                 f"{r.cfg.train.steps} steps ({r.cfg.train.steps * r.tokens_per_step():,} tokens)"
                 + (f", resuming at step {first}" if first else "") + f"; log in {r.path / 'train.log'}")
            train(r.cfg, resume="auto", log=write)
        bar.update(r.cfg.train.steps - seen[0])
    bar.close()


def sweep(out: str | Path, sizes: list[Size] | None = None, tokens: int | None = None, runs: list[str] | None = None,
          val: str | None = None, data: str | None = None, preset_name: str = "debug", config_yaml: str | None = None,
          overrides: list[str] | None = None, n_boot: int = 500, progress: bool = True, say: Any = print
          ) -> dict[str, Any]:
    """Train the ladder (``sizes`` x ``tokens``) or read ``runs``, then evaluate, fit and plot into
    ``out``. Returns the fits.json content."""
    from ..config import config_from_dict
    from ..utils.fileio import atomic_write_json, read_json

    out = Path(out)
    if (sizes is None) == (runs is None):
        raise ValueError("give either --sizes (with --tokens) to train a ladder, or --runs to read finished runs")
    if sizes is not None:
        if len(sizes) < 3:
            raise ValueError(f"a scaling fit needs at least 3 model sizes, got {len(sizes)}")
        if not tokens or tokens <= 0:
            raise ValueError("--tokens: give the token budget of every run (e.g. 600k)")
        ladder = []
        for s in sizes:
            cfg = ladder_config(s, tokens, out, preset_name, config_yaml, overrides, data)
            path = Path(cfg.train.out_dir)
            if (path / "config.json").is_file():
                _check_same(path, cfg)
                if (path / "ckpt" / "latest").is_file():  # the trainer's resolved settings (vocab size)
                    cfg = config_from_dict(read_json(path / "config.json", "run config"))
            ladder.append(Run(path, cfg))
        for r in ladder:
            say(f"{r.label} ({r.path}): dim {r.cfg.model.dim}, {r.cfg.model.n_layers} layers, "
                f"{non_embedding_params(r.cfg.model):,} non-embedding parameters")
        out.mkdir(parents=True, exist_ok=True)
        _train_runs(ladder, progress, say)
        ladder = [read_run(r.path) for r in ladder]
    else:
        if len(runs or []) < 3:
            raise ValueError(f"a scaling fit needs at least 3 runs, got {len(runs or [])}")
        ladder = sorted((read_run(p) for p in runs or []), key=lambda r: non_embedding_params(r.cfg.model))
        out.mkdir(parents=True, exist_ok=True)
    vals = {val or r.cfg.data.val for r in ladder}
    if "" in vals:
        raise ValueError("a run has no data.val; give the validation shards with --val")
    if len(vals) > 1:
        raise ValueError(f"the runs were validated on different sets ({', '.join(sorted(vals))}); give one with --val "
                         "so that their losses compare")
    val_path = vals.pop()
    say(f"scoring {len(ladder)} runs on {val_path} per modality")
    evals = [_eval_cached(r, val_path, out / "eval_cache.json") for r in ladder]
    fits = fit_sweep(ladder, evals, n_boot)
    fits["val"] = val_path
    atomic_write_json(out / "fits.json", fits)
    pngs = plot_sweep(fits, out)
    say(_table(fits))
    say(f"wrote {out / 'fits.json'}, {', '.join(str(p) for p in pngs)}")
    return fits


def _table(fits: dict[str, Any]) -> str:
    mods = fits["modalities"]
    lines = ["N (non-emb)  tokens      " + "  ".join(f"{m:>7}" for m in mods)]
    for p in fits["points"]:
        lines.append(f"{p['params_non_embedding']:>11,}  {p['tokens']:>10,}  "
                     + "  ".join(f"{p['loss'][m]:7.4f}" for m in mods))
    for m in mods:
        f = fits["L_N"][m]
        lines.append(f"L(N) {m}: " + (f["error"] if "error" in f else
                                      f"alpha={f['alpha'] if f['alpha'] is not None else float('nan'):.4f}"
                                      + (f" ± {f['alpha_std']:.4f}" if "alpha_std" in f else "")
                                      + (f", N_c={f['x_c']:.3g}" if f.get("x_c") else "")
                                      + f", L_inf={f['l_inf']:.4f}, rmse={f['rmse']:.4f}"))
        g = fits["L_N_no_floor"][m]
        if g.get("alpha") is not None:
            lines.append(f"L(N) {m}, L_inf=0: alpha={g['alpha']:.4f}, rmse={g['rmse']:.4f}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default=None, metavar="S,S,...",
                   help="model sizes to train (>= 3): non-embedding counts (50k, 1.5M), DIMxLAYERS (128x4) or "
                        "preset names, comma-separated")
    p.add_argument("--tokens", default=None, metavar="T", help="tokens each run trains on (e.g. 600k, 2M)")
    p.add_argument("--runs", nargs="+", default=None, metavar="DIR",
                   help="read these finished training runs instead of training a ladder")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="token shards (an `omniloom tokenize --out` with train/ and val/); or data.train=... "
                        "data.val=...")
    p.add_argument("--val", default=None, metavar="DIR",
                   help="validation shards for the per-modality losses (default: the runs' data.val)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder: the runs, fits.json, scaling_*.png")
    p.add_argument("--preset", default="debug", help="training settings of every run (default: debug)")
    p.add_argument("--config", default=None, metavar="YAML", help="YAML file applied over the preset")
    p.add_argument("--bootstrap", type=int, default=500, metavar="B", help="bootstrap resamples per fit (default 500)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="settings of every run, e.g. data.seq_len=256 train.lr=3e-3")


def run(args: argparse.Namespace) -> int:
    tokens = None
    if args.tokens is not None:
        count = parse_count(args.tokens)
        if count is None or count < 1:
            raise ValueError(f"--tokens {args.tokens!r}: give a number of tokens such as 600k or 2M")
        tokens = int(count)
    if args.runs is not None and (args.sizes is not None or args.tokens is not None):
        raise ValueError("--runs reads finished runs; it takes no --sizes or --tokens")
    sizes = parse_sizes(args.sizes) if args.sizes is not None else None
    sweep(args.out, sizes=sizes, tokens=tokens, runs=args.runs, val=args.val, data=args.data,
          preset_name=args.preset, config_yaml=args.config, overrides=args.overrides, n_boot=args.bootstrap,
          progress=not args.no_progress, say=lambda s: print(s, file=sys.stderr, flush=True))
    return 0
