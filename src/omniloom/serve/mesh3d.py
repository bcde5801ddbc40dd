"""``POST /v1/3d/generations``: an omniloom extension (OpenAI has no 3D endpoint) that answers a
prompt with 3D shapes, shaped like ``images.generations``.

Request: ``{"model", "prompt", "n" (1-4), "output_format": "stl" | "obj" | "glb" (default "stl"),
"temperature" (default 1; 0 is greedy), "seed"}``. The model answers with a mesh span (its mesh
codec's codes), which is decoded to an occupancy grid and turned into a closed triangle mesh
(marching cubes over the zero-padded grid, ``omniloom.codecs.mesh``). Response:
``{"created", "output_format", "data": [{"b64_json", "watertight", "triangles", "voxels"}], "usage"}``
where ``voxels`` counts the filled cells, and ``warnings`` when the model's ``generation.json`` marks
3D answers as untrained (the bundled world model's are). A model without a mesh codec gets a 400.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..infer.generate import MeshOut, generate
from ..infer.sampling import SamplingParams
from .chat import outputs_and_usage
from .errors import APIError

__all__ = ["router", "MeshRequest"]

router = APIRouter()


class MeshRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    model: str
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=4)
    output_format: Literal["stl", "obj", "glb"] = "stl"
    response_format: Literal["b64_json"] | None = "b64_json"
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = None


def _mesh_job(prompt: str, n: int, tokens: int, temperature: float, seed: int | None):
    def fn(omni):
        for i in range(n):
            sampling = SamplingParams(max_new_tokens=tokens + 2, temperature=temperature,
                                      seed=None if seed is None else seed + i)
            yield from generate(omni, [{"role": "user", "content": prompt}], output_modality="mesh",
                                outputs=("mesh",), sampling=sampling)
    return fn


def mesh_entry(voxels, output_format: str) -> dict:
    """One decoded shape -> its response entry (the file as base64, and what a slicer cares about)."""
    from ..codecs.mesh import mesh_bytes, voxels_to_mesh

    mesh = voxels_to_mesh(voxels)
    return {"b64_json": base64.b64encode(mesh_bytes(mesh, output_format)).decode(),
            "watertight": bool(mesh.is_watertight), "triangles": int(len(mesh.faces)),
            "voxels": int(voxels.sum())}


@router.post("/v1/3d/generations")
async def generations(body: MeshRequest, request: Request) -> dict:
    st = request.app.state.omni
    st.check_model(body.model)
    st.need("mesh", "model")
    temperature = 1.0 if body.temperature is None else body.temperature
    job = st.scheduler.submit(_mesh_job(body.prompt, body.n, st.omni.vocab.mesh_tokens, temperature, body.seed))
    outs, usage, warnings = await outputs_and_usage(request, job, MeshOut)
    shapes = [ev.voxels for ev in outs if ev.voxels.size]
    if len(shapes) != body.n:
        raise APIError(500, f"the model made {len(shapes)} of {body.n} shapes", code="generation_failed")
    data = await asyncio.to_thread(lambda: [mesh_entry(v, body.output_format) for v in shapes])
    return {"created": int(time.time()), "output_format": body.output_format, "data": data,
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                      "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
            **({"warnings": warnings} if warnings else {})}
