"""omniloom serve, REST: every endpoint through the official openai client against a tiny random model."""

import base64
import io
import time

import httpx2 as httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from PIL import Image

from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import mp4_data_url, serve_in_thread
from omniloom.serve.tiny import build_tiny_model

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", api_key=KEY, max_audio_seconds=5,
                                                       max_image_pixels=256 * 256, max_body_bytes=2_000_000,
                                                       max_queue=1))
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _wav(seconds=0.5, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format="WAV")
    return buf.getvalue()


def _png(w=64, h=64):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(data, mime):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_models_lists_modalities(client):
    m = client.models.list().data
    assert [x.id for x in m] == ["tiny"]
    assert set(m[0].input_modalities) >= {"text", "image", "audio"}
    assert set(m[0].output_modalities) == {"text", "image", "audio"}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_text_with_image_and_audio_inputs(client):
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": _data_url(_png(), "image/png")}},
               {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav()).decode(), "format": "wav"}}]
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}], max_tokens=12,
                                       seed=1)
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert isinstance(r.choices[0].message.content, str)
    u = r.usage
    assert u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.image_tokens == 64  # one 64-code image in the prompt
    assert u.prompt_tokens_details.audio_tokens == 13  # 0.5 s at 25 frames/s, one codebook


def test_chat_audio_answer_is_24k_wav_and_id_refers_back(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "say hi"}], max_tokens=25,
                                       modalities=["text", "audio"], audio={"voice": "atlas", "format": "wav"}, seed=4)
    a = r.choices[0].message.audio
    x, sr = sf.read(io.BytesIO(base64.b64decode(a.data)))
    frames = r.usage.completion_tokens_details.audio_tokens
    assert sr == 24000 and frames > 0 and abs(len(x) - frames * 960) <= 960  # 40 ms per frame at 24 kHz
    assert a.expires_at > time.time() and a.id.startswith("audio_")
    r2 = client.chat.completions.create(model="tiny", max_tokens=4, messages=[
        {"role": "user", "content": "say hi"}, {"role": "assistant", "audio": {"id": a.id}},
        {"role": "user", "content": "again"}])
    assert r2.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError, match="unknown or expired"):
        client.chat.completions.create(model="tiny", max_tokens=4, messages=[
            {"role": "assistant", "audio": {"id": "audio_nope"}}, {"role": "user", "content": "x"}])


def test_chat_stream_audio_deltas_and_usage(client):
    s = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "say hi"}], max_tokens=20,
                                       modalities=["text", "audio"], audio={"voice": "nova", "format": "pcm16"},
                                       stream=True, stream_options={"include_usage": True}, seed=5)
    chunks = list(s)
    audio = b"".join(base64.b64decode(c.choices[0].delta.audio.data) for c in chunks
                     if c.choices and c.choices[0].delta.audio and c.choices[0].delta.audio.data)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"] or finish == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 20
    frames = usage.completion_tokens_details.audio_tokens
    assert len(audio) == 2 * frames * 960  # pcm16 at 24 kHz, every frame, nothing more


def test_chat_stream_text_ends_with_done(server):
    url, _ = server
    with httpx.Client(timeout=60) as h:
        r = h.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                         "stream": True})
    lines = [ln for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert r.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"


def test_chat_image_answer_is_a_png_part(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "draw a square"}],
                                       modalities=["image"], max_tokens=80, seed=0)
    parts = r.choices[0].message.content
    img = [p for p in parts if p["type"] == "image_url"]
    url = img[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (64, 64)
    assert 64 * len(img) <= r.usage.completion_tokens_details.image_tokens <= 80  # whole images (+ a cut one)


def test_chat_image_answer_with_guidance_and_candidates(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "draw a square"}],
                                       modalities=["image"], max_tokens=80, seed=0,
                                       extra_body={"guidance_scale": 2.0, "image_candidates": 3})
    img = [p for p in r.choices[0].message.content if p["type"] == "image_url"]
    assert img and Image.open(io.BytesIO(base64.b64decode(img[0]["image_url"]["url"].split(",", 1)[1]))).size == (64, 64)
    assert 64 <= r.usage.completion_tokens_details.image_tokens <= 80  # the chosen image, within the budget
    for bad in ({"image_candidates": 0}, {"guidance_scale": 0.5}):
        with pytest.raises(openai.BadRequestError, match=next(iter(bad))):
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                           modalities=["image"], extra_body=bad)


@pytest.mark.slow
def test_speech_formats(client):
    r = client.audio.speech.create(model="tiny", voice="nova", input="hello", response_format="wav")
    x, sr = sf.read(io.BytesIO(r.read()))
    assert sr == 24000 and len(x) > 0
    flac = client.audio.speech.create(model="tiny", voice="nova", input="hello", response_format="flac").read()
    assert flac[:4] == b"fLaC"
    same = dict(model="tiny", voice="nova", input="hello", response_format="pcm", extra_body={"seed": 3})
    slow = client.audio.speech.create(**same).read()
    fast = client.audio.speech.create(**same, speed=2.0).read()
    assert len(slow) % 2 == 0 and len(slow) > 0
    assert abs(len(fast) / len(slow) - 0.5) < 0.01  # same speech (seeded), half the samples
    with pytest.raises(openai.BadRequestError, match="voice"):
        client.audio.speech.create(model="tiny", voice="nobody", input="hello")  # (OpenAI names such as alloy are aliases)


