"""Mean-pooled hidden states of many short sequences in one forward pass (embeddings).

``pooled_states(model, seqs, masks)`` packs the sequences into rows of at most the model's context
(each its own document: positions restart, attention never crosses), runs the decoder once for the
final-norm hidden states, and averages each sequence's hidden states over the positions its mask
marks. Used by ``POST /v1/embeddings`` (no gradient) and by the contrastive loss in training (with
gradient), on the stand-alone sequences of :func:`omniloom.tokens.pairs.embed_sequence`.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["pooled_states", "pack_rows"]


def pack_rows(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Greedy, in order: indices of the sequences that share each row of at most ``max_len`` tokens."""
    rows: list[list[int]] = []
    used = max_len
    for i, n in enumerate(lengths):
        if n > max_len:
            raise ValueError(f"sequence {i} has {n} tokens, more than the context of {max_len}")
        if used + n > max_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def pooled_states(model: torch.nn.Module, seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[bool]],
                  max_len: int | None = None) -> torch.Tensor:
    """(n, dim) float32 means of the final hidden states over each sequence's masked positions.

    ``model(ids, positions=, doc_ids=, return_hidden=True)`` gives (B, T, dim) hidden states; every
    mask must mark at least one position. Differentiable (call under ``torch.no_grad()`` to serve).
    """
    if len(seqs) != len(masks) or not seqs:
        raise ValueError(f"pooled_states needs one mask per sequence and at least one sequence "
                         f"({len(seqs)} sequences, {len(masks)} masks)")
    for i, (s, m) in enumerate(zip(seqs, masks)):
        if len(s) != len(m) or not any(m):
            raise ValueError(f"sequence {i}: its mask must have its length ({len(s)}) and mark a position")
    device = next(model.parameters()).device
    rows = pack_rows([len(s) for s in seqs], max_len or model.cfg.max_seq_len)
    T = max(sum(len(seqs[i]) for i in row) for row in rows)
    B = len(rows)
    ids = torch.zeros(B, T, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    doc = torch.full((B, T), -1, dtype=torch.long)  # padding: a document of its own (never pooled)
    flat_at, owner = [], []  # pooled positions (flat in B*T) and the sequence each belongs to
    for b, row in enumerate(rows):
        t = 0
        for i in row:
            n = len(seqs[i])
            ids[b, t:t + n] = torch.as_tensor(list(seqs[i]), dtype=torch.long)
            pos[b, t:t + n] = torch.arange(n)
            doc[b, t:t + n] = i
            for k, keep in enumerate(masks[i]):
                if keep:
                    flat_at.append(b * T + t + k)
                    owner.append(i)
            t += n
    h = model(ids.to(device), positions=pos.to(device), doc_ids=doc.to(device), return_hidden=True)  # (B, T, dim)
    sel = h.flatten(0, 1).index_select(0, torch.as_tensor(flat_at, device=device)).float()  # (N, dim)
    own = torch.as_tensor(owner, device=device)
    sums = torch.zeros(len(seqs), sel.shape[1], device=device, dtype=torch.float32).index_add(0, own, sel)
    counts = torch.bincount(own, minlength=len(seqs)).clamp_min(1).to(torch.float32)
    return sums / counts[:, None]  # (n, dim)
