"""Is this input like what the model was trained on? The codec's own reconstruction error says.

A codec trained on one world (the bundled shapes world) reconstructs media of that world almost
exactly and everything else badly: on the world codecs a held-out world image comes back with a
mean squared error around 0.0002, a crop of a real photo with 0.03 or more; world speech comes back
with a log-spectrum error around 0.8, real recorded speech above 1.2. So the model directory records
the error's distribution over its training media (``familiarity.json``: a threshold at a high
quantile), and every image or audio part the processor encodes is scored against it. A part above
the threshold is *unfamiliar*: the answer is still given, with a warning that the model was not
trained on input like it (docs/serve.md; measured in docs/benchmarks.md).

``familiarity.json``::

    {"image": {"measure": "reconstruction_mse", "threshold": 0.0015, "quantile": 0.995, "n": 600,
               "median": 0.0002, "source": "..."},
     "audio": {"measure": "reconstruction_logspec_l1", "threshold": 1.09, ...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

__all__ = ["FAMILIARITY_FILE", "MEASURES", "image_error", "audio_error", "read_familiarity", "calibrate",
           "unfamiliar_note"]

FAMILIARITY_FILE = "familiarity.json"
MEASURES = {"image": "reconstruction_mse", "audio": "reconstruction_logspec_l1"}


@torch.no_grad()
def image_error(codec: Any, x: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3, R, R) images in [0, 1] -> (B,) mean squared error of decode(encode(x))."""
    codes = codec.encode(x) if codes is None else codes
    rec = codec.decode(codes).to(x.dtype)
    return ((rec - x) ** 2).flatten(1).mean(1)


@torch.no_grad()
def audio_error(codec: Any, wav: torch.Tensor, codes: torch.Tensor | None = None) -> float:
    """(samples,) float audio at the codec's rate -> mean |log|STFT| difference| of decode(encode(wav)).

    Log magnitudes (512-point frames, 10 ms hop, floor 1e-4) weigh quiet and loud bands alike, so
    silence pads and loudness do not dominate; phase is ignored (the codec need not keep it).
    """
    codes = codec.encode(wav[None]) if codes is None else codes
    rec = codec.decode(codes)[0]
    n = min(len(rec), len(wav))
    if n < 512:
        return 0.0  # too short to judge (the server refuses audio shorter than a codec frame anyway)
    win = torch.hann_window(512)

    def logspec(a: torch.Tensor) -> torch.Tensor:
        return (torch.stft(a[:n].float(), 512, 160, window=win, return_complex=True).abs() + 1e-4).log()

    return float((logspec(rec) - logspec(wav)).abs().mean())


def read_familiarity(model_dir: str | Path) -> dict | None:
    """A model directory's ``familiarity.json`` (validated), or None when it has none."""
    f = Path(model_dir) / FAMILIARITY_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{f}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{f} must be a JSON object")
    for kind, entry in data.items():
        if kind not in MEASURES:
            raise ValueError(f"{f}: unknown modality {kind!r} (known: {', '.join(MEASURES)})")
        if not isinstance(entry, dict) or entry.get("measure") != MEASURES[kind] \
                or not isinstance(entry.get("threshold"), (int, float)) or isinstance(entry["threshold"], bool):
            raise ValueError(f"{f}: {kind} needs {{'measure': {MEASURES[kind]!r}, 'threshold': number}}")
    return data


def unfamiliar_note(kind: str, score: float, entry: dict, where: str) -> dict:
    """The note a flagged part carries (and the warning the server and CLI show)."""
    msg = (f"{where}: this {kind} is unlike the model's training data (codec {entry['measure']} {score:.4g} > "
           f"{entry['threshold']:.4g}, the {100 * float(entry.get('quantile', 1)):g}th percentile of its training "
           f"{kind}s); the answer is likely wrong")
    return {"modality": kind, "score": score, "threshold": float(entry["threshold"]), "message": msg}


def calibrate(codecs: dict[str, Any], images: Iterable[torch.Tensor] = (), audio: Iterable[torch.Tensor] = (),
              quantile: float = 0.995, source: str = "", progress: bool = True) -> dict:
    """Training media -> the ``familiarity.json`` content: per modality the error's ``quantile`` as
    the threshold (so about 1 - quantile of training-like input is flagged), with its median and n."""
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    out: dict[str, dict] = {}
    for kind, items in (("image", images), ("audio", audio)):
        items = list(items)
        if not items:
            continue
        if kind not in codecs:
            raise ValueError(f"the model has no {kind} codec to calibrate")
        codec = codecs[kind]
        it = items
        if progress:
            from tqdm import tqdm

            it = tqdm(items, desc=f"familiarity {kind}", unit=kind)
        scores = torch.tensor([float(image_error(codec, x[None])[0]) if kind == "image" else audio_error(codec, x)
                               for x in it])
        if len(scores) < 20:
            raise ValueError(f"{len(scores)} {kind} items are too few to set a threshold; give at least 20")
        out[kind] = {"measure": MEASURES[kind], "threshold": float(torch.quantile(scores, quantile)),
                     "quantile": quantile, "median": float(scores.median()), "n": len(scores), "source": source}
    if not out:
        raise ValueError("no images or audio given to calibrate on")
    return out