def test_speech_sse(server):
    url, _ = server
    with httpx.Client(timeout=60) as h:
        r = h.post(url + "/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "tiny", "input": "hi", "voice": "atlas", "stream_format": "sse"})
    import json

    evs = [json.loads(ln[6:]) for ln in r.text.split("\n") if ln.startswith("data: ")]
    assert evs[-1]["type"] == "speech.audio.done" and evs[-1]["usage"]["output_tokens"] > 0
    assert all(e["type"] == "speech.audio.delta" for e in evs[:-1]) and len(evs) > 1


def _encoded(container: str, codec: str, rate: int, seconds: float = 1.0) -> bytes:
    """A 220 Hz tone encoded by FFmpeg (PyAV): what a phone (m4a) or a browser (webm) uploads."""
    import av

    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((0.3 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)[None],
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("name,container,codec,rate", [("a.m4a", "ipod", "aac", 16000),
                                                       ("a.webm", "webm", "libopus", 48000)])
def test_transcriptions_read_what_libsndfile_cannot(client, name, container, codec, rate):
    """OpenAI's transcription API takes m4a, mp4 and webm; libsndfile reads none of them, FFmpeg does."""
    import soundfile

    data = _encoded(container, codec, rate)
    with pytest.raises(Exception):
        soundfile.read(io.BytesIO(data))  # the reader the server tried first
    r = client.audio.transcriptions.create(model="tiny", file=(name, data), response_format="verbose_json")
    assert r.duration == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_transcriptions(client, fmt):
    r = client.audio.transcriptions.create(model="tiny", file=("a.wav", _wav(1.0)), response_format=fmt)
    if fmt == "json":
        assert isinstance(r.text, str) and r.usage.input_token_details.audio_tokens == 25
    elif fmt == "verbose_json":
        assert abs(r.duration - 1.0) < 1e-3 and r.segments[0].end == pytest.approx(1.0)
    elif fmt == "srt":
        assert "00:00:00,000 --> 00:00:01,000" in r
    elif fmt == "vtt":
        assert r.startswith("WEBVTT") and "00:00:01.000" in r
    else:
        assert isinstance(r, str)


def test_images_generation_and_edit(client):
    r = client.images.generate(model="tiny", prompt="a red circle", n=2, size="64x64", response_format="b64_json")
    assert len(r.data) == 2
    for d in r.data:
        assert Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size == (64, 64)
    e = client.images.edit(model="tiny", image=("in.png", _png(), "image/png"), prompt="make it blue")
    assert Image.open(io.BytesIO(base64.b64decode(e.data[0].b64_json))).size == (64, 64)
    with pytest.raises(openai.BadRequestError, match="size"):
        client.images.generate(model="tiny", prompt="x", size="1024x1024")


def test_images_with_guidance(client):
    """guidance_scale runs the conditional and the unconditional prompt side by side."""
    r = client.images.generate(model="tiny", prompt="a red circle", extra_body={"guidance_scale": 3.0})
    assert Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))).size == (64, 64)
    # the unconditional row's prompt is also read: more prompt work is not reported as usage, but
    # the image must still be one whole image of 64 codes
    assert r.usage.output_tokens >= 64
    e = client.images.edit(model="tiny", image=("in.png", _png(), "image/png"), prompt="make it blue",
                           extra_body={"guidance_scale": 2.0})
    assert len(e.data) == 1
    with pytest.raises(openai.BadRequestError, match="guidance_scale"):
        client.images.generate(model="tiny", prompt="x", extra_body={"guidance_scale": 0.5})


def test_images_with_candidates(client):
    """image_candidates searches several drawings per image and still returns n images."""
    r = client.images.generate(model="tiny", prompt="draw a red circle", n=2,
                               extra_body={"guidance_scale": 2.0, "image_candidates": 3})
    assert len(r.data) == 2
    for d in r.data:
        assert Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size == (64, 64)
    for bad in (0, 65):
        with pytest.raises(openai.BadRequestError, match="image_candidates"):
            client.images.generate(model="tiny", prompt="x", extra_body={"image_candidates": bad})


def test_image_answers_follow_the_models_generation_defaults(client, server, monkeypatch):
    """A request that names no guidance or candidates gets the model's generation.json values."""
    import omniloom.serve.chat as chat_mod
    import omniloom.serve.images as images_mod

    seen = []

    def spy(real):
        def wrapped(omni, messages, **kw):
            seen.append((kw.get("cfg_scale"), kw.get("image_candidates")))
            yield from real(omni, messages, **kw)
        return wrapped

    monkeypatch.setattr(chat_mod, "generate", spy(chat_mod.generate))
    monkeypatch.setattr(images_mod, "generate", spy(images_mod.generate))
    omni = server[1].state.omni.omni
    monkeypatch.setattr(omni, "generation", {"cfg_scale": 2.0, "image_candidates": 2})
    client.images.generate(model="tiny", prompt="draw a red circle")
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "draw a square"}],
                                   modalities=["image"], max_tokens=80)
    client.images.generate(model="tiny", prompt="draw a red circle",
                           extra_body={"guidance_scale": 1.0, "image_candidates": 1})  # the caller wins
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert seen == [(2.0, 2), (2.0, 2), (1.0, 1), (1.0, 1)]  # a text answer: no guidance, no search


