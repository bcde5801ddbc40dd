"""Low-rank adapters (LoRA) on the decoder's projections, and merging them back.

``apply_lora(model, targets, rank, alpha)`` swaps each targeted ``nn.Linear`` (``q_proj``,
``v_proj``, ``gate_proj``, ...) for a :class:`LoRALinear` that keeps the frozen weight under the
same name (``...q_proj.weight``, so base checkpoints load unchanged) and adds ``lora_a`` (r, in)
and ``lora_b`` (out, r)::

    y = x W^T + (alpha / r) * (x A^T) B^T          A ~ Kaiming-uniform, B = 0 (starts as the base)

A state dict with adapters holds ``<name>.lora_a`` / ``<name>.lora_b`` beside ``<name>.weight``;
:func:`merge_lora_state` folds them into the weights (``W + (alpha / r) B A``) for inference and
export, so nothing downstream needs to know adapters existed.

**Position-gated adapters** (``train.lora_gate_from``, ``apply_lora(..., gate_from=N)``): the update
applies only at positions whose input token id is >= N (a graft's appended ids: media codes,
specials, voice and time tags), as a "modality expert" does; at every other position the layer is
the frozen base. A text-only input then runs the base's function exactly, so a grafted model keeps
the base's knowledge by construction, while its media positions (and, through attention, the
answers that read them) learn. ``train.lora_gate_mode='onward'`` widens the gate from the first
such id of a conversation to its end: the answer about an image runs adapted layers too, and a
conversation of text alone still runs the base exactly. ``'tag'`` opens the gate at one id only, the
task tag ``<|task|>`` (or the id ``lora_gate_from`` names), onward to the conversation's end: every
conversation without the tag, media and all, runs the source model exactly, so a skill taught on
tagged data (a new language) costs the untagged ones nothing. Such adapters cannot be folded into one weight matrix: they stay
unmerged at inference, and the plain-weight exports (hf, gguf) refuse them.

Why not ``peft``: peft wraps the model and renames every parameter (``base_model.model...``,
``lora_A.default``), which our checkpoints, FSDP2 wrapping, ``torch.compile`` of the loss and the
HF export would all have to undo; this module is ~80 lines and keeps our names.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LORA_GATE_MODES, LORA_TARGETS

__all__ = ["LoRALinear", "apply_lora", "apply_lora_from_config", "merge_lora_state", "LORA_TARGETS", "has_lora",
           "is_adapter_key", "lora_gate_from", "adapters_for_inference", "fold_adapters"]

class LoRALinear(nn.Module):
    """A frozen bias-free linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if base.bias is not None:
            raise ValueError("LoRA here wraps bias-free linear layers only")
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.rank, self.alpha = int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        out_f, in_f = base.weight.shape
        self.lora_a = nn.Parameter(torch.empty(self.rank, in_f, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(out_f, self.rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., in) -> (..., out); ``gate`` (..., 1) in {0, 1} switches the update per position."""
        h = F.linear(x, self.lora_a)  # (..., r)
        if gate is not None:  # gated at rank r: the product kept for backward is r wide, not out wide
            h = h * gate
        return F.linear(x, self.weight) + F.linear(h, self.lora_b) * self.scale

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, rank={self.rank}, alpha={self.alpha}"


def apply_lora(model: nn.Module, targets: Iterable[str], rank: int, alpha: float, gate_from: int = 0,
               gate_mode: str = "token") -> list[str]:
    """Replace the targeted linear layers in place; returns the names of the wrapped modules.

    ``gate_from`` > 0: the adapters act only at positions whose input id is >= it (the model's
    ``lora_gate_from``, read by its forward), or with ``gate_mode='onward'`` from the first such
    id of a document to its end, or with ``gate_mode='tag'`` from the first id *equal* to it to the
    document's end; 0: at every position."""
    targets = list(targets)
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad:
        raise ValueError(f"LoRA target(s) {bad} unknown; choose from {', '.join(LORA_TARGETS)}")
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    wrapped = []
    for name, module in list(model.named_modules()):
        for t in targets:
            child = getattr(module, t, None)
            if isinstance(child, nn.Linear):
                setattr(module, t, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{t}" if name else t)
    if not wrapped:
        raise ValueError(f"no linear layer named {targets} in the model")
    if gate_from < 0:
        raise ValueError(f"the adapters' gate must be an id >= 0 (0: every position), got {gate_from}")
    if gate_mode not in LORA_GATE_MODES:
        raise ValueError(f"the adapters' gate mode must be one of {', '.join(LORA_GATE_MODES)}, got {gate_mode!r}")
    if gate_from:
        model.lora_gate_from = int(gate_from)
        model.lora_gate_mode = gate_mode
    return wrapped


def lora_gate_from(train_cfg, vocab) -> int:
    """``train.lora_gate_from`` as an id of ``vocab`` (a :class:`~omniloom.tokens.Vocab`): -1 is the
    first id after the text ids, or, with ``lora_gate_mode='tag'``, the task tag ``<|task|>``."""
    g = int(train_cfg.lora_gate_from)
    if g != -1:
        return g
    if train_cfg.lora_gate_mode == "tag":
        return vocab.special("task")  # a vocabulary without the reserved slot: ValueError naming it
    return int(vocab.text_size)


def apply_lora_from_config(model: nn.Module, train_cfg, vocab) -> list[str]:
    """The adapters ``train_cfg`` names (``lora_targets``, ``lora_rank``, ``lora_alpha`` and the gate,
    resolved in ``vocab``), put on ``model`` as the trainer builds them; returns the wrapped names."""
    targets = [t.strip() for t in train_cfg.lora_targets.split(",") if t.strip()]
    gate = lora_gate_from(train_cfg, vocab) if train_cfg.lora_gate_from else 0
    return apply_lora(model, targets, train_cfg.lora_rank, train_cfg.lora_alpha, gate, train_cfg.lora_gate_mode)


def adapters_for_inference(model: nn.Module, state: dict[str, torch.Tensor], cfg, vocab) -> dict[str, torch.Tensor]:
    """A checkpoint's state for ``model`` as it answers: adapters folded into the weights, or, when
    they are position-gated (``train.lora_gate_from``), put on ``model`` unmerged and kept. ``vocab``
    (a :class:`~omniloom.tokens.Vocab`) resolves the gate's id; None puts the adapters on with a
    placeholder gate, for a caller that only rewrites the weights (an export)."""
    state = fold_adapters(state, cfg.train)
    if not has_lora(state):
        return state
    tc = cfg.train
    ranks = {v.shape[0] for k, v in state.items() if k.endswith(".lora_a")}
    if len(ranks) != 1:
        raise ValueError(f"the checkpoint's adapters have mixed ranks {sorted(ranks)}")
    targets = sorted({k.removesuffix(".lora_a").rsplit(".", 1)[-1] for k in state if k.endswith(".lora_a")})
    gate = lora_gate_from(tc, vocab) if vocab is not None else max(int(tc.lora_gate_from), 1)
    apply_lora(model, targets, ranks.pop(), tc.lora_alpha, gate, tc.lora_gate_mode)
    return state


def fold_adapters(state: dict[str, torch.Tensor], train_cfg) -> dict[str, torch.Tensor]:
    """``state`` with its adapters folded into the weights, unless they are position-gated
    (``train.lora_gate_from``), which no merge can express: those are returned as they are."""
    if has_lora(state) and not train_cfg.lora_gate_from:
        return merge_lora_state(state, train_cfg.lora_alpha)
    return state


def is_adapter_key(name: str) -> bool:
    """Whether a parameter / state-dict name is an adapter's (``...lora_a`` or ``...lora_b``)."""
    return name.endswith((".lora_a", ".lora_b"))


def has_lora(state: dict[str, torch.Tensor]) -> bool:
    return any(is_adapter_key(k) for k in state)


def merge_lora_state(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A state dict with adapters -> plain weights ``W + (alpha / r) B A`` (in W's dtype). Not for
    position-gated adapters (see :func:`adapters_for_inference`)."""
    out = {k: v for k, v in state.items() if not is_adapter_key(k)}
    for k, a in state.items():
        if not k.endswith(".lora_a"):
            continue
        stem = k.removesuffix(".lora_a")
        b, w = state.get(stem + ".lora_b"), state.get(stem + ".weight")
        if b is None or w is None:
            raise ValueError(f"adapter {stem} is incomplete (lora_b or weight missing)")
        r = a.shape[0]
        out[stem + ".weight"] = (w.float() + (alpha / r) * (b.float() @ a.float())).to(w.dtype)
    return out
