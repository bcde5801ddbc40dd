"""The shapes world in other languages: lexicons, translation, generation, judges (world/lang.py)."""

from __future__ import annotations

import hashlib
import json
import re
import string

import numpy as np
import pytest

from omniloom.world import lang, scene
from omniloom.world.generate import generate, make_sample, read_jsonl
from omniloom.world.tasks import TASK_PROMPTS

LANGS = [c for c in lang.available() if c != "en"]


def test_at_least_three_languages_besides_english():
    assert {"es", "fr", "de"} <= set(LANGS)


@pytest.mark.parametrize("code", lang.available())
def test_lexicon_is_complete(code):
    lex = lang.get(code).lex
    en = lang.get("en").lex
    # every key the English lexicon has, every template English uses, and no placeholder unknown to a form
    assert set(en) - {"elision", "adjective_endings"} <= set(lex)
    assert set(en["templates"]) <= set(lex["templates"])
    for name in ("shapes", "colors", "sizes", "directions"):
        assert set(lex[name]) == set(en[name]), name
    for form, template in lex["templates"].items():
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        assert used <= set(re.findall(r"\{(\w+)\}", " ".join(en["templates"].values()))), (code, form, used)
    # the closed forms render without a clash (a clash raises), and every sentence parses back
    table = lang.get(code).table
    assert len(table) > 6000
    for text, (form, slots) in list(table.items())[::97]:
        assert lang.get(code).parse(text) == (form, dict(slots))


@pytest.mark.parametrize("code", lang.available())
def test_caption_round_trip(code):
    rng = np.random.default_rng(7)
    L = lang.get(code)
    for _ in range(300):
        s = scene.sample_scene(rng, compositional=bool(rng.integers(2)))
        cap = L.caption(s)
        assert L.parse_caption(cap) == s
        assert L.parse_caption(" " + cap[:1].upper() + cap[1:] + ".") == s  # normalised like English
        assert L.parse_caption(L.caption(s, "object_acc")) == s


