"""Independent judges of the shapes world: `judge(task, truth, answer) -> (score, detail)`.

`truth` is the sample's "truth" dict from the generated jsonl. `answer` is what the model
produced for the assistant turn: a str for text tasks, a (64, 64, 3) uint8 array for image tasks,
a 16 kHz float waveform for speech tasks, and for spoken_draw a tuple (image, waveform).
Scores are in [0, 1]; nothing here loads or imports a model.
"""

from __future__ import annotations

import numpy as np

from .parse_image import parse_image
from .scene import Scene, normalize_text, parse_caption
from .speech_judge import SpeechJudge, accepted, candidates_for

_speech_judge: SpeechJudge | None = None


def _sj() -> SpeechJudge:
    global _speech_judge
    if _speech_judge is None:
        _speech_judge = SpeechJudge()
    return _speech_judge


def text_match(truth: str, answer: str) -> tuple[float, dict]:
    """Exact match after normalisation (case, whitespace, final punctuation)."""
    ok = normalize_text(answer) == normalize_text(truth)
    return float(ok), {"expected": normalize_text(truth), "got": normalize_text(answer)}


def caption_match(truth: Scene, answer: str) -> tuple[float, dict]:
    """Captions compared as sets of objects (any phrase order)."""
    try:
        got = parse_caption(answer)
    except ValueError as e:
        return 0.0, {"error": str(e)}
    return float(got == truth), {"got": got.to_dict()}


def image_match(truth: Scene, img: np.ndarray) -> tuple[float, dict]:
    """1 when the scene parser reads `img` as exactly the true scene."""
    got = parse_image(np.asarray(img))
    return float(got == truth), {"got": got.to_dict() if got else None}


def speech_match(task: str, truth: dict, wav: np.ndarray) -> tuple[float, dict]:
    """Closed-set speech judge: 1 when the nearest candidate is the true transcript (for spoken
    questions: the true answer, bare or restating the question)."""
    best, dist = _sj().pick(np.asarray(wav, np.float32), candidates_for(task, truth))
    return float(best in accepted(task, truth)), {"heard": best, "expected": truth["transcript"]}


def wer(truth: str, hypothesis: str) -> float:
    """Word error rate (jiwer) after normalisation and dropping punctuation."""
    import jiwer

    def clean(t: str) -> str:
        return " ".join(normalize_text(t).replace(",", " ").replace("?", " ").split())

    return float(jiwer.wer(clean(truth), clean(hypothesis) or "<empty>"))


def judge(task: str, truth: dict, answer) -> tuple[float, dict]:  # noqa: ANN001 - per-task answer type
    """Score one answer of `task` against the sample's truth."""
    if task == "caption" or (task == "vqa" and truth.get("qtype") == "describe"):
        return caption_match(Scene.from_dict(truth["scene"]), answer)
    if task in ("vqa", "video", "math"):
        return text_match(truth["answer"], answer)
    if task == "asr":
        w = wer(truth["transcript"], answer)
        return float(w == 0.0), {"wer": w}
    if task == "draw":
        return image_match(Scene.from_dict(truth["scene"]), answer)
    if task == "edit":
        return image_match(Scene.from_dict(truth["target"]), answer)
    if task in ("tts", "spoken_vqa", "spoken_math"):
        return speech_match(task, truth, answer)
    if task == "spoken_draw":
        img, wav = answer
        s_img, d_img = image_match(Scene.from_dict(truth["scene"]), img)
        s_sp, d_sp = speech_match(task, truth, wav)
        return (s_img + s_sp) / 2, {"image": d_img, "speech": d_sp}
    raise ValueError(f"unknown task {task!r}")
