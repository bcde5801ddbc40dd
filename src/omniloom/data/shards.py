"""Token shards on disk: safetensors files of packed documents plus a checksummed manifest.

A shard directory holds::

    manifest.json          # shard files, token/doc counts, sha256 of each shard (written last)
    vocab.json             # the omniloom.tokens.Vocab the ids belong to
    tokenizer.json         # copy of the text tokenizer
    shard_00000.safetensors  # ids int32 (N,), loss_mask uint8 (N,), doc_offsets int64 (D+1,)

``loss_mask[i] == 1`` means token ``i`` is a target that counts (it is predicted from the tokens
before it). ``doc_offsets`` are the document boundaries inside the shard (first 0, last N).
A manifest with ``"pairs": true`` (``tokenize --format preference``) holds preference pairs:
documents ``2k`` (chosen) and ``2k + 1`` (rejected) are one pair, and every shard holds whole pairs.
Every file is written to a temporary name and renamed, and the manifest is written last, so a
killed ``tokenize`` never leaves a directory that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from safetensors.numpy import save_file

from ..utils.fileio import atomic_path, atomic_write_text, read_json

__all__ = ["ShardWriter", "ShardSet", "MANIFEST", "write_manifest", "sha256_file", "resolve_shard_dir", "filter_shards"]

MANIFEST = "manifest.json"
FORMAT = "omniloom-shards"
VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Collects encoded documents and writes shards of about ``shard_tokens`` tokens each.

    Use as a context manager; :meth:`close` writes the last shard and then the manifest.

    ``name_prefix`` names the shard files (``<prefix>00000.safetensors``); ``part=True`` writes
    only shards (no vocab, tokenizer or manifest): one piece of a directory that
    :func:`write_manifest` completes (how tokenize's work units write in parallel).
    """

    def __init__(self, out_dir: str | Path, vocab: Any, tokenizer_path: str | Path | None = None,
                 shard_tokens: int = 1 << 24, meta: dict[str, Any] | None = None,
                 name_prefix: str = "shard_", part: bool = False):
        if shard_tokens <= 0:
            raise ValueError(f"--shard-tokens must be positive, got {shard_tokens}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.part = part
        old = self.out_dir / MANIFEST
        if old.exists() and not part:  # the old manifest no longer describes what is being written
            old.unlink()
        self.vocab = vocab
        self.shard_tokens = shard_tokens
        self.meta = dict(meta or {})
        self.name_prefix = name_prefix
        self.shards: list[dict[str, Any]] = []
        self._ids: list[np.ndarray] = []
        self._mask: list[np.ndarray] = []
        self._n = 0
        if part:
            return
        vocab.save(self.out_dir / "vocab.json")
        if tokenizer_path is not None:
            with atomic_path(self.out_dir / "tokenizer.json") as tmp:
                shutil.copyfile(tokenizer_path, tmp)

    def add(self, ids: Iterable[int], loss_mask: Iterable[int]) -> None:
        self._append(ids, loss_mask)
        if self._n >= self.shard_tokens:
            self.flush()

    def add_pair(self, chosen: tuple[Iterable[int], Iterable[int]], rejected: tuple[Iterable[int], Iterable[int]]
                 ) -> None:
        """Two documents ((ids, loss_mask) each) written consecutively into the same shard (a
        preference pair: a shard is cut only after the pair)."""
        for ids, mask in (chosen, rejected):
            ids = list(ids)
            if not ids:
                raise ValueError("a document of a preference pair is empty")
            self._append(ids, mask)
        if self._n >= self.shard_tokens:
            self.flush()

    def _append(self, ids: Iterable[int], loss_mask: Iterable[int]) -> None:
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

    def flush(self) -> None:
        if not self._ids:
            return
        lengths = np.array([a.size for a in self._ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (D+1,)
        name = f"{self.name_prefix}{len(self.shards):05d}.safetensors"
        path = self.out_dir / name
        with atomic_path(path) as tmp:
            save_file({"ids": np.concatenate(self._ids), "loss_mask": np.concatenate(self._mask),
                       "doc_offsets": offsets}, str(tmp))
        self.shards.append({"file": name, "tokens": int(offsets[-1]), "docs": int(lengths.size),
                            "loss_tokens": int(sum(int(m.sum()) for m in self._mask)),
                            "sha256": sha256_file(path)})
        self._ids, self._mask, self._n = [], [], 0

    def close(self) -> dict[str, Any]:
        """Write the last shard; then the manifest (returned), or for a part its shard entries."""
        self.flush()
        if self.part:
            return {"shards": self.shards}
        return write_manifest(self.out_dir, self.vocab, self.shards, self.meta)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def write_manifest(out_dir: str | Path, vocab: Any, shards: list[dict[str, Any]],
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_dir/manifest.json`` over ``shards`` (entries as :meth:`ShardWriter.flush` makes
    them, in reading order) and return it; written last and atomically."""
    manifest = {
        "format": FORMAT, "version": VERSION, "vocab_size": int(vocab.size),
        "total_tokens": sum(s["tokens"] for s in shards),
        "total_docs": sum(s["docs"] for s in shards),
        "shards": list(shards), **dict(meta or {}),
    }
    atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


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


_NP_DTYPES = {"I32": np.int32, "I64": np.int64, "U8": np.uint8}


def _memmap_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Map the tensors of a safetensors file without reading them (the format is a JSON header
    followed by raw little-endian arrays)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file too short")
        n = int.from_bytes(head, "little")
        header = json.loads(f.read(n))
    base = 8 + n
    size = path.stat().st_size
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _NP_DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"tensor {name!r} has unexpected dtype {info['dtype']}")
        start, end = info["data_offsets"]
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        if base + end > size or (end - start) != count * np.dtype(dt).itemsize:
            raise ValueError(f"tensor {name!r} does not fit the file")
        out[name] = np.memmap(path, dtype=dt, mode="r", offset=base + start, shape=tuple(info["shape"]))
    return out


@dataclass
class ShardSet:
    """All shards of one directory, verified and memory-mapped (not read into RAM).

    ``shards[k]`` holds ``ids`` (N_k,) int32 and ``loss_mask`` (N_k,) uint8 of shard ``k``;
    ``doc_offsets`` (D+1,) int64 are document boundaries in the concatenation of all shards,
    ``shard_start`` (K+1,) the token offset of each shard in it, ``doc_shard`` (D,) the shard of
    each document (documents never cross shards).
    """

    path: Path
    shards: list[dict[str, np.ndarray]]
    doc_offsets: np.ndarray
    shard_start: np.ndarray
    doc_shard: np.ndarray
    manifest: dict[str, Any]

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.size - 1)

    @property
    def num_tokens(self) -> int:
        return int(self.doc_offsets[-1])

    def doc(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, loss_mask) of document ``d`` (views into the mapped shard)."""
        k = int(self.doc_shard[d])
        a = int(self.doc_offsets[d] - self.shard_start[k])
        b = int(self.doc_offsets[d + 1] - self.shard_start[k])
        sh = self.shards[k]
        return sh["ids"][a:b], sh["loss_mask"][a:b]

    @property
    def pairs(self) -> bool:
        """Whether the documents are preference pairs (``2k`` chosen, ``2k + 1`` rejected)."""
        return bool(self.manifest.get("pairs"))

    @property
    def ids(self) -> np.ndarray:
        """All ids concatenated (reads everything: for tests and small sets)."""
        return np.concatenate([s["ids"] for s in self.shards])

    @property
    def loss_mask(self) -> np.ndarray:
        return np.concatenate([s["loss_mask"] for s in self.shards])

    @classmethod
    def open(cls, path: str | Path | list, verify: bool = True) -> "ShardSet":
        """Check every shard; a missing, corrupt or misshapen shard raises naming the file.

        ``path`` may name several shard directories, comma-separated (``a/train,b/train``) or as a
        list: they are read as one set, in order, and must share one vocabulary (``vocab.json``
        byte for byte), since their ids index the same embedding.
        """
        items = path if isinstance(path, (list, tuple)) else str(path).split(",")
        parts = [str(x).strip() for x in items if str(x).strip()]
        if len(parts) > 1:
            return cls.concat([cls.open(x, verify) for x in parts])
        root = resolve_shard_dir(parts[0])
        mpath = root / MANIFEST
        manifest = read_json(mpath, "shard manifest")
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath} is not an omniloom shard manifest")
        shards, offsets, starts, owner = [], [np.zeros(1, dtype=np.int64)], [0], []
        base = 0
        for k, entry in enumerate(manifest["shards"]):
            f = root / entry["file"]
            if not f.is_file():
                raise ValueError(f"shard {f} is missing (listed in {mpath})")
            if verify and sha256_file(f) != entry["sha256"]:
                raise ValueError(f"shard {f} is corrupt: its sha256 does not match {mpath}")
            try:
                t = _memmap_safetensors(f)
            except (ValueError, OSError, KeyError, TypeError) as e:
                raise ValueError(f"shard {f} cannot be read: {e}") from e
            a, m, o = t.get("ids"), t.get("loss_mask"), t.get("doc_offsets")
            n = entry["tokens"]
            if (a is None or m is None or o is None or a.shape != (n,) or m.shape != (n,)
                    or o.ndim != 1 or o.size < 2 or o[0] != 0 or o[-1] != n or np.any(np.diff(o) <= 0)):
                raise ValueError(f"shard {f} has the wrong arrays or shapes (expected {n} tokens)")
            if manifest.get("pairs") and (o.size - 1) % 2:
                raise ValueError(f"shard {f} holds {o.size - 1} documents, but {mpath} says it holds preference "
                                 "pairs (two documents each)")
            shards.append({"ids": a, "loss_mask": m})
            offsets.append(np.asarray(o[1:]) + base)
            owner.append(np.full(o.size - 1, k, dtype=np.int32))
            base += n
            starts.append(base)
        if not shards:
            raise ValueError(f"{root} holds no shards")
        return cls(root, shards, np.concatenate(offsets), np.asarray(starts, dtype=np.int64),
                   np.concatenate(owner), manifest)

    @classmethod
    def concat(cls, sets: list["ShardSet"]) -> "ShardSet":
        """One set reading ``sets`` in order; their vocabularies, text tokenizers and codecs must be identical."""
        first = sets[0]
        vocab = first.vocab_path().read_bytes() if first.vocab_path().is_file() else None
        for s in sets[1:]:
            other = s.vocab_path().read_bytes() if s.vocab_path().is_file() else None
            if other != vocab:
                raise ValueError(f"shard directories {first.path} and {s.path} have different vocabularies "
                                 f"(vocab.json differs): tokenize all of them with the same `--model`, or with "
                                 f"`--tokenizer ... --vocab {first.vocab_path()}`, to share one")
            tok_a, tok_b = first.path / "tokenizer.json", s.path / "tokenizer.json"
            if tok_a.is_file() and tok_b.is_file() and tok_a.read_bytes() != tok_b.read_bytes():
                raise ValueError(f"shard directories {first.path} and {s.path} were tokenized with different text "
                                 f"tokenizers (tokenizer.json differs): training decodes text with the first one")
            if bool(s.manifest.get("pairs")) != bool(first.manifest.get("pairs")):
                raise ValueError(f"shard directories {first.path} and {s.path} cannot be read as one set: only one "
                                 "of them holds preference pairs (manifest \"pairs\": true)")
            if s.manifest.get("codecs") != first.manifest.get("codecs"):
                raise ValueError(f"shard directories {first.path} and {s.path} were tokenized with different "
                                 f"codecs ({first.manifest.get('codecs')} vs {s.manifest.get('codecs')})")
        shards, offsets, starts, owner = [], [np.zeros(1, dtype=np.int64)], [0], []
        base, k0 = 0, 0
        for s in sets:
            shards += s.shards
            offsets.append(s.doc_offsets[1:] + base)
            starts += [int(x) + base for x in s.shard_start[1:]]
            owner.append(s.doc_shard + k0)
            base += s.num_tokens
            k0 += len(s.shards)
        manifest = dict(first.manifest, shards=[e for s in sets for e in s.manifest["shards"]],
                        total_tokens=base, total_docs=int(sum(s.num_docs for s in sets)),
                        sources=[src for s in sets for src in s.manifest.get("sources", [])],
                        directories=[str(s.path) for s in sets])
        tagged = {s.manifest["task_tag"]: s.path for s in sets if s.manifest.get("task_tag") not in (None, "none")}
        if len(tagged) > 1:
            (a, pa), (b, pb) = list(tagged.items())[:2]
            raise ValueError(f"shard directories {pa} and {pb} were tokenized with different task tag rules "
                             f"(--task-tag {a} vs {b}): a model is asked by one rule, so tokenize them with the same")
        manifest.pop("task_tag", None)
        if tagged:  # a model trained on a tagged set (beside untagged ones) is asked with the tag
            manifest["task_tag"] = next(iter(tagged))
        return cls(first.path, shards, np.concatenate(offsets), np.asarray(starts, dtype=np.int64),
                   np.concatenate(owner).astype(np.int32), manifest)

    def vocab_path(self) -> Path:
        return self.path / "vocab.json"


def filter_shards(src: str | Path, out: str | Path, keep: Callable[[np.ndarray], bool],
                  note: str = "", progress: bool = True) -> tuple[int, int]:
    """Copy the documents of shard set ``src`` for which ``keep(ids)`` is true to a new shard
    directory ``out`` -> (kept, total). ``out`` must not exist; it is written under a temporary
    name and renamed when complete, so an interrupted copy never looks finished."""
    from tqdm import tqdm

    from ..tokens import Vocab

    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists: choose a new directory for the filtered shards")
    data = ShardSet.open(src)
    if data.pairs:
        raise ValueError(f"{src} holds preference pairs: a filter of single documents would break them")
    tok = data.path / "tokenizer.json"
    meta = {k: v for k, v in data.manifest.items() if k in ("mode", "codecs", "cfg_drop", "task_tag")}
    meta.update(sources=[str(src)], filter=note)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    kept = 0
    with ShardWriter(tmp, Vocab.load(data.vocab_path()), tok if tok.is_file() else None, meta=meta) as w:
        for d in tqdm(range(data.num_docs), desc="filter", unit="doc", disable=not progress):
            ids, mask = data.doc(d)
            if keep(np.asarray(ids)):
                w.add(ids, mask)
                kept += 1
    if kept == 0:
        shutil.rmtree(tmp)
        raise ValueError(f"the filter kept none of the {data.num_docs} documents of {src}")
    tmp.rename(out)
    return kept, data.num_docs
