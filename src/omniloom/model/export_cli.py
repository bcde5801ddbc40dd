"""Convert between omniloom checkpoints and the Hugging Face layout.

Export a training checkpoint (a directory with model.safetensors + config.json) so that
`transformers` loads it (LlamaForCausalLM, or Qwen3ForCausalLM when model.qk_norm=true):

    omniloom export --checkpoint runs/world/ckpt-020000 --format hf --out hf/world
    python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('hf/world')"

Import a Hugging Face Llama/Qwen3 directory back into an omniloom checkpoint directory:

    omniloom export --from-hf hf/world --out runs/imported

Only the language model is converted: codecs and the vocabulary stay with the omniloom run.

Export a model as one llama.cpp file (the decoder, the extended vocabulary as GGUF tokens, and the
model directory's small files under ``omniloom.*`` keys; see docs/export.md):

    omniloom export --checkpoint world --format gguf --gguf-type q8_0 --out world.q8_0.gguf

and rebuild a model directory from such a file (weights dequantised to fp32):

    omniloom export --from-gguf world.q8_0.gguf --out runs/from-gguf
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..utils.fileio import read_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR",
                     help="omniloom checkpoint directory (model.safetensors + config.json) to export")
    src.add_argument("--from-hf", metavar="DIR", dest="from_hf",
                     help="Hugging Face Llama/Qwen3 directory (config.json + model.safetensors) to import")
    src.add_argument("--from-gguf", metavar="FILE", dest="from_gguf",
                     help="a .gguf written by --format gguf: rebuild its model directory (fp32 weights)")
    p.add_argument("--format", choices=["hf", "omniloom", "delta", "gguf"], default="hf",
                   help="hf: transformers' layout (default); omniloom: an inference model directory (weights, "
                        "config, vocab, tokenizer, codecs; no optimizer state), e.g. to bundle a model; delta: "
                        "only the adapters and trained rows of a frozen-base run over --base (a few to tens of MB), "
                        "the base rebuilt from its own file at load time; gguf: one llama.cpp file (--out FILE.gguf) "
                        "holding the language model, the extended vocabulary and the files to rebuild the model")
    p.add_argument("--gguf-type", choices=["f16", "q8_0", "f32"], default="f16", dest="gguf_type",
                   help="--format gguf: type of the 2-D weights (norms stay f32; q8_0 falls back to f16 for rows "
                        "not a multiple of 32 long); default f16")
    p.add_argument("--base", default=None, metavar="NAME|PATH",
                   help="--format delta: the base the run's frozen weights came from: the LLM it was grafted "
                        "from (smollm2-135m, a .gguf, an HF folder), or the omniloom model it started from "
                        "(a bundled name such as world, or a model directory)")
    p.add_argument("--out", metavar="DIR", required=True,
                   help="output directory, or the .gguf file of --format gguf (written atomically)")
    p.add_argument("--drop-image-pos", action="store_true", dest="drop_image_pos",
                   help="--format hf of a model with an image slot embedding (model.image_pos_embed): leave it out "
                        "(the Llama layout cannot hold it; image spans then lose their slot vectors)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast the weights on export (default: keep the checkpoint's dtype)")


def _read_checkpoint(d: Path):
    """(Config, state dict, tokenizer.json text of a delta's base or None) of a checkpoint directory;
    adapters folded in, except position-gated ones (model/lora.py), which no merge can express."""
    from safetensors.torch import load_file

    from ..config import config_from_dict

    if not d.is_dir():
        raise ValueError(f"checkpoint directory {d} does not exist")
    from .delta import is_delta_dir, read_delta

    if is_delta_dir(d):  # adapters + new rows over a base: the whole weights, rebuilt
        cfg, state, base_tok = read_delta(d)
        return cfg, state, base_tok.to_str()
    cfg_path, w_path = d / "config.json", d / "model.safetensors"
    for f in (cfg_path, w_path):
        if not f.is_file():
            raise ValueError(f"{f} is missing (a checkpoint directory holds model.safetensors + config.json)")
    cfg = config_from_dict(read_json(cfg_path, "checkpoint config"))  # bad JSON: ValueError naming the file
    from .lora import fold_adapters

    return cfg, fold_adapters(load_file(str(w_path)), cfg.train), None


#: what a model directory carries besides its weights (see ``infer.generate.OmniModel.load``):
#: the vocabulary and tokenizer always, the codec references when the model has codecs
MODEL_DIR_REQUIRED = ("vocab.json", "tokenizer.json")
MODEL_DIR_OPTIONAL = ("codecs.json", "generation.json")


def _export_model_dir(src: Path, out: Path, model, cfg, dtype, what: str = "", extra: dict | None = None) -> int:
    """A checkpoint -> an inference model directory (no optimizer, RNG or trainer state). ``what``
    replaces ``src`` in the closing line; ``extra`` maps more file names to writers."""
    from safetensors.torch import save_file

    from ..config import config_to_dict
    from .hf import _atomic_dir_write

    for name in MODEL_DIR_REQUIRED:
        if not (src / name).is_file():
            raise ValueError(f"{src / name} is missing: only a checkpoint of `omniloom train` on tokenized "
                             "shards carries its vocabulary and tokenizer")
    if dtype is not None:
        model.to(dtype)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    files = {
        "model.safetensors": lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
        "config.json": lambda p: p.write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n"),
    }
    for name in MODEL_DIR_REQUIRED + MODEL_DIR_OPTIONAL:
        if (src / name).is_file():
            files[name] = lambda p, f=src / name: p.write_bytes(f.read_bytes())
    if (src / "codecs.json").is_file():  # codecs kept inside the checkpoint travel with it
        import shutil

        for ref in read_json(src / "codecs.json").values():
            if (src / ref).is_dir():
                files[ref] = lambda p, d=src / ref: shutil.copytree(d, p)
    kept = ""
    if "generation.json" not in files and (out / "generation.json").is_file():
        # re-exporting over a model directory keeps its decoding defaults (the checkpoint has none)
        old = (out / "generation.json").read_bytes()
        files["generation.json"] = lambda p, b=old: p.write_bytes(b)
        kept = "; kept its generation.json"
    files.update(extra or {})
    _atomic_dir_write(out, files)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"{what or f'exported {src}'} -> {out} (omniloom model directory, {cfg.model.num_params():,} parameters, "
          f"{size / 1e6:.1f} MB of weights{kept})")
    return 0


def _export_delta(src: Path, out: Path, base: str | None, dtype: str) -> int:
    """A frozen-base run's checkpoint -> a delta directory (adapters + new rows over ``base``)."""
    import torch
    from safetensors.torch import load_file

    from ..config import config_from_dict
    from .delta import write_delta

    for name in ("model.safetensors", "config.json", "vocab.json"):
        if not (src / name).is_file():
            raise ValueError(f"{src / name} is missing (a checkpoint of a frozen-base run)")
    cfg = config_from_dict(read_json(src / "config.json", "checkpoint config"))
    if not base:
        hint = f" (this run started from train.init_from={cfg.train.init_from})" if cfg.train.init_from else ""
        raise ValueError("--format delta needs --base, the base the run's frozen weights came from: the LLM it "
                         f"was grafted from (e.g. smollm2-135m) or the omniloom model it started from (e.g. world){hint}")
    if (src / "codecs.json").is_file():
        local = [ref for ref in read_json(src / "codecs.json", "codec references").values()
                 if isinstance(ref, str) and (src / ref).is_dir()]
        if local:
            raise ValueError(f"{src}/codecs.json names codec folder(s) inside the checkpoint ({', '.join(local)}), "
                             "which a delta does not carry; export --format omniloom instead, or let codecs.json name "
                             "them by a shipped name or a path outside the checkpoint (docs/codecs.md)")
    extra = {n: src / n for n in ("vocab.json",) + MODEL_DIR_OPTIONAL}
    info = write_delta(cfg, load_file(str(src / "model.safetensors")), base, out, extra, getattr(torch, dtype))
    print(f"exported {src} -> {out} (delta over {base}: {info['tensors']} tensors, "
          f"{info['bytes'] / 1e6:.1f} MB)")
    return 0


#: the model-directory files a GGUF export carries besides the weights
GGUF_FILES = MODEL_DIR_REQUIRED + MODEL_DIR_OPTIONAL + ("familiarity.json", "graft.json")


def _export_gguf(src: Path, out: Path, model, cfg, gguf_type: str, drop_image_pos: bool,
                 base_tokenizer: str | None) -> int:
    """A checkpoint / model directory -> one llama.cpp ``.gguf`` (see :mod:`.gguf_io`)."""
    from ..config import config_to_dict
    from .gguf_io import write_gguf

    if out.suffix != ".gguf":
        raise ValueError(f"--format gguf writes one file: --out must name a .gguf file, got {out}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; --format gguf writes one .gguf file")
    files = {name: (src / name).read_text() for name in GGUF_FILES if (src / name).is_file()}
    if "tokenizer.json" not in files and base_tokenizer is not None:
        files["tokenizer.json"] = base_tokenizer  # a delta directory: the base's tokenizer
    if "vocab.json" not in files or "tokenizer.json" not in files:
        raise ValueError(f"{src} lacks {'vocab.json' if 'vocab.json' not in files else 'tokenizer.json'}: only a model "
                         "directory or a checkpoint of `omniloom train` on tokenized shards carries its vocabulary and "
                         "tokenizer, which a GGUF needs")
    state = {k: v for k, v in model.state_dict().items() if not (drop_image_pos and k == "image_pos.weight")}
    if drop_image_pos and cfg.model.image_pos_embed:  # the rebuilt model is then one without it
        import copy

        cfg = copy.deepcopy(cfg)
        cfg.model.image_pos_embed, cfg.model.image_tokens = False, 0
    mcfg = cfg.model
    files["config.json"] = json.dumps(config_to_dict(cfg), indent=2) + "\n"
    local = [ref for ref in read_json(src / "codecs.json").values() if (src / ref).is_dir()] \
        if "codecs.json" in files else []
    print(f"exporting {src} -> {out} (GGUF {gguf_type}, {mcfg.num_params():,} parameters)")
    report = write_gguf(out, mcfg, state, files, gguf_type=gguf_type, name=cfg.name or src.name, log=print)
    types = ", ".join(f"{n} {k}" for k, n in sorted(report["types"].items()))
    print(f"exported {src} -> {out} (llama architecture, {report['tensors']} tensors: {types}; "
          f"{out.stat().st_size / 1e6:.1f} MB)")
    if local:
        print(f"note: the codec folder(s) {', '.join(local)} inside {src} are not in the GGUF; keep them beside "
              "a model directory rebuilt with --from-gguf")
    return 0


def _import_gguf(src: Path, out: Path) -> int:
    """An omniloom ``.gguf`` -> a model directory (weights dequantised to fp32, the carried files verbatim)."""
    from safetensors.torch import save_file

    from ..config import config_from_dict
    from .base_lm import read_gguf
    from .gguf_io import read_gguf_files
    from .hf import _atomic_dir_write, load_state_dict_checked
    from .llama import Transformer

    files = read_gguf_files(src)  # first: a foreign GGUF is refused before its weights are read
    base = read_gguf(src)
    cfg = config_from_dict(json.loads(files["config.json"]))
    shape = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "tie_embeddings")
    differ = [k for k in shape if getattr(cfg.model, k) != getattr(base.cfg, k)]
    if differ:
        raise ValueError(f"{src}: omniloom.config disagrees with the GGUF's llama metadata on {', '.join(differ)}")
    model = Transformer(cfg.model)
    load_state_dict_checked(model, base.state, source=str(src))
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    writers = {"model.safetensors": lambda p: save_file(tensors, str(p), metadata={"format": "pt"})}
    for name, text in files.items():
        writers[name] = lambda p, t=text: p.write_text(t)
    _atomic_dir_write(out, writers)
    print(f"imported {src} -> {out} (omniloom model directory, {cfg.model.num_params():,} parameters, "
          f"files: {', '.join(sorted(files))})")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    from ..config import Config, config_to_dict
    from .hf import _atomic_dir_write, export_hf, from_hf, load_state_dict_checked
    from .llama import Transformer

    out = Path(args.out)
    src = None
    if args.checkpoint:
        from ..utils.model_dir import resolve_model_dir

        src = Path(args.checkpoint)
        if not src.exists() and "/" in args.checkpoint:
            raise ValueError(f"--checkpoint {args.checkpoint} does not exist")
        if not src.exists() or any((src / f).is_file() for f in ("latest", "ckpt/latest")):
            src = resolve_model_dir(args.checkpoint)  # a bundled model's name (world), or a run: its newest checkpoint
    if src is not None and args.format == "delta":
        return _export_delta(src, out, args.base, args.dtype or "bfloat16")
    if src is not None:
        cfg, sd, base_tokenizer = _read_checkpoint(src)
        model = Transformer(cfg.model)
        sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
        from .lora import adapters_for_inference, has_lora

        if has_lora(sd):  # position-gated adapters (the others came folded in)
            if args.format != "omniloom":
                raise ValueError(f"{src}: its adapters are position-gated (train.lora_gate_from="
                                 f"{cfg.train.lora_gate_from}: they act on some ids only), which plain weights cannot "
                                 f"express, so --format {args.format} cannot hold them; export --format omniloom "
                                 "or --format delta")
            # the adapters' shapes only: the gate's id is not stored (config.json keeps the setting),
            # whoever loads the exported directory resolves it against its vocabulary
            adapters_for_inference(model, sd, cfg, None)
        load_state_dict_checked(model, sd, source=str(src))
        dtype = getattr(torch, args.dtype) if args.dtype else None
        if args.format == "omniloom":
            return _export_model_dir(src, out, model, cfg, dtype)
        if args.format == "gguf":
            if args.dtype:
                raise ValueError("--format gguf takes --gguf-type (f16, q8_0, f32), not --dtype")
            return _export_gguf(src, out, model, cfg, args.gguf_type, args.drop_image_pos, base_tokenizer)
        export_hf(model, cfg.model, out, dtype=dtype, drop_image_pos=args.drop_image_pos)
        print(f"exported {src} -> {out} ({'Qwen3' if cfg.model.qk_norm else 'Llama'}ForCausalLM, "
              f"{cfg.model.num_params():,} parameters)")
        return 0

    from safetensors.torch import save_file

    if args.from_gguf:
        return _import_gguf(Path(args.from_gguf), out)
    src = Path(args.from_hf)
    mcfg, sd = from_hf(src)
    model = Transformer(mcfg)
    load_state_dict_checked(model, sd, source=str(src))  # checks names and shapes, names the tensor
    if args.dtype:
        model.to(getattr(torch, args.dtype))
    cfg = Config(name="imported", model=mcfg)
    cfg.data.seq_len = min(cfg.data.seq_len, mcfg.max_seq_len)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _atomic_dir_write(out, {
        "model.safetensors": lambda p: save_file(tensors, str(p), metadata={"format": "pt"}),
        "config.json": lambda p: p.write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n"),
    })
    print(f"imported {src} -> {out} ({mcfg.num_params():,} parameters)")
    return 0
