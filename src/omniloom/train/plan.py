"""Plan a training run before renting GPUs: memory per GPU and an estimated throughput.

    omniloom plan --preset smollm2-360m --gpus 8 --seq-len 2048 --micro-batch 8 --train lora --lora-rank 16
    omniloom plan --model runs/mine --gpus 1 --gpu h200 --json

The plan describes what ``omniloom train`` does (``train/loop.py``, ``train/step.py``): fp32 weights
(the optimizer's master copy) with bf16 autocast, AdamW with two fp32 states per trainable value,
FSDP2 ``fully_shard`` on each block and on the root under ``torchrun`` (root unsharded from forward
to the end of backward; with gradient accumulation the gradients stay unsharded between
micro-batches), LoRA with ``train.freeze_base`` (the embedding/output matrices stay trainable as
whole tensors), the output head projected at the loss positions only. Every figure is an
estimate from formulas printed with it; throughput rests on an assumed utilisation of the GPU's
peak. The presets are public architectures written down as data, their vocabularies grown by the
omniloom ranges (specials, voices, time tags, image and audio codes) as ``omniloom graft`` grows them.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import LORA_TARGETS, ModelConfig

__all__ = ["BaseArch", "GPU", "HF_PRESETS", "GPUS", "PlanRequest", "parameter_shapes", "trainable_names",
           "layer_activation_bytes", "plan", "format_plan", "model_for_preset", "model_from_dir", "add_arguments",
           "run", "request_from_args", "DEFAULT_CODES", "DEFAULT_MFU", "REFERENCE_PRESET"]

GIB = 1024 ** 3


@dataclass(frozen=True)
class BaseArch:
    """A public decoder's shape, copied from its config.json (``source``)."""

    title: str
    source: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int  # the base's embedding rows (its text ids)
    tie_embeddings: bool
    max_seq_len: int
    rope_theta: float
    norm_eps: float = 1e-5
    graft_note: str = ""  # why `omniloom graft` refuses the base today ("" = it grafts)


HF_PRESETS: dict[str, BaseArch] = {
    "smollm2-135m": BaseArch("SmolLM2-135M", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json",
                             576, 30, 9, 3, 1536, 49152, True, 8192, 100000.0),
    "smollm2-360m": BaseArch("SmolLM2-360M", "https://huggingface.co/HuggingFaceTB/SmolLM2-360M/blob/main/config.json",
                             960, 32, 15, 5, 2560, 49152, True, 8192, 100000.0),
    "smollm2-1.7b": BaseArch("SmolLM2-1.7B", "https://huggingface.co/HuggingFaceTB/SmolLM2-1.7B/blob/main/config.json",
                             2048, 24, 32, 32, 8192, 49152, True, 8192, 130000.0),
    "qwen2.5-0.5b": BaseArch("Qwen2.5-0.5B", "https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json",
                             896, 24, 14, 2, 4864, 151936, True, 32768, 1000000.0, 1e-6,
                             graft_note="its q/k/v projections have biases, which omniloom's decoder lacks: "
                                        "`omniloom graft` refuses it (the plan counts the bias-free decoder, "
                                        "27,648 values fewer)"),
    "llama-3.2-1b": BaseArch("Llama-3.2-1B", "https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json",
                             2048, 16, 32, 8, 8192, 128256, True, 131072, 500000.0,
                             graft_note="it uses Llama 3.1's 'llama3' RoPE scaling, which `omniloom graft` refuses"),
}

#: the preset that reads the shipped reference model's own config (``resolve_model_dir("world")``)
REFERENCE_PRESET = "world"


@dataclass(frozen=True)
class GPU:
    """Dense peak FLOPs (no sparsity) from the vendor's data sheet; memory as nvidia-smi totals it."""

    title: str
    memory_gib: float
    bf16_tflops: float
    fp32_tflops: float  # plain fp32 matmuls (PyTorch leaves TF32 off for matmuls by default)


GPUS: dict[str, GPU] = {
    "h100": GPU("NVIDIA H100 SXM 80GB", 79.6, 989.4, 66.9),
    "h100-pcie": GPU("NVIDIA H100 PCIe 80GB", 79.6, 756.0, 51.2),
    "h200": GPU("NVIDIA H200 SXM 141GB", 140.4, 989.4, 66.9),
    "a100": GPU("NVIDIA A100 SXM 80GB", 80.0, 312.0, 19.5),
    "a100-40gb": GPU("NVIDIA A100 40GB", 40.0, 312.0, 19.5),
    "l40s": GPU("NVIDIA L40S 48GB", 45.0, 362.1, 91.6),
    "l4": GPU("NVIDIA L4 24GB", 22.5, 121.0, 30.3),
}

