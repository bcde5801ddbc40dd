"""A Llama-compatible decoder over token ids: RMSNorm, RoPE, GQA, SwiGLU, optional QK-norm.

Modules and pure functions only. Parallelism, compilation and checkpoint loading are applied
from outside. The parameter names and the RoPE layout (rotate-half) follow Hugging Face Llama so
that conversion is a renaming (see ``hf.py``).

Three ways to call :meth:`Transformer.forward`:

* training: ``model(ids)`` or ``model(ids, positions=pos, doc_ids=doc)`` for packed sequences
  (attention never crosses a document boundary);
* prefill / decode with the static KV cache: ``model.setup_cache(B, S)``, then
  ``model(ids, input_pos=torch.arange(t0, t0 + T))`` chunk by chunk;
* batched decode with ragged prompts: also pass ``kv_mask`` (B, S) marking valid cache slots.
"""

from __future__ import annotations

import math

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .lora import LoRALinear

__all__ = ["Transformer", "KVCache", "rope_tables", "apply_rope", "doc_causal_mask"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # computed in fp32 like HF Llama, returned in the input dtype -- or, under autocast, in the
        # autocast dtype: the projections that follow would cast it anyway, once each (3x for q/k/v)
        out_dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(out_dtype)


def rope_tables(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape (seq_len, head_dim), rotate-half layout (HF Llama)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    t = torch.arange(seq_len, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)  # (S, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (S, D)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B, 1, T, D) or (1, 1, T, D)."""
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


def doc_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, 1, T, T) bool mask: causal and within the same document."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]


#: CPU training/scoring attention is blocked from this many positions (one block per 256 positions),
#: up to BLOCKED_CAUSAL_MAX for plain causal attention (beyond it SDPA's causal kernel is as fast) and
#: at any length with packed documents (SDPA's masked kernel is the slow one); bench/attention_cpu.py
BLOCKED_ATTENTION_MIN = 256
BLOCKED_CAUSAL_MAX = 1024
_BLOCK = 256


def blocked_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             mask: torch.Tensor | None = None, block: int = _BLOCK) -> torch.Tensor:
    """Causal self-attention (no cache) computed in query blocks, each against only the keys it can see.

    q (B, H, T, D); k, v (B, G, T, D) with H a multiple of G (grouped-query); ``mask`` None (plain
    causal) or a (B or 1, 1, T, T) bool mask that is itself causal, no query seeing a later key
    (e.g. :func:`doc_causal_mask`) -> (B, H, T, D), the same as
    ``scaled_dot_product_attention(q, k, v, is_causal=True / attn_mask=mask, enable_gqa=True)``.
    Keys after a query's block are never looked at, so a non-causal mask would be cut short: the
    decoder only ever hands it masks built by :func:`doc_causal_mask`.

    Why: PyTorch's CPU flash-attention kernel computes every block of a causal mask, the masked
    half included, and in short query tiles. Here the query block [a, b) attends keys [0, b) only
    (about half the work at 2 blocks and more, skipped), and the H/G query heads that share a
    key/value head are folded into one query matrix of (H/G)*(b-a) rows, so each call is larger
    and the keys are read once per group. On a 2-core CPU this takes 1.2-1.7x less time, forward
    and backward, than SDPA for causal attention up to 1,024 positions and for packed documents at
    any length (``bench/attention_cpu.py``); longer plain causal sequences and GPUs keep SDPA.
    """
    B, H, T, D = q.shape
    G = k.shape[1]
    R = H // G
    # edges every `block` positions, a short tail joining the block before it; no division of T by
    # a count that depends on T, which torch.compile cannot lower with a symbolic T
    edges = list(range(0, T, block))
    if len(edges) > 1 and T - edges[-1] < block // 2:
        edges.pop()
    edges.append(T)
    n = len(edges) - 1
    tri = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if mask is None else None
    outs = []
    for a, b in zip(edges, edges[1:]):
        m = tri[a:b, :b].repeat(R, 1) if mask is None else mask[:, :, a:b, :b].repeat(1, 1, R, 1)
        qg = q[:, :, a:b].reshape(B, G, R * (b - a), D)  # query heads h = g*R + r, row r*(b-a) + t
        y = F.scaled_dot_product_attention(qg, k[:, :, :b], v[:, :, :b], attn_mask=m)
        outs.append(y.view(B, H, b - a, D))
    return outs[0] if n == 1 else torch.cat(outs, 2)


def _blocked_applies(q: torch.Tensor, T: Any, mask: torch.Tensor | None, input_pos: torch.Tensor | None) -> bool:
    """Whether :class:`Attention` takes :func:`blocked_causal_attention` (see its docstring)."""
    if input_pos is not None or q.device.type != "cpu":
        return False  # decoding with the cache, or a GPU
    if T < BLOCKED_ATTENTION_MIN:
        return False
    if mask is None:
        return T <= BLOCKED_CAUSAL_MAX
    return mask.dim() == 4 and mask.shape[1] == 1 and mask.dtype == torch.bool


