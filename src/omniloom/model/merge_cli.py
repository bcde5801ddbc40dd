"""Average the weights of models that share one architecture and one vocabulary.

A fine-tune that teaches something new (a language, a voice, a task) forgets part of what the
model knew. Interpolating its weights with the model it started from trades the two off without
training again (WiSE-FT, Wortsman et al. 2022: "robust fine-tuning of zero-shot models"):

    omniloom merge world runs/es --weights 0.5,0.5 --out runs/es-half

writes the model directory whose every tensor is 0.5 * world + 0.5 * runs/es. Any number of
models may be averaged (a "model soup" of several runs from one start). The weights must sum to 1;
one outside [0, 1] extrapolates (task arithmetic), e.g. ``--weights -0.2,1.2``.

Every model must have the same model config (sizes, vocabulary size), the same vocabulary
(vocab.json), tokenizer and codecs: a token then means the same thing in each. The vocabulary,
tokenizer, codec references and decoding defaults of the merged directory come from the first
model. Each model is a bundled name, a model directory, a delta directory (rebuilt over its base)
or a training run (its newest checkpoint); adapters are folded in first. Tensors are averaged in
float32 and stored in the first model's dtype.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="two or more models: bundled names (world), model directories or training runs")
    p.add_argument("--weights", default=None, metavar="W1,W2,...",
                   help="one weight per model, summing to 1 (default: equal weights)")
    p.add_argument("--out", required=True, metavar="DIR", help="the merged model directory (written atomically)")


def parse_weights(text: str | None, n: int) -> list[float]:
    """``"0.3,0.7"`` -> [0.3, 0.7]; one weight per model, finite, summing to 1."""
    import math

    if text is None:
        return [1.0 / n] * n
    try:
        w = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights {text!r}: expected comma-separated numbers, e.g. 0.5,0.5") from None
    if len(w) != n:
        raise ValueError(f"--weights {text!r} gives {len(w)} weight(s) for {n} models: give one per model")
    if not all(math.isfinite(x) for x in w):
        raise ValueError(f"--weights {text!r}: every weight must be a finite number")
    if abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"--weights {text!r} sum to {sum(w):g}; they must sum to 1 (an average of the models)")
    return w


def _same_json(a: Path, b: Path) -> bool:
    from ..utils.fileio import read_json

    return read_json(a) == read_json(b)


def _check_alike(first: Path, other: Path, cfg0, cfg) -> None:
    """Refuse models whose tokens or tensors mean different things, naming the difference."""
    from ..config import config_to_dict

    m0, m = config_to_dict(cfg0)["model"], config_to_dict(cfg)["model"]
    differ = [k for k in sorted(set(m0) | set(m)) if m0.get(k) != m.get(k)]
    if differ:
        k = differ[0]
        raise ValueError(f"{other} and {first} differ in model.{k} ({m.get(k)!r} vs {m0.get(k)!r}"
                         f"{f', and {len(differ) - 1} more setting(s)' if len(differ) > 1 else ''}): "
                         "only models of one architecture can be averaged")
    for name in ("vocab.json", "tokenizer.json", "codecs.json"):
        a, b = first / name, other / name
        if a.is_file() != b.is_file():
            has, lacks = (first, other) if a.is_file() else (other, first)
            raise ValueError(f"{has} has {name} and {lacks} has none: only models with the same vocabulary and "
                             "codecs can be averaged")
        if a.is_file() and not _same_json(a, b):
            raise ValueError(f"{other}/{name} differs from {first}/{name}: the same token id would mean different "
                             "things in the two models, so their weights cannot be averaged")


def merge_states(states: list[dict], weights: list[float], names: list[str]) -> dict:
    """The weighted sum of state dicts with the same tensor names and shapes (float32 sums, the
    first state's dtypes)."""
    import torch

    keys = set(states[0])
    for s, name in zip(states[1:], names[1:]):
        if set(s) != keys:
            extra, lacking = sorted(set(s) - keys), sorted(keys - set(s))
            raise ValueError(f"{name} and {names[0]} hold different tensors"
                             f"{f' ({name} also has {extra[:3]})' if extra else ''}"
                             f"{f' ({name} lacks {lacking[:3]})' if lacking else ''}")
    out = {}
    for k, v0 in states[0].items():
        acc = torch.zeros(v0.shape, dtype=torch.float32)
        for s, w, name in zip(states, weights, names):
            if s[k].shape != v0.shape:
                raise ValueError(f"tensor {k!r} is {tuple(s[k].shape)} in {name} but {tuple(v0.shape)} in {names[0]}")
            acc += w * s[k].float()
        out[k] = acc.to(v0.dtype) if v0.is_floating_point() else v0.clone()
    return out


def run(args: argparse.Namespace) -> int:
    from ..utils.model_dir import resolve_model_dir
    from .export_cli import _export_model_dir, _read_checkpoint
    from .hf import load_state_dict_checked
    from .llama import Transformer
    from .lora import has_lora

    if len(args.models) < 2:
        raise ValueError("merge averages two or more models; name at least two")
    weights = parse_weights(args.weights, len(args.models))
    dirs = [resolve_model_dir(m) for m in args.models]
    out = Path(args.out)
    if any(out.resolve() == d.resolve() for d in dirs):
        raise ValueError(f"--out {out} is one of the models being merged; write the merge elsewhere")
    cfgs, states = [], []
    for d in dirs:
        cfg, sd, _ = _read_checkpoint(d)
        sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
        if has_lora(sd):
            raise ValueError(f"{d}: its adapters are position-gated (train.lora_gate_from), which plain weights "
                             "cannot express; such a model cannot be averaged")
        if cfgs:
            _check_alike(dirs[0], d, cfgs[0], cfg)
        cfgs.append(cfg)
        states.append(sd)
        print(f"read {d} ({sum(v.numel() for v in sd.values()):,} values)")
    merged = merge_states(states, weights, [str(d) for d in dirs])
    model = Transformer(cfgs[0].model)
    load_state_dict_checked(model, merged, source="the merged weights")
    parts = " + ".join(f"{w:g} x {m}" for w, m in zip(weights, args.models))
    record = json.dumps({"models": [str(d) for d in dirs], "weights": weights}, indent=2) + "\n"
    return _export_model_dir(dirs[0], out, model, cfgs[0], None, what=f"merged {parts}",
                             extra={"merge.json": lambda p: p.write_text(record)})
