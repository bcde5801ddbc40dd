"""Edits that describe their result first: is the description right, and does it help the drawing?

A model trained on edits answered "described" (``omniloom world generate --restate edit``: the
caption of the edited scene in text, then the image) writes what the edit should give before it
draws. ``generate()`` does that for a model whose ``generation.json`` sets ``describe_edits``; this
bench switches the flag on and off on the same weights. For each test edit (world test split, seed
1234), greedily, guidance ``--cfg-scale``:

* ``described``: the share of answers that open with a description at all;
* ``description``: the share whose description is exactly the edited scene's caption;
* ``image``: exact scene of the drawing made after the description (the edit task's metric);
* ``image_first``: exact scene with the flag off, the answer opening with the image (the old form);
* with ``--candidates N`` > 1, ``search``: the best of N drawings made after the description, each
  judged by the model's own caption likelihood against it.

    python bench/edit_describe.py --model runs/p10-model --n 50 --candidates 16 --json docs/bench/edit_describe_p10.json

Last line: ``described=<..> description=<..> image=<..> image_first=<..> [search=<..>]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def description_errors(description: str, truth: dict) -> tuple[bool, bool]:
    """(an object the edit left alone is misstated or missing, the edit itself is misapplied) for a
    description of the edited scene, by the world's object phrases."""
    from omniloom.world.scene import Scene, caption_phrases, parse_object_phrase

    said = set()
    for part in caption_phrases(description):
        try:
            said.add(parse_object_phrase(part))
        except ValueError:
            pass  # not an object phrase: it matches nothing
    src = set(Scene.from_dict(truth["scene"]).objects)
    dst = set(Scene.from_dict(truth["target"]).objects)
    return bool((src & dst) - said), bool((dst - src) - said) or bool((src - dst) & said)


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

    described = OmniModel.load(args.model)
    described.generation["describe_edits"] = True
    plain = OmniModel(described.model, described.vocab, described.tok, described.codecs,
                      generation={k: v for k, v in described.generation.items() if k != "describe_edits"})
    path = ensure_split(args.data, "test", "edit", max(args.n, 50), 1234)
    samples = load_samples(path, args.n)

    def answer(omni, msgs, candidates: int = 1) -> tuple[str, object]:
        text, image = "", None
        for ev in generate(omni, msgs, output_modality="image", outputs=("image", "text"),
                           sampling=SamplingParams(max_new_tokens=256, temperature=0.0, seed=0),
                           cfg_scale=args.cfg_scale, base_dir=path.parent, image_candidates=candidates):
            if isinstance(ev, TextDelta) and image is None:
                text += ev.text
            elif isinstance(ev, ImageOut) and image is None and ev.image.size:
                image = ev.image
        return text.strip(), image

    def exact(truth, image) -> float:
        return score("edit", truth, Answer(image=image))[0] if image is not None else 0.0

    rows, t0 = [], time.time()
    for i, s in enumerate(samples):
        msgs, truth = s["messages"][:-1], s["truth"]
        want = describe_truth("edit", truth)
        desc, img = answer(described, msgs)
        _, first = answer(plain, msgs)
        untouched, edit = description_errors(desc, truth)
        row = dict(index=i, truth=want, description=desc, described=bool(desc), description_ok=desc == want,
                   untouched_wrong=untouched, edit_wrong=edit, image=exact(truth, img), image_first=exact(truth, first))
        if args.candidates > 1:
            row["search"] = exact(truth, answer(described, msgs, args.candidates)[1])
        rows.append(row)
        print(f"{i + 1}/{len(samples)} described {row['described']:d} right {row['description_ok']:d} "
              f"image {row['image']:.0f} first {row['image_first']:.0f}"
              + (f" search {row['search']:.0f}" if "search" in row else "") + f" ({time.time() - t0:.0f} s)",
              flush=True)

    keys = ["described", "description_ok", "image", "image_first"] + (["search"] if args.candidates > 1 else [])
    summary = {k: sum(float(r[k]) for r in rows) / len(rows) for k in keys}
    wrong = [r for r in rows if not r["description_ok"]]
    summary["wrong_descriptions"] = {"n": len(wrong), "untouched_object_wrong": sum(r["untouched_wrong"] for r in wrong),
                                     "edit_wrong": sum(r["edit_wrong"] for r in wrong),
                                     "both": sum(r["untouched_wrong"] and r["edit_wrong"] for r in wrong)}
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