def test_embeddings_pooling(client, server):
    r = client.embeddings.create(model="tiny", input=["a red circle", "a red circle", "three"])
    v = np.array([d.embedding for d in r.data])
    assert v.shape == (3, 128) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.allclose(v[0], v[1], atol=1e-6) and not np.allclose(v[0], v[2])
    # documented pooling: mean of the final hidden states, unit length
    import torch

    st = server[1].state.omni
    ids = st.omni.tok.encode("three")
    with torch.inference_mode():
        h = st.omni.model(torch.tensor([ids]), return_hidden=True)[0].mean(0)
    assert np.allclose(v[2], (h / h.norm()).numpy(), atol=1e-5)
    short = client.embeddings.create(model="tiny", input="three", dimensions=16, encoding_format="base64")
    e = np.frombuffer(base64.b64decode(short.data[0].embedding), "<f4")
    assert len(e) == 16 and abs(np.linalg.norm(e) - 1) < 1e-5


def _status(url, path, **kw):
    with httpx.Client(timeout=60) as h:
        return h.post(url + path, **kw)


def test_errors_use_openai_envelope(server, client):
    url, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        (dict(json={"model": "tiny", "messages": "nope"}), 400),
        (dict(json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}), 400),
        (dict(json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400),
        (dict(json={"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}), 400),
        (dict(json={"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _data_url(_png(512, 512), "image/png")}}]}]}), 400),
        (dict(json={"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(_wav(6.0)).decode(),
                                                    "format": "wav"}}]}]}), 400),
        (dict(json={"model": "tiny", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "!!!", "format": "wav"}}]}]}), 400),
        (dict(content=b"x" * 3_000_000, headers={"content-type": "application/json"}), 413),
        (dict(json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "function", "function": {"name": "f"}}]}), 400),
    ]
    for kw, status in cases:
        kw.setdefault("headers", {}).update(auth)
        r = _status(url, "/v1/chat/completions", **kw)
        assert r.status_code == status, (kw.get("json"), r.text)
        err = r.json()["error"]
        assert err["message"] and err["type"]
    chunked = _status(url, "/v1/chat/completions", content=iter([b" " * 100_000] * 30),  # no Content-Length
                      headers={**auth, "content-type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    r = _status(url, "/v1/embeddings", json={"model": "tiny", "input": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_queue_full_is_429(server):
    import threading

    url, app = server
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 150, "seed": 1,
            "modalities": ["text", "audio"], "audio": {"voice": "nova", "format": "pcm16"}}
    got = []

    def post():
        r = _status(url, "/v1/chat/completions", json=body, headers=auth)
        got.append((r.status_code, r.json()))

    threads = [threading.Thread(target=post) for _ in range(4)]  # 1 worker, max_queue=1: two must wait...
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(c for c, _ in got)
    assert codes.count(200) >= 2 and 429 in codes, codes  # ...and the rest are turned away
    assert all(j["error"]["type"] == "rate_limit_error" for c, j in got if c == 429)


def test_disconnect_cancels_generation(server):
    url, app = server
    sched = app.state.omni.scheduler
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500, "stream": True,
            "modalities": ["text", "audio"], "audio": {"voice": "nova", "format": "pcm16"}, "seed": 2}
    before = sched.stats["cancelled"]
    with httpx.Client(timeout=60) as h, h.stream("POST", url + "/v1/chat/completions", json=body, headers=auth) as s:
        next(s.iter_bytes())  # the answer has started...
    left = time.time()  # ...and the client walks away
    while sched.running and time.time() - left < 20:
        time.sleep(0.01)
    assert sched.running == 0 and sched.stats["cancelled"] == before + 1


def test_chat_video_url_part(client):
    video = {"type": "video_url", "video_url": {"url": mp4_data_url(frames=4)}}
    r = client.chat.completions.create(model="tiny", max_tokens=3, messages=[
        {"role": "user", "content": [video, {"type": "text", "text": "what moves?"}]}])
    assert r.usage.prompt_tokens_details.image_tokens == 4 * 64  # 1 s at 4 fps, 64 codes a frame


def test_disconnect_cancels_a_whole_answer_too(server):
    url, app = server
    sched = app.state.omni.scheduler
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500, "seed": 3,
            "modalities": ["text", "audio"], "audio": {"voice": "nova", "format": "wav"}}
    before = sched.stats["cancelled"]
    with pytest.raises(httpx.ReadTimeout):  # the client gives up before the answer is complete
        with httpx.Client(timeout=httpx.Timeout(60, read=0.5)) as h:
            h.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    t0 = time.time()
    while sched.running and time.time() - t0 < 20:
        time.sleep(0.01)
    assert sched.running == 0 and sched.stats["cancelled"] == before + 1
