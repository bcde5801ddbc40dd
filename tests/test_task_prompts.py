"""Task prompts come from the model directory (generation.json "prompts"), not from generic code: a
model with other phrasing is asked in its own words, and one without a prompt is told so."""

import json

import numpy as np
import openai
import pytest

from omniloom.infer.generate import OmniModel, read_generation
from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import serve_in_thread
from omniloom.serve.tiny import build_tiny_model, save_model


def test_prompts_are_validated(tmp_path):
    (tmp_path / "generation.json").write_text(json.dumps({"prompts": {"speak": "utter {text}"}}))
    assert read_generation(tmp_path) == {"prompts": {"speak": "utter {text}"}}
    for bad, word in ((json.dumps({"prompts": {"sing": "x"}}), "unknown task prompt"),
                      (json.dumps({"prompts": {"speak": "utter"}}), "must contain"),
                      (json.dumps({"prompts": {"caption": ""}}), "non-empty"),
                      (json.dumps({"prompts": ["x"]}), "object of task")):
        (tmp_path / "generation.json").write_text(bad)
        with pytest.raises(ValueError, match=word):
            read_generation(tmp_path)


def test_the_model_is_asked_in_its_own_words(tmp_path):
    tiny = build_tiny_model()
    omni = OmniModel(tiny.model, tiny.vocab, tiny.tok, tiny.codecs,
                     generation={"prompts": {"speak": "utter {text}", "transcribe": "write down the speech"}})
    assert omni.task_prompt("speak", "hello") == "utter hello"
    assert omni.task_prompt("transcribe") == "write down the speech"
    with pytest.raises(ValueError, match='"prompts".*caption'):
        omni.task_prompt("caption")
    # saved and loaded with the model directory
    save_model(omni, tmp_path / "m")
    assert OmniModel.load(tmp_path / "m").task_prompt("speak", "x") == "utter x"


def test_shipped_and_world_data_name_the_world_prompts(tmp_path):
    from omniloom.cli import main
    from omniloom.world.tasks import TASK_PROMPTS

    assert OmniModel.load("world").generation["prompts"] == TASK_PROMPTS
    assert main(["world", "generate", "--out", str(tmp_path / "w"), "--split", "train", "--n", "2",
                 "--tasks", "math", "--workers", "1", "--quiet"]) == 0
    assert json.loads((tmp_path / "w" / "generation.json").read_text()) == {"prompts": TASK_PROMPTS}


def test_server_uses_the_model_prompt_and_refuses_without_one():
    seen = []
    tiny = build_tiny_model()
    custom = OmniModel(tiny.model, tiny.vocab, tiny.tok, tiny.codecs,
                       generation={"prompts": {"speak": "utter {text}"}})
    encode = custom.tok.encode
    custom.tok.encode = lambda text: (seen.append(text), encode(text))[1]  # what the model is asked
    app = create_app(custom, ServeSettings(model_id="tiny", max_tokens=64, default_max_tokens=32))
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        client.audio.speech.create(model="tiny", voice="nova", input="hi")
        with pytest.raises(openai.BadRequestError, match="transcribe"):
            client.audio.transcriptions.create(model="tiny", file=("a.wav", _wav()))
    assert "utter hi" in seen and not any("say" in s for s in seen), seen


def _wav():
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(np.arange(8000) / 10), 16000, format="WAV")
    return buf.getvalue()


def test_no_caption_prompt_means_no_self_judged_search():
    from omniloom.infer.generate import Done, generate
    from omniloom.infer.sampling import SamplingParams

    tiny = build_tiny_model()
    bare = OmniModel(tiny.model, tiny.vocab, tiny.tok, tiny.codecs)
    done = [e for e in generate(bare, [{"role": "user", "content": "draw a red circle"}], output_modality="image",
                                image_candidates=4, sampling=SamplingParams(temperature=1.0, max_new_tokens=80))
            if isinstance(e, Done)][0]
    assert "image_candidates" not in done.usage  # one drawing: nothing to judge the candidates with
    done = [e for e in generate(tiny, [{"role": "user", "content": "draw a red circle"}], output_modality="image",
                                image_candidates=4, sampling=SamplingParams(temperature=1.0, max_new_tokens=80))
            if isinstance(e, Done)][0]
    assert done.usage["image_candidates"] == 4


def test_a_run_is_found_inside_its_parent_folder(tmp_path):
    from omniloom.infer.generate import resolve_model_dir

    run = tmp_path / "qs" / "run" / "ckpt"
    save_model(build_tiny_model(), run / "step_0000010")
    (run / "latest").write_text("step_0000010")
    (tmp_path / "qs" / "world").mkdir()  # the quickstart's other outputs beside the run
    assert resolve_model_dir(tmp_path / "qs") == run / "step_0000010"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no model"):
        resolve_model_dir(tmp_path / "empty")
    save_model(build_tiny_model(), tmp_path / "qs" / "other")
    with pytest.raises(ValueError, match="several models"):
        resolve_model_dir(tmp_path / "qs")


def test_a_runs_generation_json_keeps_the_start_models_defaults_under_the_datas_prompts(tmp_path):
    """A fine-tune on Spanish data starting from world: world's decoding defaults (cfg_scale, voice
    aliases) stay, the data's prompts replace world's, the data's task tag rule is added; the same
    whether the run starts or resumes (a resumed run reads the start model's file too)."""
    from omniloom.train.loop import _init_source_dir, generation_table
    from omniloom.utils.model_dir import resolve_model_dir

    data = tmp_path / "shards"
    data.mkdir()
    es = {"caption": "describe la imagen", "transcribe": "transcribe el audio", "speak": "di {text}"}
    (data / "generation.json").write_text(json.dumps({"prompts": es}))
    world = json.loads((resolve_model_dir("world") / "generation.json").read_text())
    table = generation_table(_init_source_dir("world"), data, "all")
    assert table["prompts"] == es and table["task_tag"] == "all"
    assert table["cfg_scale"] == world["cfg_scale"] and table["voice_aliases"] == world["voice_aliases"]
    assert generation_table(None, data, "none") == {"prompts": es}
    # a tagged start model (world-es) trained on untagged data: asked untagged from then on
    assert "task_tag" not in generation_table(_init_source_dir("world-es"), data, "none")
    assert generation_table(_init_source_dir("world-es"), data, "all")["task_tag"] == "all"
    assert generation_table(None, tmp_path / "nothing", None) is None
    assert _init_source_dir("") is None and _init_source_dir(str(tmp_path / "no-such-model")) is None
