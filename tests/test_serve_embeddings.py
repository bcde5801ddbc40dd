"""POST /v1/embeddings with image and audio parts, through the official openai client (tiny random model)."""

import base64
import io

import numpy as np
import openai
import pytest
import soundfile as sf
import torch
from PIL import Image

from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import serve_in_thread
from omniloom.serve.tiny import build_tiny_model
from omniloom.tokens.pairs import embed_sequence

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", api_key=KEY, max_audio_seconds=5,
                                                       max_image_pixels=256 * 256))
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _wav(seconds=0.5, hz=220.0, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * hz * t), rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def _png_url(seed=0, w=64, h=64):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image(seed=0):
    return {"type": "image_url", "image_url": {"url": _png_url(seed)}}


def _audio(hz=220.0):
    return {"type": "input_audio", "input_audio": {"data": _wav(hz=hz), "format": "wav"}}


def test_text_image_audio_in_one_space(client, server):
    inputs = ["a red circle", _image(0), _audio(), [{"type": "text", "text": "a red circle"}], _image(0),
              [_image(1), {"type": "text", "text": "describe the image"}]]
    r = client.embeddings.create(model="tiny", input=inputs, encoding_format="float")
    v = np.array([d.embedding for d in r.data])
    omni = server[1].state.omni.omni
    assert v.shape == (6, omni.model.cfg.dim) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.allclose(v[0], v[3], atol=1e-5)  # a text part is its text
    assert np.allclose(v[1], v[4], atol=1e-5) and not np.allclose(v[1], v[5], atol=1e-3)
    # documented pooling: the stand-alone span <|image|> codes <|/image|>, mean over the codes only
    code = omni.processor.to_code_part(_image(0))
    ids, mask = embed_sequence("image", [omni.vocab.image_start + c for c in code["codes"]], omni.vocab)
    with torch.inference_mode():
        h = omni.model(torch.tensor([ids]), return_hidden=True)[0][torch.tensor(mask)].mean(0)
    assert np.allclose(v[1], (h / h.norm()).numpy(), atol=1e-5)
    # and <|audio|> <|voice:none|> codes <|/audio|> for speech, over the audio codes
    code = omni.processor.to_code_part(_audio())
    ids, mask = embed_sequence("audio", omni.vocab.audio_to_global(code["codes"]), omni.vocab)
    with torch.inference_mode():
        h = omni.model(torch.tensor([ids]), return_hidden=True)[0][torch.tensor(mask)].mean(0)
    assert np.allclose(v[2], (h / h.norm()).numpy(), atol=1e-5)
    text = 2 * len(omni.tok.encode("a red circle")) + len(omni.tok.encode("describe the image"))
    assert r.usage.prompt_tokens == len(ids) + 3 * (omni.vocab.image_tokens + 2) + text


def test_a_single_part_object_and_base64_dimensions(client):
    r = client.embeddings.create(model="tiny", input=_audio(440.0), dimensions=16, encoding_format="base64")
    e = np.frombuffer(base64.b64decode(r.data[0].embedding), "<f4")
    assert len(r.data) == 1 and len(e) == 16 and abs(np.linalg.norm(e) - 1) < 1e-5


@pytest.mark.parametrize("inp, says", [
    ([_image(0), {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}], "input[1]: content part type 'video_url'"),
    ([[{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]],
     "input[0][1].image_url: only data URLs"),
    ({"type": "input_audio", "input_audio": {"data": "!!!", "format": "wav"}}, "input[0].input_audio.data"),
    ({"type": "input_audio", "input_audio": {"data": _wav(6.0), "format": "wav"}}, "exceeds the limit of 5 s"),
    ([{"type": "image_url", "image_url": {"url": _png_url(0, 512, 512)}}], "exceeds the limit"),
    ([{"type": "text"}], "input[0]: text part needs a string"),
    ([[]], "input[0] must be a string, token ids, a content part"),
    ([3.5], "input[0] must be"),
    ([], "1 to 256 items"),
    (7, "input must be a string"),
])
def test_bad_parts_are_400_naming_the_input(client, inp, says):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="tiny", input=inp, encoding_format="float")
    assert says in e.value.response.json()["error"]["message"]
