"""omniloom serve under hostile input (issue 21's hardening items): each test failed before its fix."""

import asyncio
import base64
import io
import os
import tempfile
import threading
import time
from contextlib import contextmanager

import httpx2 as httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from PIL import Image

from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import mp4_data_url, serve_in_thread
from omniloom.serve.tiny import build_tiny_model
from omniloom.utils.media import FIT_MAX_ASPECT, fit_square


@pytest.fixture(scope="module")
def tmpdir_for_server(tmp_path_factory):
    """The server's temp files go to a folder of their own, so a leak is seen exactly."""
    d = tmp_path_factory.mktemp("server-tmp")
    old = tempfile.tempdir
    tempfile.tempdir = str(d)
    yield d
    tempfile.tempdir = old


@pytest.fixture(scope="module")
def server(tmpdir_for_server):
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", max_queue=0))
    with serve_in_thread(app) as url:
        yield url, app


def _wav_bytes(samples: int, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(samples, np.float32), rate, format="WAV")
    return buf.getvalue()


def _chat_audio(url, data: bytes):
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
    return httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [part]}]})


def _transcribe(url, data: bytes):
    return httpx.post(url + "/v1/audio/transcriptions", data={"model": "tiny"}, timeout=60,
                      files={"file": ("a.wav", data, "audio/wav")})


# ---------------------------------------------------------------- item 9: empty, short and garbled audio
@pytest.mark.parametrize("samples,code", [(0, "audio_too_short"), (100, "audio_too_short"), (639, "audio_too_short")])
def test_short_audio_is_a_400_naming_it(server, samples, code):
    url, _ = server
    for r in (_chat_audio(url, _wav_bytes(samples)), _transcribe(url, _wav_bytes(samples))):
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == code and ("no samples" in err["message"] or "shorter than the codec's frame" in
                                        err["message"])
    assert _chat_audio(url, _wav_bytes(640)).status_code == 200  # one whole frame (40 ms) is enough


def test_wav_header_followed_by_garbage_is_a_400(server):
    url, _ = server
    bad = _wav_bytes(1000)[:44] + b"\x01garbage" * 20  # the header promises 2000 bytes; 160 follow
    for r in (_chat_audio(url, bad), _transcribe(url, bad)):
        assert r.status_code == 400 and "truncated or garbled" in r.json()["error"]["message"]
    r = _transcribe(url, b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_audio"


def test_realtime_short_audio_item_is_an_error_event(server):
    url, _ = server

    async def go():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        async with client.realtime.connect(model="tiny") as conn:
            for n in (0, 50):  # pcm16 samples at 24 kHz
                await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
                    {"type": "input_audio", "audio": base64.b64encode(b"\x00\x00" * n).decode()}]})
            errors = []
            async for ev in conn:
                if ev.type == "error":
                    errors.append(ev.error)
                    if len(errors) == 2:
                        return errors

    errors = asyncio.run(asyncio.wait_for(go(), 60))
    assert [e.code for e in errors] == ["audio_too_short", "audio_too_short"]
    assert "no samples" in errors[0].message and "2.1 ms" in errors[1].message


# ---------------------------------------------------------------- item 8: pathological image shapes
def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def test_long_strip_image_is_refused_before_decoding(server):
    url, _ = server
    strip = _png(16777216, 1)  # 1 x 16M pixels: within the pixel limit, 877 MB of resizing before the fix
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(strip).decode()}}
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [part]}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_aspect_ratio"
    assert "16777216x1" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/images/edits", timeout=60, data={"model": "tiny", "prompt": "x"},
                   files={"image": ("s.png", strip, "image/png")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_aspect_ratio"


def test_fit_square_never_resizes_to_a_huge_image(monkeypatch):
    sizes = []
    real = Image.Image.resize

    def spy(self, size, *a, **kw):
        sizes.append(size)
        return real(self, size, *a, **kw)

    monkeypatch.setattr(Image.Image, "resize", spy)
    for w, h in [(100000, 2), (3, 90000), (640, 480), (64, 640)]:
        out = fit_square(Image.new("RGB", (w, h)), 64)
        assert out.size == (64, 64)
    assert max(a * b for a, b in sizes) <= FIT_MAX_ASPECT * 64 * 64
    # shapes within 4:1 are cut exactly as before (resize the shorter side, then center-crop)
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (40, 150, 3), dtype=np.uint8))
    ref = real(im, (240, 64), Image.Resampling.BICUBIC).crop((88, 0, 152, 64))
    assert np.array_equal(np.asarray(fit_square(im, 64)), np.asarray(ref))


# ---------------------------------------------------------------- item 10: no temp file outlives its request
def _video_url() -> str:
    return mp4_data_url(frames=2)


def _leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.is_file())  # (torch may add a cache folder here)


