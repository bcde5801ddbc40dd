"""``POST /v1/embeddings``: text, images and audio embedded by the same decoder (docs/embeddings.md).

OpenAI's input forms stay as they are (a string, a list of strings, token ids, a list of token-id
lists). The extension: an input item may also be a content part object or a list of parts, as in a
chat message (``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": {"url":
"data:image/png;base64,..."}}``, ``{"type": "input_audio", "input_audio": {"data": b64, "format":
"wav"}}``). A top-level list holds several inputs, so one input of several parts is a list inside it.

Each part becomes its stand-alone sequence (:func:`omniloom.tokens.pairs.embed_sequence`: text ids;
``<|image|> codes <|/image|>``; ``<|audio|> <|voice:none|> codes <|/audio|>``), the parts of one input
laid end to end. The decoder's final hidden states are averaged over the content tokens (text ids and
media codes, not the span delimiters) and scaled to unit length; ``dimensions`` keeps the first N
components and re-normalises. These are the sequences and the pooling ``train.contrastive_weight``
trains, so that images and audio land near their captions and transcripts.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..infer.embed import pooled_states
from ..tokens.pairs import embed_sequence
from .errors import bad_request
from .media import TempFiles

__all__ = ["router", "EmbeddingRequest", "PART_TYPES"]

router = APIRouter()
MAX_INPUTS = 256
PART_TYPES = ("text", "image_url", "input_audio")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # no coercion: true is not 1, "3" is not 3
    model: str
    input: Any
    encoding_format: str = "float"
    dimensions: int | None = Field(None, ge=1)


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _items(inp: Any) -> list[Any]:
    """The request's inputs: one string / id list / part / part list, or a list of them."""
    if isinstance(inp, (str, dict)) or _is_ids(inp):
        return [inp]
    if isinstance(inp, list):
        return list(inp)
    raise bad_request("input must be a string, a list of strings, token ids, or content parts "
                      f"({', '.join(PART_TYPES)}), got {type(inp).__name__}", "input")


def _parts(item: Any, where: str, st: Any, tmp: TempFiles) -> list[Any]:
    """One input -> its pieces: ("text", ids) for text and token ids, ("media", raw part, where) for
    media (checked here: type, size, duration; encoded by the worker)."""
    text_size = st.omni.vocab.text_size
    if isinstance(item, str) or _is_ids(item):
        ids = st.omni.tok.encode(item) if isinstance(item, str) else list(item)
        if not ids:
            raise bad_request(f"{where} is empty", "input")
        if any(not 0 <= t < text_size for t in ids):
            raise bad_request(f"{where} holds token ids outside the text range [0, {text_size})", "input")
        if len(ids) > st.context:
            raise bad_request(f"{where} has {len(ids)} tokens, more than the context of {st.context}", "input")
        return [("text", ids)]
    parts = [item] if isinstance(item, dict) else item
    if not isinstance(parts, list) or not parts or not all(isinstance(p, dict) for p in parts):
        raise bad_request(f"{where} must be a string, token ids, a content part object or a non-empty list of "
                          "content parts", "input")
    out: list[Any] = []
    for j, p in enumerate(parts):
        pw = f"{where}[{j}]" if isinstance(item, list) else where
        if p.get("type") not in PART_TYPES:
            raise bad_request(f"{pw}: content part type {p.get('type')!r} cannot be embedded "
                              f"({', '.join(PART_TYPES)})", "input", "invalid_value")
        raw = st.convert_part(p, pw, tmp)
        out.append(("text", st.omni.tok.encode(raw["text"])) if raw["type"] == "text" else ("media", raw, pw))
    return out


def _sequence(pieces: list[Any], omni: Any, where: str, ctx: int) -> tuple[list[int], list[bool]]:
    """The input's pieces, media through the codecs, as one stand-alone sequence and its pool mask."""
    vocab = omni.vocab
    seq: list[int] = []
    mask: list[bool] = []
    for piece in pieces:
        if piece[0] == "text":
            s, m = embed_sequence("text", piece[1], vocab)
        else:
            code = omni.processor.to_code_part(piece[1], where=piece[2])
            if code["type"] == "image_codes":
                s, m = embed_sequence("image", [vocab.image_start + c for c in code["codes"]], vocab)
            else:
                s, m = embed_sequence("audio", vocab.audio_to_global(code["codes"]), vocab)
        seq += s
        mask += m
    if not any(mask):
        raise ValueError(f"{where} is empty")
    if len(seq) > ctx:
        raise ValueError(f"{where} has {len(seq)} tokens, more than the context of {ctx}")
    return seq, mask


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
    items = _items(body.input)
    if not items or len(items) > MAX_INPUTS:
        raise bad_request(f"input must hold 1 to {MAX_INPUTS} items, got {len(items)}", "input")
    tmp = TempFiles()
    try:
        pieces = [_parts(it, f"input[{i}]", st, tmp) for i, it in enumerate(items)]
    except BaseException:
        tmp.close()
        raise
    ctx = st.context

    def fn(omni):
        seqs = [_sequence(p, omni, f"input[{i}]", ctx) for i, p in enumerate(pieces)]
        with torch.inference_mode():
            v = pooled_states(omni.model, [s for s, _ in seqs], [m for _, m in seqs], max_len=ctx)
        yield (v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy(), sum(len(s) for s, _ in seqs)

    job = st.scheduler.submit(fn, cleanup=tmp.close)
    (vecs, n), = [x async for x in job.events()]
    data = []
    for i, v in enumerate(vecs):
        if body.dimensions is not None:
            v = v[: body.dimensions]
            v = v / max(float(np.linalg.norm(v)), 1e-12)
        emb = (base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
               else [float(x) for x in v])
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": st.settings.model_id,
            "usage": {"prompt_tokens": n, "total_tokens": n}}
