"""Generate a split of the shapes world: `DIR/<split>.jsonl` plus media under `DIR/media/<split>/`.

Sample `i` depends only on (seed, split, i): its rng is seeded from that triple and it picks its
task from the mixture with that rng, so the output is identical whatever the worker count.
The jsonl is written to a temporary file and moved into place only when every sample is done.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import lang as world_lang
from .tasks import DEFAULT_RESTATE, RESTATABLE, SCENE_TASKS, TASK_FNS, TASKS, Sample, TaskContext
from ..utils.fileio import atomic_path

SPLITS: tuple[str, ...] = ("train", "val", "test", "compositional")
DEFAULT_MIXTURE: dict[str, float] = {
    "caption": 1.0, "vqa": 2.0, "draw": 1.0, "edit": 1.0, "video": 0.5, "math": 0.5,
    "asr": 1.0, "tts": 1.0, "spoken_vqa": 1.0, "spoken_math": 0.5, "spoken_draw": 0.5,
}
# weights of the opt-in tasks (tasks.OPT_IN_TASKS) when --tasks names them; never in the default mixture
OPT_IN_WEIGHTS: dict[str, float] = {"text_to_3d": 1.0, "describe_3d": 1.0}


def parse_mixture(text: str | None, tasks: list[str] | None, split: str) -> dict[str, float]:
    """Weights per task from `--tasks a,b` and `--mixture task=w,...` (ValueError names bad entries)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if tasks:
        for t in tasks:
            if t not in TASK_FNS:
                raise ValueError(f"unknown task {t!r}; expected some of {', '.join(TASKS)}")
        mix = {t: DEFAULT_MIXTURE.get(t, OPT_IN_WEIGHTS.get(t, 1.0)) for t in tasks}
    elif split == "compositional":
        mix = {t: DEFAULT_MIXTURE[t] for t in SCENE_TASKS}
    else:
        mix = dict(DEFAULT_MIXTURE)
    if text:
        for item in text.split(","):
            if not item.strip():
                continue
            name, sep, w = item.partition("=")
            name = name.strip()
            if not sep or name not in TASK_FNS:
                raise ValueError(f"bad mixture entry {item!r}: expected task=weight with task in {', '.join(TASKS)}")
            try:
                weight = float(w)
            except ValueError:
                raise ValueError(f"bad mixture weight {w!r} for task {name!r}") from None
            if weight < 0 or not np.isfinite(weight):
                raise ValueError(f"mixture weight for {name!r} must be >= 0, got {w!r}")
            mix[name] = weight
    mix = {t: w for t, w in mix.items() if w > 0}
    if not mix:
        raise ValueError("the task mixture is empty (all weights are zero)")
    if split == "compositional":
        bad = [t for t in mix if t not in SCENE_TASKS]
        if bad:
            raise ValueError(f"tasks {bad} have no scenes, so they cannot be in the compositional split")
    return mix


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The rng of sample `index`: a function of (seed, split, index) only."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


def make_sample(seed: int, split: str, index: int, mixture: dict[str, float],
                restate: tuple[str, ...] = DEFAULT_RESTATE, lang: str = "en") -> tuple[Sample, dict[str, bytes]]:
    """One sample and its media files (path relative to the output folder -> bytes).

    `lang` other than English: the same sample (same rng draws) spoken and written in that language.
    """
    rng = sample_rng(seed, split, index)
    names = sorted(mixture)
    p = np.array([mixture[t] for t in names], dtype=np.float64)
    task = names[int(rng.choice(len(names), p=p / p.sum()))]
    ctx = TaskContext(split=split, index=index, compositional=split == "compositional", restate=frozenset(restate),
                      lang=lang)
    sample = TASK_FNS[task](rng, ctx)
    world_lang.localize(task, sample.messages, sample.truth, lang)
    return sample, ctx.sink.files


@dataclass(frozen=True)
class _Job:
    out: str
    seed: int
    split: str
    mixture: dict
    restate: tuple[str, ...] = DEFAULT_RESTATE
    lang: str = "en"


def _work(args: tuple[_Job, int]) -> str:
    job, index = args
    sample, files = make_sample(job.seed, job.split, index, job.mixture, job.restate, job.lang)
    for rel, data in files.items():
        path = os.path.join(job.out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data)
    return json.dumps(sample.to_json(), separators=(",", ":"))


def generate(
    out: str | os.PathLike,
    split: str,
    n: int,
    seed: int = 0,
    tasks: list[str] | None = None,
    mixture: str | dict[str, float] | None = None,
    workers: int = 1,
    progress: bool = False,
    restate: tuple[str, ...] | list[str] = DEFAULT_RESTATE,
    lang: str = "en",
) -> Path:
    """Write `n` samples of `split` to `out/<split>.jsonl` (+ media); returns the jsonl path.

    `mixture` is a `task=w,...` string or a dict of weights; `tasks` restricts the task list;
    `restate` names the spoken-question tasks whose replies restate the question first
    (`scene.spoken_reply`); the others answer bare. `lang` is a language code (`lang.available()`)
    or a lexicon .json file; its samples are those of English translated (`lang.localize`).
    """
    world_lang.get(lang)  # unknown language: ValueError listing the available ones
    bad = sorted(set(restate) - set(RESTATABLE))
    if bad:
        raise ValueError(f"--restate: {', '.join(bad)} cannot restate; choose from {', '.join(RESTATABLE)}")
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if isinstance(mixture, dict):
        mixture = ",".join(f"{k}={v}" for k, v in mixture.items())
    mix = parse_mixture(mixture, tasks, split)
    untranslated = [t for t in mix if lang != "en" and t not in world_lang.LOCALIZED_TASKS]
    if untranslated:
        raise ValueError(f"--lang {lang}: tasks {', '.join(untranslated)} have no translation")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{split}.jsonl"
    tmp = out_dir / f".{split}.jsonl.partial{os.getpid()}"
    job = _Job(str(out_dir), int(seed), split, mix, tuple(sorted(restate)), lang)
    items = ((job, i) for i in range(n))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"world {split}", unit="sample")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            if workers == 1:
                lines = map(_work, items)
                for line in lines:
                    f.write(line + "\n")
                    if bar:
                        bar.update()
            else:
                ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
                with ctx.Pool(workers) as pool:
                    for line in pool.imap(_work, items, chunksize=8):
                        f.write(line + "\n")
                        if bar:
                            bar.update()
        os.replace(tmp, final)
    finally:
        if bar:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    return final


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a generated split back (ValueError names the file and line of bad JSON)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: bad JSON ({e})") from None
    return rows
