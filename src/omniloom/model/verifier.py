"""A learned verifier: a scalar head over a frozen decoder's hidden states.

The decoder reads the prompt and one candidate answer (ids, whatever the answer's modality); the
head scores the pair. Its features are the final hidden state at the answer's last id (the state in
which the model closed its turn: it has read the whole prompt and answer) and the mean hidden state
over the answer's ids, standardized by statistics stored with the head:

    score = head(standardize([h_last, mean(h_answer)]))

The decoder is the generator itself, left as it is, so best-of-N decoding scores its candidates
with one more forward of the same weights and no second model. A verifier directory holds::

    verifier.safetensors   # the head's weights and the feature mean/std
    verifier.json          # {"format": "omniloom-verifier", "version": 1, "dim", "hidden",
                           #  "model_sha256": the weights file of the model it was trained on, ...}
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

__all__ = ["VerifierHead", "answer_features", "save_verifier", "load_verifier", "weights_sha256",
           "VERIFIER_FORMAT", "is_verifier_dir"]

VERIFIER_FORMAT = "omniloom-verifier"


class VerifierHead(nn.Module):
    """features (N, 2 * dim) -> scores (N,). ``hidden`` 0: linear; else one GELU layer of that width."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        if dim < 1 or hidden < 0:
            raise ValueError(f"verifier head needs dim >= 1 and hidden >= 0, got dim={dim}, hidden={hidden}")
        self.dim, self.hidden = int(dim), int(hidden)
        f = 2 * self.dim
        self.register_buffer("feat_mean", torch.zeros(f))
        self.register_buffer("feat_std", torch.ones(f))
        self.net = nn.Linear(f, 1) if hidden == 0 else nn.Sequential(nn.Linear(f, hidden), nn.GELU(),
                                                                     nn.Linear(hidden, 1))

    def set_standardization(self, feats: torch.Tensor) -> None:
        """Store the mean and std of training features (N, 2 * dim) for :meth:`forward`."""
        self.feat_mean.copy_(feats.mean(0))
        self.feat_std.copy_(feats.std(0, unbiased=False).clamp(min=1e-6))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = (feats.float() - self.feat_mean) / self.feat_std
        return self.net(x).squeeze(-1)


@torch.inference_mode()
def answer_features(model: Any, seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_id: int = 0,
                    batch_size: int = 8) -> torch.Tensor:
    """(N, 2 * dim) features of each ``seqs[i]`` whose answer begins at index ``starts[i]``.

    Batches hold sequences of similar length (sorted), right-padded: attention is causal, so the
    padding after a sequence changes none of its hidden states. No KV cache is used or touched.
    """
    if len(seqs) != len(starts):
        raise ValueError(f"{len(seqs)} sequences but {len(starts)} answer starts")
    for i, (s, a) in enumerate(zip(seqs, starts)):
        if not 0 < a < len(s):
            raise ValueError(f"sequence {i}: answer start {a} outside (0, {len(s)}): the answer must be non-empty "
                             "and follow a prompt")
    dev = next(model.parameters()).device
    dim = int(model.cfg.dim)
    out = torch.zeros(len(seqs), 2 * dim)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b in range(0, len(order), batch_size):
        rows = order[b:b + batch_size]
        L = max(len(seqs[i]) for i in rows)
        ids = torch.full((len(rows), L), pad_id, dtype=torch.long, device=dev)
        for r, i in enumerate(rows):
            ids[r, :len(seqs[i])] = torch.tensor(list(seqs[i]), device=dev)
        h = model(ids, return_hidden=True).float().cpu()  # (B, L, dim)
        for r, i in enumerate(rows):
            n, a = len(seqs[i]), starts[i]
            out[i, :dim] = h[r, n - 1]
            out[i, dim:] = h[r, a:n].mean(0)
    return out


def weights_sha256(model_dir: str | Path) -> str:
    """SHA-256 of a model directory's weights file (model.safetensors, or delta.safetensors)."""
    d = Path(model_dir)
    for name in ("model.safetensors", "delta.safetensors"):
        f = d / name
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            return h.hexdigest()
    raise ValueError(f"{d} holds no model.safetensors or delta.safetensors to fingerprint")


def is_verifier_dir(path: str | Path) -> bool:
    return (Path(path) / "verifier.json").is_file() and (Path(path) / "verifier.safetensors").is_file()


def save_verifier(directory: str | Path, head: VerifierHead, meta: dict) -> Path:
    """Write ``verifier.safetensors`` and ``verifier.json`` (meta + the head's shape) atomically."""
    from safetensors.torch import save_file

    from ..utils.fileio import atomic_path, atomic_write_json

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / "verifier.safetensors") as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(tmp))
    atomic_write_json(d / "verifier.json", {"format": VERIFIER_FORMAT, "version": 1, "dim": head.dim,
                                            "hidden": head.hidden, **meta})
    return d


def load_verifier(directory: str | Path, model_dir: str | Path | None = None) -> tuple[VerifierHead, dict]:
    """(head, meta) from a verifier directory. With ``model_dir``: ValueError unless the verifier was
    trained on that model's weights (its features mean nothing on another model)."""
    from safetensors.torch import load_file

    from ..utils.fileio import read_json

    d = Path(directory)
    if not is_verifier_dir(d):
        raise ValueError(f"{d} is not a verifier directory: verifier.json and verifier.safetensors are needed "
                         "(made by `omniloom verifier train`)")
    meta = read_json(d / "verifier.json", "verifier description")
    if not isinstance(meta, dict) or meta.get("format") != VERIFIER_FORMAT:
        raise ValueError(f"{d / 'verifier.json'}: format must be {VERIFIER_FORMAT!r}")
    try:
        head = VerifierHead(int(meta["dim"]), int(meta.get("hidden", 0)))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{d / 'verifier.json'}: missing or bad head shape ({e})") from None
    missing, unexpected = head.load_state_dict(load_file(str(d / "verifier.safetensors")), strict=False)
    if missing or unexpected:
        raise ValueError(f"{d / 'verifier.safetensors'} does not fit verifier.json: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    if model_dir is not None and meta.get("model_sha256"):
        have = weights_sha256(model_dir)
        if have != meta["model_sha256"]:
            raise ValueError(f"verifier {d} was trained on another model ({meta.get('model', '?')}); its scores "
                             f"mean nothing on {model_dir}. Train one for this model with `omniloom verifier train`")
    return head.eval(), meta
