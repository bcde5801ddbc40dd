"""Give a free voice slot of a model's vocabulary a name: the first step of adding an assistant voice.

A vocabulary has 16 voice tags (`<|voice:0|>` .. `<|voice:15|>`); the shipped `world` model names
slots 0 and 1 (`nova`, `atlas`) and leaves the others as `voice:2` .. `voice:15`. Data that speaks
with a new voice must name it, and `omniloom tokenize --model DIR` / `train.init_from=DIR` require
the data's vocabulary to be the model's, so the name goes into a copy of the model directory:

    omniloom world name-voice --model world --name luna --out models/world-luna

writes `models/world-luna` (the same files, `vocab.json` with slot 2 named `luna`). The ids do not
change, so the weights are the source's; fine-tuning on data spoken in `luna` teaches the tag a voice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..utils.fileio import atomic_write_json
from ..utils.model_dir import resolve_model_dir


def free_slots(voices: list[str]) -> list[int]:
    return [i for i, name in enumerate(voices) if name == f"voice:{i}"]


def name_voice(model: str, name: str, out: str | Path, slot: int | None = None) -> tuple[Path, int]:
    """Copy `model`'s directory to `out` with voice slot `slot` (default: the first free one) named
    `name` -> (out, slot). ValueError when the name is taken or invalid, or the slot is not free."""
    src = resolve_model_dir(model)
    vocab_path = src / "vocab.json"
    if not vocab_path.is_file():
        raise ValueError(f"{src} has no vocab.json")
    vocab = json.loads(vocab_path.read_text())
    voices = list(vocab.get("voices") or [])
    if not name or name == "none" or name.startswith("voice:") or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"voice name {name!r} is not allowed: letters, digits, '-' and '_' only, not 'none' or 'voice:i'")
    if name in voices:
        raise ValueError(f"{src} already has a voice {name!r} (slot {voices.index(name)})")
    free = free_slots(voices)
    if slot is None:
        if not free:
            raise ValueError(f"{src} has no free voice slot; its voices are {voices}")
        slot = free[0]
    if slot not in free:
        raise ValueError(f"voice slot {slot} of {src} is not free (free: {free}; named: {voices})")
    out = Path(out)
    if out.resolve() == src.resolve():
        raise ValueError("--out must differ from the source model directory")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "vocab.json":
            shutil.copy2(f, out / f.name)
    voices[slot] = name
    vocab["voices"] = voices
    atomic_write_json(out / "vocab.json", vocab)
    return out, slot
