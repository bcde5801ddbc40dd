"""Run the world benchmark: each task's test samples through a model, every answer judged.

Two backends answer the same way the product does:

* :class:`LocalBackend` calls :func:`omniloom.infer.generate.generate` on an :class:`OmniModel`;
* :class:`ServerBackend` talks to any OpenAI-compatible server (``omniloom serve`` or another)
  through the official ``openai`` client: media as data URLs, ``modalities`` for speech/images.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .scoring import OUTPUT_OF, TASK_METRIC, Answer, chance_answer, describe_truth, oracle_answer, score

__all__ = ["LocalBackend", "ServerBackend", "ensure_split", "run_eval", "TASKS"]

TASKS = tuple(TASK_METRIC)


def ensure_split(root: str | Path, split: str, task: str, n: int, seed: int, lang: str = "en") -> Path:
    """``root/<split>-<task>-s<seed>-n<n>[-<lang>]/<split>.jsonl``, generated once and reused."""
    from ..world.generate import generate

    d = Path(root) / (f"{split}-{task}-s{seed}-n{n}" + ("" if lang == "en" else f"-{Path(lang).stem}"))
    path = d / f"{split}.jsonl"
    if not path.is_file():
        generate(d, split, n, seed=seed, tasks=[task], workers=1, lang=lang)
    return path


def _prompt_messages(sample: dict) -> list[dict]:
    msgs = sample["messages"]
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ValueError(f"sample of task {sample.get('task')!r} does not end with an assistant turn")
    return msgs[:-1]


def _voice(sample: dict) -> str | None:
    return sample["truth"].get("voice") if isinstance(sample["truth"].get("voice"), str) else None


def _to_16k(pcm: np.ndarray, rate: int) -> np.ndarray:
    from ..utils.media import load_audio

    return load_audio(pcm, 16000, source_rate=rate).numpy()


class LocalBackend:
    """Answers through ``generate()`` in this process."""

    def __init__(self, omni, max_new_tokens: int = 256, cfg_scale: float = 1.0, image_candidates: int = 1,
                 task_tag: str | None = None):
        from ..tokens import TASK_TAG_RULES

        self.omni = omni
        # the task tag rule the model was trained with (generation.json "task_tag", from `tokenize
        # --task-tag`): prompts are tagged as its training data was; an explicit rule overrides it
        self.task_tag = task_tag if task_tag is not None else (getattr(omni, "generation", None) or {}).get("task_tag")
        if self.task_tag not in (None, *TASK_TAG_RULES):
            raise ValueError(f"task tag rule {self.task_tag!r} is not one of {', '.join(TASK_TAG_RULES)} "
                             "(generation.json \"task_tag\")")
        self.max_new_tokens = max_new_tokens
        self.cfg_scale = cfg_scale  # classifier-free guidance for image answers
        self.image_candidates = image_candidates  # best-of-N drawings, judged by the model's own captions

    def answer(self, sample: dict, base_dir: Path) -> Answer:
        from ..infer.generate import generate
        from ..infer.sampling import SamplingParams
        from ..tokens import tag_prompt

        kind = OUTPUT_OF[sample["task"]]
        messages, _ = tag_prompt(_prompt_messages(sample), self.task_tag, kind)
        events = generate(self.omni, messages, output_modality=kind,
                          outputs=(kind,) if kind != "image" else ("image", "audio", "text"),
                          voice=_voice(sample) if kind == "audio" else None,
                          sampling=SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0, seed=0),
                          cfg_scale=self.cfg_scale if kind == "image" else 1.0, base_dir=base_dir,
                          image_candidates=self.image_candidates if kind == "image" else 1)
        return answer_from_events(events)[0]


def answer_from_events(events) -> tuple[Answer, Any]:
    """``generate()`` events -> (the judged :class:`Answer`: text, transcript, speech at 16 kHz,
    the first non-empty image and 3D shape; the Done event or None)."""
    from ..infer.generate import AudioChunk, Done, ImageOut, MeshOut, TextDelta, TranscriptDelta

    ans, pcm, rate, done = Answer(), [], 16000, None
    for ev in events:
        if isinstance(ev, TextDelta):
            ans.text += ev.text
        elif isinstance(ev, TranscriptDelta):
            ans.transcript += ev.text
        elif isinstance(ev, AudioChunk):
            pcm.append(ev.pcm)
            rate = ev.sample_rate
        elif isinstance(ev, ImageOut) and ans.image is None and ev.image.size:
            ans.image = ev.image
        elif isinstance(ev, MeshOut) and ans.mesh is None and ev.voxels.size:
            ans.mesh = ev.voxels
        elif isinstance(ev, Done):
            done = ev
    if pcm:
        ans.audio = _to_16k(np.concatenate(pcm), rate)
    return ans, done


class ServerBackend:
    """Answers through an OpenAI-compatible server (chat completions with data-URL media)."""

    def __init__(self, url: str, model: str, api_key: str | None = None, max_tokens: int = 256,
                 cfg_scale: float = 1.0, image_candidates: int = 1, task_tag: str | None = None):
        import openai

        self.client = openai.OpenAI(base_url=url.rstrip("/") + ("" if url.rstrip("/").endswith("/v1") else "/v1"),
                                    api_key=api_key or "none", max_retries=1)
        self.model = model
        self.max_tokens = max_tokens
        self.task_tag = task_tag  # sent as omniloom's {"type": "task_tag"} content part (a server extension)
        # omniloom's extensions for image answers, sent only when asked for (another server may refuse them)
        self.image_extra = {k: v for k, v in (("guidance_scale", cfg_scale), ("image_candidates", image_candidates))
                            if v != 1}

    def _mesh_answer(self, sample: dict) -> Answer:
        """A 3D answer through omniloom's ``POST /v1/3d/generations`` extension (an STL, read back)."""
        from ..codecs.mesh import read_mesh_voxels

        prompt = " ".join(m["content"] if isinstance(m["content"], str) else
                          " ".join(p["text"] for p in m["content"] if p.get("type") == "text")
                          for m in _prompt_messages(sample) if m["role"] == "user")
        r = self.client.post("/3d/generations", cast_to=object, body={
            "model": self.model, "prompt": prompt, "output_format": "stl", "temperature": 0.0, "seed": 0})
        data = base64.b64decode(r["data"][0]["b64_json"])
        return Answer(mesh=read_mesh_voxels(data) if r["data"][0].get("triangles") else np.zeros((16, 16, 16), bool))

    def _part(self, part: dict, base_dir: Path) -> list[dict]:
        t = part.get("type")
        if t == "text":
            return [{"type": "text", "text": part["text"]}]
        if t == "task_tag":
            return [{"type": "task_tag"}]
        if t == "image":
            data = base64.b64encode((base_dir / part["path"]).read_bytes()).decode()
            return [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]
        if t == "audio":
            data = base64.b64encode((base_dir / part["path"]).read_bytes()).decode()
            return [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]
        if t == "video":
            return [{"type": "video_url", "video_url": {"url": _frames_to_mp4_data_url(
                [base_dir / f for f in part["frames"]], part.get("fps", 4.0))}}]
        raise ValueError(f"cannot send a {t!r} part to a server" + (
            " (chat completions have no 3D content part; score describe_3d in process)" if t == "mesh" else ""))

    def answer(self, sample: dict, base_dir: Path) -> Answer:
        kind = OUTPUT_OF[sample["task"]]
        if kind == "mesh":
            return self._mesh_answer(sample)
        from ..tokens import tag_prompt

        messages = []
        for m in tag_prompt(_prompt_messages(sample), self.task_tag, kind)[0]:
            content = m["content"]
            if isinstance(content, list):
                content = [p for part in content for p in self._part(part, base_dir)]
            messages.append({"role": m["role"], "content": content})
        kw: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens,
                              "temperature": 0.0}
        if kind == "audio":
            kw["modalities"] = ["text", "audio"]
            kw["audio"] = {"voice": _voice(sample) or "nova", "format": "wav"}
        elif kind == "image":
            kw["modalities"] = ["image"]
            if self.image_extra:
                kw["extra_body"] = dict(self.image_extra)
        resp = self.client.chat.completions.create(**kw)
        msg = resp.choices[0].message
        ans = Answer()
        content = msg.content
        if isinstance(content, str):
            ans.text = content
        elif isinstance(content, list):  # image answers: content parts with data URLs
            for p in content:
                p = p if isinstance(p, dict) else p.model_dump()
                if p.get("type") == "text":
                    ans.text += p.get("text", "")
                elif p.get("type") == "image_url" and ans.image is None:
                    ans.image = _data_url_image(p["image_url"]["url"])
        audio = getattr(msg, "audio", None)
        if audio is not None and getattr(audio, "data", None):
            import soundfile as sf

            wav, rate = sf.read(io.BytesIO(base64.b64decode(audio.data)), dtype="float32")
            ans.audio = _to_16k(wav if wav.ndim == 1 else wav.mean(1), rate)
            ans.transcript = audio.transcript or ""
        return ans


