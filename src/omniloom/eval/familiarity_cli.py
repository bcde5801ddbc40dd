"""Record what a model's training media look like to its codecs, so unlike input gets flagged.

  omniloom familiarity --model DIR --data train.jsonl
  omniloom familiarity --model DIR --images 'train/media/**/*.png' --audio 'train/media/**/*.wav'

Scores each file by every check (images: the codec's reconstruction error; audio: that and the level
of the clip's pauses) and writes DIR/familiarity.json with each score's --quantile (default 0.995)
as the threshold: about 0.5% of training-like input is flagged, and input unlike it (real photos and
speech for the world model) almost all. Serving and chat then add a warning to answers about flagged
media (docs/serve.md). --data takes the images and audio of a conversation JSONL's user turns: what
the model reads (its spoken answers are trimmed to the word, so they have no pauses to measure).
"""

from __future__ import annotations

import argparse
import glob
import json
import random
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME|DIR", help="model directory to calibrate (written into)")
    p.add_argument("--data", action="append", default=[], metavar="JSONL",
                   help="training conversations: their user turns' images and audio (repeatable)")
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


def _files(globs: list[str], what: str, limit: int, seed: int, listed: list[str] = ()) -> list[str]:
    files = {f for g in globs for f in glob.glob(g, recursive=True) if Path(f).is_file()}
    if globs and not files:
        raise ValueError(f"no {what} files match {', '.join(globs)}")
    missing = [f for f in listed if not Path(f).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} {what} files named in --data do not exist (first: {missing[0]})")
    files = sorted(files | set(listed))
    random.Random(seed).shuffle(files)
    return files[:limit]


def user_media(jsonls: list[str]) -> tuple[list[str], list[str]]:
    """The image and audio files of the user turns of conversation JSONL files (paths relative to each file)."""
    images, audio = [], []
    for name in jsonls:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"--data {name}: no such file")
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    messages = json.loads(line)["messages"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ValueError(f"{name}:{n}: not a conversation record (a JSON object with 'messages')") from None
                for m in messages:
                    if m.get("role") != "user" or not isinstance(m.get("content"), list):
                        continue
                    for part in m["content"]:
                        if isinstance(part, dict) and part.get("type") in ("image", "audio") and part.get("path"):
                            (images if part["type"] == "image" else audio).append(str(path.parent / part["path"]))
    return images, audio


def run(args: argparse.Namespace) -> int:
    from ..codecs import load_codec, model_codec_refs
    from ..infer.generate import resolve_model_dir
    from ..utils.fileio import atomic_write_text
    from ..utils.media import load_audio, load_image
    from ..processor.familiarity import FAMILIARITY_FILE, calibrate

    if not args.images and not args.audio and not args.data:
        raise ValueError("give --data and/or --images/--audio: the model's training input media")
    directory = resolve_model_dir(args.model)
    data_images, data_audio = user_media(args.data)
    images = _files(args.images, "image", args.limit, args.seed, data_images)
    audio = _files(args.audio, "audio", args.limit, args.seed, data_audio)
    codecs = {kind: load_codec(ref) for kind, ref in model_codec_refs(directory).items()}  # not the old file's checks
    res = getattr(codecs.get("image"), "resolution", None)
    rate = getattr(codecs.get("audio"), "sample_rate", None)
    result = calibrate(codecs, (load_image(f, res) for f in images) if images else (),
                       (load_audio(f, rate) for f in audio) if audio else (), args.quantile,
                       source=f"{len(images)} images from {', '.join(args.images + args.data) or '-'}; {len(audio)} audio "
                              f"files from {', '.join(args.audio + args.data) or '-'}"
                              + (" (user turns)" if args.data else ""))
    text = json.dumps(result, indent=1)
    print(text)
    if not args.dry_run:
        atomic_write_text(directory / FAMILIARITY_FILE, text + "\n")
        print(f"wrote {directory / FAMILIARITY_FILE}")
    return 0
