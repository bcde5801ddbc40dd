"""Batches of whole preference pairs for ``train.objective=dpo``: deterministic, rank-sharded, resumable.

A paired shard set (manifest ``"pairs": true``) holds pair ``p`` as documents ``2p`` (chosen) and
``2p + 1`` (rejected). DPO needs each answer's whole log-probability and both answers of a pair in
the same forward pass, so unlike :class:`~omniloom.data.loader.PackedLoader` this loader never cuts a
document: pairs are packed whole into rows of ``seq_len + 1`` tokens (chosen then rejected, then the
next pair; the rest of a row is padding that never counts).

The packing is done once (pairs in a seeded shuffled order, next-fit), so every epoch has the same
rows; each epoch shuffles the rows with ``numpy.random.default_rng([seed, epoch])``. Global batch
``k`` is rows ``[k*B, (k+1)*B)``; rank ``r`` of ``W`` takes the contiguous slice
``[r*B/W, (r+1)*B/W)`` and splits it into micro-batches of whole rows, so a pair is never split
across micro-batches or ranks. The state is (epoch, batch index), as the packed loader's, so a
resume is exact. A pair longer than a row is skipped (``skipped`` counts them).

A micro-batch holds the packed loader's keys (``ids``, ``targets``, ``loss_mask``, ``positions``,
``doc_ids``) plus ``seq_ids`` (B, T): for each target, ``2 * q + side`` where ``q`` numbers the
micro-batch's pairs from 0 and ``side`` is 0 (chosen) or 1 (rejected), -1 on padding; and
``pairs``, the number of pairs in the micro-batch (a 0-d tensor).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .loader import EpochBatches
from .shards import ShardSet

__all__ = ["PairLoader"]

_PACK_STREAM = 0x5041_4952  # the seed stream of the one-off packing order (independent of epochs)


class PairLoader(EpochBatches):
    """Iterates global batches of whole preference pairs; each item is this rank's micro-batches.

    Args as :class:`~omniloom.data.loader.PackedLoader`; ``batch_size`` and ``micro_batch_size``
    count rows of ``seq_len + 1`` tokens (each holding one or more whole pairs).
    """

    def __init__(self, data: ShardSet | str | Path, seq_len: int, batch_size: int, micro_batch_size: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True):
        self.data = data if isinstance(data, ShardSet) else ShardSet.open(data)
        if not self.data.pairs:
            raise ValueError(f"{self.data.path} holds no preference pairs (its manifest has no \"pairs\": true): "
                             "tokenize a prompt/chosen/rejected JSONL with --format preference")
        if batch_size % world_size:
            raise ValueError(f"train.batch_size ({batch_size}) must be divisible by the world size ({world_size})")
        self.local = batch_size // world_size
        self.micro = min(micro_batch_size or self.local, self.local)
        if self.local % self.micro:
            raise ValueError(f"per-rank batch ({batch_size} / {world_size} ranks = {self.local}) must be divisible "
                             f"by train.micro_batch_size ({self.micro})")
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        L = seq_len + 1
        lengths = np.diff(self.data.doc_offsets)
        pair_len = lengths[0::2] + lengths[1::2]
        fits = pair_len <= L
        self.num_pairs = int(pair_len.size)
        self.skipped = int((~fits).sum())
        if not fits.any():
            raise ValueError(f"no preference pair of {self.data.path} fits one row of data.seq_len+1={L} tokens "
                             f"(the shortest pair, chosen and rejected together, has {int(pair_len.min())}): set "
                             f"data.seq_len={int(pair_len.min()) - 1} or more")
        order = np.flatnonzero(fits)
        if shuffle:
            order = np.random.default_rng([seed, _PACK_STREAM]).permutation(order)
        self.row_pairs, self.row_start = _pack(order, pair_len, L)
        self.rows_per_epoch = int(self.row_start.size - 1)
        self.batches_per_epoch = self.rows_per_epoch // batch_size
        if self.batches_per_epoch == 0:
            hint = f"train.batch_size={self.rows_per_epoch // world_size * world_size} or less" \
                if self.rows_per_epoch >= world_size else "more pairs"
            raise ValueError(f"{self.data.path}: its {self.num_pairs - self.skipped} pairs pack into "
                             f"{self.rows_per_epoch} rows of seq_len+1={L} tokens, fewer than one global batch of "
                             f"{batch_size} rows: give more pairs, a shorter data.seq_len, or {hint}")
        self.epoch, self.batch_index = 0, 0
        self._cache: tuple[int, np.ndarray] | None = None

    # -- batches --------------------------------------------------------------------------------
    def _rows(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            n = self.rows_per_epoch
            perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._cache = (epoch, perm)
        return self._cache[1]

    def batch_at(self, epoch: int, batch_index: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of global batch ``batch_index`` of ``epoch``."""
        perm = self._rows(epoch)
        first = batch_index * self.batch_size + self.rank * self.local
        return [self._micro_batch(perm[first + s:first + s + self.micro]) for s in range(0, self.local, self.micro)]

    def _micro_batch(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        L = self.seq_len + 1
        ids = np.zeros((rows.size, L), dtype=np.int64)
        mask = np.zeros((rows.size, L), dtype=np.bool_)
        pos = np.zeros((rows.size, L), dtype=np.int64)
        doc = np.zeros((rows.size, L), dtype=np.int64)
        seq = np.full((rows.size, L), -1, dtype=np.int64)
        q = 0  # pairs so far in this micro-batch
        for j, r in enumerate(rows):
            w, piece = 0, 0
            for p in self.row_pairs[self.row_start[r]:self.row_start[r + 1]]:
                for side in (0, 1):
                    d_ids, d_mask = self.data.doc(2 * int(p) + side)
                    n = d_ids.size
                    ids[j, w:w + n] = d_ids
                    mask[j, w:w + n] = d_mask != 0
                    pos[j, w:w + n] = np.arange(n)
                    doc[j, w:w + n] = piece
                    seq[j, w:w + n] = 2 * q + side
                    w, piece = w + n, piece + 1
                q += 1
            pos[j, w:] = np.arange(L - w)  # padding: a piece of its own that never counts
            doc[j, w:] = piece
        same_doc = doc[:, 1:] == doc[:, :-1]
        return {
            "ids": torch.from_numpy(ids[:, :-1].copy()),
            "targets": torch.from_numpy(ids[:, 1:].copy()),
            "loss_mask": torch.from_numpy(mask[:, 1:] & same_doc),
            "positions": torch.from_numpy(pos[:, :-1].copy()),
            "doc_ids": torch.from_numpy(doc[:, :-1].copy()),
            "seq_ids": torch.from_numpy(seq[:, 1:].copy()),
            "pairs": torch.tensor(q),
        }



def _pack(order: np.ndarray, pair_len: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Next-fit packing of the pairs ``order`` into rows of ``row`` tokens -> (pairs in row order,
    (R+1,) start of each row in it)."""
    starts, used = [0], 0
    for k, p in enumerate(order):
        n = int(pair_len[p])
        if used + n > row:
            starts.append(k)
            used = 0
        used += n
    starts.append(order.size)
    return order.astype(np.int64), np.asarray(starts, dtype=np.int64)
