"""Independent judges of the shapes world: `judge(task, truth, answer) -> (score, detail)`.

`truth` is the sample's "truth" dict from the generated jsonl. `answer` is what the model
produced for the assistant turn: a str for text tasks, a (64, 64, 3) uint8 array for image tasks,
a 16 kHz float waveform for speech tasks, for spoken_draw a tuple (image, waveform), and for
text_to_3d a (16, 16, 16) occupancy grid (or an STL/OBJ/GLB/.npy file, as a path or bytes).
Scores are in [0, 1]; nothing here loads or imports a model.
"""

from __future__ import annotations

import numpy as np

from . import scene3d
from .parse_image import parse_image
from .scene import Scene, normalize_text, parse_caption
from .speech_judge import SpeechJudge, accepted, candidates_for

_speech_judges: dict[str, SpeechJudge] = {}


def _sj(lang: str = "en") -> SpeechJudge:
    """The speech judge of `lang` (its reference voices speak that language; `lang.judge_voices`)."""
    if lang not in _speech_judges:
        from . import lang as world_lang

        _speech_judges[lang] = SpeechJudge() if lang == "en" else SpeechJudge(world_lang.judge_voices(lang))
    return _speech_judges[lang]


def text_match(truth: str, answer: str) -> tuple[float, dict]:
    """Exact match after normalisation (case, whitespace, final punctuation)."""
    ok = normalize_text(answer) == normalize_text(truth)
    return float(ok), {"expected": normalize_text(truth), "got": normalize_text(answer)}


def caption_match(truth: Scene, answer: str, lang: str = "en") -> tuple[float, dict]:
    """Captions compared as sets of objects (any phrase order), read with `lang`'s lexicon."""
    try:
        if lang == "en":
            got = parse_caption(answer)
        else:
            from . import lang as world_lang

            got = world_lang.get(lang).parse_caption(answer)
    except ValueError as e:
        return 0.0, {"error": str(e)}
    return float(got == truth), {"got": got.to_dict()}


def image_match(truth: Scene, img: np.ndarray) -> tuple[float, dict]:
    """1 when the scene parser reads `img` as exactly the true scene."""
    got = parse_image(np.asarray(img))
    return float(got == truth), {"got": got.to_dict() if got else None}


def caption3d_match(truth: scene3d.Scene3D, answer: str) -> tuple[float, dict]:
    """3D captions compared as sets of stacks (any phrase order)."""
    got = scene3d.parse_caption3d(answer)
    return float(got == truth), {"got": got.to_dict() if got else None}


MESH_IOU_MIN = 0.5  # text_to_3d: least voxel IoU with the true scene's voxels


def mesh_match(truth: scene3d.Scene3D, answer) -> tuple[float, dict]:  # noqa: ANN001 - grid, path or bytes
    """1 when the answer's occupancy has voxel IoU >= 0.5 with the true scene's voxelization and the
    scene reader (`scene3d.parse_voxels`) finds the same shape classes (as a multiset)."""
    from ..codecs.mesh import as_voxels, read_mesh_voxels, voxel_iou

    if isinstance(answer, (str, bytes, bytearray)) or hasattr(answer, "__fspath__"):
        try:
            vox = read_mesh_voxels(answer)
        except ValueError as e:
            return 0.0, {"error": str(e)}
    else:
        vox = as_voxels(answer)
    iou = voxel_iou(vox, scene3d.voxelize(truth))
    got = scene3d.parse_voxels(vox)
    shapes_ok = got is not None and got.shapes == truth.shapes
    return float(iou >= MESH_IOU_MIN and shapes_ok), {
        "iou": iou, "shapes": got.shapes if got else None, "got": scene3d.caption3d(got) if got else None}


def speech_match(task: str, truth: dict, wav: np.ndarray) -> tuple[float, dict]:
    """Closed-set speech judge: 1 when the nearest candidate is the true transcript (for spoken
    questions: the true answer, bare or restating the question)."""
    best, dist = _sj(truth.get("lang", "en")).pick(np.asarray(wav, np.float32), candidates_for(task, truth))
    return float(best in accepted(task, truth)), {"heard": best, "expected": truth["transcript"]}


def wer(truth: str, hypothesis: str) -> float:
    """Word error rate (jiwer) after normalisation and dropping punctuation."""
    import jiwer

    def clean(t: str) -> str:
        t = normalize_text(t)
        for mark in ",?¿¡":
            t = t.replace(mark, " ")
        return " ".join(t.split())

    return float(jiwer.wer(clean(truth), clean(hypothesis) or "<empty>"))


def judge(task: str, truth: dict, answer) -> tuple[float, dict]:  # noqa: ANN001 - per-task answer type
    """Score one answer of `task` against the sample's truth."""
    if task == "caption" or (task == "vqa" and truth.get("qtype") == "describe"):
        return caption_match(Scene.from_dict(truth["scene"]), answer, truth.get("lang", "en"))
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
    if task == "text_to_3d":
        return mesh_match(scene3d.Scene3D.from_dict(truth["scene3d"]), answer)
    if task == "describe_3d":
        return caption3d_match(scene3d.Scene3D.from_dict(truth["scene3d"]), answer)
    if task == "spoken_draw":
        img, wav = answer
        s_img, d_img = image_match(Scene.from_dict(truth["scene"]), img)
        s_sp, d_sp = speech_match(task, truth, wav)
        return (s_img + s_sp) / 2, {"image": d_img, "speech": d_sp}
    raise ValueError(f"unknown task {task!r}")