#: assumed share of the GPU's peak that training reaches (a guess until measured: pass --mfu)
DEFAULT_MFU = 0.30
#: CUDA context, NCCL buffers and allocator slack, assumed
RUNTIME_GIB = 2.0
#: codes a preset's vocabulary gains: Mimi's first 8 codebooks of 2048 (``hf:mimi?codebooks=8``, 12.5
#: frames/s) and Janus-Pro's VQ codebook of 16384 (``hf:janus``, 576 codes per 384 x 384 image)
DEFAULT_CODES = {"audio_codebooks": 8, "audio_codebook_size": 2048, "image_codebook_size": 16384, "image_tokens": 576,
                 "voices": 16}

_PROJ_MODULE = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


# ---------------------------------------------------------------------------------------------
# the model: parameters as the decoder holds them


def _proj_shapes(m: ModelConfig) -> dict[str, tuple[int, int]]:
    """(out, in) of each projection of a block, as ``nn.Linear`` stores it."""
    d, q, kv = m.dim, m.n_heads * m.head_dim, m.n_kv_heads * m.head_dim
    return {"q_proj": (q, d), "k_proj": (kv, d), "v_proj": (kv, d), "o_proj": (d, q),
            "gate_proj": (m.ffn_dim, d), "up_proj": (m.ffn_dim, d), "down_proj": (d, m.ffn_dim)}


def parameter_shapes(m: ModelConfig, lora_rank: int = 0, lora_targets: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    """Every parameter of ``Transformer(m)`` (after ``apply_lora(..., lora_targets, lora_rank)`` when
    ``lora_rank`` > 0) by name, with its shape, computed from the config alone."""
    d = m.dim
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (m.vocab_size, d)}
    for i in range(m.n_layers):
        p = f"layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        if m.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (m.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (m.head_dim,)
        for name, (out_f, in_f) in _proj_shapes(m).items():
            stem = f"{p}{_PROJ_MODULE[name]}.{name}"
            shapes[stem + ".weight"] = (out_f, in_f)
            if lora_rank and name in lora_targets:
                shapes[stem + ".lora_a"] = (lora_rank, in_f)
                shapes[stem + ".lora_b"] = (out_f, lora_rank)
    shapes["norm.weight"] = (d,)
    if not m.tie_embeddings:
        shapes["lm_head.weight"] = (m.vocab_size, d)
    if m.image_pos_embed:
        shapes["image_pos.weight"] = (m.image_tokens, d)
    return shapes


