"""The eleven tasks of the shapes world: each turns an rng into one chat sample.

Two more tasks, text_to_3d and describe_3d (`OPT_IN_TASKS`, 3D scenes of `scene3d`), are made
only when named (`--tasks`), so the default mixture and the data sets built from it keep their meaning.

A task function takes `(rng, ctx)` and returns a `Sample` whose `messages` are OpenAI-style
dicts. Media are handed to `ctx.sink`, which returns the part that references them (paths
relative to the output folder) and keeps the bytes until the generator writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import lang as world_lang
from . import render, scene3d, speech
from .scene import (
    CELL_NAMES,
    CELL_PHRASES,
    COLOR_NAMES,
    DIRECTIONS,
    HELD_OUT_PAIRS,
    SHAPES,
    Object,
    Scene,
    allowed_pairs,
    caption,
    has_held_out,
    number_word,
    object_phrase,
    sample_object,
    sample_scene,
    spoken_reply,
)

SPOKEN_DRAW_REPLY = "here is the image"
# the world's instructions for captioning, transcribing and speaking: a model trained on the world
# names them in its generation.json ("prompts"), and the server and the drawing search ask with them
CAPTION_PROMPT = "describe the image"
ASR_PROMPT = "transcribe the audio"
TTS_PROMPT = "say {text}"
TASK_PROMPTS = {"caption": CAPTION_PROMPT, "transcribe": ASR_PROMPT, "speak": TTS_PROMPT}
# spoken questions whose replies may restate the question (`scene.spoken_reply`), and those that do by
# default: arithmetic only. Phase 6 of the reference model restated spoken_vqa too and lost held-out
# pairs (docs/reference-model.md)
# "edit" restates differently: its answer states the edited scene in text (its caption) before
# drawing it, so the model works the edit out in words first and can judge its drawings against them
RESTATABLE: tuple[str, ...] = ("spoken_math", "spoken_vqa", "edit")
DEFAULT_RESTATE: tuple[str, ...] = ("spoken_math",)
TASKS: tuple[str, ...] = (
    "caption", "vqa", "draw", "edit", "video", "math",
    "asr", "tts", "spoken_vqa", "spoken_math", "spoken_draw",
    "text_to_3d", "describe_3d",
)
# tasks never drawn unless named (--tasks or --mixture): the 3D tasks came after the shipped model
OPT_IN_TASKS: tuple[str, ...] = ("text_to_3d", "describe_3d")
SPEECH_TASKS = frozenset({"asr", "tts", "spoken_vqa", "spoken_math", "spoken_draw"})
# tasks whose samples can carry a held-out (color, shape) pair (used by the compositional split)
SCENE_TASKS: tuple[str, ...] = ("caption", "vqa", "draw", "edit", "video", "asr", "tts", "spoken_vqa", "spoken_draw")
VQA_TYPES: tuple[str, ...] = ("color", "shape", "count", "exists", "where")
EDIT_TYPES: tuple[str, ...] = ("recolor", "remove", "move", "add")


class MediaSink:
    """Collects the media of one sample; parts reference `media/<split>/<bucket>/<index>_<k>.<ext>`."""

    def __init__(self, split: str, index: int) -> None:
        self.prefix = f"media/{split}/{index // 1000:05d}/{index:08d}"
        self.files: dict[str, bytes] = {}

    def _name(self, ext: str) -> str:
        return f"{self.prefix}_{len(self.files)}.{ext}"

    def image(self, img: np.ndarray) -> dict:
        path = self._name("png")
        self.files[path] = render.to_png_bytes(img)
        return {"type": "image", "path": path}

    def video(self, frames: list[np.ndarray]) -> dict:
        return {"type": "video", "frames": [self.image(f)["path"] for f in frames], "fps": render.VIDEO_FPS}

    def audio(self, wav: np.ndarray, voice: str | None = None, transcript: str | None = None) -> dict:
        import io
        import wave

        path = self._name("wav")
        buf = io.BytesIO()
        pcm = np.clip(np.rint(wav * 32767.0), -32768, 32767).astype("<i2")
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(speech.SAMPLE_RATE)
            w.writeframes(pcm.tobytes())
        self.files[path] = buf.getvalue()
        part: dict = {"type": "audio", "path": path}
        if voice is not None:
            part["voice"] = voice
        if transcript is not None:
            part["transcript"] = transcript
        return part

    def mesh(self, vox: np.ndarray) -> dict:
        """A 3D shape as its (16, 16, 16) occupancy grid, a uint8 0/1 .npy file ([x, y, z], z up)."""
        import io

        path = self._name("npy")
        buf = io.BytesIO()
        np.save(buf, np.asarray(vox, dtype=np.uint8), allow_pickle=False)
        self.files[path] = buf.getvalue()
        return {"type": "mesh", "path": path}


@dataclass
class TaskContext:
    split: str
    index: int
    compositional: bool = False
    restate: frozenset = frozenset(DEFAULT_RESTATE)  # tasks whose spoken replies restate the question
    lang: str = "en"  # the language spoken (texts are translated after the task, `lang.localize`)
    sink: MediaSink = field(init=False)

    def __post_init__(self) -> None:
        self.sink = MediaSink(self.split, self.index)

    def scene(self, rng: np.random.Generator, n: int | None = None, unique_shapes: bool = False) -> Scene:
        return sample_scene(rng, n=n, compositional=self.compositional, unique_shapes=unique_shapes)

    def pairs(self) -> list[tuple[str, str]]:
        """(color, shape) pairs text may mention in this split."""
        return allowed_pairs("any" if self.compositional else "exclude")


@dataclass
class Sample:
    task: str
    messages: list[dict]
    truth: dict

    def to_json(self) -> dict:
        return {"task": self.task, "messages": self.messages, "truth": self.truth}


def _user(*parts: dict) -> dict:
    return {"role": "user", "content": list(parts)}


def _assistant(*parts: dict) -> dict:
    return {"role": "assistant", "content": list(parts)}


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def _pick(rng: np.random.Generator, seq):  # noqa: ANN001, ANN202
    return seq[int(rng.integers(len(seq)))]


def _assistant_voice(rng: np.random.Generator) -> str:
    return _pick(rng, sorted(speech.ASSISTANT_VOICES))


def _user_speech(rng: np.random.Generator, ctx: TaskContext, text: str) -> tuple[dict, dict]:
    """Text spoken by a random user voice -> (audio part, voice dict for the truth)."""
    voice = world_lang.sample_user_voice(rng, ctx.lang)
    wav = speech.synthesize(world_lang.translate(text, ctx.lang), voice, rng)
    return ctx.sink.audio(wav), voice.to_dict()


def _assistant_speech(rng: np.random.Generator, ctx: TaskContext, text: str) -> dict:
    name = _assistant_voice(rng) if ctx.lang == "en" else _pick(rng, world_lang.assistant_voice_names(ctx.lang))
    text = world_lang.translate(text, ctx.lang)
    wav = speech.synthesize(text, world_lang.assistant_voice(name, ctx.lang))
    return ctx.sink.audio(wav, voice=name, transcript=text)


# ---------------------------------------------------------------- question makers

def make_vqa_question(rng: np.random.Generator, scene: Scene, pairs: list[tuple[str, str]]) -> tuple[str, str, str]:
    """A question about `scene` and its canonical answer -> (qtype, question, answer)."""
    objs = scene.objects
    shape_counts = {s: len(scene.with_shape(s)) for s in SHAPES}
    pair_counts: dict[tuple[str, str], int] = {}
    for o in objs:
        pair_counts[o.pair] = pair_counts.get(o.pair, 0) + 1
    types = ["shape", "count", "exists"]
    if any(shape_counts[o.shape] == 1 for o in objs):
        types.append("color")
    if any(pair_counts[o.pair] == 1 for o in objs):
        types.append("where")
    qtype = _pick(rng, types)
    if qtype == "color":
        o = _pick(rng, [o for o in objs if shape_counts[o.shape] == 1])
        return qtype, f"what color is the {o.shape}?", o.color
    if qtype == "shape":
        o = _pick(rng, objs)
        return qtype, f"what shape is {CELL_PHRASES[o.cell]}?", f"a {o.shape}"
    if qtype == "count":
        return qtype, "how many shapes are there?", number_word(len(objs))
    if qtype == "where":
        o = _pick(rng, [o for o in objs if pair_counts[o.pair] == 1])
        return qtype, f"where is the {o.color} {o.shape}?", CELL_PHRASES[o.cell]
    # exists
    if rng.random() < 0.5:
        o = _pick(rng, objs)
        return qtype, f"is there a {o.color} {o.shape}?", "yes"
    absent = [p for p in pairs if p not in pair_counts]
    c, s = _pick(rng, absent)
    return qtype, f"is there a {c} {s}?", "no"


def make_math_question(rng: np.random.Generator) -> tuple[str, int]:
    a, b = int(rng.integers(0, 11)), int(rng.integers(0, 11))
    if rng.random() < 0.5:
        return f"what is {number_word(a)} plus {number_word(b)}?", a + b
    a, b = max(a, b), min(a, b)
    return f"what is {number_word(a)} minus {number_word(b)}?", a - b


def make_edit(rng: np.random.Generator, scene: Scene, ctx: TaskContext) -> tuple[str, str, Scene]:
    """An edit instruction for a scene with unique shapes -> (etype, instruction, edited scene)."""
    objs = scene.objects
    empty = [c for c in range(9) if scene.at(c) is None]
    types = ["recolor", "move"]
    if len(objs) >= 2:
        types.append("remove")
    if len(objs) <= 2:
        types.append("add")
    etype = _pick(rng, types)
    if etype == "add":
        used = {o.shape for o in objs}  # keep shapes unique so later "the {shape}" edits stay valid
        pairs = [p for p in ctx.pairs() if p[1] not in used]
        new = sample_object(rng, _pick(rng, empty), pairs)
        return etype, f"add {object_phrase(new)}", scene.replace(new, new)
    o = _pick(rng, objs)
    if etype == "recolor":
        colors = [c for c in COLOR_NAMES if c != o.color and (ctx.compositional or (c, o.shape) not in HELD_OUT_PAIRS)]
        c = _pick(rng, colors)
        return etype, f"make the {o.shape} {c}", scene.replace(o, Object(o.cell, o.size, c, o.shape))
    if etype == "remove":
        return etype, f"remove the {o.shape}", scene.replace(o, None)
    cell = _pick(rng, empty)
    return etype, f"move the {o.shape} to the {CELL_NAMES[cell]}", scene.replace(o, Object(cell, o.size, o.color, o.shape))


def _edit_scene(rng: np.random.Generator, ctx: TaskContext) -> tuple[Scene, str, str, Scene]:
    """Sample (scene, etype, instruction, target); compositional samples carry a held-out pair."""
    for _ in range(100):
        scene = ctx.scene(rng, unique_shapes=True)
        etype, instr, target = make_edit(rng, scene, ctx)
        if not ctx.compositional or has_held_out(scene) or has_held_out(target):
            return scene, etype, instr, target
    raise RuntimeError("could not sample a compositional edit")  # pragma: no cover


def sentence_pool(rng: np.random.Generator, ctx: TaskContext) -> tuple[str, str]:
    """A world sentence to speak or transcribe -> (kind, text)."""
    kind = _pick(rng, ("caption", "question", "answer", "math", "draw", "edit", "number"))
    if kind == "caption":
        return kind, caption(ctx.scene(rng))
    if kind == "question":
        return kind, make_vqa_question(rng, ctx.scene(rng), ctx.pairs())[1]
    if kind == "answer":
        return kind, make_vqa_question(rng, ctx.scene(rng), ctx.pairs())[2]
    if kind == "math":
        return kind, make_math_question(rng)[0]
    if kind == "draw":
        return kind, "draw " + caption(ctx.scene(rng))
    if kind == "edit":
        return kind, make_edit(rng, ctx.scene(rng, unique_shapes=True), ctx)[1]
    return kind, number_word(int(rng.integers(0, 21)))


def _compositional_sentence(rng: np.random.Generator, ctx: TaskContext) -> tuple[str, str]:
    """In the compositional split, speech sentences describe a scene with a held-out pair."""
    if not ctx.compositional:
        return sentence_pool(rng, ctx)
    scene = ctx.scene(rng)
    return ("caption", caption(scene)) if rng.random() < 0.5 else ("draw", "draw " + caption(scene))


# ---------------------------------------------------------------- the tasks

def task_caption(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    scene = ctx.scene(rng)
    img = ctx.sink.image(render.render_scene(scene, rng))
    cap = caption(scene)
    msgs = [_user(img, _text(CAPTION_PROMPT)), _assistant(_text(cap))]
    return Sample("caption", msgs, {"scene": scene.to_dict(), "answer": cap})


def task_vqa(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    scene = ctx.scene(rng)
    qtype, q, a = make_vqa_question(rng, scene, ctx.pairs())
    if rng.random() < 0.15:
        qtype, q, a = "describe", CAPTION_PROMPT, caption(scene)
    img = ctx.sink.image(render.render_scene(scene, rng))
    msgs = [_user(img, _text(q)), _assistant(_text(a))]
    return Sample("vqa", msgs, {"scene": scene.to_dict(), "qtype": qtype, "question": q, "answer": a})


def task_draw(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    scene = ctx.scene(rng)
    prompt = "draw " + caption(scene)
    img = ctx.sink.image(render.render_scene(scene, rng))
    msgs = [_user(_text(prompt)), _assistant(img)]
    return Sample("draw", msgs, {"scene": scene.to_dict(), "prompt": prompt})


def task_edit(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    scene, etype, instr, target = _edit_scene(rng, ctx)
    src = ctx.sink.image(render.render_scene(scene, rng))
    dst = ctx.sink.image(render.render_scene(target, rng))
    answer = (_text(caption(target)), dst) if "edit" in ctx.restate else (dst,)
    msgs = [_user(src, _text(instr)), _assistant(*answer)]
    return Sample("edit", msgs, {"scene": scene.to_dict(), "edit": etype, "instruction": instr,
                                 "target": target.to_dict()})


def task_video(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    pairs = allowed_pairs("only") if ctx.compositional else ctx.pairs()
    obj = sample_object(rng, 4, pairs)
    direction = _pick(rng, DIRECTIONS)
    vid = ctx.sink.video(render.render_video(obj, direction, rng))
    answer = f"{object_phrase(obj, with_cell=False)} moves {direction}"
    msgs = [_user(vid, _text("what happens in the video?")), _assistant(_text(answer))]
    return Sample("video", msgs, {"object": {"size": obj.size, "color": obj.color, "shape": obj.shape},
                                  "direction": direction, "answer": answer})


def task_math(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    q, n = make_math_question(rng)
    msgs = [_user(_text(q)), _assistant(_text(number_word(n)))]
    return Sample("math", msgs, {"question": q, "answer": number_word(n), "value": n})


def task_asr(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    kind, text = _compositional_sentence(rng, ctx)
    audio, voice = _user_speech(rng, ctx, text)
    msgs = [_user(audio, _text(ASR_PROMPT)), _assistant(_text(text))]
    return Sample("asr", msgs, {"transcript": text, "kind": kind, "voice": voice, "answer": text})


def task_tts(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    kind, text = _compositional_sentence(rng, ctx)
    audio = _assistant_speech(rng, ctx, text)
    msgs = [_user(_text(TTS_PROMPT.replace("{text}", text))), _assistant(audio)]
    return Sample("tts", msgs, {"transcript": text, "kind": kind, "voice": audio["voice"]})


def task_spoken_vqa(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    scene = ctx.scene(rng)
    qtype, q, a = make_vqa_question(rng, scene, ctx.pairs())
    img = ctx.sink.image(render.render_scene(scene, rng))
    audio, voice = _user_speech(rng, ctx, q)
    said = spoken_reply(q, a) if "spoken_vqa" in ctx.restate else a
    reply = _assistant_speech(rng, ctx, said)
    msgs = [_user(img, audio), _assistant(reply)]
    return Sample("spoken_vqa", msgs, {"scene": scene.to_dict(), "qtype": qtype, "question": q, "answer": a,
                                       "transcript": said, "user_voice": voice, "voice": reply["voice"]})


def task_spoken_math(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    q, n = make_math_question(rng)
    audio, voice = _user_speech(rng, ctx, q)
    said = spoken_reply(q, number_word(n)) if "spoken_math" in ctx.restate else number_word(n)
    reply = _assistant_speech(rng, ctx, said)
    msgs = [_user(audio), _assistant(reply)]
    return Sample("spoken_math", msgs, {"question": q, "answer": number_word(n), "value": n,
                                        "transcript": said, "user_voice": voice, "voice": reply["voice"]})


def task_spoken_draw(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    scene = ctx.scene(rng)
    prompt = "draw " + caption(scene)
    audio, voice = _user_speech(rng, ctx, prompt)
    img = ctx.sink.image(render.render_scene(scene, rng))
    reply = _assistant_speech(rng, ctx, SPOKEN_DRAW_REPLY)
    msgs = [_user(audio), _assistant(img, reply)]
    return Sample("spoken_draw", msgs, {"scene": scene.to_dict(), "prompt": prompt, "transcript": SPOKEN_DRAW_REPLY,
                                        "user_voice": voice, "voice": reply["voice"]})


def task_text_to_3d(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    scene = scene3d.sample_scene3d(rng)
    prompt = scene3d.TEXT_TO_3D_PROMPT.replace("{caption}", scene3d.caption3d(scene))
    msgs = [_user(_text(prompt)), _assistant(ctx.sink.mesh(scene3d.voxelize(scene)))]
    return Sample("text_to_3d", msgs, {"scene3d": scene.to_dict(), "prompt": prompt})


def task_describe_3d(rng: np.random.Generator, ctx: TaskContext) -> Sample:
    scene = scene3d.sample_scene3d(rng)
    cap = scene3d.caption3d(scene)
    msgs = [_user(ctx.sink.mesh(scene3d.voxelize(scene)), _text(scene3d.DESCRIBE_3D_PROMPT)), _assistant(_text(cap))]
    return Sample("describe_3d", msgs, {"scene3d": scene.to_dict(), "answer": cap})


TASK_FNS: dict[str, Callable[[np.random.Generator, TaskContext], Sample]] = {
    "caption": task_caption, "vqa": task_vqa, "draw": task_draw, "edit": task_edit, "video": task_video,
    "math": task_math, "asr": task_asr, "tts": task_tts, "spoken_vqa": task_spoken_vqa,
    "spoken_math": task_spoken_math, "spoken_draw": task_spoken_draw,
    "text_to_3d": task_text_to_3d, "describe_3d": task_describe_3d,
}
assert tuple(TASK_FNS) == TASKS
