"""Train or evaluate the codecs.

  omniloom codec train image --data world --out runs/codec-image [--steps N] [--batch B]
  omniloom codec eval image [SPEC] [--data world|DIR] [--n N] [--json OUT]   (SPEC: image-world, DIR, hf:DIR)
  omniloom codec train audio ... / omniloom codec eval audio ...
  omniloom codec train mesh --out runs/codec-mesh / omniloom codec eval mesh [mesh-world]

Each modality's module (``omniloom.train.codec_image``, ``omniloom.train.codec_audio``,
``omniloom.train.codec_mesh``) exposes
``add_train_arguments``, ``run_train``, ``add_eval_arguments`` and ``run_eval``.
"""

from __future__ import annotations

import argparse
import importlib

MODALITIES: dict[str, str] = {
    "image": "omniloom.train.codec_image",
    "audio": "omniloom.train.codec_audio",
    "mesh": "omniloom.train.codec_mesh",
}


def _module(modality: str):
    name = MODALITIES[modality]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise ValueError(f"the {modality} codec trainer ({name}) is not available in this install") from e
        raise



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train", "eval"], help="train a codec or evaluate one")
    p.add_argument("modality", choices=sorted(MODALITIES), help="which codec")
    p.add_argument("rest", nargs=argparse.REMAINDER,
                   help="options of that action (see `omniloom codec train image --help`)")


def build_sub_parser(action: str, modality: str) -> argparse.ArgumentParser:
    mod = _module(modality)
    p = argparse.ArgumentParser(prog=f"omniloom codec {action} {modality}",
                                description=(mod.__doc__ or "").strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    (mod.add_train_arguments if action == "train" else mod.add_eval_arguments)(p)
    return p


def run(args: argparse.Namespace) -> int:
    mod = _module(args.modality)
    sub = build_sub_parser(args.action, args.modality)
    sub_args = sub.parse_args(args.rest)
    return int((mod.run_train if args.action == "train" else mod.run_eval)(sub_args) or 0)