class KVCache(nn.Module):
    """Static per-layer cache: (B, H_kv, S, D) keys and values written at ``input_pos``."""

    def __init__(self, batch_size: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype, device=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # input_pos: (T,); k, v: (B, H_kv, T, D)
        self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
        self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
        return self.k, self.v


def _proj(layer: nn.Module, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """A projection; position-gated adapters (model/lora.py) take the gate, plain layers ignore it."""
    return layer(x, gate) if gate is not None and isinstance(layer, LoRALinear) else layer(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, input_pos=None, gate=None):
        B, T, _ = x.shape
        q = _proj(self.q_proj, x, gate).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        k = _proj(self.k_proj, x, gate).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = _proj(self.v_proj, x, gate).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cos.dtype != q.dtype:  # RoPE in the activation dtype (bf16 under autocast)
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, Hkv, S, D)
        rep = self.n_heads // self.n_kv_heads
        if _blocked_applies(q, T, mask, input_pos):
            y = blocked_causal_attention(q, k, v, mask)
        elif mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=rep > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=rep > 1)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*D)
        return _proj(self.o_proj, y, gate)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x, gate=None):
        h = F.silu(_proj(self.gate_proj, x, gate)) * _proj(self.up_proj, x, gate)
        return _proj(self.down_proj, h, gate)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, cos, sin, mask, input_pos=None, gate=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos, gate)
        return x + self.mlp(self.post_attention_layernorm(x), gate)


