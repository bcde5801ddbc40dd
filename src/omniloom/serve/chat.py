"""``POST /v1/chat/completions``: text, audio and image answers, whole or streamed as SSE.

- ``modalities: ["text", "audio"]`` (+ ``audio: {voice, format}``) answers with speech:
  ``message.audio = {id, data, transcript, expires_at}``; streamed as ``delta.audio`` chunks whose
  ``data`` is base64 pcm16 at 24 kHz and whose ``transcript`` grows.
- ``modalities`` holding ``"image"`` answers with an image, returned as an ``image_url`` content
  part holding a PNG data URL (``message.content`` becomes a list of parts; streamed as a
  ``delta.content`` list with that one part).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..infer.generate import AudioChunk, Done, ImageOut, TextDelta, TranscriptDelta, generate
from .errors import APIError, bad_request, sse_error_event
from .media import API_RATE, Resampler, TempFiles, encode_audio, pcm16_bytes, png_data_url
from .state import ServerState, new_id

__all__ = ["router", "ChatRequest", "watch_disconnect", "plan_outputs"]

router = APIRouter()


class AudioParam(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    voice: str | None = None
    format: Literal["wav", "pcm16", "flac", "mp3"] = "wav"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "audio", "image"]] | None = None
    audio: AudioParam | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int | None = Field(None, ge=1, le=1)
    # omniloom extensions for image answers (with the client's extra_body; default: the model's
    # generation.json, else 1 = off):
    guidance_scale: float | None = Field(None, ge=1.0, le=10.0)  # classifier-free guidance inside image spans
    image_candidates: int | None = Field(None, ge=1, le=64)  # best of N drawings, judged by the model's own captions
    # omniloom extension: sample N answers and return the one the server's learned verifier scores
    # highest (default: omniloom serve --best-of, else 1 = off); the response then carries "best_of"
    best_of: int | None = Field(None, ge=1, le=64)


def plan_outputs(modalities: list[str] | None) -> tuple[str | None, tuple[str, ...]]:
    """OpenAI ``modalities`` -> (``output_modality``, ``outputs``) for ``generate()``."""
    mods = set(modalities or ["text"])
    if "audio" in mods:
        return "audio", ("audio",) + (("image",) if "image" in mods else ())
    if "image" in mods:
        return "image", ("image",) + (("text",) if "text" in mods else ())
    return None, ("text",)


def _warnings(done) -> dict:
    """omniloom's extension fields: ``{"warnings": [...]}`` when the input was unlike the training data,
    ``{"best_of": {n, chosen, scores, seconds, ...}}`` for a best-of-N answer."""
    out = {"warnings": list(done.warnings)} if done is not None and done.warnings else {}
    if done is not None and done.best_of:
        out["best_of"] = dict(done.best_of)
    return out


async def watch_disconnect(request: Request, job) -> None:
    """Cancel ``job`` when the HTTP client goes away (non-streaming answers)."""
    while not job.cancel.is_set():
        if await request.is_disconnected():
            job.cancel.set()
            return
        await asyncio.sleep(0.1)


async def started(job) -> None:
    """Wait until ``job`` holds a worker (or its error); cancel it if the wait itself fails."""
    try:
        await job.ready()
    except BaseException:
        job.cancel.set()
        raise


async def text_and_done(request: Request, job, is_started: bool = False) -> tuple[str, Any]:
    """A non-streaming text answer: (all its TextDelta text, the Done event or None), cancelled
    when the client goes away; the job is cancelled at the end either way. ``is_started``: the
    caller has already awaited ``job.ready()`` (which must be awaited exactly once)."""
    watcher = asyncio.create_task(watch_disconnect(request, job))
    text, done = [], None
    try:
        if not is_started:
            await job.ready()
        async for ev in job.events():
            if isinstance(ev, TextDelta):
                text.append(ev.text)
            elif isinstance(ev, Done):
                done = ev
    finally:
        watcher.cancel()
        job.cancel.set()
    return "".join(text), done


async def outputs_and_usage(request: Request, job, kind: type) -> tuple[list, dict[str, int], list[str]]:
    """A non-streaming media answer: (its events of type ``kind``, e.g. ImageOut, in order; the
    prompt and completion tokens summed over every Done, since a job may answer several times; the
    Done warnings, each once), cancelled when the client goes away; the job is cancelled at the end."""
    watcher = asyncio.create_task(watch_disconnect(request, job))
    outs, usage, warnings = [], {"prompt_tokens": 0, "completion_tokens": 0}, []
    try:
        await job.ready()
        async for ev in job.events():
            if isinstance(ev, kind):
                outs.append(ev)
            elif isinstance(ev, Done):
                usage["prompt_tokens"] += ev.usage.get("prompt_tokens", 0)
                usage["completion_tokens"] += ev.usage.get("completion_tokens", 0)
                warnings += [w for w in ev.warnings if w not in warnings]
    finally:
        watcher.cancel()
        job.cancel.set()
    return outs, usage, warnings


def _job(messages: list[dict], output_modality, outputs, voice, sampling, guidance: float = 1.0,
         candidates: int = 1):
    def fn(omni):
        yield from generate(omni, messages, output_modality=output_modality, outputs=outputs, voice=voice,
                            sampling=sampling, cfg_scale=guidance, image_candidates=candidates)
    return fn


def _best_of_job(verifier, n: int, messages: list[dict], output_modality, outputs, voice, sampling,
                 guidance: float = 1.0):
    def fn(omni):
        from ..infer.best_of import generate_best_of

        yield from generate_best_of(omni, verifier, messages, n, output_modality, outputs, voice, sampling, guidance)
    return fn


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    st: ServerState = request.app.state.omni
    st.check_model(body.model)
    if body.n not in (None, 1):
        raise bad_request("n must be 1", "n")
    extra = body.model_extra or {}
    for unsupported in ("tools", "functions", "response_format", "logprobs"):
        if extra.get(unsupported) and not (unsupported == "response_format"
                                           and isinstance(extra[unsupported], dict)
                                           and extra[unsupported].get("type") == "text"):
            raise bad_request(f"{unsupported} is not supported by this server", unsupported, "unsupported_parameter")
    output_modality, outputs = plan_outputs(body.modalities)
    for m in outputs:
        if m != "text":
            st.need(m, "modalities")
    audio_out = output_modality == "audio"
    fmt = body.audio.format if body.audio else "wav"
    voice = st.check_voice(body.audio.voice if body.audio else None, "audio.voice")
    if audio_out and voice is None:
        voice = st.voices[0]
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is None and output_modality == "image":  # room for the whole image by default
        max_tokens = max(st.settings.default_max_tokens, st.omni.vocab.image_tokens + 8)
    sampling = st.sampling(max_tokens, body.temperature, body.top_p, body.seed,
                           "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    tmp = TempFiles()  # media the worker reads from disk (video): removed when the job ends, on every path
    try:
        messages = st.convert_messages([m.model_dump(exclude_none=True) for m in body.messages], tmp)
        guidance, candidates = st.omni.image_options(body.guidance_scale, body.image_candidates)
    except BaseException:
        tmp.close()
        raise
    image_first = output_modality == "image"  # the search acts on an answer that opens with an image
    best_of = body.best_of if body.best_of is not None else st.settings.best_of
    if best_of > 1:  # the verifier picks among sampled direct answers (no caption search, no via-text speech)
        if st.verifier is None:
            tmp.close()
            raise bad_request("best_of needs a verifier: start the server with --verifier DIR", "best_of",
                              "unsupported_parameter")
        if sampling.temperature == 0:
            tmp.close()
            raise bad_request("best_of > 1 needs a temperature > 0 (greedy decoding gives one answer N times)",
                              "temperature", "invalid_value")
        fn = _best_of_job(st.verifier, best_of, messages, output_modality, outputs, voice, sampling,
                          guidance if "image" in outputs else 1.0)
    else:
        fn = _job(messages, output_modality, outputs, voice, sampling, guidance if "image" in outputs else 1.0,
                  candidates if image_first else 1)
    job = st.scheduler.submit(fn, cleanup=tmp.close)
    await started(job)
    cid, created = new_id("chatcmpl"), int(time.time())
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(st, job, cid, created, audio_out, usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return JSONResponse(await _whole(st, job, request, cid, created, audio_out, fmt))


async def _whole(st: ServerState, job, request: Request, cid: str, created: int, audio_out: bool, fmt: str) -> dict:
    watcher = asyncio.create_task(watch_disconnect(request, job))
    text, transcript, pcm, images, done = [], [], [], [], None
    try:
        async for ev in job.events():
            if isinstance(ev, TextDelta):
                text.append(ev.text)
            elif isinstance(ev, TranscriptDelta):
                transcript.append(ev.text)
            elif isinstance(ev, AudioChunk):
                pcm.append(ev.pcm)
            elif isinstance(ev, ImageOut) and ev.image.size:
                images.append(png_data_url(ev.image))
            elif isinstance(ev, Done):
                done = ev
    finally:
        watcher.cancel()
        job.cancel.set()
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None, "refusal": None,
                               "annotations": []}
    if images:
        parts = [{"type": "text", "text": message["content"]}] if message["content"] else []
        message["content"] = parts + [{"type": "image_url", "image_url": {"url": u}} for u in images]
    if audio_out:
        wav = np.concatenate(pcm) if pcm else np.zeros(0, np.float32)
        rate = st.omni.codecs["audio"].sample_rate
        r = Resampler(rate, API_RATE)
        wav24 = np.concatenate([r.push(wav), r.flush()])
        tr = "".join(transcript)
        aid, exp = st.remember_audio(tr)
        message["audio"] = {"id": aid, "data": base64.b64encode(encode_audio(wav24, API_RATE, fmt)).decode(),
                            "transcript": tr, "expires_at": exp}
    usage = st.usage(done.usage if done else {}, job.prompt_ids)
    return {"id": cid, "object": "chat.completion", "created": created, "model": st.settings.model_id,
            "system_fingerprint": None, "service_tier": None,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": done.finish_reason if done else "stop"}],
            "usage": usage, **_warnings(done)}


async def _stream(st: ServerState, job, cid: str, created: int, audio_out: bool, include_usage: bool):
    def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None,
              extra: dict | None = None) -> str:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": st.settings.model_id,
               "system_fingerprint": None,
               "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                     "finish_reason": finish}], **(extra or {})}
        if include_usage:
            obj["usage"] = usage
        return f"data: {json.dumps(obj)}\n\n"

    rate = st.omni.codecs["audio"].sample_rate if "audio" in st.omni.codecs else API_RATE
    resampler = Resampler(rate, API_RATE)
    aid, exp, transcript, sent_audio = None, None, [], False
    done = None
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for ev in job.events():
            if isinstance(ev, TextDelta):
                yield chunk({"content": ev.text})
            elif isinstance(ev, (TranscriptDelta, AudioChunk)):
                if aid is None:
                    aid, exp = st.remember_audio("")
                a: dict[str, Any] = {"id": aid}
                if not sent_audio:
                    a["expires_at"] = exp
                    sent_audio = True
                if isinstance(ev, TranscriptDelta):
                    transcript.append(ev.text)
                    a["transcript"] = ev.text
                else:
                    data = resampler.push(ev.pcm)
                    if not data.size:
                        continue
                    a["data"] = base64.b64encode(pcm16_bytes(data)).decode()
                yield chunk({"audio": a})
            elif isinstance(ev, ImageOut) and ev.image.size:
                url = png_data_url(ev.image)
                yield chunk({"content": [{"type": "image_url", "image_url": {"url": url}}]})
            elif isinstance(ev, Done):
                done = ev
        if aid is not None:
            tail = resampler.flush()
            if tail.size:
                yield chunk({"audio": {"id": aid, "data": base64.b64encode(pcm16_bytes(tail)).decode()}})
            st.audio_store[aid] = ("".join(transcript), exp)
        yield chunk({}, done.finish_reason if done else "stop", extra=_warnings(done))
        if include_usage:
            yield chunk(None, usage=st.usage(done.usage if done else {}, job.prompt_ids))
        yield "data: [DONE]\n\n"
    except (ValueError, APIError) as e:  # found after the headers went out: an error event ends the stream
        yield sse_error_event(e)
    finally:  # client gone (the response task is cancelled) or finished: stop generating
        job.cancel.set()
