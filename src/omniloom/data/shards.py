"""Token shards on disk: safetensors files of packed documents plus a checksummed manifest.

A shard directory holds::

    manifest.json          # shard files, token/doc counts, sha256 of each shard (written last)
    vocab.json             # the omniloom.tokens.Vocab the ids belong to
    tokenizer.json         # copy of the text tokenizer
    shard_00000.safetensors  # ids int32 (N,), loss_mask uint8 (N,), doc_offsets int64 (D+1,)

``loss_mask[i] == 1`` means token ``i`` is a target that counts (it is predicted from the tokens
before it). ``doc_offsets`` are the document boundaries inside the shard (first 0, last N).
Every file is written to a temporary name and renamed, and the manifest is written last, so a
killed ``tokenize`` never leaves a directory that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from safetensors.numpy import load_file, save_file

__all__ = ["ShardWriter", "ShardSet", "MANIFEST", "sha256_file", "atomic_write_text", "resolve_shard_dir"]

MANIFEST = "manifest.json"
FORMAT = "omniloom-shards"
VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Collects encoded documents and writes shards of about ``shard_tokens`` tokens each.

    Use as a context manager; :meth:`close` writes the last shard and then the manifest.
    """

    def __init__(self, out_dir: str | Path, vocab: Any, tokenizer_path: str | Path | None = None,
                 shard_tokens: int = 1 << 24, meta: dict[str, Any] | None = None):
        if shard_tokens <= 0:
            raise ValueError(f"--shard-tokens must be positive, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = self.out_dir / MANIFEST
        if old.exists():  # the old manifest no longer describes what is being written
            old.unlink()
        self.vocab = vocab
        self.shard_tokens = shard_tokens
        self.meta = dict(meta or {})
        self.shards: list[dict[str, Any]] = []
        self._ids: list[np.ndarray] = []
        self._mask: list[np.ndarray] = []
        self._n = 0
        vocab.save(self.out_dir / "vocab.json")
        if tokenizer_path is not None:
            tmp = self.out_dir / f".tokenizer.json.tmp-{os.getpid()}"
            shutil.copyfile(tokenizer_path, tmp)
            os.replace(tmp, self.out_dir / "tokenizer.json")

    def add(self, ids: Iterable[int], loss_mask: Iterable[int]) -> None:
        ids_a = np.asarray(list(ids), dtype=np.int64)
        mask_a = np.asarray(list(loss_mask), dtype=np.uint8)
        if ids_a.shape != mask_a.shape:
            raise ValueError(f"ids and loss_mask differ in length ({ids_a.size} vs {mask_a.size})")
        if ids_a.size == 0:
            return
        if ids_a.min() < 0 or ids_a.max() >= self.vocab.size:
            raise ValueError(f"token id out of range [0, {self.vocab.size}): {int(ids_a.min())}..{int(ids_a.max())}")
        self._ids.append(ids_a.astype(np.int32))
        self._mask.append(mask_a)
        self._n += ids_a.size
        if self._n >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._ids:
            return
        lengths = np.array([a.size for a in self._ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (D+1,)
        name = f"shard_{len(self.shards):05d}.safetensors"
        path = self.out_dir / name
        tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
        save_file({"ids": np.concatenate(self._ids), "loss_mask": np.concatenate(self._mask),
                   "doc_offsets": offsets}, str(tmp))
        os.replace(tmp, path)
        self.shards.append({"file": name, "tokens": int(offsets[-1]), "docs": int(lengths.size),
                            "loss_tokens": int(sum(int(m.sum()) for m in self._mask)),
                            "sha256": sha256_file(path)})
        self._ids, self._mask, self._n = [], [], 0

    def close(self) -> dict[str, Any]:
        self.flush()
        manifest = {
            "format": FORMAT, "version": VERSION, "vocab_size": int(self.vocab.size),
            "total_tokens": sum(s["tokens"] for s in self.shards),
            "total_docs": sum(s["docs"] for s in self.shards),
            "shards": self.shards, **self.meta,
        }
        atomic_write_text(self.out_dir / MANIFEST, json.dumps(manifest, indent=1))
        return manifest

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def resolve_shard_dir(path: str | Path) -> Path:
    """``DIR`` holding a manifest, or ``DIR/train`` when ``DIR`` is a tokenize output root."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    if (p / "train" / MANIFEST).is_file():
        return p / "train"
    if not p.exists():
        raise ValueError(f"shard directory {p} does not exist (run `omniloom tokenize` first)")
    raise ValueError(f"{p} holds no {MANIFEST}: not a finished shard directory (was `omniloom tokenize` interrupted?)")


@dataclass
class ShardSet:
    """All shards of one directory, verified and concatenated in memory.

    ``ids`` (N,) int32, ``loss_mask`` (N,) uint8, ``doc_offsets`` (D+1,) int64 over the whole set.
    """

    path: Path
    ids: np.ndarray
    loss_mask: np.ndarray
    doc_offsets: np.ndarray
    manifest: dict[str, Any]

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.size - 1)

    @property
    def num_tokens(self) -> int:
        return int(self.ids.size)

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> "ShardSet":
        """Read and check every shard; a missing, corrupt or misshapen shard raises naming the file."""
        root = resolve_shard_dir(path)
        mpath = root / MANIFEST
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath} is not valid JSON: {e}") from e
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath} is not an omniloom shard manifest")
        ids, masks, offsets = [], [], [np.zeros(1, dtype=np.int64)]
        base = 0
        for entry in manifest["shards"]:
            f = root / entry["file"]
            if not f.is_file():
                raise ValueError(f"shard {f} is missing (listed in {mpath})")
            if verify and sha256_file(f) != entry["sha256"]:
                raise ValueError(f"shard {f} is corrupt: its sha256 does not match {mpath}")
            try:
                t = load_file(str(f))
            except Exception as e:  # safetensors raises its own error types
                raise ValueError(f"shard {f} cannot be read: {e}") from e
            a, m, o = t.get("ids"), t.get("loss_mask"), t.get("doc_offsets")
            n = entry["tokens"]
            if (a is None or m is None or o is None or a.shape != (n,) or m.shape != (n,)
                    or o.ndim != 1 or o.size < 2 or o[0] != 0 or o[-1] != n or np.any(np.diff(o) <= 0)):
                raise ValueError(f"shard {f} has the wrong arrays or shapes (expected {n} tokens)")
            ids.append(a)
            masks.append(m)
            offsets.append(o[1:] + base)
            base += n
        if not ids:
            raise ValueError(f"{root} holds no shards")
        return cls(root, np.concatenate(ids), np.concatenate(masks), np.concatenate(offsets), manifest)

    def vocab_path(self) -> Path:
        return self.path / "vocab.json"
