"""The Realtime API over WebSocket at ``/v1/realtime`` (GA event names; beta clients understood).

Client events: ``session.update``, ``input_audio_buffer.append/commit/clear``,
``conversation.item.create/delete/retrieve/truncate``, ``response.create``, ``response.cancel``.
Audio in and out is base64 pcm16 at 24 kHz. With ``server_vad`` (silero) the server finds turns in
the appended audio, commits them and answers (``create_response``); speech that starts while an
answer plays cancels it (``interrupt_response``: ``response.done`` with status ``cancelled``,
reason ``turn_detected``). omniloom's session extension ``"task_tag": true`` puts the task tag
first in every conversation the session answers (a model taught a language on tagged data through
tag-gated adapters answers it so). A client that sends ``OpenAI-Beta: realtime=v1`` gets the beta names of
the renamed server events (``response.audio.delta``, ``conversation.item.created``, ...).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..infer.generate import AudioChunk, Done, TextDelta, TranscriptDelta, generate
from .errors import APIError
from .media import API_RATE, Resampler, pcm16_bytes, pcm16_to_float
from .state import ServerState, new_id
from .vad import ServerVAD

__all__ = ["router", "RealtimeSession", "BETA_NAMES"]

router = APIRouter()
log = logging.getLogger("omniloom.serve")

BETA_NAMES = {  # GA server event -> beta name
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
DEFAULT_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
               "create_response": True, "interrupt_response": True, "idle_timeout_ms": None}


class _Cancel(Exception):
    pass


class RealtimeSession:
    """One WebSocket conversation: session config, items, the input buffer, VAD, the live response."""

    def __init__(self, st: ServerState, ws: WebSocket, beta: bool):
        self.st, self.ws, self.beta = st, ws, beta
        self.items: list[dict] = []
        self.extra: dict[str, dict] = {}  # item id -> audio samples / transcript timeline (not sent)
        self.buffer: list[np.ndarray] = []  # float32 at 24 kHz, not yet committed
        self.buffer_start_ms = 0  # session time at which the buffer begins
        self.session_ms = 0.0  # audio appended in this session
        self.speech_start_ms: int | None = None
        self.pending_item_id: str | None = None
        self.response: dict | None = None  # {"id", "job", "task", "reason"}
        self._lock = asyncio.Lock()
        self.vad: ServerVAD | None = None
        self._tasks: set[asyncio.Task] = set()
        self.session = {
            "id": new_id("sess"), "object": "realtime.session", "type": "realtime", "model": st.settings.model_id,
            "output_modalities": ["audio"], "instructions": "", "max_output_tokens": "inf", "tools": [],
            "tool_choice": "auto", "tracing": None, "truncation": "auto", "prompt": None, "include": None,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": API_RATE}, "transcription": None,
                                "noise_reduction": None, "turn_detection": dict(DEFAULT_VAD)},
                      "output": {"format": {"type": "audio/pcm", "rate": API_RATE}, "voice": st.voices[0],
                                 "speed": 1.0}},
        }
        self._make_vad()

    # ------------------------------------------------------------------ sending
    async def send(self, type_: str, **fields: Any) -> None:
        if self.beta:
            type_ = BETA_NAMES.get(type_, type_)
        ev = {"event_id": new_id("event"), "type": type_, **fields}
        async with self._lock:
            await self.ws.send_text(json.dumps(ev))

    async def error(self, message: str, code: str | None = None, param: str | None = None,
                    event_id: str | None = None, type_: str = "invalid_request_error") -> None:
        await self.send("error", error={"type": type_, "code": code, "message": message, "param": param,
                                        "event_id": event_id})

    # ------------------------------------------------------------------ session
    @property
    def turn_detection(self) -> dict | None:
        return self.session["audio"]["input"]["turn_detection"]

    def _make_vad(self) -> None:
        td = self.turn_detection
        self.vad = ServerVAD(td["threshold"], td["silence_duration_ms"]) if td else None

    def _apply_session(self, s: dict) -> None:
        """Merge a GA or beta ``session`` object into the session; ValueError on bad values."""
        if not isinstance(s, dict):
            raise ValueError("session must be an object")
        cur, audio = self.session, self.session["audio"]
        mods = s.get("output_modalities", s.get("modalities"))
        if mods is not None:
            if not isinstance(mods, list) or not set(mods) <= {"text", "audio"} or not mods:
                raise ValueError(f"output_modalities must be ['text'] or ['audio'], got {mods!r}")
            if "audio" in mods:
                self.st.need("audio", "session.output_modalities")
            cur["output_modalities"] = ["audio"] if "audio" in mods else ["text"]
        if "instructions" in s:
            if not isinstance(s["instructions"], str):
                raise ValueError("instructions must be a string")
            cur["instructions"] = s["instructions"]
        mot = s.get("max_output_tokens", s.get("max_response_output_tokens"))
        if mot is not None:
            if mot != "inf" and (not isinstance(mot, int) or mot < 1):
                raise ValueError(f"max_output_tokens must be a positive integer or 'inf', got {mot!r}")
            cur["max_output_tokens"] = mot
        a = s.get("audio") if isinstance(s.get("audio"), dict) else {}
        inp = a.get("input") if isinstance(a.get("input"), dict) else {}
        out = a.get("output") if isinstance(a.get("output"), dict) else {}
        voice = out.get("voice", s.get("voice"))
        if voice is not None:
            audio["output"]["voice"] = self.st.check_voice(voice, "session.audio.output.voice")
        for fmt in (inp.get("format"), out.get("format"), s.get("input_audio_format"), s.get("output_audio_format")):
            if fmt is None:
                continue
            kind = fmt.get("type") if isinstance(fmt, dict) else fmt
            rate = fmt.get("rate", API_RATE) if isinstance(fmt, dict) else API_RATE
            if kind not in ("audio/pcm", "pcm16") or rate != API_RATE:
                raise ValueError(f"audio format {fmt!r} is not supported: use audio/pcm at {API_RATE} Hz")
        if "transcription" in inp or "input_audio_transcription" in s:
            tr = inp["transcription"] if "transcription" in inp else s["input_audio_transcription"]
            if tr is not None and not isinstance(tr, dict):
                raise ValueError("audio.input.transcription must be an object or null")
            audio["input"]["transcription"] = tr
        if "speed" in out:
            audio["output"]["speed"] = float(out["speed"])
        if "task_tag" in s:  # omniloom's extension: every turn of the session through tag-gated adapters
            if not isinstance(s["task_tag"], bool):
                raise ValueError(f"task_tag must be true or false, got {s['task_tag']!r}")
            if s["task_tag"]:
                from ..tokens import task_tag_id

                task_tag_id(self.st.omni.vocab, "session.task_tag")  # a vocabulary without the slot: named
            cur["task_tag"] = s["task_tag"]
        if "turn_detection" in inp or "turn_detection" in s:
            td = inp["turn_detection"] if "turn_detection" in inp else s["turn_detection"]
            if td is None:
                audio["input"]["turn_detection"] = None
            else:
                if not isinstance(td, dict) or td.get("type", "server_vad") != "server_vad":
                    raise ValueError(f"turn_detection type {td.get('type') if isinstance(td, dict) else td!r} "
                                     "is not supported (server_vad or null)")
                new = {**(self.turn_detection or DEFAULT_VAD), **td, "type": "server_vad"}
                if not 0 < float(new["threshold"]) < 1:
                    raise ValueError(f"turn_detection.threshold must be in (0, 1), got {new['threshold']}")
                for k in ("prefix_padding_ms", "silence_duration_ms"):
                    if not isinstance(new[k], int) or not 0 <= new[k] <= 10000:
                        raise ValueError(f"turn_detection.{k} must be an integer in [0, 10000], got {new[k]!r}")
                audio["input"]["turn_detection"] = new
            self._make_vad()

    # ------------------------------------------------------------------ items
    def _prev_id(self) -> str | None:
        return self.items[-1]["id"] if self.items else None

    async def _add_item(self, item: dict, previous: str | None = None) -> None:
        prev = previous if previous is not None else self._prev_id()
        self.items.append(item)
        await self.send("conversation.item.added", previous_item_id=prev, item=item)
        await self.send("conversation.item.done", previous_item_id=prev, item=item)

    def _stored_audio_seconds(self) -> float:
        return sum(len(a) for ex in self.extra.values() for a in ex.get("audio", ())) / API_RATE

    def check_room(self, items: int = 1, audio_samples: int = 0) -> None:
        """A clean error before the session would hold more than its limits (items, stored input audio)."""
        lim = self.st.settings
        if len(self.items) + items > lim.max_session_items:
            raise APIError(400, f"the conversation holds {len(self.items)} items, the limit of this server "
                                f"({lim.max_session_items}); delete some with conversation.item.delete",
                           "item", "conversation_full")
        have = self._stored_audio_seconds()
        if audio_samples and have + audio_samples / API_RATE > lim.max_session_audio_seconds:
            raise APIError(400, f"the conversation holds {have:.1f} s of input audio; {audio_samples / API_RATE:.1f} s "
                                f"more would pass the limit of {lim.max_session_audio_seconds:g} s; delete items "
                                "with conversation.item.delete", "item", "conversation_full")

    def _parse_item(self, item: Any) -> dict:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise ValueError("item must be a message ({'type': 'message', 'role', 'content': [...]})")
        role = item.get("role")
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"item.role {role!r} is not user, assistant or system")
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise ValueError("item.content must be a non-empty list")
        iid = item.get("id") or new_id("item")
        parts, extra = [], {"audio": []}
        for j, c in enumerate(content):
            kind = c.get("type") if isinstance(c, dict) else None
            if kind in ("input_text", "text", "output_text"):
                if not isinstance(c.get("text"), str):
                    raise ValueError(f"item.content[{j}].text must be a string")
                parts.append({"type": kind, "text": c["text"]})
            elif kind == "input_audio":
                self.st.need("audio", f"item.content[{j}]")
                pcm = pcm16_to_float(base64.b64decode(c.get("audio") or "", validate=True))
                self.st.check_pcm(len(pcm), API_RATE, f"item.content[{j}].audio")
                extra["audio"].append(pcm)
                parts.append({"type": "input_audio", "transcript": c.get("transcript")})
            elif kind == "input_image":
                self.st.need("image", f"item.content[{j}]")
                url = c.get("image_url")
                self.st.check_image(url, f"item.content[{j}].image_url")
                parts.append({"type": "input_image", "image_url": url, "detail": c.get("detail", "auto")})
            elif kind in ("output_audio", "audio"):
                parts.append({"type": kind, "transcript": c.get("transcript") or ""})
            else:
                raise ValueError(f"item.content[{j}].type {kind!r} is not supported "
                                 "(input_text, input_audio, input_image, output_text, output_audio)")
        self.check_room(1, sum(len(a) for a in extra["audio"]))
        self.extra[iid] = extra
        return {"id": iid, "object": "realtime.item", "type": "message", "status": "completed", "role": role,
                "content": parts}

    def _messages(self) -> list[dict]:
        """The conversation as ``generate()`` messages (instructions first)."""
        msgs = []
        if self.session["instructions"]:
            msgs.append({"role": "system", "content": self.session["instructions"]})
        for it in self.items:
            parts, audios = [], list(self.extra.get(it["id"], {}).get("audio", []))
            for c in it["content"]:
                t = c["type"]
                if t in ("input_text", "text", "output_text"):
                    parts.append({"type": "text", "text": c["text"]})
                elif t == "input_audio" and audios:
                    parts.append({"type": "audio", "audio": audios.pop(0), "sample_rate": API_RATE})
                elif t == "input_image":
                    parts.append({"type": "image_url", "image_url": {"url": c["image_url"]}})
                elif t in ("output_audio", "audio") and c.get("transcript"):
                    parts.append({"type": "text", "text": c["transcript"]})
            if parts:
                msgs.append({"role": it["role"], "content": parts})
        if self.session.get("task_tag"):  # first in the first user turn (a conversation without one: as it is)
            from ..tokens import tag_by_rule

            return tag_by_rule(msgs, "all")[0]
        return msgs

    # ------------------------------------------------------------------ input audio
    async def _commit(self) -> None:
        pcm = np.concatenate(self.buffer) if self.buffer else np.zeros(0, np.float32)
        if self.speech_start_ms is not None:  # server_vad: keep prefix_padding_ms before the speech
            pad = (self.turn_detection or DEFAULT_VAD)["prefix_padding_ms"]
            skip = max(0, self.speech_start_ms - pad - self.buffer_start_ms)
            pcm = pcm[int(skip * API_RATE / 1000):]
        self.check_room(1, len(pcm))  # a full conversation: the error goes out, the buffer stays
        iid = self.pending_item_id or new_id("item")
        prev = self._prev_id()
        self.buffer, self.pending_item_id, self.speech_start_ms = [], None, None
        self.buffer_start_ms = int(self.session_ms)
        await self.send("input_audio_buffer.committed", previous_item_id=prev, item_id=iid)
        item = {"id": iid, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self.extra[iid] = {"audio": [pcm]}
        await self._add_item(item, prev)
        if self.session["audio"]["input"]["transcription"] is not None and len(pcm) \
                and self.st.omni.has_task("transcribe"):
            task = asyncio.create_task(self._transcribe(item, pcm))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)  # finished transcriptions do not pile up

    async def _transcribe(self, item: dict, pcm: np.ndarray) -> None:
        """Input transcription by the same model (its ``transcribe`` prompt)."""
        msgs = self.st.omni.as_trained([{"role": "user", "content": [
            {"type": "audio", "audio": pcm, "sample_rate": API_RATE},
            {"type": "text", "text": self.st.omni.task_prompt("transcribe")}]}])
        sampling = self.st.sampling(min(self.st.settings.default_max_tokens, self.st.context // 2), 0.0)

        def fn(omni):
            yield from generate(omni, msgs, outputs=("text",), sampling=sampling)

        ids = {"item_id": item["id"], "content_index": 0}
        text = []
        try:
            job = self.st.scheduler.submit(fn)
            async for ev in job.events():
                if isinstance(ev, TextDelta):
                    text.append(ev.text)
                    await self.send("conversation.item.input_audio_transcription.delta", **ids, delta=ev.text)
            full = "".join(text).strip()
            item["content"][0]["transcript"] = full
            await self.send("conversation.item.input_audio_transcription.completed", **ids, transcript=full)
        except (APIError, ValueError) as e:
            await self.send("conversation.item.input_audio_transcription.failed", **ids,
                            error={"type": "transcription_error", "code": getattr(e, "code", None),
                                   "message": str(getattr(e, "message", e)), "param": None})
        except (WebSocketDisconnect, RuntimeError):
            pass

    async def _append(self, b64: Any, event_id: str | None) -> None:
        if not isinstance(b64, str):
            raise ValueError("audio must be a base64 string of pcm16 at 24 kHz")
        pcm = pcm16_to_float(base64.b64decode(b64, validate=True))
        buffered = sum(len(b) for b in self.buffer) + len(pcm)
        if buffered / API_RATE > self.st.settings.max_audio_seconds:
            raise ValueError(f"input audio buffer would hold {buffered / API_RATE:.1f} s, more than the limit of "
                             f"{self.st.settings.max_audio_seconds:g} s; commit or clear it")
        self.buffer.append(pcm)
        self.session_ms += 1000 * len(pcm) / API_RATE
        if self.vad is None:
            return
        td = self.turn_detection
        for ev in self.vad.push(pcm):
            if ev.kind == "start":
                self.speech_start_ms = ev.ms
                self.pending_item_id = new_id("item")
                await self.send("input_audio_buffer.speech_started", audio_start_ms=ev.ms,
                                item_id=self.pending_item_id)
                if self.response is not None and td.get("interrupt_response", True):
                    await self.cancel_response("turn_detected")  # barge-in
            else:
                await self.send("input_audio_buffer.speech_stopped", audio_end_ms=ev.ms,
                                item_id=self.pending_item_id)
                await self._commit()
                if td.get("create_response", True):
                    await self.create_response({}, None)

    # ------------------------------------------------------------------ responses
    async def cancel_response(self, reason: str) -> bool:
        r = self.response
        if r is None:
            return False
        r["reason"] = reason
        r["job"].stop()
        await r["task"]  # sends response.done (cancelled) before anything else goes out
        return True

    async def create_response(self, params: dict, event_id: str | None) -> None:
        if self.response is not None:
            await self.error("Conversation already has an active response in progress",
                             "conversation_already_has_active_response", event_id=event_id)
            return
        params = params if isinstance(params, dict) else {}
        self.check_room(1)  # room for the answer's item
        mods = params.get("output_modalities", params.get("modalities")) or self.session["output_modalities"]
        audio_out = "audio" in mods
        if audio_out:
            self.st.need("audio", "response.output_modalities")
        voice = self.session["audio"]["output"]["voice"]
        a = params.get("audio")
        if isinstance(a, dict) and isinstance(a.get("output"), dict) and a["output"].get("voice"):
            voice = self.st.check_voice(a["output"]["voice"], "response.audio.output.voice")
        elif params.get("voice"):
            voice = self.st.check_voice(params["voice"], "response.voice")
        mot = params.get("max_output_tokens", params.get("max_response_output_tokens")) or self.session["max_output_tokens"]
        cap = min(self.st.settings.max_tokens or self.st.context, self.st.context)
        mot = cap if mot == "inf" else min(int(mot), cap)
        messages = self._messages()
        if "instructions" in params and isinstance(params["instructions"], str):
            messages = [m for m in messages if m["role"] != "system"]
            messages.insert(0, {"role": "system", "content": params["instructions"]})
        sampling = self.st.sampling(mot, params.get("temperature"), None, None, "max_output_tokens")
        rid = new_id("resp")
        resp = {"id": rid, "object": "realtime.response", "status": "in_progress", "status_details": None,
                "output": [], "conversation_id": self.session["id"], "output_modalities": ["audio" if audio_out else "text"],
                "max_output_tokens": params.get("max_output_tokens", self.session["max_output_tokens"]),
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": API_RATE}, "voice": voice}},
                "usage": None, "metadata": params.get("metadata")}
        await self.send("response.created", response=dict(resp))
        try:
            def fn(omni):
                yield from generate(omni, messages or [{"role": "user", "content": ""}],
                                    output_modality="audio" if audio_out else None,
                                    outputs=("audio",) if audio_out else ("text",), voice=voice, sampling=sampling)
            job = self.st.scheduler.submit(fn)
        except APIError as e:
            resp.update(status="failed", status_details={"type": "failed", "error": {"type": e.type, "code": e.code,
                                                                                      "message": e.message}})
            await self.error(e.message, e.code, type_=e.type, event_id=event_id)
            await self.send("response.done", response=resp)
            return
        self.response = {"id": rid, "job": job, "reason": None}
        self.response["task"] = asyncio.create_task(self._run(resp, job, audio_out))

    async def _run(self, resp: dict, job, audio_out: bool) -> None:
        rid, iid = resp["id"], new_id("item")
        item = {"id": iid, "object": "realtime.item", "type": "message", "status": "in_progress", "role": "assistant",
                "content": []}
        ids = {"response_id": rid, "item_id": iid, "output_index": 0}
        timeline: list[tuple[float, str]] = []  # (audio ms sent before this transcript piece, text)
        text, audio_ms, done, failed, rs = [], 0.0, None, None, None
        prev = self._prev_id()
        self.items.append(item)
        self.extra[iid] = {"timeline": timeline, "audio_ms": 0.0}
        try:
            await self.send("response.output_item.added", response_id=rid, output_index=0, item=item)
            await self.send("conversation.item.added", previous_item_id=prev, item=item)
            part = {"type": "audio", "transcript": ""} if audio_out else {"type": "text", "text": ""}
            await self.send("response.content_part.added", **ids, content_index=0, part=part)
            rs = Resampler(self.st.omni.codecs["audio"].sample_rate, API_RATE) if audio_out else None
            async for ev in job.events():
                if self.response and self.response["reason"]:
                    continue  # cancelled: drain quietly, nothing more is sent
                if isinstance(ev, (TextDelta, TranscriptDelta)):
                    text.append(ev.text)
                    timeline.append((audio_ms, ev.text))
                    name = "response.output_audio_transcript.delta" if audio_out else "response.output_text.delta"
                    await self.send(name, **ids, content_index=0, delta=ev.text)
                elif isinstance(ev, AudioChunk) and rs is not None:
                    pcm = rs.push(ev.pcm)
                    if pcm.size:
                        audio_ms += 1000 * len(pcm) / API_RATE
                        self.extra[iid]["audio_ms"] = audio_ms
                        await self.send("response.output_audio.delta", **ids, content_index=0,
                                        delta=base64.b64encode(pcm16_bytes(pcm)).decode())
                elif isinstance(ev, Done):
                    done = ev
        except (ValueError, APIError) as e:
            failed = str(getattr(e, "message", e))
        except Exception as e:  # a bug: report it on the socket rather than dropping the session
            log.exception("realtime response failed")
            failed = f"internal error: {type(e).__name__}"
        finally:
            job.cancel.set()
        reason = self.response["reason"] if self.response else None
        self.response = None
        full = "".join(text)
        try:
            if rs is not None and not reason:
                tail = rs.flush()
                if tail.size:
                    audio_ms += 1000 * len(tail) / API_RATE
                    self.extra[iid]["audio_ms"] = audio_ms
                    await self.send("response.output_audio.delta", **ids, content_index=0,
                                    delta=base64.b64encode(pcm16_bytes(tail)).decode())
            if audio_out:
                await self.send("response.output_audio.done", **ids, content_index=0)
                await self.send("response.output_audio_transcript.done", **ids, content_index=0, transcript=full)
                part = {"type": "audio", "transcript": full}
                item["content"] = [{"type": "output_audio", "transcript": full}]
            else:
                await self.send("response.output_text.done", **ids, content_index=0, text=full)
                part = {"type": "text", "text": full}
                item["content"] = [{"type": "output_text", "text": full}]
            await self.send("response.content_part.done", **ids, content_index=0, part=part)
            item["status"] = "incomplete" if (reason or failed) else "completed"
            await self.send("response.output_item.done", response_id=rid, output_index=0, item=item)
            await self.send("conversation.item.done", previous_item_id=prev, item=item)
            if failed:
                resp.update(status="failed", status_details={"type": "failed", "error": {
                    "type": "invalid_request_error", "code": "invalid_value", "message": failed}})
                await self.error(failed, "invalid_value")
            elif reason:
                resp.update(status="cancelled", status_details={"type": "cancelled", "reason": reason})
            elif done is not None and done.finish_reason == "length":
                resp.update(status="incomplete", status_details={"type": "incomplete", "reason": "max_output_tokens"})
            else:
                resp.update(status="completed", status_details=None)
            u = self.st.usage(done.usage if done else {}, job.prompt_ids)
            resp["output"] = [item]
            resp["usage"] = {"total_tokens": u["total_tokens"], "input_tokens": u["prompt_tokens"],
                             "output_tokens": u["completion_tokens"],
                             "input_token_details": {**u["prompt_tokens_details"]},
                             "output_token_details": {"text_tokens": u["completion_tokens_details"]["text_tokens"],
                                                      "audio_tokens": u["completion_tokens_details"]["audio_tokens"]}}
            if done is not None and done.warnings:
                resp["warnings"] = list(done.warnings)  # omniloom extension: input unlike the training data
            await self.send("response.done", response=resp)
        except (WebSocketDisconnect, RuntimeError):
            pass

    async def truncate(self, ev: dict) -> None:
        iid, end = ev.get("item_id"), ev.get("audio_end_ms")
        item = next((it for it in self.items if it["id"] == iid), None)
        if item is None or item["role"] != "assistant":
            raise ValueError(f"item_id {iid!r} is not an assistant item of this conversation")
        if not isinstance(end, int) or end < 0:
            raise ValueError("audio_end_ms must be a non-negative integer")
        ex = self.extra.get(iid, {})
        if end > ex.get("audio_ms", 0) + 1:
            raise ValueError(f"audio_end_ms {end} is past the item's audio ({ex.get('audio_ms', 0):.0f} ms)")
        if self.response is not None and self.items and self.items[-1]["id"] == iid:
            await self.cancel_response("client_cancelled")
        heard = "".join(t for ms, t in ex.get("timeline", []) if ms < end)
        for c in item["content"]:
            if c["type"] in ("output_audio", "audio"):
                c["transcript"] = heard
        ex["audio_ms"] = float(end)
        await self.send("conversation.item.truncated", item_id=iid, content_index=ev.get("content_index", 0),
                        audio_end_ms=end)

    # ------------------------------------------------------------------ dispatch
    async def handle(self, ev: dict) -> None:
        t, eid = ev.get("type"), ev.get("event_id")
        if t == "session.update":
            self._apply_session(ev.get("session") or {})
            await self.send("session.updated", session=self.session)
        elif t == "input_audio_buffer.append":
            await self._append(ev.get("audio"), eid)
        elif t == "input_audio_buffer.commit":
            n = sum(len(b) for b in self.buffer)
            if n < API_RATE // 10:
                await self.error(f"buffer too small: expected at least 100ms of audio, but buffer only has "
                                 f"{1000 * n / API_RATE:.2f}ms of audio", "input_audio_buffer_commit_empty",
                                 event_id=eid)
                return
            await self._commit()
        elif t == "input_audio_buffer.clear":
            self.buffer, self.speech_start_ms, self.pending_item_id = [], None, None
            self.buffer_start_ms = int(self.session_ms)
            if self.vad is not None:
                self.vad.reset()
                self.vad.samples = int(self.session_ms * 16)
            await self.send("input_audio_buffer.cleared")
        elif t == "conversation.item.create":
            item = self._parse_item(ev.get("item"))
            prev = ev.get("previous_item_id")
            await self._add_item(item, prev if isinstance(prev, str) else None)
        elif t == "conversation.item.delete":
            iid = ev.get("item_id")
            if not any(it["id"] == iid for it in self.items):
                raise ValueError(f"item_id {iid!r} does not exist")
            self.items = [it for it in self.items if it["id"] != iid]
            self.extra.pop(iid, None)  # its audio goes with it
            await self.send("conversation.item.deleted", item_id=iid)
        elif t == "conversation.item.retrieve":
            item = next((it for it in self.items if it["id"] == ev.get("item_id")), None)
            if item is None:
                raise ValueError(f"item_id {ev.get('item_id')!r} does not exist")
            await self.send("conversation.item.retrieved", item=item)
        elif t == "conversation.item.truncate":
            await self.truncate(ev)
        elif t == "response.create":
            await self.create_response(ev.get("response") or {}, eid)
        elif t == "response.cancel":
            if not await self.cancel_response("client_cancelled"):
                await self.error("Cancellation failed: no active response found", "response_cancel_not_active",
                                 event_id=eid)
        else:
            await self.error(f"Invalid value: {t!r} is not a supported client event", "invalid_value", "type", eid)

    async def run(self) -> None:
        await self.send("session.created", session=self.session)
        try:
            while True:
                raw = await self.ws.receive_text()
                try:
                    ev = json.loads(raw)
                    if not isinstance(ev, dict):
                        raise ValueError("an event must be a JSON object")
                except ValueError as e:
                    await self.error(f"invalid event: {e}", "invalid_json")
                    continue
                try:
                    await self.handle(ev)
                except APIError as e:
                    await self.error(e.message, e.code, e.param, ev.get("event_id"), e.type)
                except (ValueError, TypeError, KeyError, base64.binascii.Error) as e:
                    await self.error(str(e), "invalid_value", event_id=ev.get("event_id"))
        except WebSocketDisconnect:
            pass
        finally:
            if self.response is not None:
                self.response["reason"] = "client_cancelled"
                self.response["job"].cancel.set()
            for t in self._tasks:
                t.cancel()


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    st: ServerState = ws.app.state.omni
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    beta = "realtime=v1" in ws.headers.get("openai-beta", "")
    model = ws.query_params.get("model")
    sess = RealtimeSession(st, ws, beta)
    try:
        st.check_model(model)
    except APIError as e:
        await sess.error(e.message, e.code, e.param)
        await ws.close(code=1008)
        return
    await sess.run()
