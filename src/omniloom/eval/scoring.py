"""Judging one answer of one world task, and the chance and oracle answers that bound it.

Every task has one metric: ``exact`` (share judged right, higher is better) or ``wer`` (word error
rate, lower is better). The judges are the world's own and share nothing with the model under
test: the caption parser and normalized exact match for text, the scene parser for images, the
closed-set eSpeak/DTW speech judge for speech, jiwer for word error rates.

``chance_answer`` draws what a guesser that knows the task's answer space (but not the input)
would say; ``oracle_answer`` is the true answer made into the answer's modality (a fresh render
of the true scene, eSpeak speech of the true transcript in the assistant's voice). Both go through
the same judge as the model's answer, so every figure lies between its floor and its ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from ..world import scene as ws
from ..world import judges
from ..world.render import render_scene
from ..world.speech_judge import VQA_ANSWERS, accepted, candidates_for

__all__ = ["Answer", "TASK_METRIC", "OUTPUT_OF", "OPT_IN_TASKS", "score", "chance_answer", "oracle_answer"]

TASK_METRIC = {
    "caption": "exact", "vqa": "exact", "draw": "exact", "edit": "exact", "video": "exact", "math": "exact",
    "asr": "wer", "tts": "wer", "spoken_vqa": "exact", "spoken_math": "exact", "spoken_draw": "exact",
    "text_to_3d": "exact", "describe_3d": "exact",
}
# the 3D tasks are scored when asked for (`--tasks text_to_3d,describe_3d`), not by default
OPT_IN_TASKS = ("text_to_3d", "describe_3d")
# what the answer is judged on
OUTPUT_OF = {
    "caption": "text", "vqa": "text", "video": "text", "math": "text", "asr": "text",
    "draw": "image", "edit": "image", "spoken_draw": "image",
    "tts": "audio", "spoken_vqa": "audio", "spoken_math": "audio",
    "text_to_3d": "mesh", "describe_3d": "text",
}


@dataclass
class Answer:
    text: str = ""
    transcript: str = ""
    audio: np.ndarray | None = None  # (samples,) float32 at 16 kHz
    image: np.ndarray | None = None  # (64, 64, 3) uint8
    mesh: np.ndarray | None = None  # (16, 16, 16) bool occupancy
    extra: dict = field(default_factory=dict)


def _target_scene(task: str, truth: dict) -> ws.Scene:
    return ws.Scene.from_dict(truth["target"] if task == "edit" else truth["scene"])


def _heard(task: str, truth: dict, audio: np.ndarray | None) -> str:
    """What the world's closed-set speech judge hears among the task's candidates."""
    if audio is None or len(audio) < 400:
        return ""
    picked, _ = judges._sj(truth.get("lang", "en")).pick(np.asarray(audio, dtype=np.float32), candidates_for(task, truth))
    return picked


def score(task: str, truth: dict, ans: Answer) -> tuple[float, str]:
    """(value, what the judge read), through the world's judges (``omniloom.world.judges``).

    ``exact`` tasks give 1.0 or 0.0; ``wer`` tasks (asr, tts) give the word error rate. The judge
    of spoken_draw is the image's (the spoken reply is not scored, as in the issue's target).
    """
    if task not in TASK_METRIC:
        raise ValueError(f"unknown task {task!r}; tasks: {sorted(TASK_METRIC)}")
    kind = OUTPUT_OF[task]
    if kind == "mesh":
        if ans.mesh is None or ans.mesh.size == 0:
            return 0.0, "no shape"
        value, detail = judges.judge(task, truth, ans.mesh)
        return value, _read_shape(ans.mesh)
    if kind == "text":
        if task == "asr":
            return judges.wer(truth["transcript"], ans.text), ans.text
        return judges.judge(task, truth, ans.text)[0], ans.text
    if kind == "image":
        if ans.image is None or ans.image.size == 0:
            return 0.0, "no image"
        value, detail = judges.image_match(_target_scene(task, truth), ans.image)
        got = detail.get("got")
        return value, ws.caption(ws.Scene.from_dict(got)) if got and got["objects"] else "unreadable image"
    heard = _heard(task, truth, ans.audio)
    if task == "tts":
        return judges.wer(truth["transcript"], heard), heard
    return float(heard in accepted(task, truth)), heard


def _read_shape(vox: np.ndarray) -> str:
    """What the world's shape reader makes of a grid, as a caption (or why it cannot)."""
    from ..world import scene3d

    got = scene3d.parse_voxels(vox)
    return scene3d.caption3d(got) if got is not None else "unreadable shape"


