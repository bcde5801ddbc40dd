"""examples/filter_shards.py: which documents each --keep choice recognises, from their ids alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from omniloom.serve.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def docs():
    spec = importlib.util.spec_from_file_location("filter_shards", ROOT / "examples" / "filter_shards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    omni = build_tiny_model()
    v = omni.vocab
    img = {"type": "image_codes", "codes": [1] * v.image_tokens}
    aud = {"type": "audio_codes", "codes": [[1] * max(v.audio_codebooks, 1)] * 3}
    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    convs = {
        "caption": ([img, text("describe the image")], [text("a red circle")]),
        "draw": ([text("draw a red circle")], [img]),
        "edit": ([img, text("make the circle blue")], [img]),
        "described edit": ([img, text("make the circle blue")], [text("a blue circle"), img]),
        "spoken_draw": ([aud], [img]),
    }
    ids = {k: np.array(omni.processor.encode_messages(
        [{"role": "user", "content": u}, {"role": "assistant", "content": a}]).ids) for k, (u, a) in convs.items()}
    return mod, v, ids


def test_not_edit_drops_image_edits_only(docs):
    mod, v, ids = docs
    assert {k for k, x in ids.items() if mod.is_edit(x, v)} == {"edit"}
    # a described edit opens with text; --keep not-edit keeps it (phase 10 trains on it)
    assert {k for k, x in ids.items() if mod.answers_with_image(x, v)} == {"draw", "edit", "spoken_draw"}
