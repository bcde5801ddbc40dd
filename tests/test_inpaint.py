"""Inpainting: masks -> code cells, kept cells forced to the source's codes, images.edit with a mask."""

import base64
import io

import numpy as np
import openai
import pytest
import torch
from PIL import Image

from omniloom.infer.generate import Done, ImageOut
from omniloom.infer.inpaint import alpha_of, code_grid, inpaint, mask_cells, span_logprobs
from omniloom.infer.sampling import SamplingParams
from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import serve_in_thread
from omniloom.serve.tiny import build_tiny_model

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def omni():
    torch.manual_seed(0)
    return build_tiny_model()


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _image(h=64, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _msgs(img: np.ndarray) -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(_png_bytes(img)).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "make it blue"}]}]


def test_mask_cells_marks_the_cells_under_transparent_pixels():
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[8:16, 24:32] = 0  # exactly code cell (row 1, col 3) of an 8x8 grid
    cells = mask_cells(alpha, 64, 8)
    assert np.flatnonzero(cells).tolist() == [1 * 8 + 3]
    alpha[40, 60] = 0  # one pixel marks its whole cell (row 5, col 7)
    assert np.flatnonzero(mask_cells(alpha, 64, 8)).tolist() == [11, 47]


def test_mask_cells_follow_the_image_crop():
    """A wide mask is cropped like the image (shorter side to the resolution, center crop)."""
    alpha = np.full((64, 128), 255, np.uint8)
    alpha[:, :32] = 0  # the left quarter: cropped away with the image
    assert not mask_cells(alpha, 64, 8).any()
    alpha[:, 32:40] = 0  # the crop's first 8 columns: the grid's left column
    cells = mask_cells(alpha, 64, 8).reshape(8, 8)
    assert cells[:, 0].all() and not cells[:, 1:].any()


def test_alpha_of_needs_transparency():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 7
    assert (alpha_of(Image.fromarray(rgba, "RGBA")) == 7).all()
    with pytest.raises(ValueError, match="no alpha channel"):
        alpha_of(Image.fromarray(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(ValueError, match="shape"):
        alpha_of(np.zeros((4, 4, 3), np.uint8))


def test_inpaint_keeps_every_unmasked_code(omni):
    img = _image()
    src = omni.processor.to_code_messages(_msgs(img))[0]["content"][0]["codes"]
    regen = np.zeros(omni.vocab.image_tokens, bool)
    regen[[5, 6, 20]] = True
    evs = list(inpaint(omni, _msgs(img), regen, candidates=2, sampling=SamplingParams(temperature=1.0, seed=3)))
    out, done = evs
    assert isinstance(out, ImageOut) and isinstance(done, Done)
    assert len(out.codes) == omni.vocab.image_tokens and out.image.shape == (64, 64, 3)
    kept = [i for i in range(len(src)) if not regen[i]]
    assert [out.codes[i] for i in kept] == [src[i] for i in kept]
    assert done.usage["inpaint_cells"] == 3


def test_inpaint_keeps_the_likeliest_candidate(omni):
    """Candidate 0 is the greedy span, so searching more candidates never scores below it."""
    img = _image(seed=1)
    regen = np.zeros(omni.vocab.image_tokens, bool)
    regen[:16] = True
    greedy = SamplingParams(temperature=0.0, seed=5)
    lo = omni.vocab.range_of("image")[0]
    one = next(inpaint(omni, _msgs(img), regen, candidates=1, sampling=greedy)).codes
    many = next(inpaint(omni, _msgs(img), regen, candidates=6, sampling=greedy)).codes
    coded = omni.processor.to_code_messages(_msgs(img))
    prompt = omni.processor.prompt_ids(coded, "image", None)
    s_one, s_many = span_logprobs(omni.model, prompt, [[c + lo for c in one], [c + lo for c in many]])
    assert s_many >= s_one - 1e-4
    # the batched score is the one a single forward gives
    alone = span_logprobs(omni.model, prompt, [[c + lo for c in many]])[0]
    assert abs(alone - s_many) < 1e-3


def test_inpaint_refuses_bad_masks(omni):
    img = _image()
    with pytest.raises(ValueError, match="nothing to edit"):
        list(inpaint(omni, _msgs(img), np.zeros(omni.vocab.image_tokens, bool)))
    with pytest.raises(ValueError, match="code cells"):
        list(inpaint(omni, _msgs(img), np.ones(7, bool)))
    text_only = [{"role": "user", "content": "make it blue"}]
    with pytest.raises(ValueError, match="needs an image"):
        list(inpaint(omni, text_only, np.ones(omni.vocab.image_tokens, bool)))
    assert code_grid(omni.vocab) ** 2 == omni.vocab.image_tokens


@pytest.fixture(scope="module")
def client():
    app = create_app(build_tiny_model(), ServeSettings(model_id="tiny", api_key=KEY, max_image_pixels=256 * 256))
    with serve_in_thread(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _mask(h=64, w=64, hole=True, mode="RGBA") -> bytes:
    a = np.full((h, w, 4), 255, np.uint8)
    if hole:
        a[:16, :16, 3] = 0
    im = Image.fromarray(a, "RGBA")
    return _png_bytes(np.asarray(im.convert(mode))) if mode != "RGBA" else _png_bytes(a)


def test_images_edit_with_a_mask(client):
    img = _png_bytes(_image())
    e = client.images.edit(model="tiny", image=("in.png", img, "image/png"), mask=("m.png", _mask(), "image/png"),
                           prompt="make it blue", extra_body={"image_candidates": 2})
    assert Image.open(io.BytesIO(base64.b64decode(e.data[0].b64_json))).size == (64, 64)
    with pytest.raises(openai.BadRequestError, match="must match"):
        client.images.edit(model="tiny", image=("in.png", img, "image/png"), mask=("m.png", _mask(32, 32), "image/png"),
                           prompt="make it blue")
    with pytest.raises(openai.BadRequestError, match="no alpha channel"):
        client.images.edit(model="tiny", image=("in.png", img, "image/png"),
                           mask=("m.png", _mask(mode="RGB"), "image/png"), prompt="make it blue")
    with pytest.raises(openai.BadRequestError, match="no transparent pixels"):
        client.images.edit(model="tiny", image=("in.png", img, "image/png"),
                           mask=("m.png", _mask(hole=False), "image/png"), prompt="make it blue")
    with pytest.raises(openai.BadRequestError, match="mask"):
        client.images.edit(model="tiny", image=("in.png", img, "image/png"), mask=("m.png", b"not a png", "image/png"),
                           prompt="make it blue")
