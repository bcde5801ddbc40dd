"""Train and measure a learned verifier on judged samples (``omniloom sample --reward ...`` output).

Features come from the frozen model (:func:`omniloom.model.verifier.answer_features`: its hidden
states over prompt + candidate ids), computed once; the head is then fitted on them in full
batches, which takes seconds on a CPU. Two objectives:

* ``pointwise``: binary cross-entropy on "judged good" (score > ``threshold``);
* ``pairwise``: Bradley-Terry, ``-log sigmoid(r_chosen - r_rejected)`` over every pair of
  candidates of one prompt whose scores differ.

The held-out split is of **prompts**, never of candidates (candidates of one prompt look alike, so
a split of candidates would let the head memorise prompts). Reported on held-out prompts:
pairwise accuracy (share of a prompt's differently scored pairs the head orders right, ties
half), AUC of "judged good" and the mean score of the candidate the head picks per prompt (its
best-of-K), beside the mean candidate, the first candidate and the oracle (the best candidate).
``shuffle_labels`` permutes the training scores across candidates: a control that must fall to
chance on held-out prompts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["JudgedSet", "judged_features", "split_prompts", "fit_head", "measure", "train_verifier"]


@dataclass
class JudgedSet:
    feats: torch.Tensor  # (N, 2 * dim)
    scores: torch.Tensor  # (N,) float
    prompts: list[str]  # the prompt id of each row


def _sequence(omni: Any, line: dict, samples_dir: Path, prompt_cache: dict) -> tuple[list[int], int]:
    """(prompt + answer ids, answer start) of one sample line: its recorded ``answer_ids`` after the
    prompt rebuilt from its messages, else the conversation encoded from its files."""
    from ..infer.sample_file import absolute_paths

    msgs = absolute_paths(line["messages"], samples_dir)
    if line.get("answer_ids"):
        key = line["id"]
        if key not in prompt_cache:
            prompt_cache[key] = omni.processor.prompt_ids(msgs, line.get("output"), line.get("voice"))
        prompt = prompt_cache[key]
        return prompt + [int(t) for t in line["answer_ids"]], len(prompt)
    cand = absolute_paths([line["candidate"]], samples_dir)[0]
    enc = omni.processor.encode_messages(msgs + [cand], add_eos=False)
    start = enc.loss_mask.index(1) if 1 in enc.loss_mask else len(enc.ids)
    return list(enc.ids), start


def judged_features(omni: Any, lines: list[dict], samples_dir: Path, batch_size: int = 8,
                    progress: bool = False) -> JudgedSet:
    """Features of every scored sample line (lines without a score are an error)."""
    from tqdm import tqdm

    from ..model.verifier import answer_features

    seqs, starts, scores, prompts = [], [], [], []
    cache: dict = {}
    for ln in tqdm(lines, desc="encode", unit="sample", disable=not progress):
        if "score" not in ln:
            raise ValueError(f"sample of prompt {ln.get('id')!r} has no score: judge the samples first "
                             "(omniloom sample --reward ...)")
        ids, start = _sequence(omni, ln, samples_dir, cache)
        if start >= len(ids):
            raise ValueError(f"sample of prompt {ln['id']!r} (candidate {ln['sampling'].get('index')}) has an empty "
                             "answer")
        seqs.append(ids)
        starts.append(start)
        scores.append(float(ln["score"]))
        prompts.append(str(ln["id"]))
    feats = answer_features(omni.model, seqs, starts, pad_id=omni.vocab.end_id, batch_size=batch_size)
    return JudgedSet(feats, torch.tensor(scores, dtype=torch.float32), prompts)


def split_prompts(prompts: list[str], holdout: float, seed: int) -> tuple[set[str], set[str]]:
    """(train prompt ids, held-out prompt ids): a seeded shuffle of the distinct ids."""
    ids = sorted(set(prompts))
    if len(ids) < 2:
        raise ValueError(f"a verifier needs samples of at least 2 prompts to hold some out, got {len(ids)}")
    if not 0 < holdout < 1:
        raise ValueError(f"--holdout must be in (0, 1), got {holdout}")
    random.Random(seed).shuffle(ids)
    k = min(len(ids) - 1, max(1, round(holdout * len(ids))))
    return set(ids[k:]), set(ids[:k])


def _rows(data: JudgedSet, keep: set[str]) -> torch.Tensor:
    return torch.tensor([i for i, p in enumerate(data.prompts) if p in keep], dtype=torch.long)


def _pairs(prompts: list[str], scores: torch.Tensor) -> torch.Tensor:
    """(P, 2) row indices (higher, lower) of every differently scored pair within a prompt."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    s = scores.tolist()
    out = [(i, j) if s[i] > s[j] else (j, i)
           for rows in groups.values() for a, i in enumerate(rows) for j in rows[a + 1:] if s[i] != s[j]]
    return torch.tensor(out, dtype=torch.long).reshape(-1, 2)


