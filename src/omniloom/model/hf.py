"""Convert the decoder to and from the Hugging Face layout (``LlamaForCausalLM`` / ``Qwen3ForCausalLM``).

Our parameter names are HF Llama's without the ``model.`` prefix, so conversion is mostly a
renaming. A model with ``qk_norm=True`` is exported as ``Qwen3ForCausalLM`` (Llama + per-head
RMSNorm on q and k, same RoPE layout), which ``transformers`` >= 4.51 loads. With tied embeddings
the exported checkpoint holds no ``lm_head.weight`` and sets ``tie_word_embeddings=true``.

    hf_cfg, hf_sd = to_hf(model, cfg)           # dicts, nothing written
    export_hf(model, cfg, "out/hf")             # config.json + model.safetensors (atomic)
    cfg, sd = from_hf("out/hf")                 # ModelConfig + our state dict
    model = import_hf("out/hf")                 # a ready Transformer
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..utils.fileio import read_json
from .llama import Transformer

__all__ = ["to_hf", "from_hf", "export_hf", "import_hf", "hf_config", "model_config_from_hf", "load_state_dict_checked"]

_ARCH = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def hf_config(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The HF ``config.json`` dict describing a model of shape ``cfg``."""
    cfg.validate()
    model_type = "qwen3" if cfg.qk_norm else "llama"
    d: dict[str, Any] = {
        "architectures": [_ARCH[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # both spellings: transformers < 5 reads rope_theta, >= 5 reads rope_parameters
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if cfg.qk_norm:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    else:
        d.update(mlp_bias=False, pretraining_tp=1)
    return d


def model_config_from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Read an HF Llama/Qwen3 config dict into a :class:`ModelConfig` (unsupported variants raise)."""
    mtype = hf.get("model_type")
    if mtype not in _ARCH:
        raise ValueError(f"{where}: model_type {mtype!r} is not supported (expected 'llama' or 'qwen3')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"{where}: {key}=true is not supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ValueError(f"{where}: rope scaling {rope.get('rope_type', rope.get('type'))!r} is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not supported (silu only)")
    try:
        dim, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        cfg = ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            dim=dim,
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
            ffn_dim=int(hf["intermediate_size"]),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            qk_norm=mtype == "qwen3",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except KeyError as e:
        raise ValueError(f"{where}: missing key {e.args[0]!r}") from None
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) != cfg.head_dim:
        raise ValueError(f"{where}: head_dim {head_dim} != hidden_size/num_attention_heads ({cfg.head_dim}); not supported")
    cfg.validate()
    return cfg


def to_hf(model_or_state_dict: nn.Module | dict[str, torch.Tensor], cfg: ModelConfig,
          drop_image_pos: bool = False) -> tuple[dict, dict]:
    """(HF config dict, HF state dict). Tensors are shared with the input, not copied.

    A model with ``image_pos_embed`` has a tensor the Llama layout cannot hold: it raises unless
    ``drop_image_pos``, which leaves it out (the export then computes text and audio exactly, but
    image spans without their slot vectors)."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    if cfg.image_pos_embed or "image_pos.weight" in sd:
        if not drop_image_pos:
            raise ValueError("this model has an image slot embedding (model.image_pos_embed), which the Hugging Face "
                             "Llama layout cannot hold; export with drop_image_pos=True (--drop-image-pos) to leave "
                             "it out, so that image spans lose their slot vectors in the export")
        sd = {k: v for k, v in sd.items() if k != "image_pos.weight"}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "lm_head.weight":
            if not cfg.tie_embeddings:
                out[k] = v
        else:
            out["model." + k] = v
    if not cfg.tie_embeddings and "lm_head.weight" not in out:
        raise ValueError("untied model (tie_embeddings=False) but the state dict has no lm_head.weight")
    dtype = str(next(iter(out.values())).dtype).removeprefix("torch.")
    return hf_config(cfg, dtype), out


def _hf_to_ours(hf_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for k, v in hf_sd.items():
        if k == "lm_head.weight":
            if not cfg.tie_embeddings:
                sd[k] = v
        elif k.startswith("model."):
            sd[k.removeprefix("model.")] = v
        elif "rotary_emb" in k:
            continue
        else:
            raise ValueError(f"unexpected tensor {k!r} in the Hugging Face checkpoint")
    return sd


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(sd)`` with errors naming the missing / unexpected / mis-shaped tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing:
        raise ValueError(f"{source}: missing tensor(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise ValueError(f"{source}: unexpected tensor(s) {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"{source}: tensor {k!r} has shape {tuple(sd[k].shape)}, the model expects {tuple(v.shape)}")
    model.load_state_dict(sd, strict=True)


def from_hf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read ``config.json`` + ``model.safetensors`` (or sharded ``model-*.safetensors``) of an HF dir."""
    from safetensors.torch import load_file

    d = Path(path)
    if not d.is_dir():
        raise ValueError(f"Hugging Face model directory {d} does not exist")
    cfg_path = d / "config.json"
    cfg = model_config_from_hf(read_json(cfg_path), str(cfg_path))
    files = [d / "model.safetensors"] if (d / "model.safetensors").is_file() else sorted(d.glob("model-*.safetensors"))
    if not files:
        raise ValueError(f"{d} holds no model.safetensors")
    hf_sd: dict[str, torch.Tensor] = {}
    for f in files:
        hf_sd.update(load_file(str(f)))
    return cfg, _hf_to_ours(hf_sd, cfg)


def _atomic_dir_write(out_dir: Path, files: dict[str, Any]) -> None:
    """Write files into a temp dir next to ``out_dir``, then move them in (old files replaced last)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would keep the output from other users
        for name, write in files.items():
            write(tmp / name)
            if (tmp / name).is_file():
                os.chmod(tmp / name, 0o666 & ~umask)
        if not out_dir.exists():
            os.replace(tmp, out_dir)
            return
        if not out_dir.is_dir():
            raise ValueError(f"output path {out_dir} exists and is not a directory")
        for name in files:  # same filesystem: each replace is atomic
            dest, old = out_dir / name, None
            if dest.is_dir() and not dest.is_symlink():  # a directory (a codec) is swapped: old one aside first
                old = tmp / f".old.{name}"
                os.replace(dest, old)
            try:
                os.replace(tmp / name, dest)
            except BaseException:
                if old is not None:  # put the old one back rather than lose it with the temp dir
                    os.replace(old, dest)
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_hf(model: nn.Module, cfg: ModelConfig, out_dir: str | os.PathLike, dtype: torch.dtype | None = None,
              drop_image_pos: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` loadable by ``AutoModelForCausalLM.from_pretrained``."""
    from safetensors.torch import save_file

    hf_cfg, hf_sd = to_hf(model, cfg, drop_image_pos=drop_image_pos)
    hf_sd = {k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in hf_sd.items()}
    hf_cfg["torch_dtype"] = str(next(iter(hf_sd.values())).dtype).removeprefix("torch.")
    out = Path(out_dir)
    _atomic_dir_write(out, {
        "model.safetensors": lambda p: save_file(hf_sd, str(p), metadata={"format": "pt"}),
        "config.json": lambda p: p.write_text(json.dumps(hf_cfg, indent=2) + "\n"),
    })
    return out


def import_hf(path: str | os.PathLike, dtype: torch.dtype | None = None) -> Transformer:
    """Build a :class:`Transformer` from an HF Llama/Qwen3 directory."""
    cfg, sd = from_hf(path)
    model = Transformer(cfg)
    load_state_dict_checked(model, sd, source=str(path))
    if dtype is not None:
        model.to(dtype)
    return model
