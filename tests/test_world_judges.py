"""Judges of the shapes world: scene parser accuracy, caption/text judges, speech judge."""

import numpy as np
import pytest

from omniloom.world import speech
from omniloom.world.judges import judge
from omniloom.world.parse_image import parse_image
from omniloom.world.render import render_scene
from omniloom.world.scene import Object, Scene, caption, sample_scene
from omniloom.world.speech_judge import NUMBER_WORDS, SpeechJudge, answer_space, dtw_distance, substitutions


def _accuracy(n, seed):
    rng = np.random.default_rng(seed)
    ok = 0
    for i in range(n):
        s = sample_scene(rng, compositional=bool(i % 2))
        ok += parse_image(render_scene(s, rng)) == s
    return ok / n


def test_scene_parser_small():
    assert _accuracy(100, 11) >= 0.99


@pytest.mark.slow
def test_scene_parser_1000_fresh_renders():
    assert _accuracy(1000, 2024) >= 0.99


def test_scene_parser_rejects_blank_and_wrong():
    assert parse_image(np.zeros((64, 64, 3), np.uint8)) is None
    s = Scene((Object(0, "big", "red", "circle"),))
    img = render_scene(s, np.random.default_rng(0))
    assert judge("draw", {"scene": s.to_dict()}, img)[0] == 1.0
    other = Scene((Object(0, "small", "red", "circle"),))
    assert judge("draw", {"scene": other.to_dict()}, img)[0] == 0.0


def test_text_and_caption_judges():
    s = Scene((Object(4, "small", "blue", "star"), Object(0, "big", "red", "circle")))
    truth = {"scene": s.to_dict(), "answer": caption(s)}
    assert judge("caption", truth, "A small blue star in the center and a big red circle at the top left.")[0] == 1
    assert judge("caption", truth, "a big red circle at the top left")[0] == 0
    assert judge("math", {"answer": "seven"}, " Seven. ")[0] == 1
    assert judge("vqa", {"answer": "yes", "qtype": "exists"}, "no")[0] == 0
    assert judge("asr", {"transcript": "what is two plus two?"}, "what is two plus two")[0] == 1


def test_dtw_matches_naive():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(9, 3)), rng.normal(size=(13, 3))
    cost = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    D = np.full((10, 14), np.inf)
    D[0, 0] = 0
    for i in range(1, 10):
        for j in range(1, 14):
            D[i, j] = cost[i - 1, j - 1] + min(D[i - 1, j - 1], D[i - 1, j], D[i, j - 1])
    assert dtw_distance(a, b) == pytest.approx(D[9, 13] / 22)


def test_speech_judge_on_assistant_voice():
    j = SpeechJudge()
    for word in ("seven", "twelve", "zero"):
        heard, _ = j.pick(speech.synthesize(word, speech.ASSISTANT_VOICES["atlas"]), list(NUMBER_WORDS))
        assert heard == word
    truth = {"transcript": "four", "answer": "four"}
    wav = speech.synthesize("four", speech.ASSISTANT_VOICES["nova"])
    assert judge("spoken_math", truth, wav)[0] == 1.0
    assert judge("spoken_math", {"transcript": "nine"}, wav)[0] == 0.0


def test_spoken_answers_are_judged_bare_or_restating_the_question():
    q = "what is three plus four?"
    truth = {"question": q, "answer": "seven", "transcript": "three plus four is seven"}
    voice = speech.ASSISTANT_VOICES["nova"]
    for said, right in (("three plus four is seven", 1.0), ("seven", 1.0),
                        ("three plus four is eight", 0.0), ("eight", 0.0)):
        score, detail = judge("spoken_math", truth, speech.synthesize(said, voice))
        assert (score, detail["heard"]) == (right, said)
    truth = {"question": "what color is the star?", "answer": "purple", "transcript": "the star is purple",
             "qtype": "color"}
    for said, right in (("the star is purple", 1.0), ("the star is green", 0.0)):
        score, detail = judge("spoken_vqa", truth, speech.synthesize(said, speech.ASSISTANT_VOICES["atlas"]))
        assert (score, detail["heard"]) == (right, said)
    # restated answers are weighed only against the answers their question admits: with every short
    # answer restated, "is there a red square? no" was heard as "... two" (5 of 50 oracle answers)
    truth = {"question": "is there a red square?", "answer": "no", "transcript": "is there a red square? no",
             "qtype": "exists"}
    assert answer_space("spoken_vqa", truth) == ["yes", "no"]
    for said, right in (("is there a red square? no", 1.0), ("is there a red square? yes", 0.0), ("no", 1.0)):
        score, detail = judge("spoken_vqa", truth, speech.synthesize(said, speech.ASSISTANT_VOICES["nova"]))
        assert (score, detail["heard"]) == (right, said)


def test_substitutions_contain_one_word_changes():
    subs = substitutions("a big red circle at the top")
    assert subs[0] == "a big red circle at the top"
    assert "a small red circle at the top" in subs and "a big red star at the top" in subs
    assert "a big red circle at the top left" not in subs  # cell phrases swap whole, never by prefix
