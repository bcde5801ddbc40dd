"""``POST /v1/images/generations`` and ``POST /v1/images/edits`` (``b64_json`` PNGs).

Generation forces an image answer to the prompt; an edit sends the image and the instruction (the
world's ``edit`` task). ``size`` must be the image codec's own (``"auto"`` picks it).
``guidance_scale`` (an omniloom extension; pass it with the client's ``extra_body``) applies
classifier-free guidance while the image codes are sampled; ``image_candidates`` (also an
extension) searches that many drawings per image and keeps the one the model itself
captions closest to the prompt (``omniloom.infer.rerank``; generations only, an edit has no
description of its result). Both default to the model's ``generation.json``, else 1 (off).

An edit with a ``mask`` (a PNG of the image's size whose transparent pixels, alpha 0, mark the area
to change, as OpenAI defines it) inpaints: the code cells under the transparent area are redrawn and
every other cell keeps the source image's own codes (``omniloom.infer.inpaint``). The first image is
drawn greedily, the others sampled; ``image_candidates`` > 1 searches that many masked drawings per
image and keeps the one the model finds most likely as a whole (default 1: measured no better).
"""

from __future__ import annotations

import base64
import time
from typing import Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from ..infer.generate import ImageOut, generate
from ..infer.inpaint import alpha_of, code_grid, inpaint, mask_cells
from ..infer.sampling import SamplingParams
from .chat import outputs_and_usage
from .errors import APIError, bad_request
from .media import check_image_bytes, png_data_url

__all__ = ["router", "ImageRequest"]

router = APIRouter()


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    model: str
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=4)
    size: str | None = "auto"
    response_format: Literal["b64_json"] | None = "b64_json"
    output_format: Literal["png"] | None = "png"
    # extensions (default: the model's generation.json, else 1 = off): classifier-free guidance, and
    # how many candidates to draw per image, keeping the one the model captions closest to the prompt
    guidance_scale: float | None = Field(None, ge=1.0, le=10.0)
    image_candidates: int | None = Field(None, ge=1, le=64)


def _check(st, size: str | None, response_format: str | None) -> None:
    st.need("image", "model")
    res = st.omni.codecs["image"].resolution
    if size not in (None, "auto", f"{res}x{res}"):
        raise bad_request(f"size {size!r} is not supported: this model draws {res}x{res} images", "size")
    if response_format not in (None, "b64_json"):
        raise bad_request("response_format must be 'b64_json' (this server keeps no image URLs)", "response_format")


def _images_job(messages: list[dict], n: int, image_tokens: int, guidance: float, candidates: int = 1,
                regenerate=None):
    def fn(omni):
        for i in range(n):
            sampling = SamplingParams(max_new_tokens=image_tokens + 4, temperature=1.0)
            if regenerate is not None:  # the first image greedy (measured best, bench/inpaint.py), then varied
                sampling.temperature = 0.0 if i == 0 else 1.0
                yield from inpaint(omni, messages, regenerate, candidates=candidates, sampling=sampling,
                                   cfg_scale=guidance)
            else:
                yield from generate(omni, messages, output_modality="image", outputs=("image",),
                                    sampling=sampling, cfg_scale=guidance, image_candidates=candidates)
    return fn


async def _run(st, request: Request, messages: list[dict], n: int, guidance: float, candidates: int = 1,
               regenerate=None) -> dict:
    job = st.scheduler.submit(_images_job(messages, n, st.omni.vocab.image_tokens, guidance, candidates, regenerate))
    images, usage, warnings = await outputs_and_usage(request, job, ImageOut)
    data = [{"b64_json": png_data_url(ev.image).split(",", 1)[1], "revised_prompt": None}
            for ev in images if ev.image.size]
    if len(data) != n:
        raise APIError(500, f"the model drew {len(data)} of {n} images", code="generation_failed")
    return {"created": int(time.time()), "data": data, "output_format": "png",
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                      "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
                      "input_tokens_details": {"text_tokens": usage["prompt_tokens"], "image_tokens": 0}},
            **({"warnings": warnings} if warnings else {})}


@router.post("/v1/images/generations")
async def generations(body: ImageRequest, request: Request) -> dict:
    st = request.app.state.omni
    st.check_model(body.model)
    _check(st, body.size, body.response_format)
    guidance, candidates = st.omni.image_options(body.guidance_scale, body.image_candidates)
    return await _run(st, request, [{"role": "user", "content": body.prompt}], body.n, guidance, candidates)


@router.post("/v1/images/edits")
async def edits(
    request: Request,
    image: UploadFile = File(...),
    prompt: str = Form(..., min_length=1, max_length=4000),
    model: str = Form(...),
    n: int = Form(1, ge=1, le=4),
    size: str | None = Form("auto"),
    response_format: str | None = Form("b64_json"),
    guidance_scale: float | None = Form(None, ge=1.0, le=10.0),
    mask: UploadFile | None = File(None),
    image_candidates: int | None = Form(None, ge=1, le=64),
) -> dict:
    st = request.app.state.omni
    st.check_model(model)
    _check(st, size, response_format)
    data = await image.read()
    size_wh = check_image_bytes(data, st.settings.max_image_pixels, "image", st.settings.max_image_aspect)
    regenerate = None
    if mask is not None:
        regenerate = _mask_cells(st, await mask.read(), size_wh)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": prompt}]}]
    guidance = st.omni.image_options(guidance_scale)[0]
    candidates = (image_candidates or INPAINT_CANDIDATES) if regenerate is not None else 1
    return await _run(st, request, msgs, n, guidance, candidates, regenerate)


INPAINT_CANDIDATES = 1  # masked drawings searched per inpainted image unless image_candidates says (the
# likelihood search measured no better than one greedy drawing: bench/inpaint.py, docs/benchmarks.md)


def _mask_cells(st, data: bytes, image_wh: tuple[int, int]):
    """The code cells an edit's ``mask`` marks for redrawing; 400 naming what is wrong with it."""
    import io

    from PIL import Image

    w, h = check_image_bytes(data, st.settings.max_image_pixels, "mask", st.settings.max_image_aspect)
    if (w, h) != tuple(image_wh):
        raise bad_request(f"mask: {w}x{h} pixels, but the image is {image_wh[0]}x{image_wh[1]}: they must match",
                          "mask", "invalid_mask")
    try:
        with Image.open(io.BytesIO(data)) as im:
            alpha = alpha_of(im)
    except ValueError as e:
        raise bad_request(f"mask: {e}", "mask", "invalid_mask") from None
    codec = st.omni.codecs["image"]
    cells = mask_cells(alpha, codec.resolution, code_grid(st.omni.vocab))
    if not cells.any():
        raise bad_request("mask: no transparent pixels (alpha 0 marks the area to edit), so there is nothing to "
                          "redraw", "mask", "invalid_mask")
    return cells
