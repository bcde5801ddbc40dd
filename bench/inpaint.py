"""Inpainting (``images.edit`` with a ``mask``) against a plain edit, on the world's edit task.

For each test edit (world test split, seed 1234) the mask is what a user would paint: the grid
cells of the objects the edit changes (where the edited object was and where it ends up), made
transparent. Each edit is answered three ways on the same weights, greedily, guidance ``--cfg-scale``:

* ``plain_edit``: the plain edit (the image and the instruction; the model redraws the whole image);
* ``inpaint_1``: the masked cells sampled greedily, the other cells forced to the source's codes;
* ``inpaint_K``: ``--candidates`` masked drawings, the one whose whole span the model finds most
  likely kept (``omniloom.infer.inpaint``).

Columns: ``exact`` = the edit judge (the drawing parses as exactly the edited scene);
``outside_psnr`` = PSNR in dB between the answer and the source image over the unmasked pixels
(how well the rest of the image is kept); ``seconds`` per answer.

    python bench/inpaint.py --n 50 --candidates 8 --json docs/bench/inpaint.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def edit_mask(truth: dict, size: int = 64) -> np.ndarray:
    """(size, size) uint8 alpha: 0 over the world grid cells of the objects the edit changes."""
    from omniloom.world.render import CELL_PX
    from omniloom.world.scene import Scene

    src = set(Scene.from_dict(truth["scene"]).objects)
    dst = set(Scene.from_dict(truth["target"]).objects)
    alpha = np.full((size, size), 255, dtype=np.uint8)
    for o in src ^ dst:
        row, col = divmod(o.cell, 3)
        y0, y1 = int(row * CELL_PX), int(np.ceil((row + 1) * CELL_PX))
        x0, x1 = int(col * CELL_PX), int(np.ceil((col + 1) * CELL_PX))
        alpha[y0:y1, x0:x1] = 0
    return alpha


def psnr_outside(a: np.ndarray, b: np.ndarray, alpha: np.ndarray) -> float:
    keep = alpha >= 128
    if not keep.any():
        return float("nan")
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2)[keep].mean()
    return float(10 * np.log10(255.0**2 / max(err, 1e-10)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="bundled model name or model directory (default: world)")
    p.add_argument("--n", type=int, default=50, help="test edits (default 50)")
    p.add_argument("--candidates", type=int, default=8, help="masked drawings searched per edit (default 8)")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="classifier-free guidance of drawings (default 2)")
    p.add_argument("--data", default="data/world-eval", help="where test samples are generated and cached")
    p.add_argument("--json", default=None, metavar="OUT", help="write the summary and every row as JSON")
    args = p.parse_args(argv)
    if args.n < 1 or args.candidates < 1:
        p.error("--n and --candidates must be >= 1")

    import torch
    from PIL import Image

    from omniloom.eval.runner import ensure_split, load_samples
    from omniloom.eval.scoring import Answer, score
    from omniloom.infer.generate import ImageOut, OmniModel, generate
    from omniloom.infer.inpaint import code_grid, inpaint, mask_cells
    from omniloom.infer.sampling import SamplingParams

    torch.manual_seed(0)
    omni = OmniModel.load(args.model)
    omni.generation.pop("describe_edits", None)  # the same answer form in all three columns
    codec = omni.codecs["image"]
    path = ensure_split(args.data, "test", "edit", max(args.n, 50), 1234)
    samples = load_samples(path, args.n)
    greedy = SamplingParams(max_new_tokens=omni.vocab.image_tokens + 4, temperature=0.0, seed=0)

    def plain(msgs) -> np.ndarray | None:
        for ev in generate(omni, msgs, output_modality="image", outputs=("image",), sampling=greedy,
                           cfg_scale=args.cfg_scale, base_dir=path.parent):
            if isinstance(ev, ImageOut) and ev.image.size:
                return ev.image
        return None

    def masked(msgs, cells, k: int) -> np.ndarray:
        for ev in inpaint(omni, msgs, cells, candidates=k, sampling=greedy, cfg_scale=args.cfg_scale,
                          base_dir=path.parent):
            if isinstance(ev, ImageOut):
                return ev.image
        raise RuntimeError("inpaint gave no image")

    ways = {"plain_edit": lambda m, c: plain(m), "inpaint_1": lambda m, c: masked(m, c, 1)}
    if args.candidates > 1:
        ways[f"inpaint_{args.candidates}"] = lambda m, c: masked(m, c, args.candidates)
    rows, t0 = [], time.time()
    for i, s in enumerate(samples):
        msgs, truth = s["messages"][:-1], s["truth"]
        src_path = path.parent / msgs[0]["content"][0]["path"]
        source = np.asarray(Image.open(src_path).convert("RGB"))
        alpha = edit_mask(truth, source.shape[0])
        cells = mask_cells(alpha, codec.resolution, code_grid(omni.vocab))
        row = {"index": i, "etype": truth["edit"], "cells": int(cells.sum())}
        for name, fn in ways.items():
            t = time.time()
            img = fn(msgs, cells)
            row[name] = {"exact": score("edit", truth, Answer(image=img))[0] if img is not None else 0.0,
                         "outside_psnr": psnr_outside(img, source, alpha) if img is not None else float("nan"),
                         "seconds": time.time() - t}
        rows.append(row)
        print(f"{i + 1}/{len(samples)} {row['etype']:8s} cells {row['cells']:2d} "
              + " ".join(f"{k} {row[k]['exact']:.0f}/{row[k]['outside_psnr']:.1f}dB" for k in ways)
              + f" ({time.time() - t0:.0f} s)", flush=True)

    summary = {"model": args.model, "n": len(rows), "cfg_scale": args.cfg_scale, "candidates": args.candidates,
               "mean_cells": float(np.mean([r["cells"] for r in rows])),
               "command": "python bench/inpaint.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    table = {}
    for k in ways:
        table[k] = {m: float(np.nanmean([r[k][m] for r in rows])) for m in ("exact", "outside_psnr", "seconds")}
        table[k]["by_edit"] = {e: float(np.mean([r[k]["exact"] for r in rows if r["etype"] == e]))
                               for e in sorted({r["etype"] for r in rows})}
    summary["table"] = table
    print(f"\n{'way':12s} {'exact':>6s} {'outside PSNR':>13s} {'s/answer':>9s}  by edit type")
    for k, v in table.items():
        by = " ".join(f"{e}={x:.2f}" for e, x in v["by_edit"].items())
        print(f"{k:12s} {v['exact']:6.2f} {v['outside_psnr']:10.1f} dB {v['seconds']:9.2f}  {by}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