def _data_url_image(url: str) -> np.ndarray:
    from PIL import Image

    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _frames_to_mp4_data_url(paths: list[Path], fps: float) -> str:
    import av
    from PIL import Image

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=int(round(fps)))
        stream.pix_fmt = "yuv420p"
        first = np.asarray(Image.open(paths[0]).convert("RGB"))
        stream.width, stream.height = first.shape[1], first.shape[0]
        for p in paths:
            frame = av.VideoFrame.from_ndarray(np.asarray(Image.open(p).convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return "data:video/mp4;base64," + base64.b64encode(buf.getvalue()).decode()


@dataclass
class TaskResult:
    task: str
    metric: str
    n: int
    value: float
    chance: float
    oracle: float
    failures: list[dict]

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def run_eval(
    backend,
    samples_by_task: dict[str, tuple[list[dict], Path]],
    bounds: bool = True,
    seed: int = 0,
    show_failures: int = 3,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[TaskResult]:
    """Judge every sample; chance and oracle answers of the same samples through the same judge."""
    results = []
    for task, (samples, base_dir) in samples_by_task.items():
        rng = np.random.default_rng(seed)
        vals, ch, orc, fails = [], [], [], []
        for i, s in enumerate(samples):
            try:
                ans = backend.answer(s, base_dir)
            except Exception as e:  # one failed request is a wrong answer, not a lost run
                ans = Answer(extra={"error": f"{type(e).__name__}: {e}"})
            v, read = score(task, s["truth"], ans)
            vals.append(v)
            good = v == 1.0 if TASK_METRIC[task] == "exact" else v == 0.0
            if not good and len(fails) < show_failures:
                fails.append({"index": i, "truth": describe_truth(task, s["truth"]), "judged": _short(read),
                              **({"error": ans.extra["error"]} if "error" in ans.extra else {})})
            if bounds:
                ch.append(score(task, s["truth"], chance_answer(task, s["truth"], rng))[0])
                orc.append(score(task, s["truth"], oracle_answer(task, s["truth"], rng))[0])
            if progress:
                progress(task, i + 1, len(samples))
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        results.append(TaskResult(task, TASK_METRIC[task], len(samples), mean(vals), mean(ch), mean(orc), fails))
    return results


def _short(text: str, limit: int = 120) -> str:
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def load_samples(path: Path, n: int | None = None) -> list[dict]:
    from ..world.generate import read_jsonl

    rows = read_jsonl(path)
    return rows[:n] if n else rows


def results_json(results: list[TaskResult], meta: dict) -> str:
    return json.dumps({"meta": meta, "results": [r.to_dict() for r in results]}, indent=1)
