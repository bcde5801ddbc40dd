"""GGUF in and out for the Llama-layout decoder: tensor names, llama.cpp's q/k row order, the
byte-level BPE tokenizer's metadata, and the writer behind ``omniloom export --format gguf``.

Both directions live here so that they cannot drift apart: :func:`read_gguf` in ``base_lm`` (which
``omniloom graft`` and ``export --from-gguf`` read with) uses the names, :func:`unpermute_qk` and
:func:`tokenizer_from_gguf`; :func:`write_gguf` uses the same names, :func:`permute_qk` and
:func:`gguf_text_vocab`.

**The vocabulary in a GGUF.** llama.cpp needs one token string and type per embedding row. The text
ids ``[0, T)`` are the text tokenizer's own tokens (BPE vocabulary and merges, its added tokens as
control or user-defined tokens); the ids after them are omniloom's (``docs/token-format.md``),
written as control tokens: the named specials as named (``<|bos|>``, ``<|voice:0|>``, ``<|t:3|>``),
image codes ``<|image:c|>``, audio codes ``<|audio:k:c|>`` (codebook ``k``), 3D shape codes
``<|mesh:c|>`` (when ``ranges`` holds a mesh range), and the padding tail ``<|unused:i|>`` (unused). They are read off ``vocab.json``'s documented fields (``special_tokens``,
``ranges``, ``chat``) because this layer knows no :class:`~omniloom.tokens.Vocab`; the test suite
checks the ids against it. ``tokenizer.ggml.eos_token_id`` is the vocabulary's end of
conversation, ``eot_token_id`` the end of a turn, where generation stops.

**Rebuilding the model.** The model directory's small files travel verbatim as strings under
``omniloom.*`` keys (:data:`FILE_KEYS`: ``omniloom.vocab`` holds ``vocab.json``...), so that
:func:`read_gguf_files` gives back every file but the weights and the codecs' own folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import ModelConfig

__all__ = ["GGUF_NAMES", "gguf_tensor_names", "permute_qk", "unpermute_qk", "gguf_field", "tokenizer_from_gguf",
           "gguf_pre_name", "gguf_text_vocab", "gguf_omni_vocab", "chat_template_from_strings", "write_gguf",
           "read_gguf_files", "FILE_KEYS", "GGUF_TYPES"]

#: GGUF tensor names -> ours (``{i}`` the layer)
GGUF_NAMES = {
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

#: model-directory file -> the GGUF key holding its text
FILE_KEYS = {
    "config.json": "omniloom.config",
    "vocab.json": "omniloom.vocab",
    "tokenizer.json": "omniloom.tokenizer",
    "codecs.json": "omniloom.codecs",
    "generation.json": "omniloom.generation",
    "familiarity.json": "omniloom.familiarity",
    "graft.json": "omniloom.graft",
}
FORMAT_KEY, FORMAT_VERSION = "omniloom.format_version", 1

#: --gguf-type -> (llama.cpp file type, tensor type of the 2-D weights)
GGUF_TYPES = {"f32": (0, "F32"), "f16": (1, "F16"), "q8_0": (7, "Q8_0")}

# token types (llama.cpp's llama_token_type)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def gguf_tensor_names(n_layers: int) -> dict[str, str]:
    """Every GGUF tensor name of an ``n_layers`` decoder -> ours."""
    names: dict[str, str] = {}
    for g, ours in GGUF_NAMES.items():
        for i in (range(n_layers) if "{i}" in g else [0]):
            names[g.format(i=i)] = ours.format(i=i)
    return names


# ----------------------------------------------------------------------------------- q/k row order


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half q/k rows -> llama.cpp's: per head, the two rotary halves
    ``[x_0..x_{d/2}) [x_{d/2}..x_d)`` become interleaved pairs (llama.cpp's "normal" RoPE)."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo :func:`permute_qk` (llama.cpp's q/k rows -> the rotate-half layout again)."""
    hd = w.shape[0] // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------- tokenizer


def gguf_field(reader: Any, key: str, default: Any = None) -> Any:
    """The value of a GGUF metadata key (``default`` when absent)."""
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


#: llama.cpp pre-tokenizer names -> how text is split before byte-level BPE (the regex of the
#: GPT-2 family, with digits split one by one first for the StarCoder/SmolLM family)
_DIGITS_FIRST = {"smollm", "starcoder", "refact", "codeshell", "exaone", "minerva", "command-r"}
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}


