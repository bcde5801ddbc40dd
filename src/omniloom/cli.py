"""`omniloom <verb>`: a thin table of subcommands.

Each verb lives in a module that exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Those modules keep heavy imports (torch, codecs, servers) inside ``run`` so that ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "tokenizer": ("omniloom.codecs.text_cli", "train or inspect the byte-level BPE text tokenizer"),
    "tokenize": ("omniloom.data.tokenize_cli", "turn documents (message JSONL, LLaVA, LibriSpeech, WebDataset, HF "
                 "datasets, interleaved web pages, preference pairs) into token shards"),
    "train": ("omniloom.train.cli", "train a model on token shards (1 process or torchrun)"),
    "plan": ("omniloom.train.plan", "estimate memory per GPU and tokens/s of a training run before renting GPUs"),
    "sweep": ("omniloom.train.sweep", "train a ladder of model sizes (or read finished runs) and fit scaling laws "
              "L(N), L(D) per modality"),
    "graft": ("omniloom.graft.cli", "graft a pretrained text LLM (HF folder, .gguf) into an omni model directory"),
    "export": ("omniloom.model.export_cli", "export a checkpoint (Hugging Face Llama, model directory, adapter delta, llama.cpp GGUF) or import one back"),
    "merge": ("omniloom.model.merge_cli", "average the weights of models of one architecture and vocabulary (undo "
              "forgetting after a fine-tune, model soups)"),
    "eval": ("omniloom.eval.cli", "benchmark a model (local or over HTTP) on the shapes world with independent judges"),
    "sample": ("omniloom.eval.sample_cli", "sample K answers per prompt, score them with a reward, write preference "
               "pairs and best answers"),
    "verifier": ("omniloom.train.verifier_cli", "train a learned verifier (a scalar head on the model) from judged "
                 "samples, or measure one"),
    "familiarity": ("omniloom.eval.familiarity_cli", "record how a model's training media look to its codecs, so that "
                    "unlike input (real photos for a shapes model) is flagged"),
    "chat": ("omniloom.infer.chat_cli", "talk to a model: text, images, speech and video in; text, speech, images out"),
    "codec": ("omniloom.train.codec_cli", "train the world codecs, or evaluate any codec spec (shipped, folder, hf:PATH)"),
    "world": ("omniloom.world.cli", "generate the shapes world data set and run its judges"),
    "serve": ("omniloom.serve.cli", "serve a model over the OpenAI API, the Realtime voice API and a web page"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniloom",
        description="Train, evaluate and serve omni models: one transformer over text, image, audio and video tokens.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"omniloom {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for verb, (module, help_) in VERBS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as e:  # one broken verb (e.g. a missing extra) must not break the others
            p = sub.add_parser(verb, help=f"{help_} [unavailable: {e}]")
            p.set_defaults(_module=None, _error=f"this verb is unavailable: {e}")
            continue
        p = sub.add_parser(verb, help=help_, description=(mod.__doc__ or help_).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among a verb's options (argparse stops a positional
    # list at the first option); collect the stragglers, refuse anything else
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.verb:
        parser.print_help()
        return 2
    if args._module is None:
        print(f"omniloom {args.verb}: error: {args._error}", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except ValueError as e:  # bad user input: a clear message, no traceback
        print(f"omniloom {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"omniloom {args.verb}: error: {e.strerror}", file=sys.stderr)  # the disk filled up: say where
        return 1
    except KeyboardInterrupt:
        print(f"omniloom {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
