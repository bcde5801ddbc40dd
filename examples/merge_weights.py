"""Interpolate the weights of two models of one lineage: (1 - t) * A + t * B, as a model directory.

Two fine-tunes of the same model sometimes combine their skills when their weights are averaged
("model soups"). This tried it on the reference model: phase 5 (the shipped weights, best at vqa,
edit, asr and spoken vqa) against phase 9 (four CPU phases later, best at spoken arithmetic), both
descended from the same run. See docs/reference-model.md, "Weight interpolation".

    python examples/merge_weights.py runs/world-p5/ckpt/step_0000760 runs/world-p9/ckpt/step_0000520 \
        --t 0.5 --out runs/m0.5-model
    omniloom eval --model runs/m0.5-model --n 50 --cfg-scale 2

A and B are checkpoint or model directories (model.safetensors + config.json, and B's vocab.json
and tokenizer.json). They must have the same architecture, the same tensors and the same
vocabulary; the output carries B's vocabulary, tokenizer, codec references and decoding defaults.
The mean is taken in fp32 and written in ``--dtype`` (bf16 by default, as the model is shipped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from omniloom.model import Transformer
from omniloom.model.export_cli import _export_model_dir, _read_checkpoint
from omniloom.model.hf import load_state_dict_checked
from omniloom.utils.fileio import read_json


def _load(d: Path):
    cfg, sd, _ = _read_checkpoint(d)  # names a missing directory or file
    return cfg, {k.removeprefix("_orig_mod."): v for k, v in sd.items()}


def merge(a: Path, b: Path, t: float) -> tuple:
    """(B's config, the interpolated state dict); raises ValueError when A and B do not match."""
    cfg_a, sd_a = _load(a)
    cfg_b, sd_b = _load(b)
    if cfg_a.model != cfg_b.model:
        diff = [k for k in vars(cfg_a.model) if getattr(cfg_a.model, k) != getattr(cfg_b.model, k)]
        raise ValueError(f"{a} and {b} are different architectures (model.{', model.'.join(diff)})")
    if sd_a.keys() != sd_b.keys():
        raise ValueError(f"{a} and {b} hold different tensors: {sorted(sd_a.keys() ^ sd_b.keys())[:4]}")
    for k in sd_a:
        if sd_a[k].shape != sd_b[k].shape:
            raise ValueError(f"tensor {k}: {tuple(sd_a[k].shape)} in {a}, {tuple(sd_b[k].shape)} in {b}")
    va, vb = a / "vocab.json", b / "vocab.json"
    if va.is_file() and vb.is_file() and read_json(va, "vocabulary") != read_json(vb, "vocabulary"):
        raise ValueError(f"{va} and {vb} differ: the two models read different token ids")
    return cfg_b, {k: (1 - t) * sd_a[k].float() + t * sd_b[k].float() for k in sd_a}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="model A (weight 1 - t)")
    p.add_argument("b", type=Path, help="model B (weight t); its vocabulary and tokenizer are carried")
    p.add_argument("--t", type=float, required=True, help="weight of B, in [0, 1]")
    p.add_argument("--out", type=Path, required=True, help="output model directory (written atomically)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    args = p.parse_args(argv)
    try:
        if not 0.0 <= args.t <= 1.0:
            raise ValueError(f"--t must lie in [0, 1], got {args.t}")
        cfg, sd = merge(args.a, args.b, args.t)
        model = Transformer(cfg.model)
        load_state_dict_checked(model, sd, source=f"{args.a} + {args.b}")
        print(f"merged (1 - {args.t}) * {args.a} + {args.t} * {args.b}")
        return _export_model_dir(args.b, args.out, model, cfg, getattr(torch, args.dtype))
    except ValueError as e:
        print(f"merge_weights: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
