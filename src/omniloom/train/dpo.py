"""Preference training: DPO against a frozen reference, and the data checks of every objective.

``train.objective=dpo`` (Rafailov et al., 2023) trains on preference pairs (``omniloom tokenize
--format preference``, read by :class:`~omniloom.data.pairs.PairLoader`). For a pair with
answers ``c`` (chosen) and ``r`` (rejected) to the same prompt, with ``log p(a)`` the sum of the
answer's token log-probabilities (only the answer span counts, whichever modality it is; with
``train.dpo_span=text`` only its text ids, e.g. a spoken answer's interleaved transcript)::

    reward(a) = beta * (log p_policy(a) - log p_reference(a))
    loss      = -log sigmoid(reward(c) - reward(r))          (mean over the global batch's pairs)
              + dpo_sft_weight * cross-entropy per token of the chosen answers

The reference is a frozen copy of the initial weights (``train.init_from``, else the seeded random
init). Its log-probabilities are computed **on the fly**, in the same forward pass layout as the
policy's, rather than cached per pair: nothing has to be precomputed over the whole set before
step 1, nothing goes stale when the data change, and a resumed run rebuilds the same reference
from the initial weights, so a resume stays exact. The price is one extra forward pass (no
backward) per micro-batch and the reference's weights in memory (sharded too under FSDP2).

Logged per step: ``dpo/loss``, ``dpo/chosen_reward`` and ``dpo/rejected_reward`` (means),
``dpo/margin`` (their mean difference), ``dpo/accuracy`` (the share of pairs whose chosen reward
is above the rejected one, i.e. whose chosen log-ratio over the reference is the larger),
``dpo/chosen_nll`` (the chosen answers' cross-entropy per token) and ``pairs``.

``train.objective=rft`` (rejection-sampling fine-tuning) is ``sft`` on shards of the best sampled
candidates tokenized as ordinary messages; :func:`check_objective_data` makes sure the shards are
that (single answers, answer-only loss), and the training step is the ``sft`` one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TrainConfig
from .step import TokenLosses, TrainStep

__all__ = ["DPOStep", "dpo_terms", "check_objective_data", "val_pair_loader", "dpo_validation"]


def check_objective_data(objective: str, data: Any, key: str = "data.train") -> None:
    """ValueError when shard set ``data`` does not suit ``train.objective`` (naming both keys)."""
    where = f"{key}={data.path}"
    if objective == "dpo":
        if not data.pairs:
            raise ValueError(f"train.objective=dpo needs preference pairs, but {where} holds none (its manifest has "
                             "no \"pairs\": true): tokenize a prompt/chosen/rejected JSONL with --format preference")
        return
    if data.pairs:
        raise ValueError(f"train.objective={objective}: {where} holds preference pairs, and {objective} would learn "
                         "the rejected answers too; use train.objective=dpo (or tokenize the chosen answers as "
                         "messages)")
    if objective == "rft" and data.manifest.get("mode", "sft") != "sft":
        raise ValueError(f"train.objective=rft fine-tunes on the best candidates' answers, but {where} was tokenized "
                         f"with --mode {data.manifest.get('mode')} (the loss covers the prompts too); tokenize the "
                         "best candidates with --mode sft")


def dpo_terms(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per-pair DPO terms from (P, 2) answer log-probabilities (column 0 chosen, 1 rejected)."""
    rewards = beta * (policy - reference.detach())  # (P, 2)
    margin = rewards[:, 0] - rewards[:, 1]
    return {"loss": -F.logsigmoid(margin), "chosen": rewards[:, 0].detach(), "rejected": rewards[:, 1].detach(),
            "correct": (margin.detach() > 0).to(torch.float64)}


