"""How far are judged-right image answers from the truth's codes? Read from an `omniloom sample` file.

For each sampled line with an image reference (a data set line's assistant turn) and a score, the
reference picture is encoded with the model's image codec. Two figures come out:

* **round trip**: the reference encoded, decoded and judged again by the same reward (the share
  judged right): how much of the truth survives the codec, an upper bound for any answer made of codes;
* **shared codes**: the share of the candidate's codes equal to the reference's codes, position by
  position, for candidates judged right and for candidates judged wrong.

If judged-right answers share few of the truth's codes, many code sequences draw the same scene,
and a loss on the truth's codes (SFT, or DPO with the truth as the chosen side) pulls towards one of
them rather than towards "right": the measurement behind docs/preference.md's "Truth against the
model's own mistakes".

    python bench/answer_codes.py --samples greedy/samples.jsonl --limit 400 --json docs/bench/pref/answer_codes.json

Last line: ``round_trip=<..> shared_right=<..> shared_wrong=<..>``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="an `omniloom sample` JSONL with --reward scores")
    p.add_argument("--model", default="world", help="the model whose image codec encodes (default: world)")
    p.add_argument("--reward", default="world", help="the reward that judges the round trip (default: world)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many image lines")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)

    from omniloom.eval.world_reward import world_reward
    from omniloom.infer.generate import OmniModel
    from omniloom.infer.rewards import load_reward, register_reward
    from omniloom.infer.sample_file import absolute_paths, read_samples
    from omniloom.utils.media import image_to_png_bytes, load_image

    register_reward("world", lambda: world_reward)
    reward = load_reward(args.reward)
    samples = Path(args.samples)
    base = samples.parent.resolve()
    lines = [ln for ln in read_samples(samples) if ln.get("output") == "image" and ln.get("reference")]
    if not lines:
        raise SystemExit(f"{samples}: no image line with a reference answer")
    if any("score" not in ln for ln in lines):
        raise SystemExit(f"{samples}: lines without a score; sample again with --reward")
    lines = lines[:args.limit] if args.limit else lines
    omni = OmniModel.load(args.model)
    codec = omni.codecs["image"]
    lo = omni.vocab.range_of("image")[0]
    trips, shared = [], {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, ln in enumerate(lines):
            ref = absolute_paths([ln["reference"]], base)[0]
            part = next(c for c in ref["content"] if c.get("type") == "image")
            codes = codec.encode(load_image(part["path"], getattr(codec, "resolution", None))[None])[0]  # as tokenize does
            f = Path(tmp) / f"{i}.png"
            f.write_bytes(image_to_png_bytes(codec.decode(codes[None])[0]))
            rec = {**ln, "messages": absolute_paths(ln["messages"], base),
                   "candidate": {"role": "assistant", "content": [{"type": "image", "path": str(f)}]}}
            trips.append(float(reward(rec)) >= 1.0)
            got = torch.tensor(ln["answer_ids"][:codes.numel()]) - lo
            if got.numel() == codes.numel():
                shared[float(ln["score"]) >= 1.0].append((got == codes).float().mean().item())
    out = {"samples": str(samples), "model": args.model, "lines": len(lines), "round_trip_right": float(np.mean(trips)),
           "shared_codes_right": float(np.mean(shared[True])) if shared[True] else None, "n_right": len(shared[True]),
           "shared_codes_wrong": float(np.mean(shared[False])) if shared[False] else None, "n_wrong": len(shared[False])}
    print(f"{'what':<40} {'value':>7} {'n':>5}")
    print(f"{'reference round trip judged right':<40} {out['round_trip_right']:>7.3f} {len(trips):>5}")
    for k, name in ((True, "right"), (False, "wrong")):
        v = out[f"shared_codes_{name}"]
        print(f"{'shared codes, candidates judged ' + name:<40} {v if v is None else f'{v:7.3f}':>7} {len(shared[k]):>5}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"round_trip={out['round_trip_right']:.3f} shared_right={out['shared_codes_right']} "
          f"shared_wrong={out['shared_codes_wrong']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
