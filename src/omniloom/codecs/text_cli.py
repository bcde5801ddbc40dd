"""Train or inspect the byte-level BPE text tokenizer.

  omniloom tokenizer train --corpus a.txt chats.jsonl --vocab-size 4000 --out runs/tok
  omniloom tokenizer info runs/tok/tokenizer.json

A corpus file is plain text (one sample per line) or message JSONL (``.jsonl``/``.json`` lines):
the text of every message (string contents, ``text`` parts, audio transcripts) and any top-level
``text`` field is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

DEFAULT_SAMPLE = "Hello world! a big red circle at the top left. 日本語 ✓"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="<action>")
    t = sub.add_parser("train", help="train a byte-level BPE on text / message JSONL files")
    t.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="text or message JSONL files")
    t.add_argument("--vocab-size", type=int, required=True, help="number of text ids (>= 256)")
    t.add_argument("--min-frequency", type=int, default=2, help="minimum pair count to merge (default 2)")
    t.add_argument("--out", required=True, help="output directory (tokenizer.json is written there)")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    i = sub.add_parser("info", help="show the vocabulary size and a sample encoding")
    i.add_argument("path", help="tokenizer.json or a directory holding one")
    i.add_argument("--text", default=DEFAULT_SAMPLE, help="sample text to encode")


def message_texts(obj: Any) -> Iterator[str]:
    """Text found in one JSONL record (OpenAI messages, a list of messages, or {"text": ...})."""
    if isinstance(obj, dict):
        if isinstance(obj.get("text"), str):
            yield obj["text"]
        msgs = obj.get("messages")
        if isinstance(msgs, list):
            yield from message_texts(msgs)
        content = obj.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    if isinstance(part.get("text"), str) and part.get("type", "text") == "text":
                        yield part["text"]
                    if isinstance(part.get("transcript"), str):
                        yield part["transcript"]
    elif isinstance(obj, list):
        for m in obj:
            yield from message_texts(m)


def iter_corpus(files: list[str]) -> Iterator[str]:
    """Yield training texts from the corpus files; ValueError names a missing or bad file."""
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"corpus file {path} does not exist")
        is_jsonl = path.suffix in (".jsonl", ".json")
        with path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if not is_jsonl:
                    yield line
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
                yield from (t for t in message_texts(obj) if t)


def _train(args: argparse.Namespace) -> int:
    from .text import MIN_VOCAB_SIZE, TextTokenizer

    if args.vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"--vocab-size {args.vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE}")
    for name in args.corpus:  # fail fast, before any work
        if not Path(name).is_file():
            raise ValueError(f"corpus file {name} does not exist")
    texts = list(iter_corpus(args.corpus))
    if not texts:
        raise ValueError(f"the corpus ({', '.join(args.corpus)}) holds no text")
    n_chars = sum(len(t) for t in texts)
    print(f"training a byte-level BPE of {args.vocab_size} ids on {len(texts)} texts ({n_chars} characters)",
          file=sys.stderr)
    tok = TextTokenizer.train(texts, args.vocab_size, min_frequency=args.min_frequency,
                              show_progress=not args.no_progress, length=len(texts))
    path = tok.save(args.out)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts[:2000]))
    n_sample_chars = sum(len(t) for t in texts[:2000])
    print(f"wrote {path} (vocab size {tok.vocab_size}; {n_sample_chars / max(n_tokens, 1):.2f} characters per token "
          f"on the first {min(len(texts), 2000)} texts)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .text import TextTokenizer

    tok = TextTokenizer.load(args.path)
    ids = tok.encode(args.text)
    pieces = [tok.id_to_token(i) for i in ids]
    print(f"vocab size: {tok.vocab_size}")
    print(f"sample: {args.text!r}")
    print(f"ids ({len(ids)}): {ids}")
    print(f"pieces: {pieces}")
    back = tok.decode(ids)
    print(f"round trip: {'exact' if back == args.text else repr(back)}")
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "train":
        return _train(args)
    if getattr(args, "action", None) == "info":
        return _info(args)
    raise ValueError("choose an action: `omniloom tokenizer train ...` or `omniloom tokenizer info PATH`")
