"""`omniloom world judge-floor`: the speech judge's error on eSpeak renders of the truth in voices
it was not built on (the assistant presets and sampled user voices), per voice and answer kind."""

from __future__ import annotations

import time

import numpy as np

from . import speech
from .scene import NUMBER_WORDS, caption, sample_scene
from .speech_judge import JUDGE_VOICES, SHORT_ANSWERS, SpeechJudge, substitutions
from ..utils.fileio import atomic_write_json


def floor_voices(rng: np.random.Generator, n_user: int = 2) -> list[speech.VoiceSpec]:
    built = {v.espeak_name() for v in JUDGE_VOICES}
    users = []
    while len(users) < n_user:
        v = speech.sample_user_voice(rng)
        if v.espeak_name() not in built:
            users.append(v)
    return list(speech.ASSISTANT_VOICES.values()) + users


def measure_floor(n: int = 20, seed: int = 1234, sentences: int = 2) -> dict:
    """Error rates (wrong pick = 1 word-level error for short answers; WER for sentences)."""
    from .judges import wer

    rng = np.random.default_rng(seed)
    judge = SpeechJudge()
    out: dict = {"voices": {}, "n_short": n, "n_sentences": sentences}
    for v in floor_voices(rng):
        aug = rng if v.name.startswith("user") else None
        errs, words, picks = 0.0, 0, []
        for _ in range(n):
            kind = rng.integers(2)
            cands = list(NUMBER_WORDS) if kind == 0 else list(SHORT_ANSWERS)
            said = cands[int(rng.integers(len(cands)))]
            best, _ = judge.pick(speech.synthesize(said, v, aug), cands)
            errs += wer(said, best) * len(said.split())
            words += len(said.split())
            picks.append(best == said)
        s_err, s_words = 0.0, 0
        for _ in range(sentences):
            said = caption(sample_scene(rng, n=1))
            best, _ = judge.pick(speech.synthesize(said, v, aug), substitutions(said))
            s_err += wer(said, best) * len(said.split())
            s_words += len(said.split())
        out["voices"][v.name] = {
            "espeak": v.espeak_name(), "short_wer": errs / words, "short_accuracy": float(np.mean(picks)),
            "sentence_wer": s_err / max(s_words, 1),
        }
    allw = [r["short_wer"] for r in out["voices"].values()]
    out["mean_short_wer"] = float(np.mean(allw))
    out["assistant_short_wer"] = float(np.mean([out["voices"][k]["short_wer"] for k in speech.ASSISTANT_VOICES]))
    return out


def main_floor(n: int, seed: int, json_out: str | None) -> int:
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    t = time.time()
    res = measure_floor(n=n, seed=seed)
    res["seconds"] = time.time() - t
    print(f"{'voice':28s} {'espeak':20s} {'short WER':>10s} {'sentence WER':>13s}")
    for name, r in res["voices"].items():
        print(f"{name:28s} {r['espeak']:20s} {r['short_wer']:10.3f} {r['sentence_wer']:13.3f}")
    print(f"mean short-answer WER {res['mean_short_wer']:.3f}; assistant voices {res['assistant_short_wer']:.3f}")
    if json_out:
        atomic_write_json(json_out, res)
    return 0
