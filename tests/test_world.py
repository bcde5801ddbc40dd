"""Shapes world: phrasing, renders, speech, generator determinism, held-out pairs, task shapes."""

import filecmp
import json
import re

import numpy as np
import pytest

from omniloom.world import render, speech
from omniloom.world.generate import generate, parse_mixture, read_jsonl
from omniloom.world.scene import (
    CELL_NAMES, CELL_PHRASES, COLOR_NAMES, HELD_OUT_PAIRS, NUMBER_WORDS, SHAPES, SIZE_NAMES,
    Object, Scene, caption, parse_caption, sample_scene, spoken_reply,
)
from omniloom.world.tasks import SPOKEN_DRAW_REPLY, TASKS

OBJ = r"a (?:%s) (?:%s) (?:%s)" % ("|".join(SIZE_NAMES), "|".join(COLOR_NAMES), "|".join(SHAPES))
CELL = "|".join(CELL_PHRASES)
CAPTION = rf"{OBJ} (?:{CELL})(?:(?:, | and ){OBJ} (?:{CELL}))*"
NUM = "|".join(NUMBER_WORDS)
VQA_Q = {
    "color": (rf"what color is the (?:{'|'.join(SHAPES)})\?", "|".join(COLOR_NAMES)),
    "shape": (rf"what shape is (?:{CELL})\?", "a (?:%s)" % "|".join(SHAPES)),
    "count": (r"how many shapes are there\?", "one|two|three"),
    "exists": (rf"is there a (?:{'|'.join(COLOR_NAMES)}) (?:{'|'.join(SHAPES)})\?", "yes|no"),
    "where": (rf"where is the (?:{'|'.join(COLOR_NAMES)}) (?:{'|'.join(SHAPES)})\?", CELL),
    "describe": ("describe the image", CAPTION),
}
EDIT = (rf"make the (?:{'|'.join(SHAPES)}) (?:{'|'.join(COLOR_NAMES)})|remove the (?:{'|'.join(SHAPES)})"
        rf"|move the (?:{'|'.join(SHAPES)}) to the (?:{'|'.join(CELL_NAMES)})|add {OBJ} (?:{CELL})")
MATH_Q = rf"what is (?:{NUM}) (?:plus|minus) (?:{NUM})\?"


def test_caption_phrasing_and_round_trip():
    s = Scene((Object(4, "small", "blue", "star"), Object(0, "big", "red", "circle")))
    assert caption(s) == "a big red circle at the top left and a small blue star in the center"
    rng = np.random.default_rng(0)
    for _ in range(300):
        sc = sample_scene(rng)
        assert re.fullmatch(CAPTION, caption(sc))
        assert parse_caption(caption(sc)) == sc
    # set comparison: order and trailing period do not matter
    assert parse_caption("a small blue star in the center and a big red circle at the top left.") == s
    with pytest.raises(ValueError):
        parse_caption("a big red blob at the top")


def test_render_shape_and_variation():
    s = Scene((Object(4, "big", "green", "square"),))
    a = render.render_scene(s, np.random.default_rng(1))
    b = render.render_scene(s, np.random.default_rng(2))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)  # jitter / noise
    assert a[:5].max() < 10  # black background far from the object
    frames = render.render_video(Object(0, "small", "red", "circle"), "right", np.random.default_rng(3))
    assert len(frames) == 8
    xs = [np.nonzero(f.max(axis=2) > 100)[1].mean() for f in frames]
    assert all(x2 > x1 for x1, x2 in zip(xs, xs[1:]))  # moves steadily right


def test_speech_16k_deterministic_and_voices_differ():
    v = speech.ASSISTANT_VOICES["nova"]
    a = speech.synthesize("three", v)
    assert a.dtype == np.float32 and a.ndim == 1 and 0.2 * 16000 < a.size < 2 * 16000
    assert np.array_equal(a, speech.synthesize("three", v))
    b = speech.synthesize("three", speech.ASSISTANT_VOICES["atlas"])
    assert a.size != b.size or not np.array_equal(a, b)
    assert len(speech.ASSISTANT_VOICES) >= 2
    with pytest.raises(ValueError):
        speech.synthesize("hi", speech.VoiceSpec("x", language="xx-none"))


