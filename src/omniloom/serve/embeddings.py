"""``POST /v1/embeddings``: the decoder's final hidden states, mean-pooled and L2-normalised.

Pooling (documented in docs/serve.md): the input's text tokens (no chat template, no BOS) go
through the decoder once; the final-norm hidden states are averaged over the tokens and scaled to
unit length. ``dimensions`` keeps the first N components and re-normalises.
"""

from __future__ import annotations

import base64

import numpy as np
import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .errors import bad_request

__all__ = ["router", "EmbeddingRequest", "embed_ids"]

router = APIRouter()
MAX_INPUTS = 256


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: str = "float"
    dimensions: int | None = Field(None, ge=1)


def embed_ids(model: torch.nn.Module, ids: list[int]) -> np.ndarray:
    """(T,) token ids -> (dim,) unit vector: mean of the final hidden states."""
    x = torch.tensor([ids], dtype=torch.long)  # (1, T)
    h = model(x, return_hidden=True)[0].float()  # (T, dim)
    v = h.mean(dim=0)  # (dim,)
    return (v / v.norm().clamp_min(1e-12)).numpy()


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict:
    st = request.app.state.omni
    st.check_model(body.model)
    if body.encoding_format not in ("float", "base64"):
        raise bad_request(f"encoding_format must be 'float' or 'base64', got {body.encoding_format!r}",
                          "encoding_format")
    dim = st.omni.model.cfg.dim
    if body.dimensions is not None and body.dimensions > dim:
        raise bad_request(f"dimensions must be <= {dim}, got {body.dimensions}", "dimensions")
    inp = body.input
    if isinstance(inp, str):
        items: list = [inp]
    elif inp and all(isinstance(t, int) for t in inp):
        items = [inp]
    else:
        items = list(inp)
    if not items or len(items) > MAX_INPUTS:
        raise bad_request(f"input must hold 1 to {MAX_INPUTS} items, got {len(items)}", "input")
    text_size, ctx = st.omni.vocab.text_size, st.context
    seqs = []
    for i, it in enumerate(items):
        ids = st.omni.tok.encode(it) if isinstance(it, str) else list(it)
        if not ids:
            raise bad_request(f"input[{i}] is empty", "input")
        if any(not 0 <= t < text_size for t in ids):
            raise bad_request(f"input[{i}] holds token ids outside [0, {text_size})", "input")
        if len(ids) > ctx:
            raise bad_request(f"input[{i}] has {len(ids)} tokens, more than the context of {ctx}", "input")
        seqs.append(ids)

    def fn(omni):
        for ids in seqs:
            yield embed_ids(omni.model, ids)

    job = st.scheduler.submit(fn)
    vecs = [v async for v in job.events()]
    data = []
    for i, v in enumerate(vecs):
        if body.dimensions is not None:
            v = v[: body.dimensions]
            v = v / max(float(np.linalg.norm(v)), 1e-12)
        emb = (base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
               else [float(x) for x in v])
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(s) for s in seqs)
    return {"object": "list", "data": data, "model": st.settings.model_id,
            "usage": {"prompt_tokens": n, "total_tokens": n}}
