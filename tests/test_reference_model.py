"""The bundled reference model: found by name, within its size budget, and it answers the world."""

from pathlib import Path

import pytest

from omniloom.infer.generate import MODELS_DIR, OmniModel, generate, resolve_model_dir, TextDelta, Done

ASSETS = Path(MODELS_DIR).parent


@pytest.fixture(scope="module")
def world():
    if not (Path(MODELS_DIR) / "world" / "model.safetensors").is_file():
        pytest.fail("the bundled reference model src/omniloom/assets/models/world is missing")
    return OmniModel.load("world")


def test_bundled_model_and_its_codecs_fit_the_budget():
    files = list((ASSETS / "models" / "world").rglob("*")) + list((ASSETS / "codecs").rglob("*"))
    total = sum(f.stat().st_size for f in files if f.is_file())
    assert total <= 50 * 1024 * 1024, f"model + codecs are {total / 2**20:.1f} MiB"
    assert resolve_model_dir("world") == Path(MODELS_DIR) / "world"


def test_bundled_model_loads_with_its_codecs(world):
    assert set(world.codecs) == {"image", "audio"}
    assert world.model.cfg.vocab_size >= world.vocab.size
    assert {"nova", "atlas"} <= set(world.vocab.voices)


def _answer(omni, question: str) -> str:
    text, done = "", None
    for ev in generate(omni, [{"role": "user", "content": question}], output_modality="text"):
        if isinstance(ev, TextDelta):
            text += ev.text
        elif isinstance(ev, Done):
            done = ev
    assert done is not None
    return text.strip()


@pytest.mark.parametrize("question,answer", [("what is seven plus five?", "twelve"),
                                             ("what is two plus three?", "five")])
def test_bundled_model_does_world_arithmetic(world, question, answer):
    # greedy decoding of the shipped weights; a random or broken model answers anything else
    assert _answer(world, question) == answer