def test_speech_server_matches_speaking_in_a_fork_of_this_process():
    """The server's fresh speakers and a fork of this process give the same samples; its errors
    come back as the in-process ones would, and a dead server is a clear error."""
    eng = speech._get_engine()
    assert eng.client is not None  # this machine has os.fork: the server path is the one in use
    rng = np.random.default_rng(5)
    for text in ("a red circle above a blue square", "seven"):
        v = speech.sample_user_voice(rng)
        params = eng._params(v)
        via_server = eng.client.speak(v.espeak_name(), params, text)
        status, via_fork = eng.local.speak_forked(v.espeak_name(), params, text)
        assert status == 0 and len(via_server) > 8000 and via_server == via_fork
    with pytest.raises(ValueError, match="no voice 'xx-none'"):
        eng.client.speak("xx-none", [], "hi")
    from omniloom.world.espeak_server import Client

    c = Client(eng.library, eng.data)
    assert c.rate == eng.rate and len(c.speak("en-us", [], "two")) > 0
    c.proc.kill()
    c.proc.wait()
    with pytest.raises(RuntimeError, match="eSpeak server process stopped.*'two'"):
        c.speak("en-us", [], "two")


def test_generate_deterministic_and_worker_independent(tmp_path):
    generate(tmp_path / "a", "train", 24, seed=7, workers=1)
    generate(tmp_path / "b", "train", 24, seed=7, workers=2)
    generate(tmp_path / "c", "train", 24, seed=8, workers=1)
    cmp = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a/train.jsonl").read_bytes() == (tmp_path / "b/train.jsonl").read_bytes()
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    for row in read_jsonl(tmp_path / "a/train.jsonl"):
        for msg in row["messages"]:
            for part in msg["content"]:
                for p in part.get("frames", []) + ([part["path"]] if "path" in part else []):
                    assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()
    assert (tmp_path / "a/train.jsonl").read_bytes() != (tmp_path / "c/train.jsonl").read_bytes()


def _pairs_in(row):
    text = json.dumps(row["messages"]) + json.dumps(row["truth"])
    return {p for p in HELD_OUT_PAIRS if f"{p[0]} {p[1]}" in text or
            re.search(rf'"color": ?"{p[0]}"[^{{}}]*"shape": ?"{p[1]}"|"shape": ?"{p[1]}"[^{{}}]*"color": ?"{p[0]}"', text)}


def test_held_out_pairs(tmp_path):
    generate(tmp_path, "train", 120, seed=1, tasks=["caption", "vqa", "edit", "draw", "video"], workers=1)
    generate(tmp_path, "compositional", 40, seed=1, tasks=["caption", "vqa", "edit", "draw", "video"], workers=1)
    assert all(not _pairs_in(r) for r in read_jsonl(tmp_path / "train.jsonl"))
    assert all(_pairs_in(r) for r in read_jsonl(tmp_path / "compositional.jsonl"))


def test_every_task_follows_the_grammar(tmp_path):
    rows = []
    for t in TASKS:
        generate(tmp_path / t, "val", 3, seed=2, tasks=[t], workers=1)
        rows += read_jsonl(tmp_path / t / "val.jsonl")
    seen = set()
    for r in rows:
        t, (user, asst) = r["task"], r["messages"]
        seen.add(t)
        assert user["role"] == "user" and asst["role"] == "assistant"
        ut = [p["type"] for p in user["content"]]
        at = [p["type"] for p in asst["content"]]
        text = next((p["text"] for p in user["content"] if p["type"] == "text"), None)
        answer = next((p["text"] for p in asst["content"] if p["type"] == "text"), None)
        if t == "caption":
            assert ut == ["image", "text"] and text == "describe the image" and re.fullmatch(CAPTION, answer)
        elif t == "vqa":
            q, a = VQA_Q[r["truth"]["qtype"]]
            assert ut == ["image", "text"] and re.fullmatch(q, text) and re.fullmatch(a, answer)
        elif t == "draw":
            assert ut == ["text"] and at == ["image"] and re.fullmatch("draw " + CAPTION, text)
        elif t == "edit":
            assert ut == ["image", "text"] and at == ["image"] and re.fullmatch(EDIT, text)
        elif t == "video":
            assert ut == ["video", "text"] and len(user["content"][0]["frames"]) == 8
            assert re.fullmatch(rf"{OBJ} moves (?:left|right|up|down)", answer)
        elif t == "math":
            assert re.fullmatch(MATH_Q, text) and answer in NUMBER_WORDS
        elif t == "asr":
            assert ut == ["audio", "text"] and text == "transcribe the audio" and answer == r["truth"]["transcript"]
        elif t == "tts":
            assert ut == ["text"] and at == ["audio"] and text == "say " + asst["content"][0]["transcript"]
        elif t in ("spoken_vqa", "spoken_math"):
            assert ut == (["image", "audio"] if t == "spoken_vqa" else ["audio"]) and at == ["audio"]
            said = asst["content"][0]["transcript"]
            # by default arithmetic restates the question ("three plus four is seven"), vqa answers bare
            restated = spoken_reply(r["truth"]["question"], r["truth"]["answer"])
            assert said == r["truth"]["transcript"] == (restated if t == "spoken_math" else r["truth"]["answer"])
            assert asst["content"][0]["voice"] in speech.ASSISTANT_VOICES
        elif t == "spoken_draw":
            assert ut == ["audio"] and at == ["image", "audio"]
            assert asst["content"][1]["transcript"] == SPOKEN_DRAW_REPLY
    assert seen == set(TASKS)


