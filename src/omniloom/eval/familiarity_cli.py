"""Record what a model's training media look like to its codecs, so unlike input gets flagged.

  omniloom familiarity --model DIR --images 'train/media/**/*.png' --audio 'train/media/**/*.wav'

Scores each file by the codec's reconstruction error and writes DIR/familiarity.json with the
error's --quantile (default 0.995) as the threshold: about 0.5% of training-like input is flagged,
and input the codec was never trained on (real photos and speech for the world codecs) almost all.
Serving and chat then add a warning to answers about flagged media (docs/serve.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import random
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME|DIR", help="model directory to calibrate (written into)")
    p.add_argument("--images", action="append", default=[], metavar="GLOB",
                   help="training images (a glob; ** recurses; repeatable)")
    p.add_argument("--audio", action="append", default=[], metavar="GLOB",
                   help="training audio files (a glob; repeatable)")
    p.add_argument("--quantile", type=float, default=0.995,
                   help="the training error quantile that becomes the threshold (default: %(default)s)")
    p.add_argument("--limit", type=int, default=600,
                   help="score at most this many files per modality, drawn at random (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of that draw (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="print the result, write nothing")


def _files(globs: list[str], what: str, limit: int, seed: int) -> list[str]:
    files = sorted({f for g in globs for f in glob.glob(g, recursive=True) if Path(f).is_file()})
    if globs and not files:
        raise ValueError(f"no {what} files match {', '.join(globs)}")
    random.Random(seed).shuffle(files)
    return files[:limit]


def run(args: argparse.Namespace) -> int:
    from ..infer.generate import OmniModel, resolve_model_dir
    from ..utils.fileio import atomic_write_text
    from ..utils.media import load_audio, load_image
    from ..processor.familiarity import FAMILIARITY_FILE, calibrate

    if not args.images and not args.audio:
        raise ValueError("give --images and/or --audio: the model's training media")
    directory = resolve_model_dir(args.model)
    omni = OmniModel.load(directory)
    images = _files(args.images, "image", args.limit, args.seed)
    audio = _files(args.audio, "audio", args.limit, args.seed)
    codecs = omni.codecs
    res = getattr(codecs.get("image"), "resolution", None)
    rate = getattr(codecs.get("audio"), "sample_rate", None)
    result = calibrate(codecs, (load_image(f, res) for f in images) if images else (),
                       (load_audio(f, rate) for f in audio) if audio else (), args.quantile,
                       source=f"{len(images)} images from {', '.join(args.images) or '-'}; {len(audio)} audio "
                              f"files from {', '.join(args.audio) or '-'}")
    text = json.dumps(result, indent=1)
    print(text)
    if not args.dry_run:
        atomic_write_text(directory / FAMILIARITY_FILE, text + "\n")
        print(f"wrote {directory / FAMILIARITY_FILE}")
    return 0