@contextmanager
def _busy(sched):
    """Hold the scheduler's only worker with a job of our own until the block ends."""
    gate, started = threading.Event(), threading.Event()

    def hold(_):
        started.set()
        gate.wait(30)
        yield "held"

    async def run():
        job = sched.submit(hold)
        async for _ in job.events():
            pass

    t = threading.Thread(target=asyncio.run, args=(run(),))
    t.start()
    assert started.wait(10)
    try:
        yield
    finally:
        gate.set()
        t.join(10)


def test_video_temp_files_removed_on_429_400_and_success(server, tmpdir_for_server):
    url, app = server
    sched = app.state.omni.scheduler
    video = {"type": "video_url", "video_url": {"url": _video_url()}}
    msg = [{"role": "user", "content": [video, {"type": "text", "text": "what moves?"}]}]
    # the only worker is busy and max_queue=0: each video request gets a 429
    with _busy(sched):
        statuses = [httpx.post(url + "/v1/chat/completions", timeout=60,
                               json={"model": "tiny", "max_tokens": 2, "messages": msg}).status_code
                    for _ in range(5)]
    assert statuses == [429] * 5
    # a bad part after the video: 400, and the video written before it is gone too
    bad = [{"role": "user", "content": [video, {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}]
    t0 = time.time()
    while (sched.running or sched.waiting) and time.time() - t0 < 20:
        time.sleep(0.01)
    assert httpx.post(url + "/v1/chat/completions", timeout=60,
                      json={"model": "tiny", "max_tokens": 2, "messages": bad}).status_code == 400
    ok = httpx.post(url + "/v1/chat/completions", timeout=60, json={"model": "tiny", "max_tokens": 2, "messages": msg})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens_details"]["image_tokens"] > 0
    assert _leftovers(tmpdir_for_server) == []


def test_a_job_cancelled_before_it_starts_still_cleans_up(tmp_path):
    from omniloom.serve.media import TempFiles
    from omniloom.serve.scheduler import Scheduler

    omni = build_tiny_model()
    sched = Scheduler(omni, workers=1, max_queue=4)
    gate = threading.Event()

    def blocker(_):
        gate.wait(10)
        yield "x"

    def never(_):
        raise AssertionError("a cancelled job must not run")
        yield

    async def go():
        tmp = TempFiles()
        old = tempfile.tempdir
        tempfile.tempdir = str(tmp_path)
        try:
            path = tmp.write(b"data", ".video")
        finally:
            tempfile.tempdir = old
        first = sched.submit(blocker)
        second = sched.submit(never, cleanup=tmp.close)
        second.stop()  # the client left while the job still waited for the worker
        gate.set()
        async for _ in first.events():
            pass
        async for _ in second.events():
            pass
        t0 = time.time()
        while second.finished is None and time.time() - t0 < 10:
            await asyncio.sleep(0.01)
        return path, second

    try:
        path, second = asyncio.run(go())
    finally:
        sched.close()
    assert second.cancelled and not os.path.exists(path) and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- item 12: security defaults
KEY = "sk-hardening"


@pytest.fixture(scope="module")
def keyed():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", api_key=KEY,
                                                       allowed_origins=("https://app.example.com",)))
    with serve_in_thread(app) as url:
        yield url


def test_only_bearer_authorization_is_accepted(keyed):
    def status(auth):
        return httpx.get(keyed + "/v1/models", headers={"Authorization": auth} if auth else {}).status_code

    assert status(f"Bearer {KEY}") == 200 and status(f"bearer {KEY}") == 200
    assert status(KEY) == 401  # a bare key (accepted before the fix)
    assert status(f"Basic {KEY}") == 401 and status(f"Token {KEY}") == 401 and status("Bearer") == 401
    assert status(None) == 401


def test_foreign_origins_cannot_drive_the_server(keyed):
    port = keyed.rsplit(":", 1)[1]
    auth = {"Authorization": f"Bearer {KEY}"}

    def status(origin):
        h = dict(auth, Origin=origin) if origin else auth
        return httpx.get(keyed + "/v1/models", headers=h).status_code

    assert status(None) == 200  # SDKs and curl send no Origin
    for ok in (f"http://127.0.0.1:{port}", "http://localhost:5173", "http://[::1]:3000", "https://app.example.com"):
        assert status(ok) == 200, ok
    for bad in ("https://evil.example", "http://127.0.0.1.evil.example", "null", "file://", "https://app.example.com.x"):
        assert status(bad) == 403, bad
    # a cross-site form POST (no preflight) is refused before it reaches the model
    r = httpx.post(keyed + "/v1/audio/transcriptions", headers=dict(auth, Origin="https://evil.example"),
                   data={"model": "tiny"}, files={"file": ("a.wav", _wav_bytes(16000), "audio/wav")})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    ws_url = keyed.replace("http://", "ws://") + "/v1/realtime?model=tiny"
    proto = ["realtime", f"openai-insecure-api-key.{KEY}"]
    with pytest.raises(InvalidStatus) as e:
        connect(ws_url, subprotocols=proto, origin="https://evil.example")
    assert e.value.response.status_code == 403
    with connect(ws_url, subprotocols=proto, origin=f"http://127.0.0.1:{port}") as ws:
        assert '"session.created"' in ws.recv(timeout=10)


