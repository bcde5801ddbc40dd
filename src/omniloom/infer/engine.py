"""The engine works on ids: batched prefill + decode over the static KV cache.

Requests of different prompt lengths are left-padded into one batch; padded cache slots are
masked out (``kv_mask``) and each row keeps its own RoPE positions, so a request gives the same
tokens alone or batched. A request may carry a *constraint* (the span grammar) that masks the
logits at every step, and an unconditional prompt for classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

from .sampling import SamplingParams, sample_next

__all__ = ["Constraint", "Request", "Engine", "SamplerState", "check_request"]


class Constraint(Protocol):
    """Per-request grammar state, advanced token by token."""

    def allowed(self) -> torch.Tensor | None:
        """(V,) bool mask of legal next tokens, or None for no restriction."""

    def advance(self, token: int) -> None: ...

    def finished(self) -> bool:
        """True when the grammar says the answer is complete."""

    def guidance_active(self) -> bool:
        """True while classifier-free guidance applies (e.g. inside an image span)."""


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    constraint: Constraint | None = None
    uncond_prompt: list[int] | None = None  # CFG: the prompt with its condition dropped
    cfg_scale: float = 1.0


def check_request(r: Request, i: int, vocab_size: int) -> None:
    """ValueError naming request ``i`` when its sampling parameters or prompt are unusable."""
    r.params.validate()
    if not r.prompt:
        raise ValueError(f"request {i}: empty prompt")
    if any(not 0 <= t < vocab_size for t in r.prompt):
        raise ValueError(f"request {i}: prompt holds ids outside [0, {vocab_size})")


@dataclass
class SamplerState:
    """What one request's sampling carries from token to token (its seeded generator, the ids seen
    for the repetition penalty), and the per-token rules every engine applies alike: guidance,
    the grammar's mask, sampling, the constraint's advance, when to stop."""

    generator: torch.Generator | None
    seen: torch.Tensor  # (V,) bool

    @classmethod
    def start(cls, r: Request, vocab_size: int) -> "SamplerState":
        g = torch.Generator(device="cpu").manual_seed(r.params.seed) if r.params.seed is not None else None
        seen = torch.zeros(vocab_size, dtype=torch.bool)
        if r.params.repetition_penalty != 1.0:
            seen[torch.tensor(r.prompt)] = True
        return cls(g, seen)

    def pick(self, r: Request, logits: torch.Tensor, uncond_logits: torch.Tensor | None = None) -> int:
        """The next token from the conditional (and, under guidance, unconditional) logits (V,)."""
        lg = logits.float().cpu()
        c = r.constraint
        if uncond_logits is not None and c is not None and c.guidance_active():
            lu = uncond_logits.float().cpu()
            lg = lu + r.cfg_scale * (lg - lu)
        allowed = c.allowed() if c is not None else None
        tok = sample_next(lg, r.params, self.generator, self.seen if r.params.repetition_penalty != 1.0 else None,
                          allowed)
        self.seen[tok] = True
        if c is not None:
            c.advance(tok)
        return tok

    @staticmethod
    def stops(r: Request, tok: int, produced: int) -> bool:
        """True when ``tok`` (the ``produced``-th new token) ends the request."""
        c = r.constraint
        return tok in r.params.stop_ids or produced >= r.params.max_new_tokens or (c is not None and c.finished())


class Engine:
    """Batched generation over ids with a model from :mod:`omniloom.model`."""

    #: with ``compile=True`` the cache length is rounded up to a multiple of this, so that prompts of
    #: different lengths reuse one compiled decode step
    CACHE_BUCKET = 256

    def __init__(self, model: torch.nn.Module, max_seq_len: int | None = None, device=None, dtype=None,
                 compile: bool = False):
        self.model = model.eval()
        self.max_seq_len = max_seq_len or model.cfg.max_seq_len
        self.device = device or next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        self.vocab_size = model.cfg.vocab_size
        self._cache_batch = 0
        self.compiled = compile
        # the one-token decode step, compiled for fixed shapes (batch, cache length) when asked:
        # the prefill stays eager (its length varies with every prompt)
        self._decode = torch.compile(self._decode_step, dynamic=False) if compile else self._decode_step

    def _decode_step(self, tok: torch.Tensor, pos: torch.Tensor, slot: torch.Tensor, kv_mask: torch.Tensor):
        return self.model(tok, positions=pos, input_pos=slot, kv_mask=kv_mask)[:, -1]

    def _ensure_cache(self, batch: int, length: int) -> None:
        if self._cache_batch != batch or self.model.cache_len != length:
            self.model.setup_cache(batch, length, dtype=self.dtype, device=self.device)
            self._cache_batch = batch

    @torch.inference_mode()
    def stream(self, requests: list[Request]) -> Iterator[tuple[int, int]]:
        """Yield ``(request_index, token_id)`` as tokens are sampled, all requests in one batch.

        A request stops at one of its ``stop_ids`` (which is yielded), when its constraint says it
        is finished, or after ``max_new_tokens``.
        """
        if not requests:
            return
        rows: list[list[int]] = []
        owner: list[tuple[int, bool]] = []  # row -> (request index, is the unconditional row)
        for i, r in enumerate(requests):
            check_request(r, i, self.vocab_size)
            rows.append(list(r.prompt))
            owner.append((i, False))
            if r.uncond_prompt is not None and r.cfg_scale != 1.0:
                rows.append(list(r.uncond_prompt))
                owner.append((i, True))
        L = max(len(p) for p in rows)
        budget = max(r.params.max_new_tokens for r in requests)
        need = L + budget
        if self.compiled:  # round up to the bucket so that one compiled step serves many prompt lengths
            need = -(-need // self.CACHE_BUCKET) * self.CACHE_BUCKET
        S = min(self.max_seq_len, need)
        if L >= S:
            raise ValueError(f"prompt of {L} tokens leaves no room in a context of {self.max_seq_len}")
        B = len(rows)
        self._ensure_cache(B, S)
        dev = self.device
        pads = torch.tensor([L - len(p) for p in rows], device=dev)  # (B,)
        ids = torch.zeros(B, L, dtype=torch.long, device=dev)
        for b, p in enumerate(rows):
            ids[b, L - len(p):] = torch.tensor(p, device=dev)
        kv_mask = torch.zeros(B, S, dtype=torch.bool, device=dev)
        kv_mask[:, :L] = torch.arange(L, device=dev)[None, :] >= pads[:, None]
        slots = torch.arange(L, device=dev)
        positions = (slots[None, :] - pads[:, None]).clamp(min=0)  # (B, L)
        logits = self.model(ids, positions=positions, input_pos=slots, kv_mask=kv_mask)[:, -1]  # (B, V)

        states = [SamplerState.start(r, self.vocab_size) for r in requests]
        done = [False] * len(requests)
        produced = [0] * len(requests)
        cond_row = {i: b for b, (i, u) in enumerate(owner) if not u}
        uncond_row = {i: b for b, (i, u) in enumerate(owner) if u}
        for step in range(S - L):
            next_tok = torch.zeros(B, dtype=torch.long, device=dev)
            for i, r in enumerate(requests):
                if done[i]:
                    continue
                tok = states[i].pick(r, logits[cond_row[i]],
                                     logits[uncond_row[i]] if i in uncond_row else None)
                produced[i] += 1
                yield i, tok
                if states[i].stops(r, tok, produced[i]):
                    done[i] = True
                next_tok[cond_row[i]] = tok
                if i in uncond_row:
                    next_tok[uncond_row[i]] = tok
            if all(done):
                return
            slot = L + step
            if slot >= S:
                return
            kv_mask[:, slot] = True
            pos = (slot - pads)[:, None]  # (B, 1)
            logits = self._decode(next_tok[:, None], pos, torch.tensor([slot], device=dev), kv_mask)

    def generate(self, requests: list[Request]) -> list[list[int]]:
        """All new tokens per request (convenience over :meth:`stream`)."""
        out: list[list[int]] = [[] for _ in requests]
        for i, tok in self.stream(requests):
            out[i].append(tok)
        return out
