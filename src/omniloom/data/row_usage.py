"""Which ids new data uses that old data never did: the embedding rows a frozen model cannot learn.

A model trained on English alone has never seen most of the ids another language's text needs
(accented letters, other byte pairs). Their embedding rows got no input gradient, and as outputs
they were only ever pushed down, so they end up nearly alike (the shipped world model's 57 such
rows have a mean pairwise cosine of 0.99): a model whose rows are frozen cannot tell them apart.
Train those rows beside the adapters (``train.train_rows_also``); the source's own data never
reads them, so what it computes for that data moves only in the logits of ids it never wrote.

    python -m omniloom.data.row_usage shards/es/train --not-in shards/en/train --below 496 --out rows.json
    omniloom train ... train.freeze_base=true train.train_rows_from=17216 train.train_rows_also=rows.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..utils.fileio import read_json
from .shards import ShardSet

__all__ = ["id_counts", "ids_only_in"]


def id_counts(shards: ShardSet, size: int) -> np.ndarray:
    """How often each id in ``[0, size)`` occurs in every document of ``shards``."""
    counts = np.zeros(size, dtype=np.int64)
    for d in range(shards.num_docs):
        ids = np.asarray(shards.doc(d)[0], dtype=np.int64)
        counts += np.bincount(ids[ids < size], minlength=size)
    return counts


def ids_only_in(new: ShardSet, old: ShardSet, below: int | None = None) -> list[int]:
    """The ids below ``below`` (default: the whole vocabulary) that ``new`` uses and ``old`` never does."""
    size = int(new.manifest["vocab_size"])
    if read_json(new.vocab_path(), "vocabulary") != read_json(old.vocab_path(), "vocabulary"):
        raise ValueError(f"{new.path} and {old.path} have different vocabularies (vocab.json); compare shards "
                         "tokenized with the same --model")
    limit = size if below is None else min(int(below), size)
    a, b = id_counts(new, limit), id_counts(old, limit)
    return [int(i) for i in np.nonzero((a > 0) & (b == 0))[0]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m omniloom.data.row_usage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("new", help="shard folder of the new data (e.g. shards/es/train)")
    p.add_argument("--not-in", required=True, dest="old", help="shard folder of the data the source model knew")
    p.add_argument("--below", type=int, default=None, metavar="ID",
                   help="only ids below this one (e.g. the vocabulary's text_size: text ids only)")
    p.add_argument("--out", default=None, metavar="FILE.json", help="write the list here (default: print it)")
    args = p.parse_args(argv)
    try:
        new, old = ShardSet.open(args.new), ShardSet.open(args.old)
        ids = ids_only_in(new, old, args.below)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(ids)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"{len(ids)} ids used by {args.new} and never by {args.old} -> {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
