"""``llava``: LLaVA-Instruct JSON, a list of ``{"id", "image", "conversations": [{"from", "value"}]}``.

``from`` is ``human`` / ``gpt`` (``system``, ``user`` and ``assistant`` are taken too). Each
``<image>`` placeholder in a ``value`` becomes an image part at that position; a record whose
text holds no placeholder gets its image in front of the first user turn (LLaVA's own rule).
``image`` may also be a list (one per placeholder, in order). Images are files under
``--image-root`` (default: the JSON file's folder). Records without ``image`` are text-only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import Documents, Message, media_folder, resolve_media, text_part

__all__ = ["read_llava", "PLACEHOLDER"]

PLACEHOLDER = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def read_llava(path: str | Path, media_root: str | None = None) -> Documents:
    """``(record number, messages)`` of a LLaVA JSON file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist (--format llava reads one JSON file)")
    root = media_folder(media_root, path.parent.resolve())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA records, got a {type(data).__name__}")
    for n, record in enumerate(data, 1):
        yield n, llava_messages(record, root, f"{path}: record {n}")



def llava_messages(record: Any, root: Path, where: str) -> list[Message]:
    """One LLaVA record -> messages (``where`` names it in errors)."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list) \
            or not record["conversations"]:
        raise ValueError(f"{where}: expected an object with a non-empty \"conversations\" list")
    if "id" in record:
        where = f"{where} (id {record['id']!r})"
    images = record.get("image")
    images = [] if images is None else [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ValueError(f"{where}: \"image\" must be a file name or a list of them")
    parts = [{"type": "image", "image": resolve_media(i, root, where)} for i in images]
    placeholders = sum(str(t.get("value", "")).count(PLACEHOLDER) for t in record["conversations"]
                       if isinstance(t, dict))
    if placeholders and placeholders != len(parts):
        raise ValueError(f"{where}: {placeholders} {PLACEHOLDER} placeholder(s) but {len(parts)} image(s)")
    messages: list[Message] = []
    pending = list(parts)
    for t, turn in enumerate(record["conversations"], 1):
        if not isinstance(turn, dict) or turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: turn {t} must be {{\"from\": human|gpt|system, \"value\": str}}, "
                             f"got {json.dumps(turn)[:80]}")
        role = _ROLES[turn["from"]]
        content: list[dict[str, Any]] = []
        if not placeholders and role == "user" and pending:
            content += pending  # no placeholder: the images open the first user turn
            pending = []
        for k, piece in enumerate(turn["value"].split(PLACEHOLDER)):
            if k:
                content.append(pending.pop(0))
            if piece.strip():
                content.append(text_part(piece.strip()))
        if not content:
            raise ValueError(f"{where}: turn {t} is empty")
        messages.append({"role": role, "content": content})
    if pending:
        raise ValueError(f"{where}: the image has no user turn to go in")
    return messages
