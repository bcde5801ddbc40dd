"""Benchmark a model on the shapes world: every task judged by the world's independent judges.

    omniloom eval --model runs/world                 # the model in this process, all tasks
    omniloom eval --server http://127.0.0.1:8000 --model world --tasks vqa,math --n 50
    omniloom eval --model world --split compositional --json out/eval.json

For each task the test samples (generated once under --data, deterministic per --seed) go
through the model; each answer is judged; the table shows the task, n, its metric (exact: share
right, higher is better; wer: word error rate, lower is better), the model's value, and the same
judge's chance (a guess from the answer space) and oracle (the truth rendered afresh) on the same
samples. A JSON report and a PNG chart are written, and a few failures per task are shown.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="world",
                   help="bundled model name, model directory or training run (with --server: the model id to ask for)")
    p.add_argument("--server", default=None, metavar="URL", help="an OpenAI-compatible server instead of a local model")
    p.add_argument("--api-key", default=None, help="API key for --server")
    p.add_argument("--tasks", default="all", help="comma-separated tasks (default: all eleven 2D/speech tasks; the 3D tasks text_to_3d and "
                        "describe_3d are scored when named, for a model with a mesh codec)")
    p.add_argument("--n", type=int, default=50, help="samples per task (default 50)")
    p.add_argument("--split", default="test", choices=["test", "val", "compositional"])
    p.add_argument("--seed", type=int, default=1234, help="seed of the generated test samples")
    p.add_argument("--lang", default="en", metavar="CODE",
                   help="language of the test samples: en (default), es, fr, de, or a lexicon .json (docs/world.md)")
    p.add_argument("--data", default="data/world-eval", help="where test samples are generated and cached")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--no-bounds", action="store_true", help="skip the chance and oracle rows (faster)")
    p.add_argument("--failures", type=int, default=3, help="failures shown per task")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON (and OUT.png as a chart)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cfg-scale", type=float, default=1.0,
                   help="classifier-free guidance for image answers (1 off; try 2-3 with a model trained with "
                        "`omniloom tokenize --cfg-drop`); with --server it is sent as the guidance_scale extension")
    p.add_argument("--image-candidates", type=int, default=1, metavar="N",
                   help="draw N images per drawing request and keep the one the model itself captions closest to "
                        "the request (best-of-N, self-judged; 1 off). Edits always get one sample. With --server it is sent "
                        "as the image_candidates extension")
    p.add_argument("--int8", action="store_true", help="evaluate the local model with int8 weight-only quantization")
    p.add_argument("--task-tag", default="auto", choices=["auto", "none", "text-only", "all"],
                   help="put the task tag first in the prompts this rule names (docs/graft.md); auto (default): the "
                        "rule the model was trained with (its generation.json \"task_tag\"), none with --server")


def parse_tasks(text: str) -> list[str]:
    from .runner import TASKS
    from .scoring import OPT_IN_TASKS

    if text == "all":
        return [t for t in TASKS if t not in OPT_IN_TASKS]
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown task(s) {bad or text!r}; choose from {', '.join(TASKS)}")
    return tasks


def format_table(results) -> str:
    rows = [("task", "n", "metric", "value", "chance", "oracle")]
    for r in results:
        rows.append((r.task, str(r.n), r.metric, f"{r.value:.3f}", f"{r.chance:.3f}", f"{r.oracle:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def plot(results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    # exact: higher is better; wer is shown as 1 - wer so that every bar reads "higher is better"
    def up(r, v):  # clamped: a WER above 1 (a guess longer than the truth) sits at 0
        return v if r.metric == "exact" else max(0.0, 1.0 - v)

    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(results) + 2), 4))
    ax.bar(x, [up(r, r.value) for r in results], 0.6, label="model", color="#3b6fd8")
    ax.scatter(x, [up(r, r.chance) for r in results], marker="_", s=400, color="#c0392b", label="chance", zorder=3)
    ax.scatter(x, [up(r, r.oracle) for r in results], marker="_", s=400, color="#27ae60", label="oracle", zorder=3)
    ax.set_xticks(x, [r.task + ("\n(1-wer)" if r.metric == "wer" else "") for r in results], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .runner import LocalBackend, ServerBackend, ensure_split, load_samples, results_json, run_eval

    tasks = parse_tasks(args.tasks)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.image_candidates < 1:
        raise ValueError(f"--image-candidates must be >= 1, got {args.image_candidates}")
    if args.server:
        backend = ServerBackend(args.server, args.model, args.api_key, args.max_new_tokens, args.cfg_scale,
                                args.image_candidates, None if args.task_tag == "auto" else args.task_tag)
        what = f"{args.model} at {args.server}"
    else:
        from ..infer.generate import OmniModel, resolve_model_dir

        directory = resolve_model_dir(args.model)
        backend = LocalBackend(OmniModel.load(directory, int8=args.int8), args.max_new_tokens, args.cfg_scale,
                               args.image_candidates, None if args.task_tag == "auto" else args.task_tag)
        what = str(directory)
    samples = {}
    for task in tasks:
        if args.split == "compositional" and task in ("math", "asr", "tts", "spoken_math", "text_to_3d", "describe_3d"):
            continue  # these tasks have no 2D scenes, so no held-out pairs
        path = ensure_split(args.data, args.split, task, args.n, args.seed, args.lang)
        samples[task] = (load_samples(path, args.n), path.parent)
    total = sum(len(s) for s, _ in samples.values())
    bar = tqdm(total=total, desc="eval", unit="sample", disable=args.no_progress)
    t0 = time.time()
    results = run_eval(backend, samples, bounds=not args.no_bounds, seed=args.seed, show_failures=args.failures,
                       progress=lambda task, i, n: (bar.set_postfix_str(task), bar.update()))
    bar.close()
    print(f"world {args.split} split, {what}, {time.time() - t0:.0f} s")
    print(format_table(results))
    for r in results:
        for f in r.failures:
            print(f"  {r.task} #{f['index']}: truth {f['truth']!r}, judged {f['judged']!r}"
                  + (f" ({f['error']})" if "error" in f else ""), file=sys.stderr)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model": what, "split": args.split, "lang": args.lang, "seed": args.seed, "n": args.n,
                "seconds": time.time() - t0,
                "cfg_scale": args.cfg_scale, "image_candidates": args.image_candidates, "int8": bool(args.int8),
                "task_tag": backend.task_tag or "none"}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(results_json(results, meta))
        tmp.replace(out)
        plot(results, out.with_suffix(".png"), f"omniloom eval: {Path(what).name} ({args.split})")
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