def test_serve_refuses_a_public_bind_without_a_key(capsys):
    from omniloom.cli import main
    from omniloom.serve.app import is_loopback

    assert main(["serve", "--host", "0.0.0.0", "--model", "/nonexistent"]) == 2
    assert "refusing to bind 0.0.0.0 without --api-key" in capsys.readouterr().err
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))


# ---------------------------------------------------------------- item 7: a cancel stops an image search
@pytest.mark.parametrize("route", ["images", "chat"])
def test_leaving_an_image_search_frees_the_worker_within_a_second(route):
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny"))
    sched = app.state.omni.scheduler
    if route == "images":  # 4 images x 64 candidates: many seconds of work on the tiny model
        path, body = "/v1/images/generations", {"model": "tiny", "prompt": "a red circle", "n": 4,
                                                 "image_candidates": 64}
    else:
        path, body = "/v1/chat/completions", {"model": "tiny", "modalities": ["image"], "image_candidates": 64,
                                               "messages": [{"role": "user", "content": "draw a red circle"}]}
    with serve_in_thread(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + path, json=body, timeout=httpx.Timeout(60, read=1.0))
        left = time.time()
        while sched.running and time.time() - left < 20:
            time.sleep(0.01)
        freed = time.time() - left
        assert sched.running == 0 and freed < 1.0, f"worker still busy {freed:.1f} s after the client left"
        assert sched.stats["cancelled"] == 1 and sched.stats["failed"] == 0


# ---------------------------------------------------------------- item 11: bounded state
def test_a_slow_client_holds_back_its_job_and_a_stalled_one_is_cancelled():
    from omniloom.serve.scheduler import Scheduler

    sched = Scheduler(build_tiny_model(), workers=1, max_queue=2, max_events=16, stall_timeout_s=0.5)
    made = []

    def many(_):
        for i in range(10_000):
            made.append(i)
            yield i

    async def slow_then_all():
        job = sched.submit(many)
        await asyncio.sleep(0.4)  # the client takes nothing for a while: the worker waits, it does not buffer
        held = len(made)
        got = [ev async for ev in job.events()]
        return held, got

    async def never_reads():
        job = sched.submit(many)
        await asyncio.sleep(1.5)
        return job

    try:
        held, got = asyncio.run(slow_then_all())
        assert held <= 17 and got == list(range(10_000))
        made.clear()
        job = asyncio.run(never_reads())
        t0 = time.time()
        while job.finished is None and time.time() - t0 < 10:
            time.sleep(0.01)
        assert job.stalled and job.cancelled and len(made) <= 17
        assert sched.stats["cancelled"] == 1 and sched.running == 0
    finally:
        sched.close()


def test_audio_ids_are_bounded_and_the_oldest_is_a_clean_400():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", max_audio_ids=3))
    st = app.state.omni
    ids = [st.remember_audio(f"said {i}")[0] for i in range(10)]
    assert len(st.audio_store) == 3 and list(st.audio_store) == ids[-3:]
    with serve_in_thread(app) as url:
        def ask(aid):
            return httpx.post(url + "/v1/chat/completions", timeout=60, json={"model": "tiny", "max_tokens": 2,
                              "messages": [{"role": "assistant", "audio": {"id": aid}},
                                           {"role": "user", "content": "and then?"}]})
        assert ask(ids[-1]).status_code == 200
        r = ask(ids[0])
        assert r.status_code == 400 and "unknown or expired" in r.json()["error"]["message"]


def test_realtime_conversation_limits_are_clean_errors():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", max_session_items=3,
                                                       max_session_audio_seconds=1.0))
    pcm = base64.b64encode(b"\x00\x01" * int(0.7 * 24000)).decode()  # 0.7 s of pcm16

    async def go(url):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        async with client.realtime.connect(model="tiny") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            audio_item = {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": pcm}]}
            await conn.conversation.item.create(item=audio_item)
            await conn.conversation.item.create(item=audio_item)  # 1.4 s > 1.0 s: refused
            for k in range(3):  # the third pushes past 3 items
                await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                          "content": [{"type": "input_text", "text": f"t{k}"}]})
            await conn.response.create()  # no room for the answer either
            evs = []
            async for ev in conn:
                evs.append(ev)
                if sum(e.type == "error" for e in evs) == 3:
                    return evs

    with serve_in_thread(app) as url:
        evs = asyncio.run(asyncio.wait_for(go(url), 60))
    errors = [e.error for e in evs if e.type == "error"]
    assert [e.code for e in errors] == ["conversation_full"] * 3
    assert "0.7 s of input audio" in errors[0].message and "limit of 1 s" in errors[0].message
    assert "holds 3 items" in errors[1].message and "holds 3 items" in errors[2].message
    assert sum(e.type == "conversation.item.done" for e in evs) == 3


