"""Edits that describe their result first: is the description right, and does it help the drawing?

A model trained on edits answered "described" (``omniloom world generate --restate edit``: the
caption of the edited scene in text, then the image) writes what the edit should give before it
draws. For each test edit (world test split, seed 1234) this measures, greedily:

* ``described``: the share of answers that open with a description at all;
* ``description``: the share whose description is exactly the edited scene's caption;
* ``image``: exact scene of the drawing that follows the description (the edit task's metric);
* ``image_first``: exact scene when the answer is made to open with the image (the old form, and
  what ``omniloom eval`` asks for);
* with ``--candidates N`` > 1, ``search``: best of N drawings (image opened at once, guidance
  ``--cfg-scale``), each judged by the model's own caption likelihood against its description.

    python bench/edit_describe.py --model runs/p10-model --n 50 --candidates 16 --json docs/bench/edit_describe_p10.json

Last line: ``described=<..> description=<..> image=<..> image_first=<..> [search=<..>]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="bundled model name or model directory (default: world)")
    p.add_argument("--n", type=int, default=50, help="test edits (default 50)")
    p.add_argument("--candidates", type=int, default=1, help="drawings searched per edit (default 1: no search)")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="classifier-free guidance of drawings (default 2)")
    p.add_argument("--data", default="data/world-eval", help="where test samples are generated and cached")
    p.add_argument("--json", default=None, metavar="OUT", help="write the summary and every row as JSON")
    args = p.parse_args(argv)
    if args.n < 1 or args.candidates < 1:
        p.error("--n and --candidates must be >= 1")

    from omniloom.eval.runner import ensure_split, load_samples
    from omniloom.eval.scoring import Answer, describe_truth, score
    from omniloom.infer.generate import ImageOut, OmniModel, TextDelta, generate
    from omniloom.infer.sampling import SamplingParams

    omni = OmniModel.load(args.model)
    path = ensure_split(args.data, "test", "edit", max(args.n, 50), 1234)
    samples = load_samples(path, args.n)

    def answer(msgs, **kw) -> tuple[str, object]:
        text, image = "", None
        for ev in generate(omni, msgs, sampling=SamplingParams(max_new_tokens=160, temperature=0.0, seed=0),
                           cfg_scale=args.cfg_scale, base_dir=path.parent, **kw):
            if isinstance(ev, TextDelta):
                text += ev.text
            elif isinstance(ev, ImageOut) and image is None and ev.image.size:
                image = ev.image
        return text.strip(), image

    rows, t0 = [], time.time()
    for i, s in enumerate(samples):
        msgs, truth = s["messages"][:-1], s["truth"]
        want = describe_truth("edit", truth)
        desc, img = answer(msgs, output_modality=None, outputs=("text", "image"))
        _, first = answer(msgs, output_modality="image", outputs=("image",))
        row = dict(index=i, truth=want, description=desc, described=bool(desc), description_ok=desc == want,
                   image=score("edit", truth, Answer(image=img))[0] if img is not None else 0.0,
                   image_first=score("edit", truth, Answer(image=first))[0])
        if args.candidates > 1 and desc:
            _, best = answer(msgs, output_modality="image", outputs=("image",), image_candidates=args.candidates,
                             describe=desc)
            row["search"] = score("edit", truth, Answer(image=best))[0]
        elif args.candidates > 1:
            row["search"] = row["image_first"]  # no description to judge by: the single drawing
        rows.append(row)
        print(f"{i + 1}/{len(samples)} described {row['described']:d} right {row['description_ok']:d} "
              f"image {row['image']:.0f} first {row['image_first']:.0f}"
              + (f" search {row['search']:.0f}" if "search" in row else "") + f" ({time.time() - t0:.0f} s)",
              flush=True)

    keys = ["described", "description_ok", "image", "image_first"] + (["search"] if args.candidates > 1 else [])
    summary = {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys}
    summary.update(model=args.model, n=len(rows), candidates=args.candidates, cfg_scale=args.cfg_scale,
                   seconds=time.time() - t0,
                   command="python bench/edit_describe.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    names = {"description_ok": "description"}
    print(" ".join(f"{names.get(k, k)}={summary[k]:.2f}" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
