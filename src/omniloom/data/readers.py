"""Readers: the data sets people have -> omniloom documents (OpenAI-style message lists).

``omniloom tokenize --format NAME`` picks one; ``detect_format(path)`` guesses where the input is
unambiguous. Every reader yields ``(where, messages)``: ``where`` is the 1-based line or record
number used in error messages (``FILE:WHERE: ...``), ``messages`` a list of message dicts whose
media parts carry absolute paths (or in-memory bytes), so they are encoded without a base folder.
The ``preference`` reader yields a :class:`~omniloom.data.formats.preference.Preference` instead of
messages: one record that tokenize writes as two documents kept together (chosen, rejected).

A bad record raises ValueError naming the file and the line/record.
"""

from __future__ import annotations

import glob
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from .formats.common import input_files, is_glob, json_lines
from .formats.hf import HF_MARKERS, read_hf
from .formats.interleaved import read_interleaved
from .formats.librispeech import TRANSCRIPT_SUFFIX, read_librispeech, transcript_files
from .formats.llava import read_llava
from .formats.preference import preference_offsets, read_preference
from .formats.webdataset import TAR_SUFFIXES, read_webdataset

__all__ = ["FORMATS", "OPTION_FLAGS", "SEEKABLE", "check_options", "read_documents", "detect_format",
           "read_jsonl", "jsonl_offsets"]

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
    for lineno, start, obj in json_lines(path, seek, first_line):
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
            raise ValueError(f"{path}:{lineno}: expected an object with a non-empty \"messages\" list")
        yield lineno, start, obj["messages"]


# format name -> reader(path, **options) -> (where, messages) iterator
FORMATS: dict[str, Callable[..., Documents]] = {
    "messages": read_jsonl,
    "llava": read_llava,
    "librispeech": read_librispeech,
    "webdataset": read_webdataset,
    "hf": read_hf,
    "interleaved": read_interleaved,
    "preference": read_preference,  # yields Preference records (a pair of documents), not message lists
}

#: formats read from JSON lines: name -> ``offsets(path)`` giving ``(line, byte offset, record)``, so
#: that a tokenize work unit starts mid-file (its reader takes ``seek``/``first_line``)
SEEKABLE: dict[str, Callable[..., Iterator[tuple[int, int, Any]]]] = {
    "messages": jsonl_offsets,
    "preference": preference_offsets,
}

#: reader option -> the ``omniloom tokenize`` flag that sets it (for error messages)
OPTION_FLAGS = {"media_root": "--image-root", "columns": "--column", "prompts": "--prompt",
                "audio_task": "--audio-task", "image_task": "--image-task", "tts_voice": "--tts-voice"}


def check_options(fmt: str, options: dict[str, Any]) -> None:
    """ValueError when ``fmt`` is unknown or does not use one of ``options`` (named by its flag)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes = {n for n, prm in inspect.signature(FORMATS[fmt]).parameters.items() if n != "path" and prm.kind in kinds}
    unused = [o for o in options if o not in takes]
    if unused:
        raise ValueError(f"--format {fmt} does not use {', '.join(OPTION_FLAGS.get(o, o) for o in unused)}")


def read_documents(path: str | Path, fmt: str = "messages", **options: Any) -> Documents:
    """The documents of one input in format ``fmt`` (see ``FORMATS``) read with ``options``."""
    check_options(fmt, options)
    return FORMATS[fmt](path, **options)


def split_input(path: str | Path, fmt: str) -> list[str]:
    """One input -> the files a reader can read on their own (a LibriSpeech tree -> its transcripts,
    a folder or glob of tar shards -> each shard), so that tokenize's work units restart within
    one file, not from the start of the whole input. Other formats stay whole."""
    if fmt == "librispeech":
        return [str(f) for f in transcript_files(path)]
    if fmt == "webdataset":
        return [str(f) for f in input_files(path, TAR_SUFFIXES, "tar shards")]
    return [str(path)]


def detect_format(path: str | Path) -> str:
    """The format of ``path`` where it is unambiguous; ValueError saying what to pass otherwise.

    A folder: with ``state.json`` / ``dataset_info.json`` / ``dataset_dict.json`` or ``*.parquet``
    -> hf, with ``*.tar`` -> webdataset, with ``*.trans.txt`` somewhere below -> librispeech. A
    file: ``.tar`` -> webdataset, ``.parquet`` / ``.arrow`` -> hf, ``*.trans.txt`` -> librispeech,
    a ``.json`` list of records with ``"conversations"`` -> llava, JSON lines whose first record
    has ``"texts"`` + ``"images"`` or ``"text_list"`` -> interleaved, ``"chosen"`` + ``"rejected"``
    -> preference, with ``"messages"`` (or any ``.jsonl``) -> messages. A glob: the format of every file it matches, when they agree."""
    p = Path(path)
    found: list[str] = []
    if not is_glob(path) and not p.exists():
        raise ValueError(f"input {p} does not exist")
    if is_glob(path):
        files = [f for f in glob.glob(str(path)) if Path(f).is_file()]
        if not files:
            raise ValueError(f"{path} matches no file")
        found = sorted({detect_format(f) for f in files})
    elif p.is_dir():
        if any((p / m).is_file() for m in (*HF_MARKERS, "dataset_dict.json")) or any(p.glob("*.parquet")):
            found.append("hf")
        if any(f.name.lower().endswith(TAR_SUFFIXES) for f in p.iterdir() if f.is_file()):
            found.append("webdataset")
        if not found and next(p.rglob("*" + TRANSCRIPT_SUFFIX), None) is not None:
            found.append("librispeech")
    elif p.is_file():
        found = [f for f in [_file_format(p)] if f]
    if len(found) == 1:
        return found[0]
    what = f"holds several formats ({', '.join(found)})" if found else "is not a format it recognises"
    raise ValueError(f"cannot tell the format of {path}: it {what}; pass --format "
                     f"({', '.join(sorted(FORMATS))}; docs/data-formats.md)")


_SNIFF_LINE = 1 << 24  # bytes of the first line read to tell JSON-lines formats apart


def _file_format(p: Path) -> str | None:
    name = p.name.lower()
    if name.endswith(TRANSCRIPT_SUFFIX):
        return "librispeech"
    if name.endswith(TAR_SUFFIXES):
        return "webdataset"
    if p.suffix in (".parquet", ".arrow"):
        return "hf"
    if p.suffix == ".json":
        with open(p, encoding="utf-8", errors="replace") as f:
            head = f.read(1 << 16)
        return "llava" if head.lstrip().startswith("[") and '"conversations"' in head else None
    with open(p, "rb") as f:
        first = b" "
        while first and not first.strip():
            first = f.readline(_SNIFF_LINE)
    try:
        record = json.loads(first)
    except ValueError:  # not JSON, or not UTF-8
        record = None
    if isinstance(record, dict) and ("texts" in record and "images" in record or "text_list" in record):
        return "interleaved"
    if isinstance(record, dict) and "chosen" in record and "rejected" in record:
        return "preference"
    if p.suffix == ".jsonl" or isinstance(record, dict) and "messages" in record:
        return "messages"  # a malformed first line is then reported by the reader, with its number
    return None
