"""What best-of-N drawing buys and costs: exact scenes and seconds per drawing against N, side by side.

Each drawing request of the world's test split (``draw`` task, seed 1234) is answered through
``generate()`` with ``image_candidates`` = 1 (plain decoding), and each N asked for, in turns on the
same prompts in the same process, so the machine's load hits every setting alike. The world's
image judge reads every answer; the model never sees the judge. Reported per N: exact-scene
accuracy, mean and p90 seconds per drawing, mean candidates drawn (the search stops early once
the model finds its caption likely enough) and the slowdown against N = 1.

    python bench/draw_search.py --n 20 --candidates 8,32 --json docs/bench/draw_search.json

Last line: ``draw_exact@1=<..> draw_exact@<N>=<..> slowdown@<N>=<..>`` for the largest N.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="bundled model name or model directory (default: world)")
    p.add_argument("--n", type=int, default=20, help="drawing prompts (default 20)")
    p.add_argument("--candidates", default="8,32", help="comma-separated N to compare with N=1 (default 8,32)")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="classifier-free guidance (default 2)")
    p.add_argument("--data", default="data/world-eval", help="where test samples are generated and cached")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the table as JSON (and OUT.png as a chart)")
    args = p.parse_args(argv)
    try:
        ns = sorted({int(x) for x in args.candidates.split(",") if x.strip()})
    except ValueError:
        p.error(f"--candidates must be comma-separated integers, got {args.candidates!r}")
    if not ns or ns[0] < 2:
        p.error("--candidates needs values >= 2 (N = 1 is always measured)")
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from omniloom.eval.runner import ensure_split, load_samples
    from omniloom.eval.scoring import Answer, score
    from omniloom.infer.generate import Done, ImageOut, OmniModel, generate, resolve_model_dir
    from omniloom.infer.sampling import SamplingParams

    directory = resolve_model_dir(args.model)
    omni = OmniModel.load(directory)
    path = ensure_split(args.data, "test", "draw", max(args.n, 50), 1234)
    samples = load_samples(path, args.n)
    settings = [1] + ns
    res = {n: {"exact": [], "seconds": [], "drawn": []} for n in settings}
    for i, s in enumerate(samples):
        for n in settings:  # in turns: each prompt under every setting before the next prompt
            t0 = time.perf_counter()
            img, drawn = None, 1
            for ev in generate(omni, s["messages"][:-1], output_modality="image", outputs=("image",),
                               sampling=SamplingParams(max_new_tokens=80, temperature=0.0, seed=i),
                               cfg_scale=args.cfg_scale, image_candidates=n, base_dir=path.parent):
                if isinstance(ev, ImageOut) and img is None:
                    img = ev.image if ev.image.size else None
                elif isinstance(ev, Done):
                    drawn = ev.usage.get("image_candidates", 1)
            res[n]["seconds"].append(time.perf_counter() - t0)
            res[n]["exact"].append(score("draw", s["truth"], Answer(image=img))[0])
            res[n]["drawn"].append(drawn)
        print(f"{i + 1}/{len(samples)} " + " ".join(f"N={n}:{res[n]['exact'][-1]:.0f}" for n in settings), flush=True)

    base = float(np.mean(res[1]["seconds"]))
    rows = []
    for n in settings:
        r = res[n]
        rows.append({"candidates": n, "exact": float(np.mean(r["exact"])), "sec_mean": float(np.mean(r["seconds"])),
                     "sec_p90": float(np.percentile(r["seconds"], 90)), "drawn_mean": float(np.mean(r["drawn"])),
                     "slowdown": float(np.mean(r["seconds"]) / base)})
    head = f"{'N':>4} {'exact':>6} {'s/drawing':>10} {'p90 s':>7} {'drawn':>6} {'slowdown':>9}"
    print(f"\nbest-of-N drawing, {len(samples)} test prompts, cfg {args.cfg_scale}, {torch.get_num_threads()} threads")
    print(head)
    for r in rows:
        print(f"{r['candidates']:>4} {r['exact']:>6.2f} {r['sec_mean']:>10.2f} {r['sec_p90']:>7.2f} "
              f"{r['drawn_mean']:>6.1f} {r['slowdown']:>8.1f}x")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model": str(directory), "n": len(samples), "cfg_scale": args.cfg_scale,
                "threads": torch.get_num_threads(), "torch": torch.__version__}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        tmp.replace(out)
        _plot(rows, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    top = rows[-1]
    print(f"draw_exact@1={rows[0]['exact']:.2f} draw_exact@{top['candidates']}={top['exact']:.2f} "
          f"slowdown@{top['candidates']}={top['slowdown']:.1f}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["sec_mean"] for r in rows], [r["exact"] for r in rows], "o-", color="#3b6fd8")
    for r in rows:
        ax.annotate(f"N={r['candidates']}", (r["sec_mean"], r["exact"]), textcoords="offset points", xytext=(5, -10))
    ax.set_xscale("log")
    ax.set_xlabel("seconds per drawing (log)")
    ax.set_ylabel("exact scene")
    ax.set_ylim(0, 1)
    ax.set_title("best-of-N drawing, judged by the model itself")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
