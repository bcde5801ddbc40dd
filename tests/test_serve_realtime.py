"""omniloom serve, Realtime: the official SDK's client.realtime.connect against the server (server_vad with
silero on eSpeak speech, barge-in, cancel, truncate, text + image items, beta names, auth)."""

import asyncio
import base64
import io
import json

import numpy as np
import openai
import pytest
import soxr
from PIL import Image

from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import serve_in_thread
from omniloom.serve.tiny import build_tiny_model

pytestmark = pytest.mark.slow
KEY = "sk-rt"


@pytest.fixture(scope="module")
def speech():
    from omniloom.world.speech import ASSISTANT_VOICES, synthesize

    words = synthesize("how many shapes are in the picture", ASSISTANT_VOICES["atlas"])
    return soxr.resample(words, 16000, 24000).astype(np.float32)  # pcm at 24 kHz


@pytest.fixture(scope="module")
def url():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", api_key=KEY))
    with serve_in_thread(app) as u:
        yield u


def _client(url, key=KEY):
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def _silence(s):
    return np.zeros(int(s * 24000), np.float32)


async def _append(conn, pcm, chunk=4800):
    b = (np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes()
    for i in range(0, len(b), chunk):
        await conn.input_audio_buffer.append(audio=base64.b64encode(b[i:i + chunk]).decode())


async def _until(conn, stop, timeout=60):
    out = []

    async def go():
        async for ev in conn:
            out.append(ev)
            if stop(ev):
                return

    await asyncio.wait_for(go(), timeout)
    return out


def _run(coro):
    return asyncio.run(coro)


def test_server_vad_turn_in_openai_order(url, speech):
    async def go():
        async with _client(url).realtime.connect(model="tiny") as conn:
            await conn.session.update(session={"type": "realtime", "max_output_tokens": 20, "audio": {"input": {
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500, "prefix_padding_ms": 300}}}})
            await _append(conn, np.concatenate([_silence(1.0), speech, _silence(1.0)]))
            return await _until(conn, lambda e: e.type == "response.done")

    evs = _run(go())
    types = [e.type for e in evs]
    order = ["session.created", "session.updated", "input_audio_buffer.speech_started",
             "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "conversation.item.added",
             "conversation.item.done", "response.created", "response.output_item.added", "conversation.item.added",
             "response.content_part.added", "response.output_audio.delta"]
    assert types[:len(order)] == order
    tail = ["response.output_audio.done", "response.output_audio_transcript.done", "response.content_part.done",
            "response.output_item.done", "conversation.item.done", "response.done"]
    assert types[-len(tail):] == tail
    started = next(e for e in evs if e.type == "input_audio_buffer.speech_started")
    stopped = next(e for e in evs if e.type == "input_audio_buffer.speech_stopped")
    dur = len(speech) / 24000 * 1000
    assert 900 <= started.audio_start_ms <= 1400
    assert abs(stopped.audio_end_ms - (1000 + dur)) < 400
    assert started.item_id == stopped.item_id == next(e for e in evs if e.type == "input_audio_buffer.committed").item_id
    done = evs[-1].response
    assert done.status == "incomplete" and done.usage.output_tokens == 20
    # the committed turn: prefix padding + speech + the silence that ended it, at 25 audio tokens a second
    heard_s = (stopped.audio_end_ms - started.audio_start_ms + 300 + 500) / 1000
    assert abs(done.usage.input_token_details.audio_tokens - 25 * heard_s) <= 25 * 0.2
    audio = b"".join(base64.b64decode(e.delta) for e in evs if e.type == "response.output_audio.delta")
    assert len(audio) == 2 * done.usage.output_token_details.audio_tokens * 960  # pcm16 24 kHz, 40 ms a frame


def test_silence_duration_and_create_response_are_honoured(url, speech):
    gap = _silence(0.4)
    clip = np.concatenate([_silence(0.5), speech, gap, speech, _silence(1.2)])

    async def turns(silence_ms):
        async with _client(url).realtime.connect(model="tiny") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", "silence_duration_ms": silence_ms, "create_response": False}}}})
            await _append(conn, clip)
            await conn.input_audio_buffer.clear()
            evs = await _until(conn, lambda e: e.type == "input_audio_buffer.cleared")
            return [e.type for e in evs]

    short, long_ = _run(turns(200)), _run(turns(900))
    assert short.count("input_audio_buffer.speech_stopped") >= 2
    assert long_.count("input_audio_buffer.speech_stopped") == 1
    assert "response.created" not in short + long_
    assert long_.count("input_audio_buffer.committed") == 1


def test_no_turn_detection_means_no_vad_events(url, speech):
    async def go():
        async with _client(url).realtime.connect(model="tiny") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            await _append(conn, np.concatenate([speech, _silence(1.0)]))
            await conn.input_audio_buffer.commit()
            return await _until(conn, lambda e: e.type == "conversation.item.done")

    types = [e.type for e in _run(go())]
    assert "input_audio_buffer.speech_started" not in types and "input_audio_buffer.committed" in types


