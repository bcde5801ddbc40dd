"""One optimizer step over a list of micro-batches: the heart of training, shared by the loop
and the throughput benchmark.

``TrainStep(model, train_cfg, vocab)(micro_batches)`` runs forward/backward on each micro-batch
(bf16 autocast where the hardware has it), accumulates gradients, clips, steps AdamW with a
warmup + cosine schedule, and returns plain floats.

The loss is the mean cross-entropy over the target tokens that count (``loss_mask``) in the whole
*global* batch: every micro-batch on every rank is divided by the same global token count, so
one rank with 4 accumulation steps and 4 ranks with 1 give the same gradient. Under
``torch.distributed`` the token counts are all-reduced; gradients are reduced by FSDP2 when the
model is ``fully_shard``-ed, otherwise (plain replicated model) by an all-reduce here.

The model is any callable ``model(ids, positions=..., doc_ids=...) -> logits (B, T, V)``; the
omniloom :class:`~omniloom.model.llama.Transformer` and a thin wrapper around
``transformers.LlamaForCausalLM`` both qualify.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..config import TrainConfig

__all__ = ["TrainStep", "lr_at", "resolve_dtype", "cpu_has_bf16", "build_optimizer", "masked_loss",
           "freeze_for_adapters", "zero_rows_below", "ROW_MASKED"]

MODALITIES_FALLBACK = ("text", "special", "image", "audio")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU has native bf16 math (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str | torch.device) -> torch.dtype:
    """``train.dtype`` -> the autocast dtype (``torch.float32`` means no autocast)."""
    if dtype == "fp32":
        return torch.float32
    if dtype == "bf16":
        return torch.bfloat16
    if dtype != "auto":
        raise ValueError(f"train.dtype must be 'auto', 'bf16' or 'fp32', got {dtype!r}")
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if dev.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return torch.float32


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, cosine to ``lr * min_lr_ratio``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * t))


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: str | torch.device) -> torch.optim.AdamW:
    """AdamW, weight decay on matrices only (not norms/biases); fused on CUDA and CPU, foreach elsewhere."""
    decay, no_decay, slots, rows = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.removeprefix("_orig_mod.") == "image_pos.weight":
            slots.append(p)
        elif cfg.freeze_base and name.removeprefix("_orig_mod.") in ROW_MASKED:
            # decay would move the frozen rows, whose gradient is masked to zero; at the model's rate
            # they stay in no_decay, so checkpoints from before train.rows_lr_mult resume as they were
            (rows if cfg.rows_lr_mult != 1.0 else no_decay).append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if rows:  # the rows trained beside the adapters: no decay, their own rate (lr_scale)
        groups.append({"params": rows, "weight_decay": 0.0, "lr_scale": cfg.rows_lr_mult})
    if slots:  # the image slot table: no decay (it is a position code), its own rate (lr_scale)
        groups.append({"params": slots, "weight_decay": 0.0, "lr_scale": cfg.image_pos_lr_mult})
    # fused (one kernel per tensor) on CUDA and CPU: on this project's 2-core CPU the foreach path
    # falls back to one op per tensor per update term and took about 4x as long (docs/benchmarks.md)
    fused = torch.device(device).type in ("cuda", "cpu")
    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, **kwargs)


#: the matrices whose rows below ``train.train_rows_from`` stay frozen under ``train.freeze_base``
ROW_MASKED = ("embed_tokens.weight", "lm_head.weight")


def freeze_for_adapters(model: nn.Module) -> list[str]:
    """``train.freeze_base``: every parameter frozen but the adapters and the row-masked matrices.
    Returns the names left trainable."""
    from ..model.lora import is_adapter_key

    keep = []
    for name, p in model.named_parameters():
        bare = name.removeprefix("_orig_mod.")
        trainable = is_adapter_key(bare) or bare in ROW_MASKED
        p.requires_grad_(trainable)
        if trainable:
            keep.append(bare)
    return keep


def zero_rows_below(grad: torch.Tensor, rows_from: int, keep: torch.Tensor | None = None) -> None:
    """Zero the gradient rows ``[0, rows_from)`` in place (a full tensor, or an FSDP2 Shard(0) DTensor),
    except the rows ``keep`` names (a sorted 1-D long tensor of ids, ``train.train_rows_also``)."""
    if hasattr(grad, "to_local"):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local = grad.to_local()
        _, offset = compute_local_shape_and_global_offset(grad.shape, grad.device_mesh, grad.placements)
        start = int(offset[0])
    else:
        local, start = grad, 0
    n = min(max(rows_from - start, 0), local.shape[0])
    if not n:
        return
    kept = None
    if keep is not None and keep.numel():
        rows = keep[(keep >= start) & (keep < start + n)].to(local.device) - start
        kept = (rows, local[rows].clone()) if rows.numel() else None
    local[:n].zero_()
    if kept is not None:
        local[kept[0]] = kept[1]


def masked_loss(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy on the masked targets only.

    ``logits`` is either (B, T, V) for every position, or (N, V) already restricted to the
    ``loss_mask`` positions in row-major order (what ``model(..., logits_index=loss_index(mask))``
    returns). Returns (sum of losses (scalar fp32), per-token losses (N,) fp32, the selected
    targets (N,)).
    """
    mask = loss_mask.bool()
    tgt = targets[mask]  # (N,)
    sel = logits if logits.dim() == 2 else logits[mask]  # (N, V): only the rows that count
    if sel.shape[0] != tgt.shape[0]:
        raise ValueError(f"{sel.shape[0]} logit rows for {tgt.shape[0]} loss positions")
    ce = F.cross_entropy(sel.float(), tgt, reduction="none")  # (N,)
    return ce.sum(), ce.detach(), tgt


