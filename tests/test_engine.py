"""The id-level engine: batched equals alone, greedy equals uncached argmax, sampling is seeded."""

import pytest
import torch

from omniloom.config import preset
from omniloom.infer.engine import Engine, Request
from omniloom.infer.sampling import SamplingParams, sample_next
from omniloom.model import Transformer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = preset("debug").model
    cfg.vocab_size = 512
    return Transformer(cfg).eval()


def _uncached_greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_matches_uncached(model):
    prompt = [5, 17, 42, 99, 3]
    eng = Engine(model)
    out = eng.generate([Request(prompt, SamplingParams(max_new_tokens=24, temperature=0))])[0]
    assert out == _uncached_greedy(model, prompt, 24)


def test_batched_ragged_prompts_equal_alone(model):
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13], [300]]
    eng = Engine(model)
    params = SamplingParams(max_new_tokens=16, temperature=0)
    batched = eng.generate([Request(p, params) for p in prompts])
    for p, got in zip(prompts, batched):
        assert got == eng.generate([Request(p, params)])[0]


def test_seeded_sampling_reproducible_and_stops(model):
    eng = Engine(model)
    p = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=123)
    a = eng.generate([Request([4, 5, 6], p)])[0]
    b = eng.generate([Request([4, 5, 6], p)])[0]
    assert a == b and len(a) == 20
    stop = a[3]
    p2 = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=123, stop_ids=(stop,))
    c = eng.generate([Request([4, 5, 6], p2)])[0]
    assert c[-1] == stop and len(c) == a.index(stop) + 1


def test_sampling_filters():
    logits = torch.tensor([0.0, 1.0, 5.0, 4.0])
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, SamplingParams(top_k=2), g) for _ in range(200)}
    assert picks <= {2, 3} and len(picks) == 2
    allowed = torch.tensor([True, True, False, False])
    assert sample_next(logits, SamplingParams(temperature=0), allowed=allowed) == 1
    seen = torch.tensor([False, False, True, False])
    assert sample_next(logits, SamplingParams(temperature=0, repetition_penalty=2.0), seen=seen) == 3


def test_bad_requests_are_rejected(model):
    eng = Engine(model)
    with pytest.raises(ValueError, match="outside"):
        eng.generate([Request([10_000])])
    with pytest.raises(ValueError, match="empty prompt"):
        eng.generate([Request([])])
    with pytest.raises(ValueError, match="top_p"):
        eng.generate([Request([1], SamplingParams(top_p=0))])


def test_compiled_decode_step_gives_the_eager_tokens(model):
    # torch.compile of the one-token step (bucketed cache length) must not change greedy answers,
    # alone or batched with ragged prompts
    prompts = [[1, 2, 3], [7, 8, 9, 10, 11, 12, 13]]
    params = SamplingParams(max_new_tokens=20, temperature=0)
    eager = Engine(model).generate([Request(p, params) for p in prompts])
    comp = Engine(model, compile=True)
    assert comp.generate([Request(p, params) for p in prompts]) == eager
    assert model.cache_len % Engine.CACHE_BUCKET == 0 or model.cache_len == model.cfg.max_seq_len
    assert comp.generate([Request(prompts[1], params)]) == eager[1:]