def tokenizer_from_gguf(reader: Any, where: str) -> Any:
    """A ``tokenizers.Tokenizer`` rebuilt from a GGUF's ``tokenizer.ggml.*`` metadata (byte-level BPE)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = gguf_field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{where}: tokenizer.ggml.model {kind!r} is not supported (byte-level BPE, 'gpt2', only)")
    tokens = list(gguf_field(reader, "tokenizer.ggml.tokens"))
    types = list(gguf_field(reader, "tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in gguf_field(reader, "tokenizer.ggml.merges", [])]
    pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
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
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    return tok


def _byte_level(p: Any, use_regex: bool) -> bool:
    return (isinstance(p, dict) and p.get("type") == "ByteLevel" and bool(p.get("use_regex", True)) == use_regex
            and not p.get("add_prefix_space", False))


def gguf_pre_name(pre: Any, where: str = "tokenizer.json") -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a tokenizer.json ``pre_tokenizer`` (the inverse of what
    :func:`tokenizer_from_gguf` builds); a split llama.cpp would do differently raises."""
    if _byte_level(pre, True):
        return "gpt-2"
    seq = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if seq and len(seq) == 2:
        first, second = seq
        if first.get("type") == "Digits" and first.get("individual_digits") and _byte_level(second, True):
            return "smollm"
        regex = (first.get("pattern") or {}).get("Regex") if first.get("type") == "Split" else None
        if (regex in (_LLAMA3_SPLIT, _QWEN2_SPLIT) and str(first.get("behavior", "")).lower() == "isolated"
                and not first.get("invert") and _byte_level(second, False)):
            return "llama-bpe" if regex == _LLAMA3_SPLIT else "qwen2"
    raise ValueError(f"{where}: pre-tokenizer {json.dumps(pre)[:200]} has no llama.cpp equivalent known to omniloom "
                     "(supported: byte-level with the GPT-2 regex, digits first then GPT-2 (SmolLM), the Llama 3 "
                     "and Qwen2 splits)")


