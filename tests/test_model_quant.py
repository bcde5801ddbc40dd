"""Int8 weight-only quantization: close to the float model, smaller, and refuses what it cannot do."""

import pytest
import torch
import torch.nn as nn

from omniloom.config import preset
from omniloom.infer.engine import Engine, Request
from omniloom.infer.sampling import SamplingParams
from omniloom.model import Transformer
from omniloom.model.quant import Int8Linear, is_quantized, quantize_int8


def _model(seed=0, tie=True):
    torch.manual_seed(seed)
    cfg = preset("debug").model
    cfg.vocab_size = 512
    cfg.tie_embeddings = tie
    return Transformer(cfg).eval()


def test_int8_linear_error_is_within_half_a_step_per_weight():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=False)
    q = Int8Linear(lin.weight)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.shape == (40, 96)
    # each weight is off by at most half a quantization step (plus the bf16 rounding of the scale)
    step = lin.weight.abs().amax(1, keepdim=True) / 127
    assert ((q.dequantized() - lin.weight).abs() <= 0.5 * step * 1.01 + 1e-6).all()
    x = torch.randn(3, 5, 96)
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.02, rel
    assert q(x).dtype == x.dtype and q(x).shape == (3, 5, 40)


@pytest.mark.parametrize("tie", [True, False])
def test_quantized_model_logits_track_the_float_model(tie):
    ref = _model(tie=tie)
    q = _model(tie=tie)
    quantize_int8(q)
    assert is_quantized(q) and isinstance(q.lm_head, Int8Linear)
    assert not any(isinstance(m, nn.Linear) for m in q.layers.modules())
    ids = torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        a, b = ref(ids), q(ids)
    rel = (a - b).norm() / a.norm()
    assert rel < 0.05, rel
    # the embedding lookup is untouched, and quantizing twice is a no-op
    assert torch.equal(q.embed_tokens.weight, ref.embed_tokens.weight)
    assert quantize_int8(q) is q


def test_quantized_engine_decodes_with_the_cache():
    # cached greedy decoding of the quantized model equals its own uncached argmax
    q = quantize_int8(_model(seed=1))
    prompt = [4, 8, 15, 16, 23, 42]
    out = Engine(q).generate([Request(prompt, SamplingParams(max_new_tokens=12, temperature=0))])[0]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(q(torch.tensor([ids]))[0, -1].argmax()))
    assert out == ids[len(prompt):]


def test_quantization_refuses_biased_linears():
    m = _model()
    m.layers[0].mlp.up_proj = nn.Linear(m.cfg.dim, m.cfg.ffn_dim, bias=True)
    with pytest.raises(ValueError, match="bias"):
        quantize_int8(m)