def test_barge_in_cancels_the_running_response(url, speech):
    async def go():
        async with _client(url).realtime.connect(model="tiny") as conn:
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "tell a story"}]})
            await conn.response.create(response={"max_output_tokens": 480})
            await _until(conn, lambda e: e.type == "response.output_audio.delta")
            await _append(conn, np.concatenate([_silence(0.2), speech]))
            return await _until(conn, lambda e: e.type == "response.done")

    evs = _run(go())
    types = [e.type for e in evs]
    assert types.index("input_audio_buffer.speech_started") < types.index("response.done")
    r = evs[-1].response
    assert r.status == "cancelled" and r.status_details.reason == "turn_detected"
    assert r.usage.output_tokens < 480


def test_cancel_truncate_and_retrieve(url):
    async def go():
        async with _client(url).realtime.connect(model="tiny") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "hi"}]})
            await conn.response.create(response={"max_output_tokens": 480})
            await _until(conn, lambda e: e.type == "response.output_audio.delta")
            await conn.response.cancel()
            evs = await _until(conn, lambda e: e.type == "response.done")
            item_id = evs[-1].response.output[0].id
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=20)
            trunc = await _until(conn, lambda e: e.type in ("conversation.item.truncated", "error"))
            await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=10**7)
            err = await _until(conn, lambda e: e.type == "error")
            await conn.response.cancel()
            err2 = await _until(conn, lambda e: e.type == "error")
            return evs[-1], trunc[-1], err[-1], err2[-1]

    done, trunc, err, err2 = _run(go())
    assert done.response.status == "cancelled" and done.response.status_details.reason == "client_cancelled"
    assert trunc.type == "conversation.item.truncated" and trunc.audio_end_ms == 20, trunc
    assert "past the item's audio" in err.error.message
    assert err2.error.code == "response_cancel_not_active"


def test_text_and_image_items_answer_in_text(url):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(buf, format="PNG")
    img = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    async def go():
        async with _client(url).realtime.connect(model="tiny") as conn:
            await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "what color?"}, {"type": "input_image", "image_url": img}]})
            await conn.response.create(response={"output_modalities": ["text"], "max_output_tokens": 10})
            return await _until(conn, lambda e: e.type == "response.done")

    evs = _run(go())
    types = [e.type for e in evs]
    assert "response.output_text.delta" in types and "response.output_audio.delta" not in types
    text = "".join(e.delta for e in evs if e.type == "response.output_text.delta")
    assert next(e for e in evs if e.type == "response.output_text.done").text == text
    u = evs[-1].response.usage
    assert u.input_token_details.image_tokens == 64 and u.output_tokens <= 10


def test_beta_names_auth_and_bad_events(url):
    async def beta():
        async with _client(url).realtime.connect(model="tiny", extra_headers={"OpenAI-Beta": "realtime=v1"}) as conn:
            await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                      "content": [{"type": "input_text", "text": "hi"}]})
            await conn.response.create(response={"max_output_tokens": 6})
            evs = await _until(conn, lambda e: e.type == "response.done")
            await conn.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                          "content": [{"type": "input_image",
                                                                                       "image_url": "file:///etc/passwd"}]}})
            err = await _until(conn, lambda e: e.type == "error")
            return [e.type for e in evs], err[-1]

    types, err = _run(beta())
    assert "response.audio.delta" in types and "conversation.item.created" in types
    assert "response.output_audio.delta" not in types
    assert "data URLs" in err.error.message

    async def bad_key():
        async with _client(url, "wrong").realtime.connect(model="tiny") as conn:
            await conn.recv()

    with pytest.raises(Exception):
        _run(bad_key())


def test_browser_style_key_as_subprotocol(url):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = url.replace("http", "ws") + "/v1/realtime?model=tiny"
    with connect(ws_url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url, subprotocols=["realtime", "openai-insecure-api-key.wrong"])
    assert e.value.response.status_code == 401


def test_input_audio_transcription_events(url, speech):
    async def go():
        async with _client(url).realtime.connect(model="tiny") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {
                "turn_detection": None, "transcription": {"model": "tiny"}}}})
            await _append(conn, speech)
            await conn.input_audio_buffer.commit()
            return await _until(conn, lambda e: e.type == "conversation.item.input_audio_transcription.completed")

    evs = _run(go())
    committed = next(e for e in evs if e.type == "input_audio_buffer.committed")
    done = evs[-1]
    deltas = "".join(e.delta for e in evs if e.type == "conversation.item.input_audio_transcription.delta")
    assert done.item_id == committed.item_id and done.transcript == deltas.strip()


def test_prefix_padding_is_kept_before_the_speech(url, speech):
    async def audio_tokens(prefix_ms):
        async with _client(url).realtime.connect(model="tiny") as conn:
            await conn.session.update(session={"type": "realtime", "max_output_tokens": 1, "audio": {"input": {
                "turn_detection": {"type": "server_vad", "prefix_padding_ms": prefix_ms}}}})
            await _append(conn, np.concatenate([_silence(1.5), speech, _silence(1.0)]))
            evs = await _until(conn, lambda e: e.type == "response.done")
            return evs[-1].response.usage.input_token_details.audio_tokens

    short, long_ = _run(audio_tokens(0)), _run(audio_tokens(800))
    assert abs((long_ - short) - 20) <= 1  # 800 ms more at 25 frames a second


def test_unknown_model_is_an_error_event(url):
    async def go():
        async with _client(url).realtime.connect(model="nope") as conn:
            return await _until(conn, lambda e: e.type == "error", timeout=10)

    evs = _run(go())
    assert [e.type for e in evs] == ["error"] and evs[0].error.code == "model_not_found"
