"""Atomic file writes and JSON reads with errors that name the file.

Every file omniloom writes for keeps (checkpoints, shipped weights, manifests, reports, plots) goes
through :func:`atomic_path`: the writer fills a temporary file beside the target and one
``os.replace`` puts it in place, so a crash or a full disk leaves the old file whole and never a
half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "atomic_write_json", "read_json"]


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; a clean exit renames it onto ``path``.

    The temporary name keeps ``path``'s suffix (writers such as ``savefig`` pick the format from
    it) and is hidden (``.name.tmp-PID-TID.ext``). On an exception it is removed and ``path`` is
    left as it was. The parent directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{threading.get_ident()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | Path, what: str = "") -> Any:
    """Parse the JSON file ``path``; a missing or malformed file is a ValueError naming it.

    ``what`` describes the file in the message (``"model config"`` -> "model config
    /x/config.json is not valid JSON: ...").
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{label} is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{label} cannot be read: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{label} is not valid JSON: {e}") from e


def size_and_mtime(path: str | Path) -> tuple[int, int]:
    """(size in bytes, mtime in ns) of a file, or summed (size) and latest (mtime) over a folder's
    files; (0, 0) when nothing is there. What a resumable job compares to tell that an input changed."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return sum(f.stat().st_size for f in files), max((f.stat().st_mtime_ns for f in files), default=0)