def trainable_names(names: list[str], mode: str) -> set[str]:
    """The parameters that get gradients and AdamW states: all of them for ``full``; for ``lora``
    (``train.freeze_base=true``) the adapters and the embedding/output matrices, as
    ``train.step.freeze_for_adapters`` leaves them (whole tensors: the frozen rows get a zero
    gradient, but their gradient and optimizer memory is allocated)."""
    if mode == "full":
        return set(names)
    from ..model.lora import is_adapter_key
    from .step import ROW_MASKED

    return {n for n in names if is_adapter_key(n) or n in ROW_MASKED}


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _shard_numel(shape: tuple[int, ...], n: int) -> int:
    """Values one of ``n`` ranks holds of a tensor FSDP2 shards on dim 0 (padded to equal chunks)."""
    return -(-shape[0] // n) * _numel(shape[1:])


# ---------------------------------------------------------------------------------------------
# activations: what autograd keeps for backward


def layer_activation_bytes(m: ModelConfig, batch: int, seq: int, act_bytes: int = 2,
                           fused_rms_norm: bool = True) -> dict[str, int]:
    """Bytes one decoder block keeps for backward on a (``batch``, ``seq``) micro-batch, by term.

    Read off ``model/llama.py`` under autocast (``act_bytes`` 2, bf16) or without it (4, fp32);
    ``B`` = batch, ``T`` = seq, ``d`` = dim, ``H``/``G`` = query/key-value heads, ``D`` = head dim,
    ``f`` = ffn dim, ``a`` = act_bytes:

    * ``norms``: each RMSNorm works in fp32 and keeps its fp32 input (4BTd) and 1/rms (4BT), two
      per block (and q/k norms with ``qk_norm``); the unfused RMSNorm (CPU) also keeps the
      normalised fp32 tensor (4BTd more);
    * ``linear_inputs``: the bf16 input of q/k/v (one tensor, shared) and of gate/up (a·BTd each);
    * ``attention``: q, k, v after RoPE and the attention output, which o_proj reads as a view
      (a·BT(2d + 2GD)), and the kernel's log-sum-exp (4BHT);
    * ``mask``: training always passes ``doc_ids``, so attention gets a (B, 1, T, T) mask that SDPA
      turns into an additive bias in the activation dtype and keeps for backward (a·BT²);
    * ``ffn``: gate, silu(gate), up and their product (4·a·BTf);
    * ``weight_copies``: under autocast, each matmul keeps the bf16 copy of its fp32 weight
      (2 bytes per projection weight; none in fp32, where it keeps the weight itself).
    """
    B, T, d, H, G, D, f, a = batch, seq, m.dim, m.n_heads, m.n_kv_heads, m.head_dim, m.ffn_dim, act_bytes
    per_norm = (8 if not fused_rms_norm else 4) * B * T * d + 4 * B * T
    norms = 2 * per_norm
    if m.qk_norm:  # q_norm on (B, T, H, D), k_norm on (B, T, G, D), each as the block norms
        norms += (8 if not fused_rms_norm else 4) * B * T * (H + G) * D + 4 * B * T * (H + G)
    out = {
        "norms": norms,
        "linear_inputs": 2 * a * B * T * d,
        "attention": a * B * T * (2 * H * D + 2 * G * D) + 4 * B * H * T,
        "mask": a * B * T * T,
        "ffn": 4 * a * B * T * f,
        "weight_copies": 2 * sum(_numel(s) for s in _proj_shapes(m).values()) if a == 2 else 0,
    }
    return out


def _head_bytes(m: ModelConfig, batch: int, seq: int, loss_positions: int, act_bytes: int,
                compiled: bool = False, fused_rms_norm: bool = True) -> dict[str, int]:
    """Activations outside the blocks: the inputs, the document mask, the RoPE rows, the final norm,
    and the loss head at its peak (start of backward).

    The loss head is ``cross_entropy(logits.float())`` on the N loss positions. Eager, the (N, V)
    log-softmax is kept in fp32 (4NV) and the start of backward holds its gradient and the
    gradient of the logits beside it (12NV in all). Compiled (``train.compile=true``), the fused
    loss keeps the logits in the activation dtype instead (a·NV, seen on CPU) and is assumed to
    write their gradient once more (2·a·NV in all).
    """
    B, T, d, V, N, a = batch, seq, m.dim, m.vocab_size, loss_positions, act_bytes
    return {
        "inputs": 4 * 8 * B * T,  # ids, targets, positions, doc_ids (int64)
        "doc_mask": B * T * T,  # the (B, 1, T, T) bool mask, built once per forward
        "rope": 2 * a * B * T * m.head_dim,
        "final_norm": (8 if not fused_rms_norm else 4) * B * T * d + 4 * B * T,
        "head_input": a * N * d,
        "loss": 2 * a * N * V if compiled else 12 * N * V,
        "head_weight_copy": 2 * V * d if a == 2 else 0,
    }


# ---------------------------------------------------------------------------------------------
# the plan


@dataclass
class PlanRequest:
    """What to plan; see the CLI flags for each field."""

    model: ModelConfig
    title: str
    gpus: int = 1
    seq_len: int = 2048
    micro_batch: int = 8
    batch_size: int = 0  # global, in sequences; 0 = gpus x micro_batch (no accumulation)
    train: str = "full"  # 'full' or 'lora' (train.freeze_base=true with adapters of lora_rank)
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    dtype: str = "bf16"
    fsdp: bool = True
    activation_checkpointing: bool = False
    compile: bool = False  # train.compile: the loss head is fused
    gpu: str = "h100"
    gpu_memory_gib: float | None = None
    peak_tflops: float | None = None
    mfu: float = DEFAULT_MFU
    loss_share: float = 1.0  # share of positions that count for the loss (1.0: data.mode=pretrain)
    objective: str = "sft"  # train.objective: dpo adds the frozen reference's weights and forward
    vocab_note: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.gpus < 1:
            raise ValueError(f"--gpus must be at least 1, got {self.gpus}")
        if self.seq_len < 2:
            raise ValueError(f"--seq-len must be at least 2, got {self.seq_len}")
        if self.micro_batch < 1:
            raise ValueError(f"--micro-batch must be at least 1, got {self.micro_batch}")
        if self.batch_size < 0:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}")
        batch = self.batch_size or self.gpus * self.micro_batch
        if batch % self.gpus or (batch // self.gpus) % self.micro_batch:
            raise ValueError(f"--batch-size {batch} must split into {self.gpus} GPU(s) x whole micro-batches of "
                             f"{self.micro_batch} (train.batch_size / ranks divisible by train.micro_batch_size)")
        if self.train not in ("full", "lora"):
            raise ValueError(f"--train must be 'full' or 'lora', got {self.train!r}")
        if self.lora_rank < 0:
            raise ValueError(f"--lora-rank must be >= 0 (0 with --train lora: the new rows only), got {self.lora_rank}")
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad or not self.lora_targets:
            raise ValueError(f"--lora-targets {','.join(self.lora_targets)!r}: choose among {', '.join(LORA_TARGETS)}")
        if self.dtype not in ("bf16", "fp32"):
            raise ValueError(f"--dtype must be 'bf16' or 'fp32', got {self.dtype!r}")
        if self.gpu not in GPUS:
            raise ValueError(f"unknown --gpu {self.gpu!r}; choose one of {', '.join(GPUS)} "
                             "(or give --gpu-memory and --peak-tflops)")
        if self.gpu_memory_gib is not None and self.gpu_memory_gib <= 0:
            raise ValueError(f"--gpu-memory must be positive (GiB), got {self.gpu_memory_gib}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"--peak-tflops must be positive, got {self.peak_tflops}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"--mfu must be in (0, 1], got {self.mfu}")
        if not 0 < self.loss_share <= 1:
            raise ValueError(f"--loss-share must be in (0, 1], got {self.loss_share}")
        if self.objective not in ("sft", "dpo", "rft"):
            raise ValueError(f"--objective must be sft, dpo or rft, got {self.objective!r}")
        self.model.validate()
        if self.model.vocab_size <= 0:
            raise ValueError("the model's vocab_size must be known (> 0) to plan it")


def plan(req: PlanRequest) -> dict[str, Any]:
    """Memory per GPU (bytes, by term) and an estimated throughput for ``req``; a JSON-able dict."""
    req.validate()
    m = req.model
    n = req.gpus
    sharded = req.fsdp and n > 1  # the trainer shards only under torchrun with more than one rank
    rank = req.lora_rank if req.train == "lora" else 0
    targets = tuple(req.lora_targets) if rank else ()
    shapes = parameter_shapes(m, rank, targets)
    trainable = trainable_names(list(shapes), req.train)
    batch = req.batch_size or n * req.micro_batch
    accumulation = batch // n // req.micro_batch
    a = 2 if req.dtype == "bf16" else 4
    B, T = req.micro_batch, req.seq_len

    def per_rank(names) -> int:  # values this rank holds of these tensors
        return sum(_shard_numel(shapes[k], n) if sharded else _numel(shapes[k]) for k in names)

    root = [k for k in shapes if not k.startswith("layers.")]
    block0 = [k for k in shapes if k.startswith("layers.0.")]
    total = sum(_numel(s) for s in shapes.values())
    n_train = sum(_numel(shapes[k]) for k in trainable)
    train_root = sum(_numel(shapes[k]) for k in root if k in trainable)
    train_blocks = n_train - train_root

    weights = 4 * per_rank(shapes)
    # dpo: a frozen fp32 copy of the initial weights, sharded like the policy, scored without grad
    reference = 4 * per_rank(shapes) if req.objective == "dpo" else 0
    weights_all = weights + reference
    grads_final = 4 * per_rank(trainable)  # after the last micro-batch (reduce-scattered under FSDP2)
    optimizer = 8 * per_rank(trainable)
    fsdp_buffers = 0
    if sharded:
        # the root (embedding, final norm, output) is gathered for the whole forward and backward; a
        # block and the prefetched next one are gathered at a time, in fp32 (MixedPrecisionPolicy()
        # keeps the parameters' dtype); a block's unsharded gradient waits for its reduce-scatter
        fsdp_buffers = 4 * (sum(_numel(shapes[k]) for k in root) + 2 * sum(_numel(shapes[k]) for k in block0))
        fsdp_buffers += 4 * sum(_numel(shapes[k]) for k in block0 if k in trainable)

    layer = layer_activation_bytes(m, B, T, a)
    loss_positions = max(1, round(B * T * req.loss_share))
    head = _head_bytes(m, B, T, loss_positions, a, compiled=req.compile)
    full_layer = sum(layer.values())
    if req.activation_checkpointing:
        # per block, only its fp32 input is kept; backward recomputes one block at a time
        layers_bytes = m.n_layers * 4 * B * T * m.dim + full_layer
    else:
        layers_bytes = m.n_layers * full_layer
    activations = layers_bytes + sum(head.values())

    # gradients alive during backward: the root's (the output head's gradient comes first and
    # stays unsharded until the root's reduce-scatter at the end); with accumulation every
    # gradient from the earlier micro-batches (unsharded under FSDP2, which accumulates them so)
    if accumulation > 1:
        grads_backward = 4 * n_train
        fb_peak = weights_all + optimizer + fsdp_buffers + activations + grads_backward
    else:
        grads_root = 4 * train_root
        grads_blocks_end = 4 * (train_blocks // n if sharded else train_blocks)
        grads_backward = grads_root + grads_blocks_end
        fb_peak = weights_all + optimizer + fsdp_buffers + grads_root + max(activations, grads_blocks_end)
    runtime = int(RUNTIME_GIB * GIB)
    fb_peak += runtime
    step_peak = weights_all + optimizer + grads_final + runtime
    peak = max(fb_peak, step_peak)

    gpu = GPUS[req.gpu]
    memory = (req.gpu_memory_gib if req.gpu_memory_gib is not None else gpu.memory_gib) * GIB
    peak_flops = (req.peak_tflops if req.peak_tflops is not None else
                  (gpu.bf16_tflops if req.dtype == "bf16" else gpu.fp32_tflops)) * 1e12
    flops = _flops_per_token(m, shapes, trainable, T, req.loss_share, req.activation_checkpointing,
                             reference=req.objective == "dpo")
    tok_s_gpu = req.mfu * peak_flops / flops["total"]
    tokens_per_step = batch * T

    return {
        "model": {"title": req.title, **{k: getattr(m, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads",
                                                                  "ffn_dim", "vocab_size", "tie_embeddings",
                                                                  "max_seq_len", "qk_norm")},
                  "vocab": req.vocab_note, "parameters": total, "trainable": n_train},
        "run": {"gpus": n, "gpu": gpu.title, "gpu_memory_gib": memory / GIB, "seq_len": T, "micro_batch": B,
                "global_batch": batch, "accumulation": accumulation, "train": req.train, "lora_rank": rank,
                "lora_targets": list(targets), "dtype": req.dtype, "fsdp": sharded,
                "activation_checkpointing": req.activation_checkpointing, "compile": req.compile,
                "objective": req.objective,
                "loss_positions": loss_positions},
        "memory_bytes": {
            "weights": weights, "reference_weights": reference, "gradients": grads_final, "gradients_in_backward": grads_backward,
            "optimizer": optimizer, "fsdp_buffers": fsdp_buffers,
            "activations": activations, "activations_layers": layers_bytes,
            "activations_per_layer": layer, "activations_outside_layers": head,
            "runtime": runtime, "peak_forward_backward": fb_peak, "peak_optimizer_step": step_peak, "peak": peak,
        },
        "fits": peak <= memory,
        "throughput": {
            "assumed_mfu": req.mfu, "peak_tflops": peak_flops / 1e12, "flops_per_token": flops,
            "tokens_per_s_per_gpu": tok_s_gpu, "tokens_per_s": tok_s_gpu * n,
            "tokens_per_step": tokens_per_step, "seconds_per_step": tokens_per_step / (tok_s_gpu * n),
        },
        "notes": list(req.notes) + _notes(req, sharded, accumulation, peak, memory),
    }


def _flops_per_token(m: ModelConfig, shapes: dict[str, tuple[int, ...]], trainable: set[str], seq: int,
                     loss_share: float, recompute: bool, reference: bool = False) -> dict[str, float]:
    """Matmul FLOPs per token of one optimizer step, counting the work done.

    A trainable weight costs 6 FLOPs per value per token (forward 2, input gradient 2, weight
    gradient 2); a frozen one 4 (no weight gradient). The output head runs at the loss positions
    only (6·V·d times their share). Attention scores and values cost 4·T·H·D per token and layer
    forward, 12·T·H·D with backward, over the whole T x T square: the packed-document mask makes
    SDPA use a kernel that computes every block, masked ones too. Activation checkpointing adds
    one more forward of the blocks. DPO's reference model adds one forward (2 per weight, the head
    at the loss positions, attention forward) without backward.
    """
    blocks = trainable_blocks = 0
    for k, s in shapes.items():
        if k.startswith("layers.") and len(s) == 2:
            blocks += _numel(s)
            if k in trainable:
                trainable_blocks += _numel(s)
    frozen = blocks - trainable_blocks
    attn_fwd = 4 * m.n_layers * m.n_heads * m.head_dim * seq
    out = {
        "blocks": 6.0 * trainable_blocks + 4.0 * frozen,
        "head": 6.0 * m.vocab_size * m.dim * loss_share,
        "attention": 3.0 * attn_fwd,
        "recompute": (2.0 * blocks + attn_fwd) if recompute else 0.0,
        "reference": (2.0 * blocks + 2.0 * m.vocab_size * m.dim * loss_share + attn_fwd) if reference else 0.0,
    }
    out["total"] = sum(out.values())
    return out


def _notes(req: PlanRequest, sharded: bool, accumulation: int, peak: int, memory: float) -> list[str]:
    notes = []
    if req.seq_len > req.model.max_seq_len:
        notes.append(f"--seq-len {req.seq_len} exceeds the model's max_seq_len {req.model.max_seq_len}: "
                     "omniloom train refuses it (data.seq_len <= model.max_seq_len)")
    if req.activation_checkpointing:
        notes.append("omniloom train does not checkpoint activations yet (no train.* key turns it on): the "
                     "activation figures are what per-block checkpointing would give")
    if req.fsdp and req.gpus == 1:
        notes.append("FSDP2 shards only under torchrun with more than one rank; on 1 GPU nothing is sharded")
    if sharded and accumulation > 1:
        notes.append(f"{accumulation} micro-batches per step under FSDP2: gradients stay unsharded (full size on "
                     "every GPU) between micro-batches; a larger --micro-batch or more GPUs avoids that")
    if req.train == "lora":
        notes.append("LoRA here is train.freeze_base=true: the embedding (and output) matrix is trained as a "
                     "whole tensor (the base rows get zero gradient), so its gradient and AdamW states are "
                     "full-size")
    if req.model.num_params() < 500e6:
        notes.append("under ~500M parameters the GPU's matmuls are small and launch overheads weigh more: expect "
                     "less than the assumed utilisation; measure (the trainer logs tok/s) and re-plan with --mfu")
    if peak > memory:
        notes.append(f"the estimated peak ({peak / GIB:.1f} GiB) exceeds the GPU's {memory / GIB:.1f} GiB: "
                     "lower --micro-batch (and raise the accumulation), shard over more GPUs, or --train lora")
    return notes


# ---------------------------------------------------------------------------------------------
# where the model comes from


def model_for_preset(name: str, codes: dict[str, int] | None = None
                     ) -> tuple[ModelConfig, str, dict[str, Any], list[str], dict[str, Any]]:
    """(model config, title, vocabulary summary, notes, run settings) of a preset: ``world`` (the
    shipped reference model, read from its directory with the settings it was trained with) or a
    public base from :data:`HF_PRESETS` with its vocabulary grown by the omniloom ranges for
    ``codes`` (defaults: :data:`DEFAULT_CODES`) and no settings of its own."""
    if name == REFERENCE_PRESET:
        from ..utils.model_dir import resolve_model_dir

        cfg, _, vocab, notes, settings = model_from_dir(resolve_model_dir(REFERENCE_PRESET))
        return cfg, "world (the shipped reference model)", vocab, notes, settings
    if name not in HF_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join([REFERENCE_PRESET, *HF_PRESETS])}, "
                         "or plan a model directory with --model DIR")
    from ..tokens.vocab import Vocab

    arch = HF_PRESETS[name]
    c = {**DEFAULT_CODES, **(codes or {})}
    for k, v in c.items():
        if v < 0:
            raise ValueError(f"--{k.replace('_', '-')} must be >= 0, got {v}")
    vocab = Vocab.build(arch.vocab_size, image_codebook_size=c["image_codebook_size"] if c["image_tokens"] else 0,
                        image_tokens=c["image_tokens"] if c["image_codebook_size"] else 0,
                        audio_codebook_size=c["audio_codebook_size"] if c["audio_codebooks"] else 0,
                        audio_codebooks=c["audio_codebooks"] if c["audio_codebook_size"] else 0,
                        num_voices=c["voices"])
    cfg = ModelConfig(vocab_size=vocab.size, dim=arch.dim, n_layers=arch.n_layers, n_heads=arch.n_heads,
                      n_kv_heads=arch.n_kv_heads, ffn_dim=arch.ffn_dim, max_seq_len=arch.max_seq_len,
                      rope_theta=arch.rope_theta, norm_eps=arch.norm_eps, tie_embeddings=arch.tie_embeddings)
    summary = _vocab_summary(vocab)
    summary["source"] = arch.source
    notes = [f"{arch.title}: {arch.graft_note}"] if arch.graft_note else []
    return cfg, f"{arch.title} + omniloom ranges", summary, notes, {}


