"""The bundled language models (``world-es``, ...): a few MB of tag-gated adapters and rows over
``world``. Untagged, each is the world model (English kept exact); tagged, it hears and writes its
language."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omniloom.infer.generate import MODELS_DIR, OmniModel, TextDelta, generate, resolve_model_dir
from omniloom.model.delta import is_delta_dir
from omniloom.tokens import with_task_tag
from omniloom.world import lang

#: bundled model -> its language
BUNDLED = {"world-de": "de", "world-es": "es", "world-fr": "fr", "world-it": "it"}


@pytest.fixture(scope="module")
def world():
    return OmniModel.load("world")


@pytest.fixture(scope="module", params=sorted(BUNDLED))
def taught(request):
    return request.param, OmniModel.load(request.param)


def test_each_is_a_small_delta_over_the_bundled_world(taught):
    name, _ = taught
    d = resolve_model_dir(name)
    assert d == Path(MODELS_DIR) / name and is_delta_dir(d)
    assert json.loads((d / "base.json").read_text())["base"] == "world"
    size = sum(f.stat().st_size for f in d.iterdir())
    assert size <= 10 * 2**20, f"{name} is {size / 2**20:.1f} MiB"
    gen = json.loads((d / "generation.json").read_text())
    assert gen["task_tag"] == "all" and gen["prompts"] == lang.task_prompts(BUNDLED[name])


def test_untagged_input_runs_the_world_model(taught, world):
    """Text and image prompts without the tag: the same logits as world, except the columns of the
    rows the language trained (ids English never writes), and the same greedy next token."""
    name, model = taught
    trained = load_file(str(resolve_model_dir(name) / "delta.safetensors"))["embed_tokens.row_ids"]
    keep = torch.ones(world.model.cfg.vocab_size, dtype=torch.bool)
    keep[trained] = False
    img = {"type": "image", "image": torch.rand(3, 64, 64)}
    for msgs in ([{"role": "user", "content": "what is seven plus five?"}],
                 [{"role": "user", "content": [img, {"type": "text", "text": "describe the image"}]}]):
        ids = torch.tensor([world.processor.prompt_ids(msgs, "text")])
        with torch.no_grad():
            a, b = model.model(ids)[0, -1], world.model(ids)[0, -1]
        assert torch.equal(a[keep], b[keep])
        assert a.argmax() == b.argmax()
        tagged = torch.tensor([model.processor.prompt_ids(with_task_tag(msgs), "text")])
        with torch.no_grad():
            assert (model.model(tagged)[0, -1] - world.model(tagged)[0, -1]).abs().max() > 1e-2  # adapters act


def _ask(omni, msgs, base_dir):
    return "".join(ev.text for ev in generate(omni, msgs, output_modality="text", base_dir=base_dir)
                   if isinstance(ev, TextDelta)).strip()


def test_tagged_speech_is_transcribed_in_the_language(taught, world, tmp_path):
    """Eight held-out utterances of the world in the language: the taught model (tagged) writes the
    language and its WER is well below world's, which answers them in English."""
    import jiwer

    from omniloom.world.generate import generate as world_generate

    name, model = taught
    code = BUNDLED[name]
    path = world_generate(tmp_path, "test", 8, seed=7, tasks=["asr"], lang=code)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    refs = [r["truth"]["transcript"] for r in rows]
    users = [[m for m in r["messages"] if m["role"] == "user"] for r in rows]
    heard = [_ask(model, with_task_tag(u), path.parent) for u in users]
    plain = [_ask(world, u, path.parent) for u in users]
    assert sum(lang.to_english(h, code) != h for h in heard) >= 6, heard  # the language, not English
    assert jiwer.wer(refs, heard) < jiwer.wer(refs, plain) - 0.2, (heard, plain)
    # the server's transcription endpoint asks with the model's own prompt, tagged as it was trained
    from omniloom.serve.audio import _transcribe_job

    wav = (path.parent / users[1][0]["content"][0]["path"]).read_bytes()
    served = "".join(ev.text for ev in _transcribe_job(wav, 64, 0.0)(model) if isinstance(ev, TextDelta)).strip()
    assert served == heard[1]


def test_the_models_own_task_prompts_are_asked_as_it_was_trained(taught, world):
    _, model = taught
    msgs = [{"role": "user", "content": model.task_prompt("speak", "hola")}]
    assert model.as_trained(msgs, "audio")[0]["content"][0] == {"type": "task_tag"}
    assert world.as_trained(msgs, "audio") == msgs  # world has no tag rule
    # left out of world's defaults: write-then-speak and drawing search both ask the model for
    # captions in its language, which it never learned
    assert "speak_via_text" not in model.generation and "image_candidates" not in model.generation
