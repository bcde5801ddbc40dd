"""Graft: a pretrained text LLM + omniloom's codecs -> an omni model directory.

The base keeps everything it has:

* its tokenizer is the text codec, unchanged: ids ``[0, T)`` are the base's own (``T`` = its
  embedding rows), so text is tokenized exactly as the base tokenizes it;
* omniloom's specials, voice and time tags and the codecs' code ranges are appended after ``T``
  (the layout of ``docs/token-format.md``);
* the base's chat template becomes the vocabulary's chat format (:mod:`.chat`), so a text-only
  conversation is the id sequence the base was tuned on and is scored as the base scores it.

**New rows** (embedding, and output rows when the base does not tie them) are initialised as the
mean of the base's rows plus Gaussian noise of ``noise`` times the base rows' per-dimension
standard deviation (seeded). At the mean, a new token's logit is the average of the base's logits
for that hidden state, far below the chosen token's, so the base's answers do not change before
training (Hewitt, "Initializing New Word Embeddings for Pretrained Language Models", 2021); the
noise keeps the new rows apart so that training can tell them from one another. Tied embeddings
stay tied (one matrix, grown).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import Config, config_to_dict
from ..tokens.vocab import Vocab
from ..model.base_lm import BaseLM

__all__ = ["graft", "new_rows", "GRAFT_FILE"]

GRAFT_FILE = "graft.json"  # provenance of a grafted model directory


def new_rows(base_rows: torch.Tensor, n: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` rows: the mean of ``base_rows`` plus N(0, (noise * per-dim std)^2)."""
    mean = base_rows.mean(0)
    std = base_rows.std(0)
    return mean[None, :] + noise * std[None, :] * torch.randn(n, base_rows.shape[1], generator=generator)


def graft(
    base: BaseLM,
    out_dir: str | Path,
    codecs: Sequence[str] = (),
    voices: Sequence[str] = (),
    chat_format: str = "base",
    noise: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_seq_len: int | None = None,
) -> dict[str, Any]:
    """Write a model directory grafted from ``base`` (atomically); returns a report dict."""
    from ..codecs import load_codec
    from ..codecs.base import canonical_codec_spec
    from ..model.hf import _atomic_dir_write
    from .chat import chat_format_from_template

    if chat_format not in ("base", "omniloom"):
        raise ValueError(f"chat_format must be 'base' or 'omniloom', got {chat_format!r}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    T = base.cfg.vocab_size
    tok_size = base.tokenizer.get_vocab_size(with_added_tokens=True)
    if tok_size > T:
        raise ValueError(f"the base tokenizer has {tok_size} ids but the model only {T} embedding rows")
    loaded: dict[str, Any] = {}
    names: dict[str, str] = {}
    for name in codecs:
        c = load_codec(name)
        if c.modality in loaded:
            raise ValueError(f"two {c.modality} codecs given ({names[c.modality]}, {name}); a model has one each")
        loaded[c.modality], names[c.modality] = c, canonical_codec_spec(name)
    chat, strings = None, None
    if chat_format == "base":
        chat, strings = chat_format_from_template(base.chat_template or "", base.tokenizer, base.bos_token,
                                                  base.eos_token)
    if voices and "audio" not in loaded:
        raise ValueError("--voices names voices of spoken answers, but no audio codec is grafted (--codec audio-...)")
    vocab = Vocab.for_codecs(T, image_codec=loaded.get("image"), audio_codec=loaded.get("audio"),
                             voices=list(voices) or None, chat=chat, chat_strings=strings)
    n_new = vocab.size - T
    g = torch.Generator().manual_seed(seed)
    state = dict(base.state)
    emb = state["embed_tokens.weight"]
    state["embed_tokens.weight"] = torch.cat([emb, new_rows(emb, n_new, noise, g)])
    if not base.cfg.tie_embeddings:
        head = state["lm_head.weight"]
        state["lm_head.weight"] = torch.cat([head, new_rows(head, n_new, noise, g)])
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}

    cfg = Config(name="graft")
    cfg.model = base.cfg.__class__(**{**base.cfg.__dict__, "vocab_size": vocab.size})
    if max_seq_len is not None:
        cfg.model.max_seq_len = int(max_seq_len)
    cfg.data.seq_len = min(cfg.data.seq_len, cfg.model.max_seq_len)
    cfg.validate()
    report = {
        "base": base.source, "base_format": base.info.get("format"), "base_info": base.info,
        "text_size": T, "vocab_size": vocab.size, "new_rows": n_new,
        "new_row_init": {"rule": "mean of the base rows + N(0, (noise * per-dim std)^2)", "noise": noise,
                         "seed": seed},
        "tied_embeddings": base.cfg.tie_embeddings, "chat_format": chat_format, "chat_strings": strings,
        "codecs": names, "voices": list(vocab.voices), "dtype": str(dtype).removeprefix("torch."),
        "params": sum(v.numel() for v in state.values()),
    }
    from safetensors.torch import save_file

    files = {
        "model.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt"}),
        "config.json": lambda p: p.write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n"),
        "vocab.json": lambda p: vocab.save(p),
        "tokenizer.json": lambda p: p.write_text(base.tokenizer.to_str()),
        GRAFT_FILE: lambda p: p.write_text(json.dumps(report, indent=1) + "\n"),
    }
    if names:
        files["codecs.json"] = lambda p: p.write_text(json.dumps(names, indent=1) + "\n")
    _atomic_dir_write(Path(out_dir), files)
    return report