def _vocab_summary(vocab: Any) -> dict[str, Any]:
    """How the vocabulary grew past the text ids, range by range."""
    return {
        "text": vocab.text_size,
        "specials": vocab.image_start - vocab.special_start,
        "image": vocab.image_codebook_size, "image_tokens": vocab.image_tokens,
        "audio": vocab.audio_codebook_size * vocab.audio_codebooks,
        "audio_codebooks": vocab.audio_codebooks, "audio_codebook_size": vocab.audio_codebook_size,
        "mesh": vocab.mesh_codebook_size, "mesh_tokens": vocab.mesh_tokens,
        "padding": vocab.size - vocab.mesh_end,
        "added": vocab.size - vocab.text_size, "size": vocab.size,
    }


def model_from_dir(path: str | Path) -> tuple[ModelConfig, str, dict[str, Any], list[str], dict[str, Any]]:
    """(model config, title, vocabulary summary, notes, the run settings its config.json holds) of an
    omniloom model directory, checkpoint, training run or grafted model."""
    from ..config import config_from_dict
    from ..utils.fileio import read_json
    from ..utils.model_dir import resolve_model_dir

    d = resolve_model_dir(path)
    if not (d / "config.json").is_file():
        raise ValueError(f"{d} has no config.json, so there is no model shape to plan from")
    cfg = config_from_dict(read_json(d / "config.json", "model config"))
    if cfg.model.vocab_size <= 0:
        raise ValueError(f"{d / 'config.json'}: model.vocab_size is {cfg.model.vocab_size}; a model directory "
                         "records its vocabulary size")
    summary: dict[str, Any] = {}
    if (d / "vocab.json").is_file():
        from ..tokens.vocab import Vocab

        summary = _vocab_summary(Vocab.load(d / "vocab.json"))
    tc = cfg.train
    settings = {"seq_len": cfg.data.seq_len, "micro_batch": tc.micro_batch_size,
                "train": "lora" if tc.freeze_base else "full",
                "lora_rank": tc.lora_rank or 16,
                "lora_targets": tuple(t.strip() for t in tc.lora_targets.split(",") if t.strip()),
                "dtype": "fp32" if tc.dtype == "fp32" else "bf16", "compile": tc.compile,
                "objective": getattr(tc, "objective", "sft")}
    return cfg.model, str(d), summary, [], settings