# ---------------------------------------------------------------------------------------------
# floors and ceilings


def _random_scene(rng: np.random.Generator) -> ws.Scene:
    return ws.sample_scene(rng)


def _answer_space(truth: dict) -> list[str]:
    q = truth.get("qtype")
    if q == "describe":
        return []
    return list(VQA_ANSWERS[q]) if q in VQA_ANSWERS else list(ws.NUMBER_WORDS)


def _say(text: str, voice: str | None, rng: np.random.Generator, lang: str = "en") -> np.ndarray:
    from ..world import lang as world_lang
    from ..world import speech

    names = world_lang.assistant_voice_names(lang)
    name = voice if voice in names else names[0] if lang != "en" else next(iter(speech.ASSISTANT_VOICES))
    return speech.synthesize(text, world_lang.assistant_voice(name, lang), rng)


def chance_answer(task: str, truth: dict, rng: np.random.Generator) -> Answer:
    """A guess from the task's answer space that ignores the input (in the truth's language)."""
    lang = truth.get("lang", "en")
    if lang != "en" and OUTPUT_OF[task] == "audio":  # a candidate of the language's own set
        guess = str(rng.choice(candidates_for(task, truth)))
        return Answer(transcript=guess, audio=_say(guess, truth.get("voice"), rng, lang))
    if lang != "en":  # the English guess, translated
        from ..world.lang import english_truth, translate

        guess = chance_answer(task, english_truth(truth), rng)
        if guess.text:
            guess.text = translate(guess.text, lang)
        return guess
    if task in OPT_IN_TASKS:
        from ..world import scene3d

        guess = scene3d.sample_scene3d(rng)
        return Answer(mesh=scene3d.voxelize(guess)) if task == "text_to_3d" else Answer(text=scene3d.caption3d(guess))
    if task == "caption":
        return Answer(text=ws.caption(_random_scene(rng)))
    if task == "vqa":
        space = _answer_space(truth) or [ws.caption(_random_scene(rng))]
        return Answer(text=str(rng.choice(space)))
    if task == "math":
        return Answer(text=str(rng.choice(ws.NUMBER_WORDS)))
    if task == "video":
        size, color, shape = rng.choice(ws.SIZE_NAMES), rng.choice(ws.COLOR_NAMES), rng.choice(ws.SHAPES)
        direction = rng.choice(["left", "right", "up", "down"])
        return Answer(text=f"a {size} {color} {shape} moves {direction}")
    if task == "asr":
        return Answer(text=ws.caption(_random_scene(rng)))
    if task in ("draw", "edit", "spoken_draw"):
        return Answer(image=render_scene(_random_scene(rng), rng))
    guess = str(rng.choice(candidates_for(task, truth)))
    return Answer(transcript=guess, audio=_say(guess, truth.get("voice"), rng))


def oracle_answer(task: str, truth: dict, rng: np.random.Generator) -> Answer:
    """The true answer in the answer's modality (fresh renders and speech, not the data set's files)."""
    kind = OUTPUT_OF[task]
    if kind == "mesh":
        from ..world import scene3d

        return Answer(mesh=scene3d.voxelize(scene3d.Scene3D.from_dict(truth["scene3d"])))
    if kind == "text":
        return Answer(text=truth["answer"])
    if kind == "image":
        return Answer(image=render_scene(_target_scene(task, truth), rng))
    said = truth["transcript"]
    return Answer(transcript=said, audio=_say(said, truth.get("voice"), rng, truth.get("lang", "en")))


def describe_truth(task: str, truth: dict) -> str:
    if OUTPUT_OF[task] == "mesh":
        from ..world import scene3d

        return scene3d.caption3d(scene3d.Scene3D.from_dict(truth["scene3d"]))
    if OUTPUT_OF[task] == "image":
        return ws.caption(_target_scene(task, truth))
    return str(truth.get("answer") or truth.get("transcript") or "")
