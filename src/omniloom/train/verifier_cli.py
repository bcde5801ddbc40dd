"""Train a learned verifier (a scalar head on a frozen model) from judged samples, or measure one.

    omniloom verifier train --model world --samples runs/pref/samples.jsonl --out runs/pref/verifier
    omniloom verifier eval --verifier runs/pref/verifier --samples runs/pref/test_samples.jsonl

The samples are `omniloom sample --reward ...` output. `train` holds out a share of the prompts
(--holdout), fits the head on the others (pointwise on score > --threshold by default, or pairwise
Bradley-Terry) and reports, on the held-out prompts, pairwise accuracy, AUC and the mean
score of the candidate the verifier picks per prompt (its best-of-K) beside the oracle's.
--shuffle-labels trains on scores shuffled across candidates: a control that must stay at chance.
The directory written holds verifier.safetensors and verifier.json; `omniloom chat --best-of N
--verifier DIR` and `omniloom serve --verifier DIR` use it. `eval` measures a trained verifier on
other judged samples (e.g. of test prompts). See docs/preference.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="verifier_cmd", metavar="<command>")
    t = sub.add_parser("train", help="fit a verifier head on judged samples and report held-out accuracy")
    t.add_argument("--model", default="world", help="the model whose samples were judged (and that will decode)")
    t.add_argument("--samples", required=True, help="judged samples JSONL (omniloom sample --reward ...)")
    t.add_argument("--out", required=True, help="directory for verifier.safetensors and verifier.json")
    t.add_argument("--objective", default="pointwise", choices=["pointwise", "pairwise"],
                   help="pointwise (default; on the world's draw samples its held-out figures were the better of "
                        "the two: docs/preference.md) or pairwise")
    t.add_argument("--threshold", type=float, default=0.5,
                   help="a candidate is 'judged good' when its score exceeds this (pointwise labels, AUC)")
    t.add_argument("--holdout", type=float, default=0.25, help="share of prompts held out (default %(default)s)")
    t.add_argument("--hidden", type=int, default=0, help="hidden width of the head (0: linear; default %(default)s)")
    t.add_argument("--steps", type=int, default=300, help="full-batch optimizer steps (default %(default)s)")
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--weight-decay", type=float, default=1e-2)
    t.add_argument("--seed", type=int, default=0, help="seed of the prompt split and the head's initialisation")
    t.add_argument("--shuffle-labels", action="store_true", help="control: train on scores shuffled across candidates")
    t.add_argument("--no-progress", action="store_true")
    e = sub.add_parser("eval", help="measure a trained verifier on judged samples")
    e.add_argument("--verifier", required=True, help="a verifier directory")
    e.add_argument("--model", default=None, help="the model (default: the one the verifier names)")
    e.add_argument("--samples", required=True, help="judged samples JSONL")
    e.add_argument("--json", default=None, metavar="OUT", help="write the figures as JSON")
    e.add_argument("--no-progress", action="store_true")


def _table(report: dict) -> str:
    rows = [("split", "prompts", "pairs", "pair acc", "AUC", "verifier pick", "first", "mean", "oracle")]
    for part in ("train", "heldout", "samples"):
        m = report.get(part)
        if not m:
            continue
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append((part, str(m["prompts"]), str(m["pairs"]), f(m["pairwise_accuracy"]), f(m["auc"]),
                     f(m["verifier_pick"]), f(m["first_candidate"]), f(m["mean_candidate"]), f(m["oracle_pick"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "verifier_cmd", None)
    if cmd not in ("train", "eval"):
        raise ValueError("missing command: use `omniloom verifier train|eval` (see --help)")
    from ..infer.generate import OmniModel, resolve_model_dir
    from ..infer.sample_file import read_samples
    from ..model.verifier import load_verifier, save_verifier, weights_sha256
    from .verifier import judged_features, measure, train_verifier

    samples = Path(args.samples)
    lines = read_samples(samples)
    if not lines:
        raise ValueError(f"no samples in {samples}")
    if cmd == "train":
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        model_dir = resolve_model_dir(args.model)
        omni = OmniModel.load(model_dir)
        head, report = train_verifier(omni, lines, samples.parent.resolve(), args.objective, args.threshold,
                                      args.holdout, args.seed, args.hidden, args.steps, args.lr, args.weight_decay,
                                      args.shuffle_labels, progress=not args.no_progress)
        save_verifier(args.out, head, {"model": str(model_dir), "model_sha256": weights_sha256(model_dir),
                                       "samples": str(samples.resolve()), **report})
        print(_table(report))
        print(f"wrote {Path(args.out) / 'verifier.json'} and verifier.safetensors")
        return 0
    import torch

    _, meta = load_verifier(args.verifier)
    model_dir = resolve_model_dir(args.model or meta.get("model") or "world")
    head, meta = load_verifier(args.verifier, model_dir)
    omni = OmniModel.load(model_dir)
    data = judged_features(omni, lines, samples.parent.resolve(), progress=not args.no_progress)
    report = {"samples": measure(head, data, torch.arange(len(lines)), float(meta.get("threshold", 0.5)))}
    print(_table(report))
    if args.json:
        from ..utils.fileio import atomic_write_json

        atomic_write_json(args.json, {"verifier": str(args.verifier), "samples": str(samples), **report})
    else:
        print(json.dumps(report["samples"]))
    return 0