def test_bad_input_raises_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        parse_mixture(None, ["nope"], "train")
    with pytest.raises(ValueError, match="weight"):
        parse_mixture("vqa=abc", None, "train")
    with pytest.raises(ValueError, match="compositional"):
        parse_mixture(None, ["math"], "compositional")
    with pytest.raises(ValueError, match="split"):
        parse_mixture(None, None, "dev")
    assert not (tmp_path / "train.jsonl").exists()


def test_spoken_reply_restates_the_question_then_answers():
    assert spoken_reply("what is three plus four?", "seven") == "three plus four is seven"
    assert spoken_reply("what is ten minus ten?", "zero") == "ten minus ten is zero"
    assert spoken_reply("what color is the circle?", "red") == "the circle is red"
    assert spoken_reply("where is the red circle?", "at the top left") == "the red circle is at the top left"
    assert spoken_reply("what shape is in the center?", "a star") == "in the center is a star"
    assert spoken_reply("is there a big blue square?", "no") == "is there a big blue square? no"
    assert spoken_reply("how many shapes are there?", "two") == "two"  # nothing to restate: the bare answer


def test_generate_restates_the_spoken_questions_it_is_told_to(tmp_path):
    both = read_jsonl(generate(tmp_path / "a", "train", 12, seed=3, tasks=["spoken_vqa", "spoken_math"],
                               restate=["spoken_vqa", "spoken_math"]))
    bare = read_jsonl(generate(tmp_path / "b", "train", 12, seed=3, tasks=["spoken_vqa", "spoken_math"], restate=[]))
    assert {r["task"] for r in both} == {"spoken_vqa", "spoken_math"}
    for a, b in zip(both, bare):  # the same questions and answers; only what is said differs
        assert a["truth"]["question"] == b["truth"]["question"] and a["truth"]["answer"] == b["truth"]["answer"]
        assert a["truth"]["transcript"] == spoken_reply(a["truth"]["question"], a["truth"]["answer"])
        assert b["truth"]["transcript"] == b["truth"]["answer"]
    with pytest.raises(ValueError, match="spoken_draw cannot restate"):
        generate(tmp_path / "c", "train", 2, restate=["spoken_draw"])


def test_generate_describes_edits_before_drawing_them_when_told_to(tmp_path):
    from omniloom.world.scene import Scene, caption

    described = read_jsonl(generate(tmp_path / "a", "train", 8, seed=3, tasks=["edit"], restate=["edit"]))
    plain = read_jsonl(generate(tmp_path / "b", "train", 8, seed=3, tasks=["edit"]))
    for d, p in zip(described, plain):  # the same edits; only the answer's form differs
        assert d["truth"] == p["truth"]
        said, drawn = d["messages"][1]["content"]
        assert said == {"type": "text", "text": caption(Scene.from_dict(d["truth"]["target"]))}
        assert drawn["type"] == "image" and [c["type"] for c in p["messages"][1]["content"]] == ["image"]


def test_world_scene_command_draws_the_captioned_scene(tmp_path, capsys):
    from PIL import Image

    from omniloom.cli import main
    from omniloom.world.judges import image_match
    from omniloom.world.scene import parse_caption

    out = tmp_path / "scene.png"
    assert main(["world", "scene", "--out", str(out), "--seed", "2"]) == 0
    said = capsys.readouterr().out.split(": ", 1)[1].strip()
    img = np.asarray(Image.open(out).convert("RGB"))
    assert image_match(parse_caption(said), img)[0] == 1.0  # the world's own judge reads the caption back
    assert main(["world", "scene", "--out", str(tmp_path / "x.jpg")]) == 2
