"""Packed, deterministic, rank-sharded, resumable batches over a :class:`ShardSet`.

Each epoch shuffles the documents with ``numpy.random.default_rng([seed, epoch])``, lays them
end to end and cuts the stream into rows of ``seq_len + 1`` tokens (a document may continue in
the next row; the tail shorter than a row is dropped). Global batch ``k`` of an epoch is rows
``[k*B, (k+1)*B)``; rank ``r`` of ``W`` takes the contiguous slice ``[r*B/W, (r+1)*B/W)`` of it
and splits it into micro-batches. The W ranks together therefore see exactly the batch a single
rank would see. The state is two integers (epoch, batch index), so resuming is exact and works
with a different world size.

A row becomes ``ids = row[:-1]``, ``targets = row[1:]``; ``positions`` restart at 0 at every
document piece in the row, ``doc_ids`` number those pieces (attention never crosses them), and a
target counts when the shard marks it and it belongs to the same document as its input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .shards import ShardSet

__all__ = ["PackedLoader", "build_row"]


def build_row(data: ShardSet, perm: np.ndarray, ends: np.ndarray, start: int, length: int) -> tuple[np.ndarray, ...]:
    """Tokens ``[start, start+length)`` of the stream of documents in order ``perm``.

    ``ends`` is ``cumsum(doc_len[perm])``. Returns ids, loss_mask, positions, piece ids, all (length,).
    """
    off = data.doc_offsets
    ids = np.empty(length, dtype=np.int64)
    mask = np.empty(length, dtype=np.bool_)
    pos = np.empty(length, dtype=np.int64)
    doc = np.empty(length, dtype=np.int64)
    end = start + length
    i = int(np.searchsorted(ends, start, side="right"))
    w, piece = 0, 0
    while w < length:
        d = perm[i]
        dlen = off[d + 1] - off[d]
        dbeg = ends[i] - dlen  # where document d begins in the stream
        a = max(start, dbeg) - dbeg
        b = min(end, ends[i]) - dbeg
        n = int(b - a)
        d_ids, d_mask = data.doc(int(d))
        ids[w:w + n] = d_ids[a:b]
        mask[w:w + n] = d_mask[a:b] != 0
        pos[w:w + n] = np.arange(n)
        doc[w:w + n] = piece
        w += n
        piece += 1
        i += 1
    return ids, mask, pos, doc


class EpochBatches:
    """What every loader shares: micro-batches per step, its position (epoch, batch) as resumable
    state, and walking that position. Subclasses set ``local``, ``micro``, ``seed``, ``epoch``,
    ``batch_index`` and ``batches_per_epoch``, and give ``batch_at(epoch, batch_index)``."""

    local: int
    micro: int
    seed: int
    epoch: int
    batch_index: int
    batches_per_epoch: int

    def batch_at(self, epoch: int, batch_index: int) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def next_batch(self) -> list[dict[str, torch.Tensor]]:
        if self.batch_index >= self.batches_per_epoch:
            self.epoch, self.batch_index = self.epoch + 1, 0
        out = self.batch_at(self.epoch, self.batch_index)
        self.batch_index += 1
        return out

    def __iter__(self) -> Iterator[list[dict[str, torch.Tensor]]]:
        while True:
            yield self.next_batch()


    @property
    def accumulation_steps(self) -> int:
        return self.local // self.micro

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_index": self.batch_index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this run uses seed {self.seed}")
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])


class PackedLoader(EpochBatches):
    """Iterates global batches; each item is this rank's list of micro-batch dicts.

    Args:
        data: a :class:`ShardSet` or a shard directory.
        seq_len: tokens per training row (rows hold ``seq_len + 1``).
        batch_size: global batch in rows (all ranks, all micro-batches).
        micro_batch_size: rows per forward pass on one rank (default: all of the rank's rows).
        rank, world_size: this process's slice of each global batch.
        seed: shuffling seed; ``shuffle=False`` keeps file order (validation).
    """

    def __init__(self, data: ShardSet | str | Path, seq_len: int, batch_size: int, micro_batch_size: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        self.data = data if isinstance(data, ShardSet) else ShardSet.open(data)
        if batch_size % world_size:
            raise ValueError(f"train.batch_size ({batch_size}) must be divisible by the world size ({world_size})")
        self.local = batch_size // world_size
        self.micro = min(micro_batch_size or self.local, self.local)
        if self.local % self.micro:
            raise ValueError(
                f"per-rank batch ({batch_size} / {world_size} ranks = {self.local}) must be divisible by "
                f"train.micro_batch_size ({self.micro})")
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.rows_per_epoch = self.data.num_tokens // (seq_len + 1)
        self.batches_per_epoch = self.rows_per_epoch // batch_size
        if self.batches_per_epoch == 0:
            rows = self.rows_per_epoch
            fit_seq = self.data.num_tokens // batch_size - 1  # the longest rows that fill one batch
            local = rows // world_size  # rows each rank can fill, in micro-batches that divide them
            hints = []
            if fit_seq >= 8:
                hints.append(f"data.seq_len={fit_seq} or less")
            if local >= 1:
                micro = max(m for m in range(1, min(self.micro, local) + 1) if local % m == 0)
                hints.append(f"train.batch_size={local * world_size} train.micro_batch_size={micro}")
            raise ValueError(
                f"{self.data.path} has {self.data.num_tokens} tokens = {rows} rows of "
                f"seq_len+1={seq_len + 1}, fewer than one global batch of {batch_size} rows: give more data, or "
                + (" or ".join(hints) if hints else "far more data (the set is smaller than one row per rank)"))
        self.epoch, self.batch_index = 0, 0
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    # -- batches --------------------------------------------------------------------------------
    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != epoch:
            n = self.data.num_docs
            perm = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                    else np.arange(n))
            lengths = np.diff(self.data.doc_offsets)[perm]
            self._cache = (epoch, perm, np.cumsum(lengths))
        return self._cache[1], self._cache[2]

    def batch_at(self, epoch: int, batch_index: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of global batch ``batch_index`` of ``epoch``."""
        perm, ends = self._order(epoch)
        L = self.seq_len + 1
        first = batch_index * self.batch_size + self.rank * self.local
        rows = [build_row(self.data, perm, ends, (first + j) * L, L) for j in range(self.local)]
        ids, mask, pos, doc = (np.stack(x) for x in zip(*rows))  # each (local, L)
        same_doc = doc[:, 1:] == doc[:, :-1]  # (local, T): target continues the input's document
        batch = {
            "ids": torch.from_numpy(ids[:, :-1].copy()),
            "targets": torch.from_numpy(ids[:, 1:].copy()),
            "loss_mask": torch.from_numpy(mask[:, 1:] & same_doc),
            "positions": torch.from_numpy(pos[:, :-1].copy()),
            "doc_ids": torch.from_numpy(doc[:, :-1].copy()),
        }
        return [{k: v[s:s + self.micro] for k, v in batch.items()} for s in range(0, self.local, self.micro)]