def gguf_text_vocab(tokenizer_json: str, text_size: int, where: str = "tokenizer.json"
                    ) -> tuple[list[str], list[int], list[str], str]:
    """(tokens, token types, merges, pre-tokenizer name) of the text ids ``[0, text_size)``.

    Ids the tokenizer does not use (embedding rows beyond it) become ``<|unused:i|>`` tokens."""
    try:
        tj = json.loads(tokenizer_json)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{where}: tokenizer model {model.get('type')!r} is not supported (byte-level BPE only)")
    if model.get("byte_fallback"):
        raise ValueError(f"{where}: a BPE with byte_fallback (SentencePiece style) is not supported")
    if tj.get("normalizer"):
        raise ValueError(f"{where}: a tokenizer with a normalizer ({tj['normalizer'].get('type')}) is not supported")
    pre = gguf_pre_name(tj.get("pre_tokenizer"), where)
    tokens: list[str | None] = [None] * text_size
    types = [UNUSED] * text_size
    entries = [(int(i), t, NORMAL) for t, i in model.get("vocab", {}).items()]
    entries += [(int(a["id"]), a["content"], CONTROL if a.get("special") else USER_DEFINED)
                for a in tj.get("added_tokens") or []]
    for i, t, ty in entries:
        if not 0 <= i < text_size:
            raise ValueError(f"{where}: token {t!r} has id {i}, outside the model's text ids [0, {text_size})")
        tokens[i], types[i] = t, ty
    out = [t if t is not None else f"<|unused:{i}|>" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return out, types, merges, pre


def gguf_omni_vocab(vocab: dict[str, Any], where: str = "vocab.json") -> tuple[list[str], list[int], dict[str, int]]:
    """(tokens, types, special ids) of omniloom's ids ``[text_size, size)`` from ``vocab.json``'s dict.

    Special ids: ``bos``, ``eos`` (end of a conversation), ``eot`` (end of a turn: where an answer
    stops), ``pad``, and ``add_bos`` (1 when conversations begin with a bos)."""
    try:
        T, size = int(vocab["text_size"]), int(vocab["size"])
        specials = list(vocab["special_tokens"])
        ranges = {k: (int(v[0]), int(v[1])) for k, v in vocab["ranges"].items()}
        cb = int(vocab["audio"]["codebook_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: missing or malformed key {e}") from None
    s0, s1 = ranges["special"]
    if s0 != T or s1 - s0 != len(specials):
        raise ValueError(f"{where}: special range {ranges['special']} does not fit {len(specials)} special tokens "
                         f"after {T} text ids")
    tokens = list(specials)
    tokens += [f"<|image:{c}|>" for c in range(ranges["image"][1] - ranges["image"][0])]
    a0, a1 = ranges["audio"]
    tokens += [f"<|audio:{j // cb}:{j % cb}|>" for j in range(a1 - a0)]
    m0, m1 = ranges.get("mesh", (a1, a1))
    if m0 != a1:
        raise ValueError(f"{where}: the mesh range {ranges['mesh']} does not follow the audio range {ranges['audio']}")
    tokens += [f"<|mesh:{c}|>" for c in range(m1 - m0)]
    tokens += [f"<|unused:{i}|>" for i in range(m1, size)]
    types = [CONTROL] * (m1 - T) + [UNUSED] * (size - m1)
    sid = {s: T + i for i, s in enumerate(specials)}
    chat = vocab.get("chat")
    bos = list(chat.get("bos", [])) if chat else [sid["<|bos|>"]]
    eos = list(chat.get("eos", [])) if chat else [sid["<|eos|>"]]
    end = chat["end"][0] if chat else sid["<|end|>"]
    ids = {"bos": bos[0] if bos else sid["<|bos|>"], "eos": eos[0] if eos else end, "eot": end,
           "pad": sid["<|pad|>"], "add_bos": int(bool(bos))}
    return tokens, types, ids


def chat_template_from_strings(vocab: dict[str, Any]) -> str | None:
    """A Jinja chat template (text turns only) that writes a conversation as the vocabulary does:
    omniloom's role tokens, or a grafted base's own chat format (``chat_strings``); None when a
    grafted vocabulary keeps no strings."""
    if vocab.get("chat"):
        s = vocab.get("chat_strings")
        if not s:
            return None
    else:
        s = {"bos": "<|bos|>", "system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>",
             "end": "<|end|>", "default_system": ""}

    def lit(x: str) -> str:
        return json.dumps(x or "", ensure_ascii=False)

    headers = "{" + ", ".join(f"{lit(r)}: {lit(s[r])}" for r in ("system", "user", "assistant")) + "}"
    return (f"{{{{ {lit(s.get('bos'))} }}}}"
            f"{{% if messages and messages[0]['role'] != 'system' %}}{{{{ {lit(s.get('default_system'))} }}}}{{% endif %}}"
            f"{{% set headers = {headers} %}}"
            f"{{% for message in messages %}}{{{{ headers[message['role']] + message['content'] + {lit(s['end'])} }}}}"
            f"{{% endfor %}}{{% if add_generation_prompt %}}{{{{ {lit(s['assistant'])} }}}}{{% endif %}}")


# ------------------------------------------------------------------------------------------- writer


def _tensor_data(w: torch.Tensor, kind: str, gguf: Any) -> tuple[np.ndarray, Any]:
    """(numpy data, raw GGML type or None) of one tensor in the file's type; 1-D tensors stay f32 and
    rows whose length is not a multiple of the Q8_0 block (32) fall back to f16, as llama.cpp does."""
    a = w.detach().float().cpu().numpy()
    if a.ndim == 1 or kind == "F32":
        return a.astype(np.float32), None
    if kind == "Q8_0" and a.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return a.astype(np.float16), None


def write_gguf(out: str | Path, cfg: ModelConfig, state: dict[str, torch.Tensor], files: dict[str, str],
               gguf_type: str = "f16", name: str = "", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a llama-architecture ``.gguf`` of the decoder ``cfg``/``state`` (our parameter names)
    with the extended vocabulary of ``files["vocab.json"]`` over ``files["tokenizer.json"]``; every
    entry of ``files`` named in :data:`FILE_KEYS` is kept under its ``omniloom.*`` key. Written
    atomically; ``log`` gets progress lines. Returns a report (tensors, bytes, types)."""
    try:
        import gguf
    except ImportError:
        raise ValueError("writing a .gguf needs the gguf package: pip install -e \".[graft]\"") from None
    from ..utils.fileio import atomic_path

    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type {gguf_type!r} is not supported (choose one of {', '.join(GGUF_TYPES)})")
    if cfg.qk_norm:
        raise ValueError("this model normalises q and k per head (model.qk_norm=true, the Qwen3 layout); the GGUF "
                         "export writes the llama architecture only")
    if cfg.image_pos_embed or "image_pos.weight" in state:
        raise ValueError("this model has an image slot embedding (model.image_pos_embed), which the llama "
                         "architecture cannot hold; export with --drop-image-pos to leave it out (image spans then "
                         "lose their slot vectors)")
    for f in ("vocab.json", "tokenizer.json"):
        if f not in files:
            raise ValueError(f"a GGUF export needs the model's {f}")
    unknown = sorted(set(files) - set(FILE_KEYS))
    if unknown:
        raise ValueError(f"no GGUF key for file(s) {unknown}")
    vocab = json.loads(files["vocab.json"])
    if int(vocab.get("size", -1)) != cfg.vocab_size:
        raise ValueError(f"vocab.json's size {vocab.get('size')} differs from the model's {cfg.vocab_size} embedding rows")
    text_size = int(vocab["text_size"])
    tokens, types, merges, pre = gguf_text_vocab(files["tokenizer.json"], text_size)
    omni_tokens, omni_types, ids = gguf_omni_vocab(vocab)
    tokens, types = tokens + omni_tokens, types + omni_types
    seen: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if t in seen:  # llama.cpp maps strings to ids: a duplicate would make one of the two unreachable
            raise ValueError(f"token {t!r} appears twice in the exported vocabulary (ids {seen[t]} and {i})")
        seen[t] = i

    file_type, kind = GGUF_TYPES[gguf_type]
    names = {ours: g for g, ours in gguf_tensor_names(cfg.n_layers).items()}
    if cfg.tie_embeddings:
        names.pop("lm_head.weight")
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(state) - set(names) - ({"lm_head.weight"} if cfg.tie_embeddings else set()))
    if missing or unexpected:
        raise ValueError(f"the weights do not fit the llama layout: missing {missing[:3]}, unexpected {unexpected[:3]}")

    out = Path(out)
    report: dict[str, Any] = {"tensors": len(names), "bytes": 0, "gguf_type": gguf_type, "types": {}}
    with atomic_path(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(name or out.stem)
        w.add_file_type(file_type)
        if kind == "Q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_block_count(cfg.n_layers)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_feed_forward_length(cfg.ffn_dim)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_vocab_size(cfg.vocab_size)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(ids["bos"])
        w.add_eos_token_id(ids["eos"])
        w.add_eot_token_id(ids["eot"])
        w.add_pad_token_id(ids["pad"])
        w.add_add_bos_token(bool(ids["add_bos"]))
        w.add_add_space_prefix(False)
        template = chat_template_from_strings(vocab)
        if template:
            w.add_chat_template(template)
        w.add_uint32(FORMAT_KEY, FORMAT_VERSION)
        for fname, text in files.items():
            w.add_string(FILE_KEYS[fname], text)
        step = max(1, len(names) // 10)
        for n, (ours, g) in enumerate(names.items(), 1):
            t = state[ours]
            if ours.endswith("q_proj.weight"):
                t = permute_qk(t, cfg.n_heads)
            elif ours.endswith("k_proj.weight"):
                t = permute_qk(t, cfg.n_kv_heads)
            data, raw = _tensor_data(t, kind, gguf)
            w.add_tensor(g, data, raw_dtype=raw)
            report["bytes"] += data.nbytes
            tname = raw.name if raw is not None else ("F16" if data.dtype == np.float16 else "F32")
            report["types"][tname] = report["types"].get(tname, 0) + 1
            if log and (n % step == 0 or n == len(names)):
                log(f"  {n}/{len(names)} tensors converted ({report['bytes'] / 1e6:.1f} MB)")
        if log:
            log(f"  writing {out}")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return report


def read_gguf_files(path: str | Path) -> dict[str, str]:
    """The model-directory files an omniloom GGUF carries (``{"vocab.json": text, ...}``); ValueError
    for a GGUF that omniloom did not write."""
    try:
        import gguf
    except ImportError:
        raise ValueError("reading a .gguf needs the gguf package: pip install -e \".[graft]\"") from None
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from e
    version = gguf_field(reader, FORMAT_KEY)
    if version is None:
        raise ValueError(f"{path} carries no omniloom metadata (it was not written by `omniloom export --format "
                         "gguf`); to make an omni model from a foreign GGUF use `omniloom graft --base FILE`")
    if int(version) != FORMAT_VERSION:
        raise ValueError(f"{path}: omniloom GGUF format version {version} is not supported (this omniloom reads "
                         f"{FORMAT_VERSION})")
    return {f: gguf_field(reader, k) for f, k in FILE_KEYS.items() if gguf_field(reader, k) is not None}
