"""Turn documents (+ media through the codecs) into token shards.

    omniloom tokenize --input chats.jsonl --tokenizer tok/tokenizer.json --out data/chats \\
        --mode sft --val-fraction 0.05
    omniloom tokenize --input mine.jsonl --model world --out data/mine --val-fraction 0.02
    omniloom tokenize --input llava_instruct.json --image-root coco/train2017 --model world --out data/llava
    omniloom tokenize --input LibriSpeech/train-clean-100 --audio-task both --model world --out data/ls

--format names the reader (messages, llava, librispeech, webdataset, hf, interleaved, preference;
by default it is detected from each --input): see docs/data-formats.md for the fields each one
reads, and docs/preference.md for preference pairs.

--model NAME|DIR takes the tokenizer, vocabulary and codecs of a model (the bundled `world`, a
grafted model, a training run), so the shards fit it for `train.init_from=...`: fine-tuning needs
no source checkout.

Writes DIR/train (and DIR/val) holding safetensors shards, manifest.json (sha256 per shard),
vocab.json and a copy of tokenizer.json. Train with ``data.train=DIR/train data.val=DIR/val``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="an input file, folder or quoted glob ('shards/*.tar'); repeat for several, all of one format")
    p.add_argument("--format", default=None, metavar="NAME",
                   help="the inputs' format: messages (OpenAI-message JSONL), llava, librispeech, webdataset, hf, "
                        "interleaved, preference (prompt/chosen/rejected JSONL, TRL's format: a pair of documents "
                        "for train.objective=dpo) (default: detected from each input; docs/data-formats.md)")
    p.add_argument("--image-root", default=None, metavar="DIR",
                   help="llava, interleaved, hf: the folder relative image paths (and URLs, by file name) are "
                        "taken under (default: the input's folder)")
    p.add_argument("--audio-task", default=None, choices=["asr", "tts", "both"],
                   help="librispeech, webdataset, hf: a speech + transcript pair becomes asr (speech in, transcript "
                        "out; the default), tts (text in, spoken answer out) or both (one document of each)")
    p.add_argument("--image-task", default=None, choices=["caption", "draw", "both"],
                   help="webdataset, hf: an image + caption pair becomes caption (image in, caption out; the "
                        "default), draw (caption in, image out) or both")
    p.add_argument("--prompt", action="append", default=[], metavar="TASK=TEXT",
                   help="the user instruction of a paired task (repeat): caption (default 'describe the image'), "
                        "transcribe ('transcribe the audio'), speak ('say {text}'), draw ('draw {text}'); {text} "
                        "stands for the caption or transcript")
    p.add_argument("--tts-voice", default=None, metavar="NAME",
                   help="the voice name of tts answers (default: none, an unnamed speaker); a new vocabulary "
                        "gets a slot for it")
    p.add_argument("--column", action="append", default=[], metavar="ROLE=NAME",
                   help="hf: read column NAME as ROLE (image, audio, text or messages; repeat); without it the "
                        "roles are found from datasets' Image/Audio features and the usual text column names")
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
    p.add_argument("--codec", action="append", default=[], metavar="SPEC",
                   help="codec for media parts (repeat): a shipped name (image-world, audio-world), an omniloom "
                        "codec folder, or hf:PATH[?codebooks=N] for a transformers codec (docs/codecs.md)")
    p.add_argument("--vocab", default=None, metavar="vocab.json",
                   help="reuse this vocabulary instead of building one from tokenizer + codecs")
    p.add_argument("--voices", default=None, metavar="A,B",
                   help="assistant voice names for a new vocab (default: the named voices found in the data)")
    p.add_argument("--cfg-drop", type=float, default=0.1, metavar="P",
                   help="share of training documents with an image answer whose condition is replaced by "
                        "<|null|>, for classifier-free guidance at generation (--cfg-scale); default 0.1, 0 off")
    p.add_argument("--fim-rate", type=float, default=0.0, metavar="P",
                   help="share of training documents whose longest text target is cut into prefix/middle/suffix and "
                        "reordered with the FIM sentinels (fill-in-the-middle, docs/token-format.md); default 0 = off")
    p.add_argument("--fim-spm-rate", type=float, default=0.5, metavar="Q",
                   help="share of the FIM documents laid out suffix-prefix-middle (SPM) instead of PSM; default 0.5")
    p.add_argument("--task-tag", default="none", choices=["none", "text-only", "all"],
                   help="put the task tag <|task|> first in the first user turn of every text-only conversation "
                        "('text-only') or of every conversation ('all'): with gated adapters (train.lora_gate_mode="
                        "onward) a tagged conversation runs through the adapters, an untagged text-only one through "
                        "the base (docs/graft.md); the trained model records the rule, and eval asks it the same way")
    p.add_argument("--workers", type=int, default=None,
                   help="processes encoding lines (default: all cores; the shards are the same for any count)")
    p.add_argument("--unit-docs", type=int, default=2048, metavar="N",
                   help="documents per work unit (default 2048): each unit writes its own shards and a record, so "
                        "units run in parallel and a rerun after an interruption skips the finished ones")
    p.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                   help="run the units as Ray Data tasks: 'auto' joins the running Ray cluster (or starts a local "
                        "one), ADDRESS joins that cluster (every node must see --input and --out at the same paths); "
                        "needs pip install 'omniloom[ray]'. The shards are the same as a local run's")
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
    inputs, input_format, reader_options = _reading(args)
    codecs, names = {}, {}
    if args.codec:
        from ..codecs import load_codec
        from ..codecs.base import canonical_codec_spec

        for name in args.codec:
            c = load_codec(name)
            codecs[c.modality] = c
            names[c.modality] = canonical_codec_spec(name)
    from .fim import FimSettings

    fim = FimSettings(args.fim_rate, args.fim_spm_rate)
    vocab = None
    if args.vocab:
        from ..tokens.vocab import Vocab

        vocab = Vocab.load(args.vocab)
    summary = tokenize_files(inputs, args.tokenizer, args.out, mode=args.mode, shard_tokens=args.shard_tokens,
                             val_fraction=args.val_fraction, seed=args.seed, codecs=codecs, vocab=vocab,
                             progress=not args.no_progress, codec_names=names,
                             voices=[v for v in args.voices.split(",") if v] if args.voices else None,
                             cfg_drop=args.cfg_drop, workers=args.workers or os.cpu_count() or 1,
                             unit_docs=args.unit_docs, ray=args.ray, input_format=input_format,
                             reader_options=reader_options, fim=fim, task_tag=args.task_tag)
    print(json.dumps(summary, indent=1))
    return 0


def _reading(args: argparse.Namespace) -> tuple[list[str], str, dict[str, Any]]:
    """(inputs with globs expanded, their format, the reader options given) from the flags."""
    from .formats.common import is_glob
    from .readers import check_options, detect_format

    inputs: list[str] = []
    for path in args.input:
        matches = sorted(glob.glob(path)) if is_glob(path) else [path]
        if not matches:
            raise ValueError(f"--input {path} matches no file")
        inputs += matches
    fmt = args.format
    if fmt is None:
        found = {path: detect_format(path) for path in inputs}
        if len(set(found.values())) > 1:
            raise ValueError("the inputs are of different formats (" + ", ".join(f"{p}: {f}" for p, f in found.items())
                             + "); tokenize each format separately")
        fmt = next(iter(found.values()))
    options: dict[str, Any] = {"media_root": args.image_root, "audio_task": args.audio_task,
                               "image_task": args.image_task, "tts_voice": args.tts_voice,
                               "prompts": _key_values(args.prompt, "--prompt", "TASK=TEXT"),
                               "columns": _key_values(args.column, "--column", "ROLE=NAME")}
    options = {k: v for k, v in options.items() if v}  # only what was given: the readers' defaults stay theirs
    check_options(fmt, options)
    return inputs, fmt, options


def _key_values(items: list[str], flag: str, form: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} takes {form}, got {item!r}")
        if key.strip() in out:
            raise ValueError(f"{flag} {key.strip()} is given twice")
        out[key.strip()] = value
    return out
