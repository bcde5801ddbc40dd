"""The shapes world's judges as a reward (``omniloom sample --reward world``).

The judges are the world's own (caption parser, scene parser, closed-set speech judge, word error
rate): they share nothing with the model under test, so here they stand in for human raters. A
sample line is judged exactly as ``omniloom eval`` judges an answer (:func:`scoring.score`), with
the world task's ``task`` and ``truth`` read from the line's ``meta`` (a prompt line of
``omniloom world generate`` carries both). The reward is the task's value for ``exact`` tasks (1
right, 0 wrong) and ``max(0, 1 - WER)`` for the word-error-rate tasks (asr, tts), so higher is
better everywhere.
"""

from __future__ import annotations

from pathlib import Path

from .scoring import TASK_METRIC, Answer, score

__all__ = ["world_reward", "candidate_answer"]


def candidate_answer(candidate: dict) -> Answer:
    """An assistant message (media by absolute path) -> the :class:`Answer` the judges read."""
    import numpy as np

    ans = Answer()
    content = candidate.get("content")
    if isinstance(content, str):
        ans.text = content
        return ans
    for p in content or []:
        kind = p.get("type")
        if kind == "text":
            ans.text += p.get("text") or ""
        elif kind == "image" and ans.image is None:
            from PIL import Image

            with Image.open(Path(p["path"])) as im:
                ans.image = np.asarray(im.convert("RGB"))
        elif kind == "audio" and ans.audio is None:
            from ..utils.media import load_audio

            ans.audio = load_audio(p["path"], 16000).numpy()
            ans.transcript = p.get("transcript") or ""
    return ans


def world_reward(record: dict) -> float:
    """Score one sample line (see :mod:`omniloom.infer.rewards`) with the world's judges."""
    meta = record.get("meta") or {}
    task, truth = meta.get("task"), meta.get("truth")
    if task not in TASK_METRIC or not isinstance(truth, dict):
        raise ValueError(f"the world reward needs a world task's \"task\" and \"truth\" in the prompt line (prompt "
                         f"{record.get('id', '?')!r} has task {task!r}); make prompts with `omniloom world generate`")
    value, _ = score(task, truth, candidate_answer(record["candidate"]))
    return value if TASK_METRIC[task] == "exact" else max(0.0, 1.0 - value)
