"""Best-of-N drawing judged by the model's own captions (infer/rerank.py)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from omniloom.infer.generate import MODELS_DIR, Done, ImageOut, OmniModel, generate
from omniloom.infer.rerank import best_image, caption_logprobs, drawing_description, request_description
from omniloom.infer.sampling import SamplingParams


@pytest.fixture(scope="module")
def tiny():
    from omniloom.serve.tiny import build_tiny_model

    return build_tiny_model()


@pytest.mark.parametrize("text,desc", [
    ("draw a big red circle at the top left", "a big red circle at the top left"),
    ("Please paint a small blue square.", "a small blue square"),
    ("make an image of a green star", "a green star"),
    ("show me two circles", "two circles"),
    ("a red star", "a red star"),  # no verb: the text itself
    ("drawing lessons", "drawing lessons"),  # a word that starts like a verb is not one
])
def test_drawing_description_drops_only_a_leading_verb(text, desc):
    assert drawing_description(text) == desc


def test_request_description_from_the_last_user_text_and_none_for_an_edit(tiny):
    msgs = [{"role": "user", "content": "draw a red circle"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "draw a small blue square"}]}]
    assert request_description(tiny, msgs) == "a small blue square"
    edit = [{"role": "user", "content": [{"type": "image_codes", "codes": [0] * tiny.vocab.image_tokens},
                                         {"type": "text", "text": "remove the circle"}]}]
    assert request_description(tiny, edit) is None
    assert request_description(tiny, [{"role": "system", "content": "hi"}]) is None


def test_caption_logprobs_batched_equals_one_by_one(tiny):
    g = torch.Generator().manual_seed(3)
    n = tiny.vocab.image_tokens
    imgs = [torch.randint(0, tiny.vocab.image_codebook_size, (n,), generator=g).tolist() for _ in range(3)]
    batched = caption_logprobs(tiny, imgs, "a big red circle")
    single = [caption_logprobs(tiny, [im], "a big red circle")[0] for im in imgs]
    assert np.allclose(batched, single, atol=1e-4)
    assert all(s < 0 for s in batched)
    assert len(set(round(s, 4) for s in batched)) == 3  # the image matters


def _prompt(omni, text):
    return omni.processor.prompt_ids([{"role": "user", "content": text}], "image")


def test_best_image_keeps_the_highest_scoring_candidate_and_repeats_when_seeded(tiny):
    prompt = _prompt(tiny, "draw a big red circle")
    sp = SamplingParams(temperature=0.0, seed=7)
    span, score, drawn = best_image(tiny, prompt, 12, "a big red circle", sp, batch=4, good_enough=math.inf)
    lo = tiny.vocab.range_of("image")[0]
    assert drawn == 12 and len(span) == tiny.vocab.image_tokens + 1 and span[-1] == tiny.vocab.special("/image")
    codes = [t - lo for t in span[:-1]]
    assert all(0 <= c < tiny.vocab.image_codebook_size for c in codes)
    assert score == pytest.approx(caption_logprobs(tiny, [codes], "a big red circle")[0], abs=1e-4)
    # candidate 0 is the greedy image: the search never keeps something the model scores lower
    greedy = [ev for ev in generate(tiny, [{"role": "user", "content": "draw a big red circle"}],
                                    output_modality="image", outputs=("image",)) if isinstance(ev, ImageOut)][0]
    assert score >= caption_logprobs(tiny, [greedy.codes], "a big red circle")[0] - 1e-4
    again = best_image(tiny, prompt, 12, "a big red circle", sp, batch=4, good_enough=math.inf)
    assert again[0] == span and again[1] == pytest.approx(score)
    # the first 4 candidates are the same draws: more candidates can only find a better one
    fewer = best_image(tiny, prompt, 4, "a big red circle", sp, batch=4, good_enough=math.inf)
    assert fewer[2] == 4 and score >= fewer[1] - 1e-6


def test_best_image_stops_once_good_enough_and_checks_its_input(tiny):
    prompt = _prompt(tiny, "draw a big red circle")
    sp = SamplingParams(temperature=0.0, seed=1)
    assert best_image(tiny, prompt, 16, "a big red circle", sp, batch=4, good_enough=-math.inf)[2] == 4
    with pytest.raises(ValueError, match="image_candidates must be >= 1"):
        best_image(tiny, prompt, 0, "x", sp)
    with pytest.raises(ValueError, match="opened image span"):
        best_image(tiny, prompt[:-1], 4, "x", sp)


def test_generate_with_candidates_yields_one_image_and_counts_them(tiny):
    events = list(generate(tiny, [{"role": "user", "content": "draw a small blue square"}], output_modality="image",
                           outputs=("image",), sampling=SamplingParams(max_new_tokens=80, temperature=0.0, seed=2),
                           image_candidates=5))
    imgs = [e for e in events if isinstance(e, ImageOut)]
    done = events[-1]
    assert len(imgs) == 1 and len(imgs[0].codes) == tiny.vocab.image_tokens and imgs[0].image.shape == (64, 64, 3)
    assert isinstance(done, Done) and done.usage["image_candidates"] == 5
    # the chosen image counts as the answer's first tokens and within its budget (80)
    assert tiny.vocab.image_tokens <= done.usage["image_tokens"] <= done.usage["completion_tokens"] <= 80
    # an edit has no description of its result: one sample, as without the search
    edit = [{"role": "user", "content": [{"type": "image_codes", "codes": imgs[0].codes},
                                         {"type": "text", "text": "remove the square"}]}]
    events = list(generate(tiny, edit, output_modality="image", outputs=("image",), image_candidates=5))
    assert "image_candidates" not in events[-1].usage
    with pytest.raises(ValueError, match="image_candidates must be >= 1"):
        list(generate(tiny, edit, output_modality="image", image_candidates=0))
    # a budget with no room for a whole image: no search, the answer is cut as without it
    short = list(generate(tiny, [{"role": "user", "content": "draw a small blue square"}], output_modality="image",
                          sampling=SamplingParams(max_new_tokens=10), image_candidates=5))
    assert "image_candidates" not in short[-1].usage and short[-1].usage["completion_tokens"] <= 10


# --- the shipped reference model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    if not (Path(MODELS_DIR) / "world" / "model.safetensors").is_file():
        pytest.fail("the bundled reference model src/omniloom/assets/models/world is missing")
    return OmniModel.load("world")


def _codes_of(omni, text):
    from omniloom.world.render import render_scene
    from omniloom.world.scene import parse_caption

    img = render_scene(parse_caption(text), np.random.default_rng(0))
    return omni.processor.to_code_part({"type": "image", "image": img})["codes"]


def test_shipped_model_scores_the_true_caption_above_near_misses(world):
    true = "a big red circle at the top left and a small blue star in the center"
    codes = _codes_of(world, true)
    wrong = ["a big green circle at the top left and a small blue star in the center",  # color
             "a big red circle at the top left and a small blue square in the center",  # shape
             "a small red circle at the top left and a small blue star in the center",  # size
             "a big red circle at the top right and a small blue star in the center",  # place
             "a big red circle at the top left"]  # an object left out
    scores = [caption_logprobs(world, [codes], t)[0] for t in [true] + wrong]
    assert scores[0] > max(scores[1:]) + 2.0, scores


# prompts of the world's test split (seed 1234) that greedy decoding with guidance 2 draws wrong
PROMPTS_GREEDY_WRONG = ["draw a big blue star at the top left and a small purple square on the left",
                        "draw a big yellow triangle at the bottom",
                        "draw a small green triangle in the center and a big blue square at the bottom"]


def test_shipped_model_search_mends_drawings_greedy_gets_wrong(world):
    from omniloom.world.judges import image_match
    from omniloom.world.scene import parse_caption

    exact = 0
    for i, text in enumerate(PROMPTS_GREEDY_WRONG):
        msgs = [{"role": "user", "content": text}]
        sp = SamplingParams(temperature=0.0, seed=i)
        greedy = [e for e in generate(world, msgs, output_modality="image", outputs=("image",), sampling=sp,
                                      cfg_scale=2.0) if isinstance(e, ImageOut)][0]
        truth = parse_caption(drawing_description(text))
        assert image_match(truth, greedy.image)[0] == 0.0  # the premise: greedy alone gets it wrong
        found = [e for e in generate(world, msgs, output_modality="image", outputs=("image",), sampling=sp,
                                     cfg_scale=2.0, image_candidates=32) if isinstance(e, ImageOut)][0]
        exact += image_match(truth, found.image)[0] == 1.0
    assert exact >= 2, exact


# --- the model's own decoding defaults (generation.json) ------------------------------------------

def test_generation_json_is_read_validated_and_applied(tmp_path):
    from omniloom.infer.generate import read_generation

    assert read_generation(tmp_path) == {}
    (tmp_path / "generation.json").write_text('{"cfg_scale": 2, "image_candidates": 16}')
    assert read_generation(tmp_path) == {"cfg_scale": 2.0, "image_candidates": 16}
    (tmp_path / "generation.json").write_text('{"describe_edits": true}')
    assert read_generation(tmp_path) == {"describe_edits": True}
    for bad, word in [('{"cfg": 2}', "unknown key 'cfg'"), ('{"image_candidates": 0}', "image_candidates must be"),
                      ('{"image_candidates": 2.5}', "image_candidates must be int"), ('[1]', "JSON object"),
                      ('{"cfg_scale": true}', "cfg_scale must be"), ('{', "not valid JSON"),
                      ('{"describe_edits": 1}', "describe_edits must be true or false")]:
        (tmp_path / "generation.json").write_text(bad)
        with pytest.raises(ValueError, match=word):
            read_generation(tmp_path)


def test_image_options_prefer_the_caller_then_the_model(tiny):
    assert tiny.image_options() == (1.0, 1)  # no generation.json: off
    omni = OmniModel(tiny.model, tiny.vocab, tiny.tok, tiny.codecs,
                     generation={"cfg_scale": 2.0, "image_candidates": 16})
    assert omni.image_options() == (2.0, 16)
    assert omni.image_options(1.0, None) == (1.0, 16) and omni.image_options(None, 1) == (2.0, 1)


def test_shipped_model_recommends_guidance_and_search(world):
    assert world.image_options() == (2.0, 16)


# --- edits described before they are drawn (generation.json: describe_edits) -----------------------

def _edit_request(vocab, codes=None):
    codes = codes or [3] * vocab.image_tokens
    return [{"role": "user", "content": [{"type": "image_codes", "codes": codes},
                                         {"type": "text", "text": "make the circle blue"}]}]


def test_a_describe_edits_model_writes_its_description_before_the_drawing(tiny):
    from omniloom.infer.generate import TextDelta, _describe_edit
    from omniloom.infer.sampling import SamplingParams

    omni = OmniModel(tiny.model, tiny.vocab, tiny.tok, tiny.codecs, generation={"describe_edits": True})
    v = omni.vocab
    header = omni.processor.prompt_ids(_edit_request(v), None)
    said = _describe_edit(omni, header, SamplingParams(temperature=0.0, max_new_tokens=400))
    assert said and all(t < v.text_size for t in said)  # the random model writes text first
    events = list(generate(omni, _edit_request(v), output_modality="image",
                           sampling=SamplingParams(temperature=0.0, max_new_tokens=400)))
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "TextDelta" and kinds.count("ImageOut") == 1 and kinds[-1] == "Done"
    assert events[0].text == omni.tok.decode(said)  # the same greedy description
    usage = events[-1].usage
    assert usage["text_tokens"] >= len(said) and usage["image_tokens"] == v.image_tokens  # (text may follow)
    # a caller that wants the image alone still gets the drawing made after the description, without its text
    only = list(generate(omni, _edit_request(v), output_modality="image", outputs=("image",),
                         sampling=SamplingParams(temperature=0.0, max_new_tokens=400)))
    assert not any(isinstance(e, TextDelta) for e in only) and only[-1].usage["text_tokens"] == len(said)
    # the drawing continues the description: the same image as decoding after header + description
    from omniloom.infer.engine import Request
    from omniloom.infer.grammar import SpanGrammar

    prefix = header + said + [v.special("image")]
    span = omni.engine.generate([Request(prefix, SamplingParams(temperature=0.0, max_new_tokens=v.image_tokens + 1),
                                         SpanGrammar(v, omni.model.cfg.vocab_size, outputs=("image",),
                                                     prefix=prefix))])[0][:v.image_tokens]
    image = [e for e in events if isinstance(e, ImageOut)][0]
    assert image.codes == [t - v.range_of("image")[0] for t in span]
    # not for a drawing from text, and not for a model without the flag
    assert not any(isinstance(e, TextDelta) for e in generate(
        omni, [{"role": "user", "content": "draw a red circle"}], output_modality="image",
        sampling=SamplingParams(temperature=0.0, max_new_tokens=100)))
    assert not any(isinstance(e, TextDelta) for e in generate(
        tiny, _edit_request(v), output_modality="image", sampling=SamplingParams(temperature=0.0, max_new_tokens=100)))


def test_a_described_edit_is_searched_against_its_own_description(tiny, monkeypatch):
    import omniloom.infer.rerank as rerank
    from omniloom.infer.generate import TextDelta

    omni = OmniModel(tiny.model, tiny.vocab, tiny.tok, tiny.codecs, generation={"describe_edits": True, **tiny.generation})
    seen = {}
    real = rerank.best_image

    def spy(omni_, prompt, n, description, *a, **kw):
        seen.update(prompt=prompt, description=description)
        return real(omni_, prompt, n, description, *a, **kw)

    monkeypatch.setattr(rerank, "best_image", spy)
    events = list(generate(omni, _edit_request(omni.vocab), output_modality="image", image_candidates=2,
                           sampling=SamplingParams(temperature=0.0, max_new_tokens=400)))
    said = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert said and seen["description"] == said.strip()
    assert seen["prompt"][-1] == omni.vocab.special("image")  # candidates are drawn after the description