def loss_index(loss_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) loss mask -> (N,) int64 flat indices of the positions that count (row-major)."""
    return loss_mask.reshape(-1).nonzero().squeeze(1)


class TokenLosses(nn.Module):
    """``model`` plus its cross-entropy as one module, so that ``torch.compile`` fuses the loss.

    ``forward(ids, positions, doc_ids, index, targets)`` runs the decoder, projects only the flat
    loss positions ``index`` (N,) through the output head and returns the per-token cross-entropy
    (N,) in fp32 against ``targets`` (N,). Compiled, the log-softmax, its gather and its backward
    become a few fused loops instead of (N, V) fp32 tensors written and read back.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids, positions, doc_ids, index, targets):
        logits = self.model(ids, positions=positions, doc_ids=doc_ids, logits_index=index)  # (N, V)
        return F.cross_entropy(logits.float(), targets, reduction="none")


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDPModule)


class TrainStep:
    """Callable doing one optimizer step. Keeps the optimizer and the step counter.

    Args:
        model: ``model(ids, positions=, doc_ids=) -> logits``; may be FSDP2-sharded.
        train_cfg: optimisation settings (lr schedule, clipping, dtype, compile).
        vocab: optional :class:`omniloom.tokens.Vocab` for per-modality losses.
        device: where batches are moved before the forward pass.
        optimizer: reuse an optimizer (default: :func:`build_optimizer`).
    """

    def __init__(
        self,
        model: nn.Module,
        train_cfg: TrainConfig,
        vocab: Any | None = None,
        device: str | torch.device = "cpu",
        optimizer: torch.optim.Optimizer | None = None,
    ):
        self.model = model
        self.cfg = train_cfg
        self.device = torch.device(device)
        self.vocab = vocab
        self.optimizer = optimizer or build_optimizer(model, train_cfg, self.device)
        # train.freeze_base: embedding/output rows below this id get no gradient (resolved from the
        # vocabulary when train_rows_from is -1)
        self.rows_from = 0
        self.rows_also = torch.tensor(train_cfg.rows_also(), dtype=torch.long)
        if train_cfg.freeze_base:
            self.rows_from = train_cfg.train_rows_from if train_cfg.train_rows_from >= 0 else \
                (vocab.text_size if vocab is not None else 0)
        self.amp_dtype = resolve_dtype(train_cfg.dtype, self.device)
        losses = TokenLosses(model)
        self.losses = torch.compile(losses) if train_cfg.compile else losses
        self.step = 0  # optimizer steps done so far
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.fsdp = _is_fsdp(model)
        self._mod_table: torch.Tensor | None = None
        self.modalities: tuple[str, ...] = MODALITIES_FALLBACK
        if vocab is not None:
            self.modalities = tuple(getattr(type(vocab), "MODALITIES", MODALITIES_FALLBACK))
            table = np.asarray(vocab.modality_of(np.arange(vocab.size, dtype=np.int64)), dtype=np.int64)
            self._mod_table = torch.as_tensor(table, device=self.device)  # (V_data,) id -> modality index

    # -- helpers ------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nb = self.device.type == "cuda"
        return {k: v.to(self.device, non_blocking=nb) for k, v in batch.items()}

    def _sync_grads_manually(self) -> None:
        """Replicated (non-FSDP) model on several ranks: sum the partial gradients."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def _token_losses(self, mb: dict[str, torch.Tensor], losses: nn.Module | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token losses (N,) and targets (N,) at the micro-batch's loss positions (row-major),
        from ``losses`` (default: this step's model; DPO passes its reference's)."""
        index = loss_index(mb["loss_mask"])
        targets = mb["targets"].reshape(-1).index_select(0, index)
        if self.cfg.compile:  # N changes every batch: compile for any N at once, not once per N first
            torch._dynamo.maybe_mark_dynamic(index, 0)
            torch._dynamo.maybe_mark_dynamic(targets, 0)
            # while the (B, T) batch shape stays static: a new shape (an eval batch, another run in
            # the same process) recompiles for that shape instead of turning T symbolic, whose
            # generic kernels ran 1.6x slower (bench/train_throughput.py, 2 presets) and which
            # would lose the CPU's blocked attention (its block edges need a concrete T)
            for t in (mb["ids"], mb.get("positions"), mb.get("doc_ids")):
                if t is not None:
                    torch._dynamo.mark_static(t)
        with self._autocast():
            ce = (losses or self.losses)(mb["ids"], mb.get("positions"), mb.get("doc_ids"), index, targets)
        return ce, targets

    def _begin(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """Start a step: train mode, this step's learning rate (returned), no gradients."""
        if not micro_batches:
            raise ValueError("TrainStep needs at least one micro-batch")
        self.model.train()
        lr = lr_at(self.step, self.cfg)
        self.set_lr(lr)
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def _apply_gradients(self) -> float:
        """End a step whose gradients are accumulated: reduce them (replicated ranks), mask the
        frozen rows, clip, step the optimizer; returns the gradient norm before clipping."""
        if self.distributed and not self.fsdp:
            self._sync_grads_manually()
        if self.rows_from:
            for name, p in self.model.named_parameters():
                if p.grad is not None and name.removeprefix("_orig_mod.") in ROW_MASKED:
                    zero_rows_below(p.grad, self.rows_from, self.rows_also)

        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip if self.cfg.grad_clip > 0
                                            else float("inf"))
        if hasattr(gn, "full_tensor"):  # DTensor under FSDP2
            gn = gn.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(gn)

    # -- the step -----------------------------------------------------------------------------
    def __call__(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        lr = self._begin(micro_batches)

        # global number of target tokens that count: the common denominator of every micro-batch
        local = torch.tensor(
            [sum(int(mb["loss_mask"].sum()) for mb in micro_batches),
             sum(mb["ids"].numel() for mb in micro_batches)],
            dtype=torch.float64,
        )
        counts = self._all_reduce(local.to(self.device)).cpu()
        n_loss, n_tokens = float(counts[0]), float(counts[1])
        denom = max(n_loss, 1.0)
        # FSDP2 averages gradients over ranks; scale up so the result is the global-mean gradient
        scale = self.world_size if self.fsdp else 1.0

        M = len(self.modalities)
        mod_sum = torch.zeros(M, dtype=torch.float64, device=self.device)
        mod_cnt = torch.zeros(M, dtype=torch.float64, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)

        extra = self._contrastive(micro_batches) if self.cfg.contrastive_weight > 0 else {}
        for i, mb in enumerate(micro_batches):
            mb = self._to_device(mb)
            if self.fsdp:  # reduce-scatter only after the last micro-batch
                self.model.set_requires_gradient_sync(i == len(micro_batches) - 1)
            ce, tgt = self._token_losses(mb)
            s = ce.sum()
            (s * (scale / denom)).backward()
            ce = ce.detach()
            loss_sum += s.detach().double()
            if self._mod_table is not None and tgt.numel():
                mod = self._mod_table[tgt.clamp(0, self._mod_table.numel() - 1)]  # (N,) modality index
                mod_sum.index_add_(0, mod, ce.double())
                mod_cnt.index_add_(0, mod, torch.ones_like(ce, dtype=torch.float64))

        gn = self._apply_gradients()

        stats = self._all_reduce(torch.cat([loss_sum[None], mod_sum, mod_cnt])).cpu()
        out = {
            "loss": float(stats[0]) / denom,
            "lr": lr,
            "grad_norm": gn,
            "tokens": n_tokens,
            "loss_tokens": n_loss,
        }
        if self._mod_table is not None:
            for j, name in enumerate(self.modalities):
                c = float(stats[1 + M + j])
                if c > 0:
                    out[f"loss/{name}"] = float(stats[1 + j]) / c
        return {**out, **extra}

    def _contrastive(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """``train.contrastive_weight``: accumulate the gradient of weight x the symmetric InfoNCE
        over the (media, text) pairs of this rank's whole batch (every micro-batch), each side run
        stand-alone through the model (:mod:`omniloom.infer.embed`); returns its stats.

        Runs before the LM micro-batches, so under FSDP2 the last micro-batch's reduce-scatter
        carries this gradient too; every rank runs one forward (a dummy one without pairs), as the
        sharded forward is collective. Negatives are the rank's own pairs; pairs whose texts are
        identical are not each other's negatives (the world repeats short answers).
        """
        from ..infer.embed import pooled_states
        from ..tokens.pairs import embed_sequence, find_pairs

        if self.vocab is None:
            raise ValueError("train.contrastive_weight needs the vocabulary (TrainStep(vocab=...)) to find pairs")
        pairs = [p for mb in micro_batches  # read on the host: the batches may already sit on the GPU
                 for row_ids, row_docs in zip(mb["ids"].cpu(), mb.get("doc_ids", torch.zeros_like(mb["ids"])).cpu())
                 for p in find_pairs(row_ids, self.vocab, row_docs)]
        n = len(pairs)
        if n < 2 and not self.fsdp:
            return {"contrastive_pairs": float(n)}
        seqs, masks = [], []
        for p in pairs:
            for kind, ids in ((p.kind, p.media), ("text", p.text)):
                s, m = embed_sequence(kind, ids, self.vocab)
                seqs.append(s)
                masks.append(m)
        if self.fsdp:
            self.model.set_requires_gradient_sync(False)
        with self._autocast():
            h = pooled_states(self.model, seqs or [[0]], masks or [[True]])  # (2n, dim) fp32
        if n < 2:  # FSDP rank without pairs: take part in the collectives, add nothing
            (h.sum() * 0.0).backward()
            return {"contrastive_pairs": float(n)}
        z = F.normalize(h, dim=-1)
        media, text = z[0::2], z[1::2]  # (n, dim) each
        logits = media @ text.T / self.cfg.contrastive_temperature  # (n, n)
        same = torch.tensor([[a.text == b.text for b in pairs] for a in pairs], device=logits.device)
        logits = logits.masked_fill(same & ~torch.eye(n, dtype=torch.bool, device=logits.device), float("-inf"))
        target = torch.arange(n, device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        # FSDP2 averages gradients over ranks; a replicated model's are summed (_sync_grads_manually)
        factor = self.cfg.contrastive_weight / (1.0 if self.fsdp else self.world_size)
        (loss * factor).backward()
        acc = 0.5 * float((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean())
        return {"loss/contrastive": float(loss.detach()), "contrastive_pairs": float(n), "contrastive_acc": acc}

    @torch.no_grad()
    def eval_loss(self, batches: list[dict[str, torch.Tensor]]) -> float:
        """Mean masked cross-entropy over ``batches`` (all ranks together), no gradient."""
        self.model.eval()
        tot = torch.zeros(2, dtype=torch.float64, device=self.device)
        for mb in batches:
            mb = self._to_device(mb)
            ce, _ = self._token_losses(mb)
            tot[0] += ce.sum().double()
            tot[1] += ce.numel()
        tot = self._all_reduce(tot).cpu()
        self.model.train()
        return float(tot[0]) / max(float(tot[1]), 1.0)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain (non-distributed) state; the checkpoint module handles the FSDP2 case."""
        return {"step": self.step, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