# ---------------------------------------------------------------- item 5: OpenAI voice and model names
OPENAI_NAMES = ["gpt-4o", "gpt-4o-mini", "gpt-4o-audio-preview", "gpt-4o-realtime-preview", "whisper-1",
                "gpt-4o-mini-transcribe", "tts-1", "gpt-4o-mini-tts", "gpt-image-1"]


@pytest.fixture(scope="module")
def aliased():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", alias_openai_models=True))
    with serve_in_thread(app) as url:
        yield url, openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


def test_openai_voice_names_are_accepted_everywhere(aliased):
    from omniloom.serve.state import OPENAI_VOICES

    url, client = aliased
    for voice in OPENAI_VOICES:
        r = client.audio.speech.create(model="tts-1", voice=voice, input="hi", response_format="wav",
                                       extra_body={"seed": 1})
        assert len(r.content) > 44, voice
    c = client.chat.completions.create(model="gpt-4o-audio-preview", modalities=["text", "audio"], max_tokens=4,
                                       audio={"voice": "shimmer", "format": "wav"},
                                       messages=[{"role": "user", "content": "hi"}])
    assert c.choices[0].message.audio.data
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="nobody", input="hi")
    assert "answers to alloy, ash" in str(e.value)
    card = client.models.retrieve("tiny")
    assert set(card.voice_aliases) == set(OPENAI_VOICES) - {"nova"}  # nova is the model's own

    async def rt():
        ac = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        async with ac.realtime.connect(model="gpt-4o-realtime-preview") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"output": {"voice": "coral"}}})
            async for ev in conn:
                if ev.type in ("session.updated", "error"):
                    return ev

    ev = asyncio.run(asyncio.wait_for(rt(), 30))
    assert ev.type == "session.updated" and ev.session.audio.output.voice in ("nova", "atlas")


def test_openai_model_names_are_served_when_opted_in(aliased):
    url, client = aliased
    listed = [m.id for m in client.models.list().data]
    assert listed[0] == "tiny" and set(OPENAI_NAMES) <= set(listed)
    for name in OPENAI_NAMES:
        assert client.models.retrieve(name).id == name
    assert client.chat.completions.create(model="gpt-4o", max_tokens=2, messages=[
        {"role": "user", "content": "hi"}]).choices[0].message is not None
    assert client.chat.completions.create(model="gpt-4o-2024-08-06", max_tokens=2, messages=[
        {"role": "user", "content": "hi"}]).model == "tiny"
    assert client.audio.transcriptions.create(model="whisper-1", file=("a.wav", _wav_bytes(16000))).text is not None
    assert client.audio.transcriptions.create(model="gpt-4o-mini-transcribe",
                                              file=("a.wav", _wav_bytes(16000))).text is not None
    assert client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hi").content
    assert client.images.generate(model="gpt-image-1", prompt="a red circle").data[0].b64_json
    assert client.embeddings.create(model="gpt-4o", input="hi").data[0].embedding


def test_openai_model_names_are_refused_without_the_flag(server):
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert "--alias-openai-models" in str(e.value)


# ---------------------------------------------------------------- item 6: the schema says what the server sends
def test_openapi_schema_documents_the_errors_sent_and_the_model_names(keyed, aliased):
    s = httpx.get(keyed + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert '"422"' not in str(s).replace("'", '"')
    chat = s["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "403", "404", "413", "429"} <= set(chat)
    assert chat["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert s["components"]["schemas"]["ChatRequest"]["properties"]["model"]["enum"] == ["tiny"]
    form = s["components"]["schemas"]["Body_transcriptions_v1_audio_transcriptions_post"]["properties"]["model"]
    assert form["enum"] == ["tiny"]
    r = httpx.post(keyed + "/v1/chat/completions", json={"model": "tiny", "messages": "x"},
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"  # what the schema says
    r = httpx.post(keyed + "/v1/chat/completions", json={"model": "tiny", "max_tokens": True, "messages": [
        {"role": "user", "content": "hi"}]}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400  # strict: true is not 1
    r = httpx.get(keyed + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    aliased_schema = httpx.get(aliased[0] + "/openapi.json").json()
    assert "gpt-4o" in aliased_schema["components"]["schemas"]["ChatRequest"]["properties"]["model"]["enum"]