class DPOStep(TrainStep):
    """One optimizer step of DPO over micro-batches of whole pairs (see the module docstring).

    ``reference`` is the frozen reference model (sharded like ``model`` under FSDP2); the other
    arguments are :class:`TrainStep`'s. Micro-batches come from :class:`~omniloom.data.pairs.PairLoader`.
    """

    def __init__(self, model: nn.Module, reference: nn.Module, train_cfg: TrainConfig, vocab: Any | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(model, train_cfg, vocab=vocab, device=device)
        self.reference = reference
        self.text_size = int(vocab.text_size) if vocab is not None else None
        if train_cfg.dpo_span == "text" and self.text_size is None:
            raise ValueError("train.dpo_span=text needs the vocabulary (which ids are text), but none was given")
        ref = TokenLosses(reference)
        self.ref_losses = torch.compile(ref) if train_cfg.compile else ref

    def _answer_logps(self, mb: dict[str, torch.Tensor], losses: nn.Module | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P, 2) summed log-probabilities of each pair's answers, the per-token losses (N,) and
        the side of each (N,) (0 chosen, 1 rejected)."""
        ce, targets = self._token_losses(mb, losses)
        seq = mb["seq_ids"][mb["loss_mask"].bool()]  # (N,), the same row-major order as ``ce``
        pairs = int(mb["pairs"])
        counted = -ce
        if self.cfg.dpo_span == "text":  # only the answers' text ids (a transcript, a text answer)
            counted = counted * (targets < self.text_size).to(ce.dtype)
        logps = torch.zeros(2 * pairs, dtype=ce.dtype, device=ce.device).index_add(0, seq, counted)
        return logps.view(pairs, 2), ce, seq % 2

    def _global_counts(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float, float, float]:
        """(pairs, chosen answer tokens, answer tokens, tokens) of the global batch (all ranks)."""
        local = torch.zeros(4, dtype=torch.float64)
        for mb in micro_batches:
            counted = mb["loss_mask"].bool()
            local += torch.tensor([float(mb["pairs"]), float((mb["seq_ids"][counted] % 2 == 0).sum()),
                                   float(counted.sum()), float(mb["ids"].numel())], dtype=torch.float64)
        n = self._all_reduce(local.to(self.device)).cpu()
        return float(n[0]), float(n[1]), float(n[2]), float(n[3])

    def __call__(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        lr = self._begin(micro_batches)
        n_pairs, n_chosen, n_answer, n_tokens = self._global_counts(micro_batches)
        beta, w = self.cfg.dpo_beta, self.cfg.dpo_sft_weight
        scale = self.world_size if self.fsdp else 1.0  # FSDP2 averages gradients over ranks
        # sums over this rank's pairs: dpo loss, chosen reward, rejected reward, correct, chosen nll
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        for i, mb in enumerate(micro_batches):
            mb = self._to_device(mb)
            if self.fsdp:  # reduce-scatter only after the last micro-batch
                self.model.set_requires_gradient_sync(i == len(micro_batches) - 1)
            with torch.no_grad():
                ref, _, _ = self._answer_logps(mb, self.ref_losses)
            policy, ce, side = self._answer_logps(mb)
            t = dpo_terms(policy, ref, beta)
            chosen_nll = ce[side == 0].sum()
            objective = t["loss"].sum() / max(n_pairs, 1.0)
            if w > 0:
                objective = objective + w * chosen_nll / max(n_chosen, 1.0)
            (objective * scale).backward()
            sums += torch.stack([t["loss"].detach().sum().double(), t["chosen"].sum().double(),
                                 t["rejected"].sum().double(), t["correct"].sum(), chosen_nll.detach().double()])
        gn = self._apply_gradients()
        return {**_summarise(self._all_reduce(sums).cpu(), n_pairs, n_chosen, w), "lr": lr, "grad_norm": gn,
                "tokens": n_tokens, "loss_tokens": n_answer}

    @torch.no_grad()
    def eval_pairs(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """DPO loss and metrics over ``batches`` of pairs (all ranks together), no gradient."""
        self.model.eval()
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        counts = torch.zeros(2, dtype=torch.float64, device=self.device)
        for mb in batches:
            mb = self._to_device(mb)
            ref, _, _ = self._answer_logps(mb, self.ref_losses)
            policy, ce, side = self._answer_logps(mb)
            t = dpo_terms(policy, ref, self.cfg.dpo_beta)
            sums += torch.stack([t["loss"].sum().double(), t["chosen"].sum().double(), t["rejected"].sum().double(),
                                 t["correct"].sum(), ce[side == 0].sum().double()])
            counts += torch.tensor([policy.shape[0], int((side == 0).sum())], dtype=torch.float64, device=self.device)
        both = self._all_reduce(torch.cat([sums, counts])).cpu()
        self.model.train()
        return _summarise(both[:5], float(both[5]), float(both[6]), self.cfg.dpo_sft_weight)


def _summarise(sums: torch.Tensor, n_pairs: float, n_chosen: float, sft_weight: float) -> dict[str, float]:
    """Global sums (dpo loss, chosen reward, rejected reward, correct, chosen nll) -> logged means."""
    p, c = max(n_pairs, 1.0), max(n_chosen, 1.0)
    dpo, chosen, rejected = float(sums[0]) / p, float(sums[1]) / p, float(sums[2]) / p
    nll = float(sums[4]) / c
    return {"loss": dpo + sft_weight * nll, "dpo/loss": dpo, "dpo/chosen_reward": chosen,
            "dpo/rejected_reward": rejected, "dpo/margin": chosen - rejected, "dpo/accuracy": float(sums[3]) / p,
            "dpo/chosen_nll": nll, "pairs": n_pairs}


def val_pair_loader(val_set: Any, cfg: Any, rank: int = 0, world: int = 1) -> Any:
    """An unshuffled :class:`~omniloom.data.pairs.PairLoader` over the validation pairs, with the
    largest eval batch (up to ``train.batch_size`` rows) and micro-batch they fill."""
    from ..data.pairs import PairLoader

    seq_len, tc = cfg.data.seq_len, cfg.train
    try:
        rows = PairLoader(val_set, seq_len, world, 1, rank, world, tc.seed, shuffle=False).rows_per_epoch
    except ValueError as e:
        raise ValueError(f"validation set data.val: {e}") from None
    micro = max(1, min(tc.micro_batch_size, rows // world))
    unit = world * micro
    batch = max(unit, min(tc.batch_size, rows) // unit * unit)
    return PairLoader(val_set, seq_len, batch, micro, rank, world, tc.seed, shuffle=False)


def dpo_validation(step: DPOStep, loader: Any, batches: int) -> dict[str, float]:
    """``eval_loss`` (the DPO objective) and ``eval_dpo/*`` metrics over the first ``batches``
    batches of an unshuffled :class:`~omniloom.data.pairs.PairLoader` (every eval sees the same pairs)."""
    n = min(batches, loader.batches_per_epoch)
    out = step.eval_pairs([mb for i in range(n) for mb in loader.batch_at(0, i)])
    return {"eval_loss": out["loss"], **{f"eval_{k}": v for k, v in out.items() if k.startswith("dpo/")}}
