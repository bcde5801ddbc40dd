"""``POST /v1/audio/speech`` and ``POST /v1/audio/transcriptions``, through the omni model itself.

Speech asks the model its ``speak`` prompt with the input (``say {text}`` for the bundled world
model) and forces a spoken answer in the chosen voice; transcription sends the audio with its
``transcribe`` prompt and keeps the text answer. The prompts come from the model directory's
generation.json (``prompts``); a model without one answers 400 for that endpoint. ``speed`` resamples the result (tempo and pitch move
together). With ``stream_format: "sse"`` the speech arrives as ``speech.audio.delta`` events
carrying base64 pcm16 at 24 kHz, then ``speech.audio.done`` with usage.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Literal

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..infer.generate import AudioChunk, Done, generate
from ..infer.sampling import SamplingParams
from .chat import _warnings, started, text_and_done, watch_disconnect
from .errors import bad_request
from .media import API_RATE, AUDIO_MIME, Resampler, encode_audio, pcm16_bytes

__all__ = ["router", "SpeechRequest"]

router = APIRouter()


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    model: str
    input: str = Field(min_length=1, max_length=4096)
    voice: str | None = None
    instructions: str | None = None
    response_format: Literal["wav", "pcm", "flac", "mp3"] = "wav"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    seed: int | None = Field(None, ge=0, le=2**63 - 1)  # extension: reproducible speech


def _speech_job(text: str, voice: str, max_tokens: int, seed: int | None):
    def fn(omni):
        msgs = omni.as_trained([{"role": "user", "content": omni.task_prompt("speak", text)}], "audio")
        yield from generate(omni, msgs, speak_via_text=False,
                            output_modality="audio", outputs=("audio",), voice=voice,
                            sampling=SamplingParams(max_new_tokens=max_tokens, temperature=1.0, seed=seed))
    return fn


@router.post("/v1/audio/speech", response_model=None)
async def speech(body: SpeechRequest, request: Request) -> Response:
    st = request.app.state.omni
    st.check_model(body.model)
    st.need("audio", "model")
    st.need_task("speak", "model")
    voice = st.check_voice(body.voice, "voice") or st.voices[0]
    max_tokens = min(st.settings.max_tokens or st.context, st.context) - len(body.input) - 16
    if max_tokens < 8:
        raise bad_request(f"input of {len(body.input)} characters leaves no room to speak it", "input")
    job = st.scheduler.submit(_speech_job(body.input, voice, max_tokens, body.seed))
    await started(job)
    rate = st.omni.codecs["audio"].sample_rate
    out_rate = round(API_RATE / body.speed)  # played at API_RATE: faster for speed > 1
    if body.stream_format == "sse" or body.response_format == "pcm":
        return StreamingResponse(_speech_stream(job, rate, out_rate, body.stream_format == "sse", st),
                                 media_type="text/event-stream" if body.stream_format == "sse" else "audio/pcm")
    watcher = asyncio.create_task(watch_disconnect(request, job))
    parts = []
    try:
        async for ev in job.events():
            if isinstance(ev, AudioChunk):
                parts.append(ev.pcm)
    finally:
        watcher.cancel()
        job.cancel.set()
    r = Resampler(rate, out_rate)
    pcm = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    wav = np.concatenate([r.push(pcm), r.flush()])
    return Response(encode_audio(wav, API_RATE, body.response_format), media_type=AUDIO_MIME[body.response_format])


async def _speech_stream(job, rate: int, out_rate: int, sse: bool, st):
    r = Resampler(rate, out_rate)
    done = None
    try:
        async for ev in job.events():
            if isinstance(ev, AudioChunk):
                data = pcm16_bytes(r.push(ev.pcm))
            elif isinstance(ev, Done):
                done = ev
                data = pcm16_bytes(r.flush())
            else:
                continue
            if not data:
                continue
            if sse:
                yield f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': base64.b64encode(data).decode()})}\n\n"
            else:
                yield data
        if sse:
            u = done.usage if done else {}
            usage = {"input_tokens": u.get("prompt_tokens", 0), "output_tokens": u.get("completion_tokens", 0),
                     "total_tokens": u.get("prompt_tokens", 0) + u.get("completion_tokens", 0)}
            yield f"data: {json.dumps({'type': 'speech.audio.done', 'usage': usage})}\n\n"
    finally:
        job.cancel.set()


def _transcribe_job(data: bytes, max_tokens: int, temperature: float):
    def fn(omni):
        msgs = omni.as_trained([{"role": "user", "content": [{"type": "audio", "audio": data},
                                                             {"type": "text", "text": omni.task_prompt("transcribe")}]}])
        yield from generate(omni, msgs, outputs=("text",),
                            sampling=SamplingParams(max_new_tokens=max_tokens, temperature=temperature))
    return fn


def _ts(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


@router.post("/v1/audio/transcriptions", response_model=None)
async def transcriptions(
    request: Request,
    file: UploadFile = File(...),
    model: str = Form(...),
    language: str | None = Form(None),
    prompt: str | None = Form(None),
    response_format: Literal["json", "text", "verbose_json", "srt", "vtt"] = Form("json"),
    temperature: float = Form(0.0, ge=0.0, le=1.0),
) -> Response:
    st = request.app.state.omni
    st.check_model(model)
    st.need("audio", "file")
    st.need_task("transcribe", "model")
    data = await file.read()
    if not data:
        raise bad_request("file is empty", "file")
    secs = st.check_audio(data, "file")
    max_tokens = min(st.settings.default_max_tokens, st.context // 2)
    job = st.scheduler.submit(_transcribe_job(data, max_tokens, temperature))
    text, done = await text_and_done(request, job)
    out = text.strip()
    u = st.usage(done.usage if done else {}, job.prompt_ids)
    usage = {"type": "tokens", "input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
             "total_tokens": u["total_tokens"],
             "input_token_details": {"audio_tokens": u["prompt_tokens_details"]["audio_tokens"],
                                     "text_tokens": u["prompt_tokens_details"]["text_tokens"]}}
    if response_format == "text":
        return PlainTextResponse(out)
    if response_format == "srt":
        return PlainTextResponse(f"1\n{_ts(0, ',')} --> {_ts(secs, ',')}\n{out}\n")
    if response_format == "vtt":
        return PlainTextResponse(f"WEBVTT\n\n{_ts(0, '.')} --> {_ts(secs, '.')}\n{out}\n", media_type="text/vtt")
    if response_format == "verbose_json":
        seg = {"id": 0, "seek": 0, "start": 0.0, "end": round(secs, 3), "text": out, "tokens": [],
               "temperature": temperature, "avg_logprob": 0.0, "compression_ratio": 1.0, "no_speech_prob": 0.0}
        return JSONResponse({"task": "transcribe", "language": language or "english", "duration": round(secs, 3),
                             "text": out, "segments": [seg], "usage": {"type": "duration", "seconds": secs},
                             **_warnings(done)})
    return JSONResponse({"text": out, "usage": usage, **_warnings(done)})
