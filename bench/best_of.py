"""Greedy decoding against best-of-N with a learned verifier: latency and judged accuracy on world items.

For each test item of a world task (test split, seed 1234, the items of ``omniloom eval``), the
model answers twice in the same process, one after the other:

* ``greedy``: ``generate()`` at temperature 0 (guidance ``--cfg-scale`` for image answers, no
  drawing search), as ``omniloom eval`` decodes;
* ``best-of-N``: ``generate_best_of()``: ``N`` candidates sampled at ``--temperature`` in one batch,
  the one the verifier (``omniloom verifier train``) scores highest returned; what
  ``omniloom chat --best-of N --verifier DIR`` and ``serve``'s ``best_of`` do.

Both answers go through the world's judges (as in ``omniloom eval``). The table gives each mode's
judged accuracy (WER tasks: mean WER), mean and median seconds per item, and the latency ratio
best-of-N / greedy. The verifier must not have been trained on these items (train it on another
split or seed).

    python bench/best_of.py --verifier data/pref/verifier --task draw --n 50 --best-of 8 \\
        --json docs/bench/best_of_draw.json

Last line: ``greedy=<acc> best_of=<acc> latency_ratio=<x>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="bundled model name or model directory (default: world)")
    p.add_argument("--verifier", required=True, help="a verifier directory trained on this model")
    p.add_argument("--task", default="draw", help="a world task (default: draw)")
    p.add_argument("--n", type=int, default=50, help="test items (default 50)")
    p.add_argument("--best-of", type=int, default=8, help="candidates per item (default 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the candidates")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="guidance for image answers (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="base seed of the candidates")
    p.add_argument("--data", default="data/world-eval", help="where test items are generated and cached")
    p.add_argument("--json", default=None, metavar="OUT", help="write the summary and per-item rows as JSON")
    args = p.parse_args(argv)
    if args.best_of < 2 or args.n < 1:
        p.error("--best-of must be >= 2 and --n >= 1")

    import numpy as np

    from omniloom.eval.runner import _prompt_messages, _voice, answer_from_events, ensure_split, load_samples
    from omniloom.eval.scoring import OUTPUT_OF, TASK_METRIC, Answer, score
    from omniloom.infer.best_of import Verifier, generate_best_of
    from omniloom.infer.candidates import default_outputs
    from omniloom.infer.generate import OmniModel, generate
    from omniloom.infer.generate import resolve_model_dir
    from omniloom.infer.sampling import SamplingParams

    if args.task not in TASK_METRIC:
        p.error(f"--task must be one of {', '.join(TASK_METRIC)}")
    model_dir = resolve_model_dir(args.model)
    omni = OmniModel.load(model_dir)
    verifier = Verifier.load(args.verifier, model_dir)
    path = ensure_split(args.data, "test", args.task, max(args.n, 50), 1234)
    items = load_samples(path, args.n)
    kind = OUTPUT_OF[args.task]
    cfg = args.cfg_scale if kind == "image" else 1.0

    def collect(events) -> tuple[Answer, dict | None]:
        ans, done = answer_from_events(events)
        return ans, done.best_of if done is not None else None

    rows = []
    for i, item in enumerate(items):
        msgs, voice = _prompt_messages(item), _voice(item) if kind == "audio" else None
        t0 = time.perf_counter()
        greedy, _ = collect(generate(omni, msgs, output_modality=kind, outputs=default_outputs(kind), voice=voice,
                                     sampling=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0),
                                     cfg_scale=cfg, base_dir=path.parent))
        t1 = time.perf_counter()
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  seed=args.seed * 1_000_003 + i)
        best, info = collect(generate_best_of(omni, verifier, msgs, args.best_of, kind, None, voice, sampling, cfg,
                                              base_dir=path.parent))
        t2 = time.perf_counter()
        rows.append({"item": i, "greedy": score(args.task, item["truth"], greedy)[0],
                     "best_of": score(args.task, item["truth"], best)[0], "greedy_s": t1 - t0, "best_of_s": t2 - t1,
                     "chosen": info["chosen"] if info else None})
        print(f"{i + 1}/{len(items)} greedy {rows[-1]['greedy']:.2f} ({t1 - t0:.2f} s)  best-of-{args.best_of} "
              f"{rows[-1]['best_of']:.2f} ({t2 - t1:.2f} s)", flush=True)

    def summary(key: str) -> dict:
        secs = [r[f"{key}_s"] for r in rows]
        return {"accuracy": float(np.mean([r[key] for r in rows])), "mean_s": float(np.mean(secs)),
                "median_s": float(statistics.median(secs))}

    g, b = summary("greedy"), summary("best_of")
    ratio = b["mean_s"] / g["mean_s"]
    metric = TASK_METRIC[args.task]
    print(f"\n{args.task}, n={len(rows)}, {metric}; model {model_dir.name}, verifier {args.verifier}")
    print(f"{'mode':<12} {metric:>8} {'mean s':>8} {'median s':>9}")
    for name, m in (("greedy", g), (f"best-of-{args.best_of}", b)):
        print(f"{name:<12} {m['accuracy']:>8.3f} {m['mean_s']:>8.2f} {m['median_s']:>9.2f}")
    print(f"latency ratio best-of-{args.best_of} / greedy: {ratio:.2f}x")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"task": args.task, "n": len(rows), "metric": metric, "best_of": args.best_of,
                                   "temperature": args.temperature, "cfg_scale": cfg, "model": str(model_dir),
                                   "verifier": str(args.verifier), "greedy": g, "best_of_n": b,
                                   "latency_ratio": ratio, "rows": rows}, indent=1))
    print(f"greedy={g['accuracy']:.3f} best_of={b['accuracy']:.3f} latency_ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
