"""The shapes world: generate its data set, measure its speech judge's floor, benchmark generation.

  omniloom world generate --out data/world --split train --n 10000 --seed 0 --workers 2
  omniloom world generate --out data/world --split compositional --n 500 --tasks caption,vqa
  omniloom world generate --out data/world --split train --n 1000 --mixture vqa=3,math=0
  omniloom world scene --out scene.png --seed 3          # one scene to show a model
  omniloom world judge-floor --n 40 --json floor.json
  omniloom world judge-floor --kind 3d --n 500 --json floor3d.json   # chance/oracle of the 3D tasks
  omniloom world bench --n 64 --json bench.json

Splits: train, val, test (no held-out color+shape pair anywhere) and compositional (every sample
carries a held-out pair). Tasks: caption, vqa, draw, edit, video, math, asr, tts, spoken_vqa,
spoken_math, spoken_draw; opt-in (only when --tasks names them): text_to_3d, describe_3d.
Output: DIR/<split>.jsonl of {"task", "messages", "truth"} with media
under DIR/media/<split>/ (paths in the jsonl are relative to DIR). Sample i depends only on
(seed, split, i), whatever --workers is. See docs/world.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="world_cmd", metavar="<command>")
    g = sub.add_parser("generate", help="write DIR/<split>.jsonl and its media",
                       description="Generate one split of the shapes world (deterministic per seed, split, index).")
    g.add_argument("--out", required=True, help="output folder (DIR/<split>.jsonl, DIR/media/...)")
    g.add_argument("--split", required=True, choices=["train", "val", "test", "compositional"])
    g.add_argument("--n", type=int, required=True, help="number of samples")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--tasks", default=None, help="comma-separated task list (default: all; compositional: scene tasks)")
    g.add_argument("--mixture", default=None, help="task=weight,... overriding the default weights (0 drops a task)")
    g.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)), help="processes (default: all cores)")
    g.add_argument("--restate", default=None,
                   help="tasks whose replies state something first, comma-separated, or 'none' (default: "
                        "spoken_math): spoken_math / spoken_vqa restate the question before the answer ('three "
                        "plus four is seven'); edit describes the edited scene in text before drawing it")
    g.add_argument("--lang", default="en", metavar="CODE",
                   help="language of texts and speech: en (default), es, fr, de, or a lexicon .json file "
                        "(docs/recipes/add-a-language.md); sample i is sample i of English, translated")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    sc = sub.add_parser("scene", help="draw one random scene to a PNG and print its caption",
                        description="Draw one random scene of the world (deterministic per --seed) to a PNG, "
                                    "e.g. an image to show the bundled model: omniloom world scene --out scene.png")
    sc.add_argument("--out", required=True, help="PNG file to write")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--objects", type=int, default=None, choices=[1, 2, 3], help="how many shapes (default: 1-3)")

    f = sub.add_parser("judge-floor", help="measure the speech judge's error on eSpeak renders in held-out voices "
                                           "(--kind 3d: chance and oracle rows of the 3D tasks)")
    f.add_argument("--kind", choices=["speech", "3d"], default="speech",
                   help="speech: the speech judge's floor; 3d: text_to_3d / describe_3d chance and oracle rows")
    f.add_argument("--codec", default="mesh-world", help="--kind 3d: the mesh codec of the oracle's round trip")
    f.add_argument("--n", type=int, default=40, help="utterances per voice per judge kind (--kind 3d: scenes)")
    f.add_argument("--seed", type=int, default=1234)
    f.add_argument("--json", default=None, help="write the figures here as JSON")

    b = sub.add_parser("bench", help="samples/s of the generator, image-only and speech tasks")
    b.add_argument("--n", type=int, default=64, help="samples per measured group")
    b.add_argument("--workers", type=int, default=1)
    b.add_argument("--json", default=None, help="write the table here as JSON")

    v = sub.add_parser("name-voice", help="copy a model with a free voice slot named (to fine-tune a new voice)",
                       description="Copy a model directory, naming one free voice slot (voice:2..voice:15 in the "
                                   "world model) so data spoken in that voice can be tokenized with --model OUT "
                                   "(docs/recipes/add-a-language.md).")
    v.add_argument("--model", default="world", help="bundled model name or model directory (default: world)")
    v.add_argument("--name", required=True, help="the new voice's name, as the data and the API call it")
    v.add_argument("--slot", type=int, default=None, help="the slot to name (default: the first free one)")
    v.add_argument("--out", required=True, help="the new model directory")


def run(args: argparse.Namespace) -> int:
    cmd = getattr(args, "world_cmd", None)
    if cmd == "generate":
        from .generate import generate

        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        kw = {}  # no --restate: the generator's default
        if args.restate is not None:
            kw["restate"] = [] if args.restate.strip() == "none" else [t.strip() for t in args.restate.split(",") if t.strip()]
        path = generate(args.out, args.split, args.n, seed=args.seed, tasks=tasks, mixture=args.mixture,
                        workers=args.workers, progress=not args.quiet, lang=args.lang, **kw)
        from ..utils.fileio import atomic_write_json
        from .lang import task_prompts
        from .tasks import TASK_PROMPTS

        # the task prompts, for `omniloom tokenize` to carry into the shards and the checkpoints
        prompts = TASK_PROMPTS if args.lang == "en" else task_prompts(args.lang)
        atomic_write_json(Path(args.out) / "generation.json", {"prompts": prompts})
        print(f"wrote {args.n} samples to {path}")
        return 0
    if cmd == "scene":
        import numpy as np
        from PIL import Image

        from .render import render_scene
        from .scene import caption, sample_scene

        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out {out} must end in .png")
        rng = np.random.default_rng(args.seed)
        scene = sample_scene(rng, args.objects)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_scene(scene, rng)).save(out)
        print(f"wrote {out}: {caption(scene)}")
        return 0
    if cmd == "judge-floor":
        if args.kind == "3d":
            from .floor import main_floor_3d

            return main_floor_3d(n=args.n, seed=args.seed, json_out=args.json, codec=args.codec)
        from .floor import main_floor

        return main_floor(n=args.n, seed=args.seed, json_out=args.json)
    if cmd == "bench":
        from .bench import main_bench

        return main_bench(n=args.n, workers=args.workers, json_out=args.json)
    if cmd == "name-voice":
        from .voice_slot import name_voice

        out, slot = name_voice(args.model, args.name, args.out, args.slot)
        print(f"wrote {out}: voice slot {slot} is now {args.name!r}")
        return 0
    raise ValueError("missing command: use `omniloom world generate|scene|judge-floor|bench|name-voice` (see --help)")
