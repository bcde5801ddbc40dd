"""Int8 weight-only quantization for inference (decoding at batch 1 is bound by weight reads).

Each linear layer's weight becomes int8 with one scale per output row (symmetric, absmax / 127);
activations stay in bf16 and the product runs through ``torch._weight_int8pack_mm``. A token then
reads a quarter of the bytes of the fp32 weights. The (tied) embedding table stays as it is for the
lookup; the output head gets its own int8 copy.

    model = quantize_int8(Transformer(cfg))   # in place; returns the model

Training and export always use the unquantized model: this is a load-time transformation only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["Int8Linear", "quantize_int8", "is_quantized"]


class Int8Linear(nn.Module):
    """``y = x @ W.T`` with ``W`` stored as int8 rows times a bf16 scale per row."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()
        # the scale is stored in bf16, so quantize against the rounded scale it will be read back as
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).to(torch.bfloat16).float()
        q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.out_features, self.in_features = q.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight_int8, self.scale)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        return self.weight_int8.float() * self.scale.float()[:, None]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _replace_linears(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            if child.bias is not None:
                raise ValueError(f"{name}: int8 quantization supports bias-free linear layers only")
            setattr(module, name, Int8Linear(child.weight))
        else:
            _replace_linears(child)


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


@torch.no_grad()
def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantize a :class:`~omniloom.model.llama.Transformer` in place for CPU inference."""
    if is_quantized(model):
        return model
    if model.embed_tokens.weight.device.type not in ("cpu", "meta"):  # meta: a skeleton to load into
        raise ValueError("int8 weight-only quantization runs on the CPU only (torch._weight_int8pack_mm)")
    _replace_linears(model.layers)
    head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    model.lm_head = Int8Linear(head)
    return model
