"""A closed-set speech judge that shares nothing with any model under test.

It renders every candidate sentence with eSpeak NG in its own reference voices (never the
assistant presets), turns audio into cepstral frames (log-mel -> DCT, mean-normalised per
utterance) and picks the candidate whose renders lie nearest by dynamic time warping.
Candidate sets come from the task (numbers, short answers, or the truth sentence and all its
one-word substitutions inside the world's vocabulary).
"""

from __future__ import annotations

import numpy as np

from . import speech
from .lang import english_truth, translate, truth_lang
from .scene import CELL_PHRASES, COLOR_NAMES, NUMBER_WORDS, SHAPES, SIZE_NAMES, spoken_reply

# voices the judge is built on; the floor is measured on other voices (the assistant presets and
# user voices outside this list)
JUDGE_VOICES: tuple[speech.VoiceSpec, ...] = (
    speech.VoiceSpec("judge-a", language="en-us", variant="m2", pitch=48, range=50, rate=165),
    speech.VoiceSpec("judge-b", language="en", variant="f2", pitch=58, range=50, rate=165),
    speech.VoiceSpec("judge-c", language="en-us", variant="", pitch=40, range=40, rate=175),
    speech.VoiceSpec("judge-d", language="en-gb-x-rp", variant="f4", pitch=62, range=60, rate=160),
)

SHORT_ANSWERS: tuple[str, ...] = tuple(
    list(COLOR_NAMES) + [f"a {s}" for s in SHAPES] + list(NUMBER_WORDS) + ["yes", "no"] + list(CELL_PHRASES)
)

_N_FFT, _HOP, _N_MELS, _N_CEPS = 400, 240, 40, 13  # 25 ms windows, 15 ms hop


def _mel_filterbank(sr: int = speech.SAMPLE_RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters on the mel scale."""
    def hz_to_mel(f):  # noqa: ANN001, ANN202
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):  # noqa: ANN001, ANN202
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    mels = np.linspace(hz_to_mel(60.0), hz_to_mel(7600.0), _N_MELS + 2)
    bins = np.floor((_N_FFT + 1) * mel_to_hz(mels) / sr).astype(int)
    fb = np.zeros((_N_MELS, _N_FFT // 2 + 1), np.float32)
    for m in range(1, _N_MELS + 1):
        lo, c, hi = bins[m - 1], bins[m], bins[m + 1]
        fb[m - 1, lo:c] = (np.arange(lo, c) - lo) / max(c - lo, 1)
        fb[m - 1, c:hi] = (hi - np.arange(c, hi)) / max(hi - c, 1)
    return fb


_FB = _mel_filterbank()
_DCT = np.cos(np.pi / _N_MELS * (np.arange(_N_MELS)[None, :] + 0.5) * np.arange(_N_CEPS)[:, None]).astype(np.float32)


def trim_silence(wav: np.ndarray, rel_db: float = -35.0) -> np.ndarray:
    """Drop leading/trailing frames quieter than `rel_db` below the loudest frame."""
    if wav.size < _N_FFT:
        return wav
    frames = np.lib.stride_tricks.sliding_window_view(wav, _N_FFT)[::_HOP]  # (T, n_fft)
    energy = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-10)
    on = np.nonzero(energy > energy.max() + rel_db)[0]
    if on.size == 0:
        return wav
    return wav[on[0] * _HOP: on[-1] * _HOP + _N_FFT]


def features(wav: np.ndarray) -> np.ndarray:
    """16 kHz waveform -> (T, 12) cepstral frames (c1..c12, utterance mean removed)."""
    wav = trim_silence(np.asarray(wav, np.float32))
    if wav.size < _N_FFT:
        wav = np.pad(wav, (0, _N_FFT - wav.size))
    wav = np.append(wav[0], wav[1:] - 0.97 * wav[:-1])  # pre-emphasis
    frames = np.lib.stride_tricks.sliding_window_view(wav, _N_FFT)[::_HOP] * np.hanning(_N_FFT)  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, n_fft/2+1)
    logmel = np.log(power @ _FB.T + 1e-8)  # (T, n_mels)
    ceps = logmel @ _DCT.T  # (T, n_ceps)
    ceps = ceps[:, 1:]  # drop c0 (loudness)
    return (ceps - ceps.mean(axis=0, keepdims=True)).astype(np.float32)


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Length-normalised DTW distance between (Ta, D) and (Tb, D) frame sequences."""
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # (Ta, Tb)
    ta, tb = cost.shape
    acc = np.full((ta + 1, tb + 1), np.inf, np.float64)
    acc[0, 0] = 0.0
    for i in range(1, ta + 1):
        c = cost[i - 1]  # (Tb,)
        diag_up = c + np.minimum(acc[i - 1, :-1], acc[i - 1, 1:])  # arriving from (i-1, j-1) or (i-1, j)
        # arriving from the left is a running min-plus scan: out[j] = min_k<=j diag_up[k] + sum(c[k+1..j])
        csum = np.cumsum(c)
        acc[i, 1:] = csum + np.minimum.accumulate(diag_up - csum)
    return float(acc[ta, tb] / (ta + tb))


class SpeechJudge:
    """Closed-set recognizer: `pick(wav, candidates) -> (best text, {candidate: distance})`.

    Templates (eSpeak renders in JUDGE_VOICES) are cached per instance only.
    """

    def __init__(self, voices: tuple[speech.VoiceSpec, ...] = JUDGE_VOICES) -> None:
        self.voices = voices
        self._templates: dict[str, list[np.ndarray]] = {}

    def templates(self, text: str) -> list[np.ndarray]:
        if text not in self._templates:
            self._templates[text] = [features(speech.synthesize(text, v)) for v in self.voices]
        return self._templates[text]

    def distance(self, feats: np.ndarray, text: str) -> float:
        return min(dtw_distance(feats, t) for t in self.templates(text))

    def pick(self, wav: np.ndarray, candidates: list[str]) -> tuple[str, dict[str, float]]:
        if not candidates:
            raise ValueError("the speech judge needs at least one candidate")
        feats = features(wav)
        dist = {c: self.distance(feats, c) for c in dict.fromkeys(candidates)}
        return min(dist, key=dist.__getitem__), dist


def substitutions(sentence: str) -> list[str]:
    """The sentence and every variant with one vocabulary word swapped for another of its kind."""
    kinds = [set(COLOR_NAMES), set(SHAPES), set(SIZE_NAMES), set(NUMBER_WORDS)]
    words = sentence.split(" ")
    out = [sentence]
    for i, w in enumerate(words):
        for kind in kinds:
            if w in kind:
                out += [" ".join(words[:i] + [o] + words[i + 1:]) for o in sorted(kind) if o != w]
    for phrase in CELL_PHRASES:  # swap a whole cell phrase
        if f" {phrase}" in f" {sentence}":
            for other in CELL_PHRASES:
                if other != phrase and not (phrase in other or other in phrase):
                    out.append(sentence.replace(phrase, other))
    return list(dict.fromkeys(out))


# the answers each vqa question type admits (scenes hold one to three objects)
VQA_ANSWERS: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES, "shape": tuple(f"a {s}" for s in SHAPES), "count": ("one", "two", "three"),
    "exists": ("yes", "no"), "where": CELL_PHRASES,
}


