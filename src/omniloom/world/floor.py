"""`omniloom world judge-floor`: the speech judge's error on eSpeak renders of the truth in voices
it was not built on (the assistant presets and sampled user voices), per voice and answer kind;
with `--kind 3d`, the chance and oracle rows of the 3D tasks (text_to_3d, describe_3d)."""

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


# ---------------------------------------------------------------- 3D tasks: chance and oracle rows

def measure_3d_bounds(n: int = 500, seed: int = 1234, codec: str = "mesh-world") -> dict:
    """Chance and oracle rows of text_to_3d and describe_3d on `n` fresh 3D scenes, through the judges.

    text_to_3d: chance answers another random scene's voxels; the oracle answers the true voxels
    after the mesh codec's round trip (what a perfect model's codes decode to), and again after an
    STL file of them is written and read back. describe_3d: chance answers a random scene's caption;
    the oracle the true caption; "reader" captions the codec's round trip of the input with the
    programmatic scene reader (`scene3d.parse_voxels`), how much of the scene the 3D input keeps.
    """
    import torch

    from ..codecs import load_codec
    from ..codecs.mesh import mesh_bytes, read_mesh_voxels
    from .judges import judge
    from .scene3d import caption3d, parse_voxels, sample_scene3d, voxelize

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    mesh_codec = load_codec(codec)
    scenes = [sample_scene3d(rng) for _ in range(n)]
    others = [sample_scene3d(rng) for _ in range(n)]
    vox = np.stack([voxelize(s) for s in scenes])
    with torch.no_grad():
        rec = mesh_codec.decode(mesh_codec.encode(vox)).numpy()
    rows: dict[str, dict[str, list[float]]] = {}

    def add(task: str, row: str, score: float, iou: float | None = None) -> None:
        r = rows.setdefault(f"{task} {row}", {"score": [], "iou": []})
        r["score"].append(score)
        if iou is not None:
            r["iou"].append(iou)

    for s, o, r in zip(scenes, others, rec):
        truth = {"scene3d": s.to_dict()}
        for row, answer in (("chance", voxelize(o)), ("oracle (codec)", r),
                            ("oracle (codec + STL file)", read_mesh_voxels(mesh_bytes(r, "stl")))):
            score, detail = judge("text_to_3d", truth, answer)
            add("text_to_3d", row, score, detail["iou"])
        read = parse_voxels(r)
        for row, answer in (("chance", caption3d(o)), ("oracle", caption3d(s)),
                            ("reader (codec)", caption3d(read) if read else "")):
            add("describe_3d", row, judge("describe_3d", truth, answer)[0])
    out = {"n": n, "seed": seed, "codec": codec, "rows": {}}
    for name, r in rows.items():
        out["rows"][name] = {"exact": float(np.mean(r["score"])),
                             "voxel_iou": float(np.mean(r["iou"])) if r["iou"] else None}
    return out


def main_floor_3d(n: int, seed: int, json_out: str | None, codec: str = "mesh-world") -> int:
    t = time.time()
    res = measure_3d_bounds(n=n, seed=seed, codec=codec)
    res["seconds"] = time.time() - t
    print(f"{'task row':40s} {'exact':>6s} {'voxel IoU':>10s}")
    for name, r in res["rows"].items():
        iou = "" if r["voxel_iou"] is None else f"{r['voxel_iou']:.3f}"
        print(f"{name:40s} {r['exact']:6.3f} {iou:>10s}")
    print(f"{n} scenes, codec {codec}, {res['seconds']:.1f}s")
    if json_out:
        atomic_write_json(json_out, res)
    return 0