def fit_head(feats: torch.Tensor, scores: torch.Tensor, prompts: list[str], objective: str, threshold: float,
             hidden: int = 0, steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-2, seed: int = 0) -> Any:
    """A :class:`~omniloom.model.verifier.VerifierHead` fitted on (feats, scores) in full batches."""
    from ..model.verifier import VerifierHead

    if objective not in ("pointwise", "pairwise"):
        raise ValueError(f"objective must be pointwise or pairwise, got {objective!r}")
    torch.manual_seed(seed)
    head = VerifierHead(feats.shape[1] // 2, hidden)
    head.set_standardization(feats)
    if objective == "pairwise":
        pairs = _pairs(prompts, scores)
        if not len(pairs):
            raise ValueError("no training prompt has candidates scored differently: nothing to learn pairwise")
    else:
        labels = (scores > threshold).float()
        if labels.min() == labels.max():
            raise ValueError(f"every training candidate is judged {'good' if labels[0] else 'bad'} at threshold "
                             f"{threshold}: nothing to learn pointwise")
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    for _ in range(steps):
        r = head(feats)
        if objective == "pairwise":
            loss = -torch.nn.functional.logsigmoid(r[pairs[:, 0]] - r[pairs[:, 1]]).mean()
        else:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(r, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def _auc(pred: torch.Tensor, good: torch.Tensor) -> float:
    """Area under the ROC curve of ``pred`` for ``good`` (ties count half); NaN with one class."""
    pos, neg = pred[good], pred[~good]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


@torch.no_grad()
def measure(head: Any, data: JudgedSet, rows: torch.Tensor, threshold: float) -> dict:
    """Pairwise accuracy, AUC and best-of-K pick scores of ``head`` on the given rows."""
    pred = head(data.feats[rows])
    scores = data.scores[rows]
    prompts = [data.prompts[int(i)] for i in rows]
    pairs = _pairs(prompts, scores)
    if len(pairs):
        d = pred[pairs[:, 0]] - pred[pairs[:, 1]]
        acc = float(((d > 0).float() + 0.5 * (d == 0).float()).mean())
    else:
        acc = float("nan")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    pick = [float(scores[max(g, key=lambda i: float(pred[i]))]) for g in groups.values()]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    out = {"prompts": len(groups), "candidates": len(rows), "pairs": len(pairs), "pairwise_accuracy": acc,
           "auc": _auc(pred, scores > threshold),
           "verifier_pick": mean(pick), "first_candidate": mean([float(scores[g[0]]) for g in groups.values()]),
           "mean_candidate": float(scores.mean()) if len(scores) else float("nan"),
           "oracle_pick": mean([float(scores[g].max()) for g in groups.values()])}
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}  # JSON has no NaN


def train_verifier(omni: Any, lines: list[dict], samples_dir: Path, objective: str = "pointwise",
                   threshold: float = 0.5, holdout: float = 0.25, seed: int = 0, hidden: int = 0, steps: int = 300,
                   lr: float = 1e-2, weight_decay: float = 1e-2, shuffle_labels: bool = False,
                   progress: bool = False, data: JudgedSet | None = None) -> tuple[Any, dict]:
    """(head, report) from judged sample lines; the report holds train and held-out metrics."""
    data = data or judged_features(omni, lines, samples_dir, progress=progress)
    train_ids, held_ids = split_prompts(data.prompts, holdout, seed)
    tr, ho = _rows(data, train_ids), _rows(data, held_ids)
    scores = data.scores[tr]
    if shuffle_labels:  # the control: scores no longer belong to their candidates
        g = torch.Generator().manual_seed(seed + 1)
        scores = scores[torch.randperm(len(scores), generator=g)]
    head = fit_head(data.feats[tr], scores, [data.prompts[int(i)] for i in tr], objective, threshold, hidden, steps,
                    lr, weight_decay, seed)
    report = {"objective": objective, "threshold": threshold, "holdout": holdout, "seed": seed, "hidden": hidden,
              "steps": steps, "lr": lr, "weight_decay": weight_decay, "shuffle_labels": shuffle_labels,
              "train": measure(head, data, tr, threshold), "heldout": measure(head, data, ho, threshold)}
    return head, report