def _last_marked(marked: torch.Tensor, t: torch.Tensor, carried: torch.Tensor | None) -> torch.Tensor:
    """(B, T): per position, the latest slot ``<= t`` whose ``marked`` is true, -1 where none.

    ``t`` (B, T) are the positions' slots. With a KV cache, ``carried`` (B,) holds each row's latest
    marked slot from earlier calls and is updated; a carried slot at or after this call's first
    slot (a new prefill, or a rewind over it) is forgotten.
    """
    last = torch.where(marked, t, torch.full_like(t, -1)).cummax(dim=1).values
    if carried is not None:
        prev = carried[:, None]
        last = torch.maximum(last, torch.where(prev < t[:, :1], prev, torch.full_like(prev, -1)))
        carried.copy_(last[:, -1])
    return last


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set (> 0) before building a model")
        if cfg.image_pos_embed and cfg.image_tokens <= 0:
            raise ValueError("model.image_pos_embed: the image ids must be set (ModelConfig.image_slots_from_vocab) "
                             "before building a model")
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # learned raster-slot vectors for image spans (cfg.image_pos_embed; see ModelConfig)
        self.image_pos = nn.Embedding(cfg.image_tokens, cfg.dim) if cfg.image_pos_embed else None
        # cache state beside the KV cache: per row, the cache slot of the last <|image|> seen (-1: none)
        self.register_buffer("image_open_slot", torch.zeros(0, dtype=torch.long), persistent=False)
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.cache_len = 0
        # position-gated adapters (model/lora.py apply_lora(gate_from=...)): they act where the
        # input id is >= this; None: adapters (if any) act everywhere. lora_gate_mode (config's
        # LORA_GATE_MODES): "token" there only; "onward" from the first such id of a document to its
        # end; "tag" the same from the first id *equal* to lora_gate_from (cache state of the last
        # two: per row, the slot of the last such id, -1: none, so the gate is shut)
        self.lora_gate_from: int | None = None
        self.lora_gate_mode = "token"
        self.register_buffer("lora_open_slot", torch.zeros(0, dtype=torch.long), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, out_std)
            else:
                nn.init.normal_(p, 0.0, std)
        if self.image_pos is not None:  # zero: switching it on leaves a trained model's function as it was
            nn.init.zeros_(self.image_pos.weight)

    def init_rope(self, device=None) -> None:
        """Recompute the RoPE tables (e.g. after building on the meta device)."""
        cos, sin = rope_tables(self.cfg.max_seq_len, self.cfg.head_dim, self.cfg.rope_theta, device)
        self.rope_cos, self.rope_sin = cos, sin

    # -- KV cache -----------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_seq_len: int | None = None, dtype=None, device=None) -> None:
        S = max_seq_len or self.cfg.max_seq_len
        if S > self.cfg.max_seq_len:
            raise ValueError(f"cache length {S} exceeds model.max_seq_len {self.cfg.max_seq_len}")
        dtype = dtype or self.embed_tokens.weight.dtype
        device = device or self.embed_tokens.weight.device
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(batch_size, self.cfg.n_kv_heads, S, self.cfg.head_dim, dtype, device)
        self.image_open_slot = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        self.lora_open_slot = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        self.cache_len = S

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.kv_cache = None
        self.image_open_slot = torch.zeros(0, dtype=torch.long, device=self.image_open_slot.device)
        self.lora_open_slot = torch.zeros(0, dtype=torch.long, device=self.lora_open_slot.device)
        self.cache_len = 0

    def image_slots(self, ids: torch.Tensor, input_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(slot, valid), both (B, T): the raster slot of the image code each token predicts.

        The ``<|image|>`` opening predicts slot 0 and the code at slot k predicts slot k+1; the last
        code (it predicts the closing) and every other token are not valid. With a KV cache
        (``input_pos``) the last opening is carried across calls in ``image_open_slot``; a call that
        starts at or before it (a prefill, a rewind) forgets it.
        """
        c = self.cfg
        B, T = ids.shape
        t = (input_pos if input_pos is not None else torch.arange(T, device=ids.device))[None].expand(B, T)
        is_open = ids == c.image_open_id
        in_span = is_open | ((ids >= c.image_code_start) & (ids < c.image_code_end))
        last = _last_marked(is_open, t, self.image_open_slot if input_pos is not None else None)
        k = t - last
        valid = in_span & (last >= 0) & (k >= 0) & (k < c.image_tokens)
        return k.clamp(0, c.image_tokens - 1), valid

    def lora_gate(self, ids: torch.Tensor, doc_ids: torch.Tensor | None = None, input_pos: torch.Tensor | None = None,
                  kv_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) bool: where position-gated adapters act (``lora_gate_from``, ``lora_gate_mode``).

        Token gate: where the id is >= ``lora_gate_from``. Onward gate: from the first such id of a
        document (``doc_ids``; the whole row without them) to its end; tag gate: the same from the
        first id *equal* to ``lora_gate_from``. With a KV cache the slot of
        a row's last such id is carried across calls in ``lora_open_slot`` (-1: the gate is shut);
        one at or after the call's first slot is forgotten (a new prefill, or a rewind over it), and
        padding (``kv_mask`` false) never opens it.
        """
        hit = ids == self.lora_gate_from if self.lora_gate_mode == "tag" else ids >= self.lora_gate_from
        if self.lora_gate_mode == "token":
            return hit
        B, T = ids.shape
        t = (input_pos if input_pos is not None else torch.arange(T, device=ids.device))[None].expand(B, T)
        if input_pos is not None and kv_mask is not None:
            hit = hit & kv_mask.gather(1, t)
        last = _last_marked(hit, t, self.lora_open_slot if input_pos is not None else None)
        if doc_ids is None:
            return last >= 0
        new_doc = torch.ones_like(hit)  # the first slot of each position's document
        new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        return last >= torch.where(new_doc, t, torch.zeros_like(t)).cummax(dim=1).values

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        kv_mask: torch.Tensor | None = None,
        return_hidden: bool = False,
        logits_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V) (or final hidden states (B, T, dim)).

        ``logits_index`` (N,) int64, flat indices into the B*T positions: project only those rows
        and return (N, V) logits. Training passes the loss positions, so the output projection (its
        forward, and a backward that would otherwise run on a mostly-zero (B, T, V) gradient) skips
        every position that does not count.
        """
        B, T = ids.shape
        mask = None
        if input_pos is not None:
            if self.cache_len == 0:
                raise RuntimeError("input_pos given but no KV cache: call setup_cache() first")
            pos = input_pos if positions is None else positions
            S = self.cache_len
            # (T, S): a query at cache slot p sees slots <= p
            mask = torch.arange(S, device=ids.device)[None, :] <= input_pos[:, None]
            mask = mask[None, None]  # (1, 1, T, S)
            if kv_mask is not None:
                # a query always sees its own slot, so padded rows never attend to nothing (NaN)
                own = torch.arange(S, device=ids.device)[None, :] == input_pos[:, None]  # (T, S)
                mask = (mask & kv_mask[:, None, None, :].bool()) | own[None, None]  # (B, 1, T, S)
        else:
            pos = positions if positions is not None else torch.arange(T, device=ids.device)
            if doc_ids is not None:
                mask = doc_causal_mask(doc_ids)
        if T > self.cfg.max_seq_len and input_pos is None:
            raise ValueError(f"sequence of {T} tokens exceeds model.max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # (T, D) or (B, T, D)
        if cos.dim() == 2:
            cos, sin = cos[None, None], sin[None, None]  # (1, 1, T, D)
        else:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D)
        x = self.embed_tokens(ids)  # (B, T, dim)
        if self.image_pos is not None:
            slot, valid = self.image_slots(ids, input_pos)
            x = x + self.image_pos(slot) * valid[..., None].to(x.dtype)
        act = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        cos, sin = cos.to(act), sin.to(act)
        gate = None
        if self.lora_gate_from is not None:
            gate = self.lora_gate(ids, doc_ids, input_pos, kv_mask)[..., None].to(act)  # (B, T, 1)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos, gate)
        x = self.norm(x)
        if return_hidden:
            return x
        if logits_index is not None:
            x = x.flatten(0, 1).index_select(0, logits_index)  # (N, dim)
        if self.lm_head is None:
            return F.linear(x, self.embed_tokens.weight)  # (B, T, V)
        return self.lm_head(x)
