"""Readers: the data sets people have -> omniloom documents (OpenAI-style message lists).

``omniloom tokenize --format NAME`` picks one; ``detect_format(path)`` guesses where the input is
unambiguous. Every reader yields ``(where, messages)``: ``where`` is the 1-based line or record
number used in error messages (``FILE:WHERE: ...``), ``messages`` a list of message dicts whose
media parts carry absolute paths (or in-memory bytes), so they are encoded without a base folder.

A bad record raises ValueError naming the file and the line/record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["FORMATS", "read_documents", "detect_format", "read_jsonl", "jsonl_offsets"]

Documents = Iterator[tuple[int, list[dict[str, Any]]]]


def read_jsonl(path: str | Path, seek: int = 0, first_line: int = 1, **_: Any) -> Documents:
    """``messages`` format: one ``{"messages": [...]}`` object per line (media paths relative to the file).

    ``seek``/``first_line``: start at that byte offset, numbering lines from ``first_line`` (how
    tokenize's work units start mid-file without re-reading it; see :func:`jsonl_offsets`)."""
    for lineno, _offset, messages in _jsonl_records(path, seek, first_line):
        yield lineno, messages


def jsonl_offsets(path: str | Path) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    """``(line, byte offset, messages)`` of every record of a ``messages`` JSONL file."""
    return _jsonl_records(path, 0, 1)


def _jsonl_records(path: str | Path, seek: int, first_line: int) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist")
    with open(path, "rb") as f:
        f.seek(seek)
        offset = seek
        for lineno, raw in enumerate(f, first_line):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from e
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
                raise ValueError(f"{path}:{lineno}: expected an object with a non-empty \"messages\" list")
            yield lineno, start, obj["messages"]


# format name -> reader(path, **options) -> (where, messages) iterator
FORMATS: dict[str, Callable[..., Documents]] = {
    "messages": read_jsonl,
}


def read_documents(path: str | Path, fmt: str = "messages", **options: Any) -> Documents:
    """The documents of one input in format ``fmt`` (see ``FORMATS``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[fmt](path, **options)


def detect_format(path: str | Path) -> str:
    """The format of ``path`` where it is unambiguous; ValueError saying what to pass otherwise."""
    p = Path(path)
    if p.is_file() and p.suffix == ".jsonl":
        return "messages"
    raise ValueError(f"cannot tell the format of {p}; pass --format ({', '.join(sorted(FORMATS))})")
