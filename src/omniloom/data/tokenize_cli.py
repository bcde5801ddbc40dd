"""Turn OpenAI-message JSONL (+ media through the codecs) into token shards.

    omniloom tokenize --input chats.jsonl --tokenizer tok/tokenizer.json --out data/chats \\
        --mode sft --val-fraction 0.05
    omniloom tokenize --input mine.jsonl --model world --out data/mine --val-fraction 0.02

--model NAME|DIR takes the tokenizer, vocabulary and codecs of a model (the bundled `world`, a
grafted model, a training run), so the shards fit it for `train.init_from=...`: fine-tuning needs
no source checkout.

Writes DIR/train (and DIR/val) holding safetensors shards, manifest.json (sha256 per shard),
vocab.json and a copy of tokenizer.json. Train with ``data.train=DIR/train data.val=DIR/val``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", required=True, metavar="FILE.jsonl",
                   help="message JSONL file (repeat for several)")
    p.add_argument("--model", default=None, metavar="NAME|DIR",
                   help="take --tokenizer, --vocab and --codec from this model (bundled name, model directory "
                        "or run), for shards that fine-tune it")
    p.add_argument("--tokenizer", default=None, metavar="PATH", help="tokenizer.json of the text BPE")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--mode", default="sft", choices=["sft", "pretrain"],
                   help="sft: loss on assistant turns only; pretrain: loss on everything")
    p.add_argument("--shard-tokens", type=int, default=1 << 24, help="tokens per shard (default 16M)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of documents held out")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--codec", action="append", default=[], metavar="NAME",
                   help="codec for media parts, e.g. image-world, audio-world (repeat)")
    p.add_argument("--vocab", default=None, metavar="vocab.json",
                   help="reuse this vocabulary instead of building one from tokenizer + codecs")
    p.add_argument("--voices", default=None, metavar="A,B",
                   help="assistant voice names for a new vocab (default: the named voices found in the data)")
    p.add_argument("--cfg-drop", type=float, default=0.1, metavar="P",
                   help="share of training documents with an image answer whose condition is replaced by "
                        "<|null|>, for classifier-free guidance at generation (--cfg-scale); default 0.1, 0 off")
    p.add_argument("--workers", type=int, default=None,
                   help="processes encoding lines (default: all cores; the shards are the same for any count)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .tokenize import tokenize_files

    if args.model:
        from ..utils.model_dir import resolve_model_dir

        d = resolve_model_dir(args.model)
        for name in ("tokenizer.json", "vocab.json"):
            if not (d / name).is_file():
                raise ValueError(f"--model {args.model}: {d / name} is missing (a delta directory keeps no "
                                 "tokenizer: export the run with --format omniloom first)")
        if args.tokenizer or args.vocab:
            raise ValueError("--model gives the tokenizer and the vocabulary; drop --tokenizer / --vocab")
        args.tokenizer, args.vocab = str(d / "tokenizer.json"), str(d / "vocab.json")
        if not args.codec:
            from ..codecs import model_codec_refs

            args.codec = [str(ref) for ref in model_codec_refs(d).values()]
    if not args.tokenizer:
        raise ValueError("give --tokenizer tokenizer.json, or --model to take a model's tokenizer, vocab and codecs")
    codecs, names = {}, {}
    if args.codec:
        from ..codecs import load_codec

        for name in args.codec:
            c = load_codec(name)
            codecs[c.modality] = c
            names[c.modality] = name if not Path(name).exists() else str(Path(name).resolve())
    vocab = None
    if args.vocab:
        from ..tokens.vocab import Vocab

        vocab = Vocab.load(args.vocab)
    summary = tokenize_files(args.input, args.tokenizer, args.out, mode=args.mode, shard_tokens=args.shard_tokens,
                             val_fraction=args.val_fraction, seed=args.seed, codecs=codecs, vocab=vocab,
                             progress=not args.no_progress, codec_names=names,
                             voices=[v for v in args.voices.split(",") if v] if args.voices else None,
                             cfg_drop=args.cfg_drop, workers=args.workers or os.cpu_count() or 1)
    print(json.dumps(summary, indent=1))
    return 0
