"""How well the out-of-domain flag separates a model's world from real media.

    python bench/familiarity.py --model world --json docs/bench/familiarity_world.json

Scores each item with the model's codecs (reconstruction error, src/omniloom/processor/familiarity.py)
against the thresholds in the model directory's familiarity.json, and reports the fraction flagged:

- held-out world media: the world's test split (``omniloom world generate --split test --seed 1234``,
  a different split and seed than the calibration's train split), which should be flagged rarely;
- real photos: scikit-image's bundled photos (``skimage/data``), each cut into ``--crops`` random
  square crops (different views of real scenes), which should be flagged;
- real speech: Debian's asterisk-core-sounds-en-wav prompts (``/usr/share/asterisk/sounds/en``)
  and pocketsphinx-testdata's LibriVox and other recordings (``/usr/share/pocketsphinx/test/data``).

Targets (issue 21.4): >= 95% of real photos and real speech flagged, <= 2% of held-out world items.
A source that is not installed is skipped and says so.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ASTERISK = "/usr/share/asterisk/sounds/en"
POCKETSPHINX = "/usr/share/pocketsphinx/test/data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="model name or directory with familiarity.json")
    p.add_argument("--world-n", type=int, default=600, help="held-out world samples to generate (default 600)")
    p.add_argument("--max-items", type=int, default=300, help="items per source at most (default 300)")
    p.add_argument("--crops", type=int, default=8, help="random crops per real photo (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="bench_familiarity.json")
    a = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from PIL import Image

    from omniloom.infer.generate import OmniModel, resolve_model_dir
    from omniloom.processor.familiarity import audio_error, image_error, read_familiarity
    from omniloom.utils.media import load_audio, load_image

    directory = resolve_model_dir(a.model)
    fam = read_familiarity(directory)
    if fam is None:
        print(f"{directory} has no familiarity.json (make one with `omniloom familiarity`)", file=sys.stderr)
        return 2
    omni = OmniModel.load(directory)
    ic, ac = omni.codecs.get("image"), omni.codecs.get("audio")
    rng = random.Random(a.seed)
    rows, t0 = [], time.time()

    def score_images(name: str, xs: list) -> None:
        xs = xs[: a.max_items]
        errs = torch.cat([image_error(ic, torch.stack(xs[i:i + 64])) for i in range(0, len(xs), 64)])
        thr = fam["image"]["threshold"]
        rows.append({"source": name, "modality": "image", "n": len(xs), "flagged": float((errs > thr).float().mean()),
                     "median_error": float(errs.median()), "threshold": thr})

    def score_audio(name: str, files: list[str]) -> None:
        files = files[: a.max_items]
        errs = torch.tensor([audio_error(ac, load_audio(f, ac.sample_rate)[: ac.sample_rate * 30]) for f in files])
        thr = fam["audio"]["threshold"]
        rows.append({"source": name, "modality": "audio", "n": len(files), "flagged": float((errs > thr).float().mean()),
                     "median_error": float(errs.median()), "threshold": thr})

    with tempfile.TemporaryDirectory() as tmp:
        from omniloom.cli import main as omniloom_main

        if omniloom_main(["world", "generate", "--out", tmp, "--split", "test", "--n", str(a.world_n), "--seed", "1234",
                          "--quiet"]):
            return 2
        pngs = sorted(glob.glob(f"{tmp}/media/**/*.png", recursive=True))
        wavs = sorted(glob.glob(f"{tmp}/media/**/*.wav", recursive=True))
        rng.shuffle(pngs)
        rng.shuffle(wavs)
        if ic is not None and "image" in fam:
            score_images("world test split (held out)", [load_image(f, ic.resolution) for f in pngs[: a.max_items]])
        if ac is not None and "audio" in fam:
            score_audio("world test split (held out)", wavs)

    if ic is not None and "image" in fam:
        try:
            import skimage

            photos = sorted(f for f in glob.glob(os.path.join(os.path.dirname(skimage.__file__), "data", "*"))
                            if f.endswith((".png", ".jpg")))
        except ImportError:
            photos = []
            print("scikit-image is not installed: no real photos (pip install scikit-image)", file=sys.stderr)
        crops = []
        for f in photos:
            im = Image.open(f).convert("RGB")
            w, h = im.size
            if min(w, h) < 32:
                continue
            for _ in range(a.crops):
                s = rng.randint(min(w, h) // 3, min(w, h))
                x0, y0 = rng.randint(0, w - s), rng.randint(0, h - s)
                crops.append(load_image(im.crop((x0, y0, x0 + s, y0 + s)), ic.resolution))
        if crops:
            rng.shuffle(crops)
            score_images(f"real photos: {len(photos)} scikit-image photos x {a.crops} crops", crops)
    if ac is not None and "audio" in fam:
        for name, root in (("real speech: asterisk-core-sounds-en-wav", ASTERISK),
                           ("real speech: pocketsphinx-testdata", POCKETSPHINX)):
            files = sorted(glob.glob(f"{root}/**/*.wav", recursive=True))
            if not files:
                print(f"{root} not found: skipped (apt install {name.split(': ')[1]})", file=sys.stderr)
                continue
            rng.shuffle(files)
            score_audio(name, files)

    print(f"\n{'source':58s} {'kind':6s} {'n':>5s} {'flagged':>8s} {'median err':>11s} {'threshold':>10s}")
    for r in rows:
        print(f"{r['source']:58s} {r['modality']:6s} {r['n']:5d} {100 * r['flagged']:7.1f}% {r['median_error']:11.4f} "
              f"{r['threshold']:10.4f}")
    out = {"model": str(directory), "command": " ".join(sys.argv), "seconds": round(time.time() - t0, 1),
           "rows": rows}
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(out, indent=1) + "\n")
    tmp_path.replace(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
