"""Image codec benchmark: reconstruction quality, code usage, speed and the world's scene judge.

On fresh shapes-world renders (scenes as in the world's tasks, 30% with held-out color/shape
pairs) the codec encodes and decodes each image; the table reports PSNR, SSIM, the share of the
codebook used and the code perplexity, bits per image, encode/decode images per second, and the
scene parser's exact-scene accuracy on the reconstructions (beside its accuracy on the originals).

    python bench/image_codec.py                         # shipped image-world, 1000 images
    python bench/image_codec.py --codec runs/codec-image-world --n 500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from omniloom.codecs import load_codec
from omniloom.train.codec_image import evaluate, format_table

TARGETS = {"psnr_db": 32.0, "scene_exact_reconstructed": 0.98, "codes_used": 0.90}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="image-world")
    p.add_argument("--data", default="world")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="bench_image_codec.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    codec = load_codec(a.codec)
    res = {"codec": a.codec, "data": a.data, **evaluate(codec, a.data, n=a.n, batch=a.batch, seed=a.seed),
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    res["params"] = sum(p.numel() for p in codec.parameters())
    print(format_table(res))
    ok = all(res.get(k, 0) >= v for k, v in TARGETS.items()) if a.data == "world" else True
    if a.data == "world":
        print("targets " + ", ".join(f"{k}>={v}" for k, v in TARGETS.items()) + (": met" if ok else ": NOT met"))
    path = Path(a.json)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