def test_english_lexicon_renders_what_the_generator_writes():
    """en.json says exactly what scene.py / tasks.py say, so translation starts from the same sentences."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        s = scene.sample_scene(rng)
        assert lang.get("en").caption(s) == scene.caption(s)
    en = lang.get("en")
    for i in range(120):
        sample, _ = make_sample(11, "val", i, {t: 1.0 for t in ("caption", "vqa", "edit", "video", "math")})
        for m in sample.messages:
            for part in m["content"]:
                if part["type"] == "text":
                    en.parse(part["text"])  # raises when en.json does not cover a sentence
    assert lang.task_prompts("en") == TASK_PROMPTS


def test_english_voices_match_speech():
    from omniloom.world import speech
    from omniloom.world.speech_judge import JUDGE_VOICES

    voices = lang.get("en").lex["voices"]
    assert voices["user"] == list(speech.USER_LANGUAGES)
    assert {k: {f: getattr(v, f) for f in ("language", "variant", "pitch", "range", "rate")}
            for k, v in speech.ASSISTANT_VOICES.items()} == voices["assistant"]
    assert [{f: getattr(v, f) for f in ("language", "variant", "pitch", "range", "rate")} for v in JUDGE_VOICES] \
        == voices["judge"]


# sha256 (first 16 hex) of sample json + media bytes, made by the code before languages existed
ENGLISH_GOLDEN = {
    "caption/0": "2a86c9569cce4616", "vqa/1": "a8656c23dcc28273", "edit/0": "7944e6a56ccb6fdd",
    "tts/0": "57ca17fd1f460dac", "spoken_vqa/1": "6cb8ec8b10e4cd28", "spoken_math/0": "ad109fae26e82983",
    "asr/1": "96c31c8d9ae721a5", "video/0": "c91c044cb6ad61f8",
}


def test_english_unchanged():
    for key, want in ENGLISH_GOLDEN.items():
        task, i = key.split("/")
        for kw in ({}, {"lang": "en"}):
            s, files = make_sample(3, "test", int(i), {task: 1.0}, **kw)
            h = hashlib.sha256(json.dumps(s.to_json(), separators=(",", ":")).encode())
            for k in sorted(files):
                h.update(k.encode())
                h.update(files[k])
            assert h.hexdigest()[:16] == want, key


@pytest.mark.parametrize("code", LANGS)
def test_translation_of_generated_samples(code):
    """Sample i in another language is sample i in English, translated (same scene), and back."""
    mix = {t: 1.0 for t in ("caption", "vqa", "edit", "video", "math", "draw")}
    for i in range(40):
        en, _ = make_sample(5, "test", i, mix)
        other, _ = make_sample(5, "test", i, mix, lang=code)
        assert other.truth["lang"] == code and other.truth.get("scene") == en.truth.get("scene")
        for k in lang.TEXT_FIELDS:
            if k in en.truth:
                assert other.truth[k] == lang.translate(en.truth[k], code)
                assert lang.to_english(other.truth[k], code) == en.truth[k]


def test_generate_spanish_writes_spanish_text_and_audio(tmp_path):
    from omniloom.world import speech

    path = generate(tmp_path, "test", 4, seed=2, tasks=["asr", "tts"], lang="es")
    rows = read_jsonl(path)
    assert all(r["truth"]["lang"] == "es" for r in rows)
    prompts = [p["text"] for r in rows for m in r["messages"] if m["role"] == "user"
               for p in m["content"] if p["type"] == "text"]
    assert any(p == "transcribe el audio" for p in prompts) or any(p.startswith("di ") for p in prompts)
    for r in rows:
        said = r["truth"]["transcript"]
        assert lang.to_english(said, "es") != said or said in ("no",)  # Spanish, not English
        wav, sr = speech.read_wav(str(tmp_path / next(p["path"] for m in r["messages"] for p in m["content"]
                                                      if p["type"] == "audio")))
        assert sr == 16000 and wav.size > 1600
        if r["task"] == "tts":
            part = r["messages"][1]["content"][0]
            assert part["transcript"] == said
            # the audio is the Spanish sentence in the Spanish preset (bit-identical re-synthesis)
            ref = speech.synthesize(said, lang.assistant_voice(part["voice"], "es"))
            assert np.abs(wav - ref).max() < 1e-3
        else:
            assert r["truth"]["voice"]["language"] in lang.get("es").lex["voices"]["user"]


@pytest.mark.slow
def test_speech_judge_picks_the_spanish_candidate():
    """A Spanish render in an assistant voice (not a judge voice) is heard as itself among its
    one-word substitutions, and the spoken answer as the right number."""
    from omniloom.world import judges, speech

    truth = {"transcript": "una estrella roja pequeña arriba y un círculo azul grande en el centro", "lang": "es",
             "kind": "caption"}
    wav = speech.synthesize(truth["transcript"], lang.assistant_voice("nova", "es"))
    score, detail = judges.judge("tts", truth, wav)
    assert score == 1.0, detail
    wrong = speech.synthesize("una estrella verde pequeña arriba y un círculo azul grande en el centro",
                              lang.assistant_voice("atlas", "es"))
    assert judges.judge("tts", truth, wrong)[0] == 0.0
    q = {"transcript": "tres más cuatro es siete", "answer": "siete", "question": "¿cuánto es tres más cuatro?",
         "lang": "es"}
    said = speech.synthesize("tres más cuatro es siete", lang.assistant_voice("atlas", "es"))
    assert judges.judge("spoken_math", q, said)[0] == 1.0


def test_judges_read_each_language():
    from omniloom.world import judges

    rng = np.random.default_rng(0)
    for code in LANGS:
        s = scene.sample_scene(rng, n=2)
        truth = {"scene": s.to_dict(), "lang": code}
        assert judges.judge("caption", truth, lang.get(code).caption(s))[0] == 1.0
        assert judges.judge("caption", truth, scene.caption(s))[0] == 0.0  # English is not the answer
    assert judges.wer("¿cuánto es tres más cuatro?", "cuánto es tres más cuatro") == 0.0


def test_speech_candidates_per_language():
    """The tts candidates of a Spanish truth are the English ones translated (English-only junk such
    as "at the top left right" left out), the truth among them; spoken answers keep both forms."""
    from omniloom.world.speech_judge import accepted, candidates_for

    en = {"transcript": "add a small green triangle at the top right"}
    es = {"transcript": lang.translate(en["transcript"], "es"), "lang": "es"}
    cands = candidates_for("tts", es)
    assert cands[0] == es["transcript"] and len(cands) == len(set(cands)) > 15
    assert "añade un triángulo azul pequeño arriba a la derecha" in cands
    assert all(lang.to_english(c, "es") in candidates_for("tts", en) for c in cands)
    q = {"transcript": "dos más dos es cuatro", "answer": "cuatro", "question": "¿cuánto es dos más dos?", "lang": "es"}
    assert accepted("spoken_math", q) == {"dos más dos es cuatro", "cuatro"}
    assert {"cinco", "dos más dos es cinco"} <= set(candidates_for("spoken_math", q))


def test_unknown_language_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown language .xx.; available: de, en, es, fr, it"):
        generate(tmp_path, "test", 1, lang="xx")
    with pytest.raises(ValueError, match="text_to_3d"):
        generate(tmp_path, "test", 1, tasks=["text_to_3d"], lang="es")
    assert not (tmp_path / "test.jsonl").exists()


def test_lexicon_file_as_a_language(tmp_path):
    """A new language is a JSON file: missing keys are named; a complete copy generates."""
    lex = json.loads((lang.LEXICON_DIR / "es.json").read_text(encoding="utf-8"))
    del lex["numbers"]
    bad = tmp_path / "xx.json"
    bad.write_text(json.dumps(lex), encoding="utf-8")
    with pytest.raises(ValueError, match="missing numbers"):
        lang.get(str(bad))
    lex = json.loads((lang.LEXICON_DIR / "es.json").read_text(encoding="utf-8"))
    lex["colors"]["white"] = "verde"  # two meanings, one text: refused
    clash = tmp_path / "yy.json"
    clash.write_text(json.dumps(lex), encoding="utf-8")
    with pytest.raises(ValueError, match="renders both"):
        lang.get(str(clash)).table
    lex = json.loads((lang.LEXICON_DIR / "es.json").read_text(encoding="utf-8"))
    lex["voices"]["assistant"]["luna"] = {"language": "es", "variant": "f5", "pitch": 70, "range": 60, "rate": 150}
    good = tmp_path / "es-luna.json"
    good.write_text(json.dumps(lex), encoding="utf-8")
    assert lang.assistant_voice_names(str(good)) == ["atlas", "luna", "nova"]
    assert lang.translate("what is two plus two?", str(good)) == "¿cuánto es dos más dos?"


def test_name_voice_slot(tmp_path):
    from omniloom.world.voice_slot import name_voice

    src = tmp_path / "m"
    src.mkdir()
    voices = ["nova", "atlas"] + [f"voice:{i}" for i in range(2, 16)]
    (src / "vocab.json").write_text(json.dumps({"voices": voices, "size": 9}))
    (src / "model.safetensors").write_bytes(b"weights")
    out, slot = name_voice(str(src), "luna", tmp_path / "out")
    assert slot == 2 and json.loads((out / "vocab.json").read_text())["voices"][:3] == ["nova", "atlas", "luna"]
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((src / "vocab.json").read_text())["voices"] == voices  # the source is untouched
    with pytest.raises(ValueError, match="not free"):
        name_voice(str(src), "sol", tmp_path / "o2", slot=1)
    with pytest.raises(ValueError, match="already has a voice 'nova'"):
        name_voice(str(src), "nova", tmp_path / "o3")