# ---------------------------------------------------------------------------------------------
# output


def _gib(x: float) -> str:
    return f"{x / GIB:8.2f}"


def format_plan(p: dict[str, Any]) -> str:
    """The plan as the text table ``omniloom plan`` prints."""
    m, r, mem, t = p["model"], p["run"], p["memory_bytes"], p["throughput"]
    v = m["vocab"]
    lines = [f"model: {m['title']}",
             f"  dim {m['dim']}, {m['n_layers']} layers, {m['n_heads']} heads ({m['n_kv_heads']} kv), ffn "
             f"{m['ffn_dim']}, max_seq_len {m['max_seq_len']}, {'tied' if m['tie_embeddings'] else 'untied'} "
             "embeddings"]
    if v:
        grown = [f"{v['specials']} specials/voices/time tags"]
        if v["image"]:
            grown.append(f"{v['image']:,} image codes ({v['image_tokens']} per image)")
        if v["audio"]:
            grown.append(f"{v['audio']:,} audio codes ({v['audio_codebooks']} x {v['audio_codebook_size']})")
        if v.get("mesh"):
            grown.append(f"{v['mesh']:,} 3D shape codes ({v['mesh_tokens']} per shape)")
        if v["padding"]:
            grown.append(f"{v['padding']} padding")
        lines.append(f"  vocab {v['text']:,} text ids + {v['added']:,} rows ({' + '.join(grown)}) = {v['size']:,}")
    else:
        lines.append(f"  vocab {m['vocab_size']:,}")
    lines.append(f"  parameters {m['parameters']:,}; trainable {m['trainable']:,} ({r['train']}"
                 + (f", LoRA rank {r['lora_rank']} on {','.join(r['lora_targets'])}" if r["lora_rank"] else "")
                 + ")")
    lines.append(f"run: {r['gpus']} x {r['gpu']} ({r['gpu_memory_gib']:.1f} GiB), seq_len {r['seq_len']}, micro-batch "
                 f"{r['micro_batch']} per GPU, global batch {r['global_batch']} ({r['accumulation']} accumulation), "
                 f"{'bf16 autocast over fp32 weights' if r['dtype'] == 'bf16' else 'fp32'}, "
                 f"FSDP2 {'on' if r['fsdp'] else 'off'}, activation checkpointing "
                 f"{'on' if r['activation_checkpointing'] else 'off'}, {r['loss_positions']:,} loss positions per "
                 "micro-batch")
    act = mem["activations_per_layer"]
    out = mem["activations_outside_layers"]
    sh = f" / {r['gpus']} GPUs" if r["fsdp"] else ""
    rows = [
        ("weights", mem["weights"], f"fp32 master copy, 4 B x {m['parameters']:,}{sh}"),
        *([("DPO reference weights", mem["reference_weights"], f"frozen fp32 copy of the initial weights{sh}")]
          if mem["reference_weights"] else []),
        ("gradients (at the step)", mem["gradients"], f"fp32, 4 B x {m['trainable']:,} trainable{sh}"),
        ("AdamW states", mem["optimizer"], f"exp_avg + exp_avg_sq in fp32, 8 B x trainable{sh}"),
        ("FSDP2 gathered buffers", mem["fsdp_buffers"],
         "fp32: the root (kept gathered), 2 blocks, 1 block's gradient" if r["fsdp"] else "not sharded"),
        (f"activations, {m['n_layers']} blocks", mem["activations_layers"],
         ("fp32 block inputs + one block recomputed; " if r["activation_checkpointing"] else "")
         + "per block: " + ", ".join(f"{k} {val / 2**20:,.0f} MiB" for k, val in act.items())),
        ("activations, outside blocks", sum(out.values()),
         f"loss head {out['loss'] / GIB:.2f} GiB ({'compiled' if r['compile'] else 'eager'}, "
         f"{r['loss_positions']:,} positions x {m['vocab_size']:,} ids), doc mask, final norm, inputs"),
        ("gradients during backward", mem["gradients_in_backward"],
         "all, from the earlier micro-batches" if r["accumulation"] > 1 else
         "the root's (the output head's comes first), the blocks' as activations go"),
        ("runtime (assumed)", mem["runtime"], "CUDA context, NCCL, allocator slack"),
        ("peak, forward/backward", mem["peak_forward_backward"], ""),
        ("peak, optimizer step", mem["peak_optimizer_step"], ""),
        ("peak", mem["peak"], f"of {r['gpu_memory_gib']:.1f} GiB: " + ("fits" if p["fits"] else "DOES NOT FIT")),
    ]
    lines += ["", f"{'memory per GPU (estimate)':<32}{'GiB':>8}   how"]
    lines += [f"  {label:<30}{_gib(val)}   {how}".rstrip() for label, val, how in rows]
    f = t["flops_per_token"]
    lines += ["", "throughput (estimate, not a measurement)",
              f"  FLOPs per token {f['total'] / 1e9:.2f} G = blocks {f['blocks'] / 1e9:.2f} (6 per trainable, 4 per frozen "
              f"weight) + head {f['head'] / 1e9:.2f} + attention {f['attention'] / 1e9:.2f} (12·L·H·D·T, full T x T)"
              + (f" + recompute {f['recompute'] / 1e9:.2f}" if f["recompute"] else "")
              + (f" + DPO reference forward {f['reference'] / 1e9:.2f}" if f["reference"] else ""),
              f"  assumed {t['assumed_mfu']:.0%} of {t['peak_tflops']:.0f} TFLOPS "
              f"({r['dtype']} dense peak) -> {t['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU, "
              f"{t['tokens_per_s']:,.0f} tokens/s on {r['gpus']}",
              f"  {t['tokens_per_step']:,} tokens per optimizer step -> {t['seconds_per_step']:.2f} s per step; "
              f"{t['tokens_per_s'] * 3600 / 1e6:,.0f}M tokens per hour"]
    if p["notes"]:
        lines += ["", "notes:"] + [f"  - {x}" for x in p["notes"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME",
                     help=f"{REFERENCE_PRESET} (the shipped reference model) or a public base: {', '.join(HF_PRESETS)}")
    src.add_argument("--model", metavar="DIR", help="an omniloom model directory, checkpoint, run or grafted model")
    p.add_argument("--gpus", type=int, default=1, help="GPUs (ranks) in the run (default 1)")
    p.add_argument("--seq-len", type=int, default=None, help="data.seq_len (default 2048, or the model dir's)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="train.micro_batch_size, sequences per GPU per forward (default 8, or the model dir's)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="train.batch_size, the global batch in sequences (default: gpus x micro-batch)")
    p.add_argument("--train", choices=["full", "lora"], default=None,
                   help="full fine-tune, or lora = train.freeze_base=true + adapters (default full, or the model dir's)")
    p.add_argument("--lora-rank", type=int, default=None, help="train.lora_rank with --train lora (default 16)")
    p.add_argument("--lora-targets", default=None, metavar="A,B",
                   help="train.lora_targets (default q_proj,k_proj,v_proj,o_proj)")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="train.dtype (default bf16)")
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=True,
                   help="FSDP2 sharding across the GPUs (omniloom train --parallel fsdp, its default) or replicated "
                        "weights (--parallel replicate)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="estimate per-block activation checkpointing (the trainer does not do it yet)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="train.compile: the loss head is fused (default off, or the model dir's)")
    p.add_argument("--gpu", default="h100", help=f"one of {', '.join(GPUS)} (default h100)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GiB", help="override the GPU's memory")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense peak for --dtype")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                   help=f"assumed share of the peak that training reaches (default {DEFAULT_MFU})")
    p.add_argument("--loss-share", type=float, default=1.0,
                   help="share of positions that count for the loss (default 1.0, an upper bound; sft counts the "
                        "answers only)")
    codes = p.add_argument_group("codes a --preset's vocabulary gains (default: Mimi 8 x 2048, Janus-Pro VQ 16384 "
                                 "with 576 per image; 0 leaves a modality out)")
    for k, v in DEFAULT_CODES.items():
        codes.add_argument(f"--{k.replace('_', '-')}", type=int, default=v, help=f"default {v}")
    p.add_argument("--objective", choices=["sft", "dpo", "rft"], default=None,
                   help="train.objective (default sft, or the model dir's): dpo adds a frozen reference copy of the "
                        "weights and its forward pass")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def request_from_args(args: argparse.Namespace) -> PlanRequest:
    """The CLI flags -> a :class:`PlanRequest` (a model directory's own settings fill the flags not given)."""
    if args.model:
        cfg, title, vocab, notes, settings = model_from_dir(args.model)
    else:
        codes = {k: getattr(args, k) for k in DEFAULT_CODES}
        cfg, title, vocab, notes, settings = model_for_preset(args.preset, codes)
    seq = args.seq_len if args.seq_len is not None else settings.get("seq_len", min(2048, cfg.max_seq_len))
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else \
        settings.get("lora_targets", ("q_proj", "k_proj", "v_proj", "o_proj"))
    return PlanRequest(
        model=cfg, title=title, gpus=args.gpus, seq_len=seq,
        micro_batch=args.micro_batch if args.micro_batch is not None else settings.get("micro_batch", 8),
        batch_size=args.batch_size, train=args.train or settings.get("train", "full"),
        lora_rank=args.lora_rank if args.lora_rank is not None else settings.get("lora_rank", 16),
        lora_targets=targets, dtype=args.dtype or settings.get("dtype", "bf16"), fsdp=args.fsdp,
        activation_checkpointing=args.activation_checkpointing,
        compile=args.compile if args.compile is not None else settings.get("compile", False), gpu=args.gpu, gpu_memory_gib=args.gpu_memory,
        peak_tflops=args.peak_tflops, mfu=args.mfu, loss_share=args.loss_share, vocab_note=vocab, notes=notes,
        objective=args.objective or settings.get("objective", "sft"))


def run(args: argparse.Namespace) -> int:
    result = plan(request_from_args(args))
    print(json.dumps(result, indent=1) if args.json else format_plan(result))
    return 0

