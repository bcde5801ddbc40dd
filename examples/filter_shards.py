"""Copy a shard set without its spoken-question documents (spoken_vqa and spoken_math samples).

Phase 6 of the reference model changed what the assistant says to a spoken question: it restates
the question before the answer (`omniloom.world.scene.spoken_reply`). Phase 4's data still holds
the old bare answers, so this writes a copy of it without them, to be trained beside fresh samples
in the new form. A spoken-question document is recognised from its ids alone: its user turn holds
no text (only media spans) and its assistant turn opens with an audio span (spoken_draw opens with
an image; asr and tts have text in the user turn).

    python examples/filter_shards.py data/world4/shards/train data/world6/keep4
    python examples/filter_shards.py data/world4/shards/train data/world7/vqa4 --keep spoken_vqa
    python examples/filter_shards.py data/world4/shards/train data/world8/draw4 --keep drawing
    python examples/filter_shards.py data/world4/shards/train data/world10/noedit4 --keep not-edit
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from omniloom.data.shards import ShardSet, filter_shards
from omniloom.tokens import Vocab


def is_spoken_question(ids: np.ndarray, vocab: Vocab) -> bool:
    user = np.flatnonzero(ids == vocab.special("user"))
    asst = np.flatnonzero(ids == vocab.special("assistant"))
    if user.size == 0 or asst.size == 0 or asst[0] + 1 >= ids.size:
        return False
    text = vocab.modality_of(ids[user[0] + 1:asst[0]]) == vocab.MODALITIES.index("text")
    return not bool(text.any()) and int(ids[asst[0] + 1]) == vocab.special("audio")


def answers_with_image(ids: np.ndarray, vocab: Vocab) -> bool:
    """The assistant turn opens with an image span: draw, edit and spoken_draw."""
    asst = np.flatnonzero(ids == vocab.special("assistant"))
    return asst.size > 0 and asst[0] + 1 < ids.size and int(ids[asst[0] + 1]) == vocab.special("image")


def is_edit(ids: np.ndarray, vocab: Vocab) -> bool:
    """An image answer to a turn that holds an image: the edit task (draw and spoken_draw have none)."""
    asst = np.flatnonzero(ids == vocab.special("assistant"))
    return answers_with_image(ids, vocab) and bool((ids[:asst[0]] == vocab.special("image")).any())


def kind_of(ids: np.ndarray, vocab: Vocab) -> str:
    """"spoken_vqa" (the question comes with an image), "spoken_math" (speech only) or "other"."""
    if not is_spoken_question(ids, vocab):
        return "other"
    return "spoken_vqa" if bool((ids == vocab.special("image")).any()) else "spoken_math"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="shard directory to read (holds manifest.json)")
    ap.add_argument("out", help="new shard directory (must not exist yet)")
    ap.add_argument("--keep", default="other", choices=["other", "spoken_vqa", "spoken_math", "drawing", "not-edit"],
                    help="which documents to keep: everything but spoken questions (default), only "
                         "the spoken questions with an image (spoken_vqa) or without (spoken_math), "
                         "the documents answered with an image (drawing: draw, edit, spoken_draw), or "
                         "everything but edits (not-edit)")
    args = ap.parse_args(argv)
    try:
        vocab = Vocab.load(ShardSet.open(args.src, verify=False).vocab_path())
        if args.keep == "drawing":
            def keep(ids): return answers_with_image(ids, vocab)
        elif args.keep == "not-edit":
            def keep(ids): return not is_edit(ids, vocab)
        else:
            def keep(ids): return kind_of(ids, vocab) == args.keep
        kept, total = filter_shards(args.src, args.out, keep,
                                    note=f"{args.keep} documents kept (examples/filter_shards.py)")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"kept {kept} of {total} documents ({args.keep}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
