"""Server settings and shared state: the model, its scheduler, limits, and OpenAI-side helpers."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..infer.generate import OmniModel
from ..infer.sampling import SamplingParams
from .errors import APIError, bad_request
from .media import TempFiles, audio_seconds, b64decode, check_duration, check_image_url
from .scheduler import Scheduler

__all__ = ["ServeSettings", "ServerState", "new_id", "OPENAI_VOICES", "OPENAI_MODEL_ALIASES"]


#: OpenAI's voice names: accepted wherever a voice is, mapped onto the model's own voices by its
#: generation.json "voice_aliases" (else in turn, in this order, onto its named voices)
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")
#: OpenAI model names the loaded model answers to with ``--alias-openai-models`` (and any ``gpt-4o*``)
OPENAI_MODEL_ALIASES = ("gpt-4o", "gpt-4o-mini", "gpt-4o-audio-preview", "gpt-4o-mini-audio-preview",
                        "gpt-4o-realtime-preview", "gpt-4o-mini-realtime-preview", "gpt-realtime", "whisper-1",
                        "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "tts-1", "tts-1-hd", "gpt-4o-mini-tts",
                        "gpt-image-1")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@dataclass
class ServeSettings:
    """Limits and knobs of ``omniloom serve`` (all settable on the command line)."""

    model_id: str = "world"
    api_key: str | None = None
    alias_openai_models: bool = False  # also answer to OPENAI_MODEL_ALIASES (listed by /v1/models then)
    allowed_origins: tuple[str, ...] = ()  # browser origins allowed besides same-origin and loopback ("*": any)
    max_body_bytes: int = 25 * 1024 * 1024  # 413 above (OpenAI's own upload limit)
    max_audio_seconds: float = 120.0  # per input audio (400 above)
    max_image_pixels: int = 4096 * 4096  # per input image (400 above)
    max_image_aspect: float = 32.0  # longest side / shortest side of an input image (400 above)
    max_tokens: int | None = None  # cap on max_tokens (default: the model's context)
    default_max_tokens: int = 256  # when a request gives none
    workers: int = 1
    max_queue: int = 8  # jobs waiting for a worker before 429
    threads: int | None = 1  # torch intra-op threads (None: leave torch's default)
    audio_ttl_s: int = 3600  # how long message.audio ids can be referred back to
    max_audio_ids: int = 4096  # message.audio ids remembered at once (the oldest go first)
    max_session_items: int = 1000  # items in one Realtime conversation (400 / error event above)
    max_session_audio_seconds: float = 600.0  # input audio one Realtime conversation stores
    max_job_events: int = 256  # events a job runs ahead of its client before its worker waits
    stall_timeout_s: float = 60.0  # a client that takes none of its job's events this long: the job is cancelled
    best_of: int = 1  # chat answers sampled per request, the verifier's pick returned (the best_of extension)


@dataclass
class ServerState:
    omni: OmniModel
    settings: ServeSettings
    scheduler: Scheduler
    audio_store: dict[str, tuple[str, float]] = field(default_factory=dict)  # audio id -> (transcript, expiry)
    verifier: Any = None  # infer.best_of.Verifier for best-of-N chat answers

    @classmethod
    def build(cls, omni: OmniModel, settings: ServeSettings, verifier: Any = None) -> "ServerState":
        bad = {k: v for k, v in (omni.generation.get("voice_aliases") or {}).items() if v not in omni.vocab.voices}
        if bad:
            raise ValueError(f"generation.json voice_aliases name voices this model does not have: {bad} "
                             f"(its voices: {', '.join(omni.vocab.voices)})")
        if not 1 <= settings.best_of <= 64:
            raise ValueError(f"best_of must be in [1, 64], got {settings.best_of}")
        if settings.best_of > 1 and verifier is None:
            raise ValueError("best_of > 1 needs a verifier (omniloom serve --verifier DIR)")
        if verifier is not None:
            verifier.check(omni)
        sched = Scheduler(omni, workers=settings.workers, max_queue=settings.max_queue, threads=settings.threads,
                          max_events=settings.max_job_events, stall_timeout_s=settings.stall_timeout_s)
        return cls(omni, settings, sched, verifier=verifier)

    # ------------------------------------------------------------------ model facts
    @property
    def input_modalities(self) -> list[str]:
        c = self.omni.codecs
        return (["text"] + [m for m in ("image", "audio") if m in c] + (["video"] if "image" in c else [])
                + (["mesh"] if "mesh" in c else []))

    @property
    def output_modalities(self) -> list[str]:
        c = self.omni.codecs
        return ["text"] + [m for m in ("image", "audio", "mesh") if m in c]

    @property
    def context(self) -> int:
        return int(self.omni.model.cfg.max_seq_len)

    @property
    def voices(self) -> list[str]:
        return [v for v in self.omni.vocab.voices if not v.startswith("voice:")] or list(self.omni.vocab.voices)

    @property
    def model_names(self) -> list[str]:
        """The names clients may send as ``model``."""
        return [self.settings.model_id] + ([a for a in OPENAI_MODEL_ALIASES if a != self.settings.model_id]
                                           if self.settings.alias_openai_models else [])

    def check_model(self, name: str | None) -> None:
        if name is None or name == self.settings.model_id:
            return
        if self.settings.alias_openai_models and (name in OPENAI_MODEL_ALIASES or name.startswith("gpt-4o")):
            return
        hint = "" if self.settings.alias_openai_models or name not in OPENAI_MODEL_ALIASES else \
            " (start the server with --alias-openai-models to answer to OpenAI's model names)"
        raise APIError(404, f"The model {name!r} does not exist; this server serves "
                            f"{self.settings.model_id!r}{hint}", "model", "model_not_found")

    @property
    def voice_aliases(self) -> dict[str, str]:
        """Other voice names -> the model's voices: generation.json's table, else OpenAI's names in turn."""
        named = self.voices
        table = self.omni.generation.get("voice_aliases")
        if table is None:
            table = {v: named[i % len(named)] for i, v in enumerate(OPENAI_VOICES)} if named else {}
        return {k: v for k, v in table.items() if k not in named}

    def check_voice(self, voice: str | None, param: str = "voice") -> str | None:
        """The model's voice for ``voice`` (its own name, or an alias such as OpenAI's 'alloy')."""
        if voice is None:
            return None
        if voice in self.voices:
            return voice
        aliases = self.voice_aliases
        if voice in aliases:
            return aliases[voice]
        raise bad_request(f"unknown voice {voice!r}; this model has {', '.join(self.voices)}"
                          + (f" (and answers to {', '.join(aliases)})" if aliases else ""), param, "invalid_value")

    def need(self, modality: str, param: str) -> None:
        if modality not in self.omni.codecs:
            raise bad_request(f"this model has no {modality} codec, so it cannot handle {modality}", param,
                              "unsupported_modality")

    @property
    def min_audio_seconds(self) -> float:
        """Input audio shorter than one code frame of the model's audio codec is refused."""
        codec = self.omni.codecs.get("audio")
        return 1.0 / codec.frame_rate if codec is not None and codec.frame_rate else 0.0

    def check_audio(self, data: bytes, where: str) -> float:
        """Seconds of an encoded audio file; 400 when unreadable, truncated, too short or too long."""
        return audio_seconds(data, where, self.min_audio_seconds, self.settings.max_audio_seconds)

    def check_pcm(self, samples: int, rate: int, where: str) -> None:
        """The same bounds for raw pcm (Realtime)."""
        check_duration(samples, rate, where, self.min_audio_seconds, self.settings.max_audio_seconds)

    def check_image(self, url: Any, where: str) -> bytes:
        return check_image_url(url, self.settings.max_image_pixels, where, self.settings.max_image_aspect)

    def need_task(self, task: str, param: str) -> None:
        """400 when the model's generation.json names no prompt for ``task`` (see TASK_PROMPTS)."""
        try:
            self.omni.task_prompt(task, "")
        except ValueError as e:
            raise bad_request(str(e), param, "unsupported_task") from None

    def sampling(self, max_tokens: int | None, temperature: float | None = None, top_p: float | None = None,
                 seed: int | None = None, param: str = "max_tokens") -> SamplingParams:
        cap = min(self.settings.max_tokens or self.context, self.context)
        n = self.settings.default_max_tokens if max_tokens is None else int(max_tokens)
        if n < 1 or n > cap:
            raise bad_request(f"{param} must be in [1, {cap}], got {n}", param, "invalid_value")
        t = 1.0 if temperature is None else float(temperature)
        p = 1.0 if top_p is None else float(top_p)
        if not 0 <= t <= 2:
            raise bad_request(f"temperature must be in [0, 2], got {t}", "temperature")
        if not 0 < p <= 1:
            raise bad_request(f"top_p must be in (0, 1], got {p}", "top_p")
        return SamplingParams(max_new_tokens=min(n, cap), temperature=t, top_p=p, seed=seed)

    # ------------------------------------------------------------------ usage
    def usage(self, done_usage: dict[str, int], prompt_ids: list[int] | None) -> dict[str, Any]:
        """OpenAI usage with per-modality counts on both sides."""
        v = self.omni.vocab
        pt = {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0}
        if prompt_ids:
            ilo, ihi = v.range_of("image")
            alo, ahi = v.range_of("audio")
            for t in prompt_ids:
                if t < v.text_size:
                    pt["text_tokens"] += 1
                elif ilo <= t < ihi:
                    pt["image_tokens"] += 1
                elif alo <= t < ahi:
                    pt["audio_tokens"] += 1
        prompt = int(done_usage.get("prompt_tokens", 0))
        completion = int(done_usage.get("completion_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": pt,
                "completion_tokens_details": {"text_tokens": int(done_usage.get("text_tokens", 0)),
                                              "audio_tokens": int(done_usage.get("audio_tokens", 0)),
                                              "image_tokens": int(done_usage.get("image_tokens", 0)),
                                              "reasoning_tokens": 0}}

    # ------------------------------------------------------------------ audio ids
    def remember_audio(self, transcript: str) -> tuple[str, int]:
        now = time.time()
        for k in [k for k, (_, exp) in self.audio_store.items() if exp < now]:
            del self.audio_store[k]
        while len(self.audio_store) >= max(1, self.settings.max_audio_ids):  # oldest first (dicts keep order)
            del self.audio_store[next(iter(self.audio_store))]
        aid = new_id("audio")
        exp = int(now + self.settings.audio_ttl_s)
        self.audio_store[aid] = (transcript, exp)
        return aid, exp

    # ------------------------------------------------------------------ OpenAI content -> generate() parts
    def convert_part(self, part: Any, where: str, tmp: TempFiles) -> dict:
        """One OpenAI content part -> a raw part the processor reads. Only inline media is accepted."""
        if isinstance(part, str):
            return {"type": "text", "text": part}
        if not isinstance(part, dict):
            raise bad_request(f"{where}: a content part must be an object", where)
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{where}: text part needs a string 'text'", where)
            return {"type": "text", "text": text}
        if kind in ("image_url", "input_image"):
            self.need("image", where)
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            self.check_image(url, f"{where}.image_url")
            return {"type": "image_url", "image_url": {"url": url}}
        if kind == "input_audio":
            self.need("audio", where)
            spec = part.get("input_audio")
            if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
                raise bad_request(f"{where}: input_audio needs {{'data': base64, 'format': 'wav'|'mp3'}}", where)
            fmt = spec.get("format", "wav")
            if fmt not in ("wav", "mp3", "flac"):
                raise bad_request(f"{where}: input_audio format {fmt!r} is not wav, mp3 or flac", where)
            data = b64decode(spec["data"], f"{where}.input_audio.data")
            self.check_audio(data, f"{where}.input_audio")
            return {"type": "input_audio", "input_audio": {"data": spec["data"], "format": fmt}}
        if kind == "task_tag":  # omniloom's extension: route this conversation through gated adapters
            from ..tokens import task_tag_id

            try:
                task_tag_id(self.omni.vocab, where)
            except ValueError as e:
                raise bad_request(str(e), where) from None
            return {"type": "task_tag"}
        if kind == "video_url":
            self.need("image", where)
            spec = part.get("video_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str) or not url.startswith("data:"):
                raise bad_request(f"{where}: only data URLs (data:video/mp4;base64,...) are accepted", where)
            from ..utils.media import parse_data_url

            try:
                _, data = parse_data_url(url)
            except ValueError as e:
                raise bad_request(f"{where}: {e}", where) from None
            return {"type": "video", "path": tmp.write(data, ".video")}
        raise bad_request(f"{where}: unsupported content part type {kind!r} (text, image_url, input_audio, "
                          "video_url, task_tag)", where, "invalid_value")

    def convert_messages(self, messages: list[Any], tmp: TempFiles) -> list[dict]:
        """OpenAI chat messages -> messages for ``generate()`` (roles mapped, media checked)."""
        if not isinstance(messages, list) or not messages:
            raise bad_request("messages must be a non-empty list", "messages")
        out = []
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise bad_request(f"{where} must be an object with 'role' and 'content'", where)
            role = m.get("role")
            role = "system" if role == "developer" else role
            if role not in ("system", "user", "assistant"):
                raise bad_request(f"{where}.role {role!r} is not supported (system, developer, user, assistant)",
                                  f"{where}.role")
            content = m.get("content")
            parts: list[dict] = []
            audio = m.get("audio")
            if role == "assistant" and isinstance(audio, dict) and audio.get("id"):
                known = self.audio_store.get(str(audio["id"]))
                if known is None:
                    raise bad_request(f"{where}.audio.id {audio['id']!r} is unknown or expired", f"{where}.audio")
                parts.append({"type": "text", "text": known[0]})
            if isinstance(content, str):
                parts.append({"type": "text", "text": content})
            elif isinstance(content, list):
                parts += [self.convert_part(p, f"{where}.content[{j}]", tmp) for j, p in enumerate(content)]
            elif content is not None:
                raise bad_request(f"{where}.content must be a string or a list of parts", f"{where}.content")
            if not parts:
                raise bad_request(f"{where} has no content", f"{where}.content")
            out.append({"role": role, "content": parts})
        return out