def answer_space(task: str, truth: dict) -> list[str]:
    """The answers a spoken question admits: number words for arithmetic, and for spoken_vqa those
    of its question type (`VQA_ANSWERS`; all short answers when the type is unknown)."""
    if task == "spoken_math":
        return list(NUMBER_WORDS)
    return list(VQA_ANSWERS.get(truth.get("qtype"), SHORT_ANSWERS))


def _translated(sentences: list[str], lang: str) -> list[str]:
    """The sentences in `lang`, leaving out those no language has: a cell swap inside a longer cell
    phrase ("at the top right" -> "at the top left right") is a distractor only in English."""
    out = []
    for s in sentences:
        try:
            out.append(translate(s, lang))
        except ValueError:
            continue
    return out


def candidates_for(task: str, truth: dict) -> list[str]:
    """The closed set a spoken answer of `task` is judged against (always contains the truth).

    Spoken questions may be answered bare ("seven") or restating the question first ("three plus
    four is seven", `scene.spoken_reply`): both forms of every answer in the space are candidates.
    """
    if truth_lang(truth) != "en":  # the English candidates of the English truth, translated
        return list(dict.fromkeys(_translated(candidates_for(task, english_truth(truth)), truth_lang(truth))))
    said = truth["transcript"]
    if task in ("spoken_math", "spoken_vqa"):
        cands = list(NUMBER_WORDS if task == "spoken_math" else SHORT_ANSWERS)
        if truth.get("question"):  # restated: only the answers the question admits, since a long
            # shared prefix dilutes the answer's part of the distance ("...? no" vs "...? two")
            cands += [spoken_reply(truth["question"], a) for a in answer_space(task, truth)]
    elif task == "spoken_draw":
        cands = list(SHORT_ANSWERS)
    else:  # tts and anything longer: the truth and its one-word substitutions
        cands = substitutions(said)
    cands = list(dict.fromkeys(cands))
    return cands if said in cands else [said] + cands


def accepted(task: str, truth: dict) -> set[str]:
    """The candidates that count as right: the true transcript, and for spoken questions the true
    answer in either form (bare or restating the question)."""
    if truth_lang(truth) != "en":
        return {translate(c, truth_lang(truth)) for c in accepted(task, english_truth(truth))}
    ok = {truth["transcript"]}
    if task in ("spoken_math", "spoken_vqa") and truth.get("answer"):
        ok.add(truth["answer"])
        if truth.get("question"):
            ok.add(spoken_reply(truth["question"], truth["answer"]))
    return ok
