"""``POST /v1/completions``: OpenAI's legacy text completions, with ``suffix`` as fill-in-the-middle.

No chat turns: the prompt is framed as ``omniloom tokenize`` frames a plain document (one assistant
message: begin-of-text, the assistant header, the text; see docs/data-formats.md "interleaved"), so
a model pretrained on such documents continues it as it learned. Without ``suffix`` the prompt text
is continued left to right. With ``suffix`` the text is the PSM infill prompt ``<|fim_prefix|> prompt
<|fim_suffix|> suffix <|fim_middle|>`` (``omniloom.data.fim``) and the completion is the middle. Either stops at ``<|end|>`` / ``<|eos|>``, at ``max_tokens``, or at the
first of the ``stop`` strings (not included). Non-text ids the model may write are skipped.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..data.fim import psm_prompt
from ..infer.engine import Request as EngineRequest
from ..infer.generate import Done, TextDelta
from ..infer.sampling import SamplingParams
from .chat import started, text_and_done
from .errors import APIError, bad_request, sse_error_event
from .state import ServerState, new_id

__all__ = ["router", "CompletionRequest", "StopScanner"]

router = APIRouter()


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    model: str
    prompt: str
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool | None = False
    n: int | None = Field(None, ge=1, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class StopScanner:
    """Cuts streamed text at the first of the ``stop`` strings, holding back just enough characters
    that a stop string split across deltas is still found."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """(text safe to send, whether a stop string was reached)."""
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        cut = len(self.pending) - self.keep
        out, self.pending = self.pending[:max(cut, 0)], self.pending[max(cut, 0):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise bad_request(f"stop takes at most 4 strings, got {len(stops)}", "stop", "invalid_value")
    return [s for s in stops if s]


def _job(prompt: list[int], sampling: SamplingParams, stops: list[str]):
    """The worker side: decode text from ``prompt``, as TextDelta events then one Done."""
    def fn(omni):
        vocab, tok = omni.vocab, omni.tok
        if omni.on_prompt is not None:
            omni.on_prompt(prompt)
        sampling.stop_ids = tuple({vocab.end_id, vocab.eos_id} | set(sampling.stop_ids))
        usage = {"prompt_tokens": len(prompt), "completion_tokens": 0, "text_tokens": 0, "audio_tokens": 0,
                 "image_tokens": 0}
        scan, ids, sent, finish = StopScanner(stops), [], "", "length"
        for _, t in omni.engine.stream([EngineRequest(prompt, sampling)]):
            usage["completion_tokens"] += 1
            if t in sampling.stop_ids:
                finish = "stop"
                break
            if t >= vocab.text_size:
                continue
            usage["text_tokens"] += 1
            ids.append(t)
            text = tok.decode(ids)
            if text.endswith("\ufffd"):  # a multi-byte character not complete yet
                continue
            out, stopped = scan.push(text[len(sent):])
            sent = text
            if out:
                yield TextDelta(out)
            if stopped:
                finish = "stop"
                break
        rest = scan.flush()  # empty after a stop string
        if rest:
            yield TextDelta(rest)
        yield Done(finish, usage)
    return fn


#: the answer is JSON, or with ``stream`` server-sent events (documented, so clients and fuzzers know)
_RESPONSES = {200: {"description": "A text_completion, or its chunks as server-sent events with stream",
                    "content": {"application/json": {}, "text/event-stream": {}}}}


@router.post("/v1/completions", responses=_RESPONSES)
async def completions(body: CompletionRequest, request: Request):
    st: ServerState = request.app.state.omni
    st.check_model(body.model)
    extra = body.model_extra or {}
    if extra.get("echo"):
        raise bad_request("echo is not supported by this server", "echo", "unsupported_parameter")
    if extra.get("logprobs") is not None:
        raise bad_request("logprobs is not supported by this server", "logprobs", "unsupported_parameter")
    if extra.get("best_of") not in (None, 1):
        raise bad_request("best_of must be 1 on /v1/completions", "best_of", "unsupported_parameter")
    stops = _stops(body.stop)
    vocab, tok = st.omni.vocab, st.omni.tok
    if body.suffix is not None:
        try:
            vocab.special("fim_prefix")
        except ValueError:
            raise bad_request("suffix needs a vocabulary with the fill-in-the-middle sentinels", "suffix",
                              "unsupported_parameter") from None
        text = psm_prompt(body.prompt, body.suffix, vocab, tok)
    else:
        text = tok.encode(body.prompt) if body.prompt else []
    prompt = vocab.bos_ids + vocab.header_ids("assistant") + text
    if len(prompt) >= st.context:
        raise bad_request(f"prompt is {len(prompt)} tokens; the model's context is {st.context}", "prompt",
                          "context_length_exceeded")
    sampling = st.sampling(body.max_tokens, body.temperature, body.top_p, body.seed)
    sampling.max_new_tokens = min(sampling.max_new_tokens, st.context - len(prompt))
    job = st.scheduler.submit(_job(prompt, sampling, stops))
    await started(job)
    cid, created = new_id("cmpl"), int(time.time())
    if body.stream:
        return StreamingResponse(_stream(st, job, cid, created, prompt), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    text, done = await text_and_done(request, job, is_started=True)
    return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": st.settings.model_id,
                         "system_fingerprint": None,
                         "choices": [{"text": text, "index": 0, "logprobs": None,
                                      "finish_reason": done.finish_reason if done else "stop"}],
                         "usage": st.usage(done.usage if done else {}, prompt)})


async def _stream(st: ServerState, job, cid: str, created: int, prompt: list[int]):
    def chunk(text: str, finish: str | None = None, usage: dict | None = None) -> str:
        obj: dict[str, Any] = {"id": cid, "object": "text_completion", "created": created,
                               "model": st.settings.model_id, "system_fingerprint": None,
                               "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            obj["usage"] = usage
        return f"data: {json.dumps(obj)}\n\n"

    done = None
    try:
        async for ev in job.events():
            if isinstance(ev, TextDelta):
                yield chunk(ev.text)
            elif isinstance(ev, Done):
                done = ev
        yield chunk("", done.finish_reason if done else "stop", st.usage(done.usage if done else {}, prompt))
        yield "data: [DONE]\n\n"
    except (ValueError, APIError) as e:  # found after the headers went out: an error event ends the stream
        yield sse_error_event(e)
    finally:  # client gone (the response task is cancelled) or finished: stop generating
        job.cancel.set()
