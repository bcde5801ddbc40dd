"""Is this input like what the model was trained on? The codec's own reconstruction error says.

A codec trained on one world (the bundled shapes world) reconstructs media of that world almost
exactly and everything else badly: on the world codecs a held-out world image comes back with a
mean squared error around 0.0002, a crop of a real photo with 0.03 or more; world speech comes back
with a log-spectrum error around 0.8, real recorded speech above 1.2. So the model directory records
the error's distribution over its training media (``familiarity.json``: a threshold at a high
quantile), and every image or audio part the processor encodes is scored against it. A part above
the threshold is *unfamiliar*: the answer is still given, with a warning that the model was not
trained on input like it (docs/serve.md; measured in docs/benchmarks.md).

A second audio check needs no codec: the level of the clip's pauses (``pause_floor_db``: its
quietest 10 ms, when that is 25 dB or more below its loud frames). Speech made by a synthesizer, as
the world's is, falls to digital silence between and around its words (-180 dBFS); every
microphone recording has a noise floor (-55 to -68 dBFS for the read speech measured; 16-bit dither
alone is about -98). The codec check misses clean read speech (the world
audio codec reconstructs it almost as well as its own voices), this one catches it. Its threshold is
the training quantile, but never below ``FLOOR_MIN_DB`` (-80 dBFS), so lossy coding or dither of
training-like audio is not flagged.

``familiarity.json`` (a modality's value is one check or a list of checks; a part is flagged by the
first check it fails)::

    {"image": {"measure": "reconstruction_mse", "threshold": 0.0015, "quantile": 0.995, "n": 600,
               "median": 0.0002, "source": "..."},
     "audio": [{"measure": "reconstruction_logspec_l1", "threshold": 1.09, ...},
               {"measure": "pause_floor_db", "threshold": -80.0, "quantile": 0.995, "calibrated": -180.0,
                "min_threshold": -80.0, ...}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch

__all__ = ["FAMILIARITY_FILE", "MEASURES", "FLOOR_MIN_DB", "image_error", "audio_error", "pause_floor_db",
           "read_familiarity", "checks", "score_part", "calibrate", "unfamiliar_note"]

FAMILIARITY_FILE = "familiarity.json"
MEASURES = {"image": ("reconstruction_mse",), "audio": ("reconstruction_logspec_l1", "pause_floor_db")}
FLOOR_MIN_DB = -80.0  # quieter than any microphone's noise floor, louder than dither and lossy-coded silence
SILENCE_DB = -180.0  # what an all-zero frame measures
PAUSE_GAP_DB = 25.0  # a frame this far below the loud ones is a pause


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


def pause_floor_db(wav: torch.Tensor, sample_rate: int, gap_db: float = PAUSE_GAP_DB) -> float:
    """(samples,) float audio -> the RMS level in dBFS of its quietest 10 ms frame, when that frame is a
    pause (at least ``gap_db`` below the clip's loud frames, their 95th percentile); -180 when the
    clip has no pause (a trimmed word gives no evidence) or its pause is digital silence."""
    n = max(1, sample_rate // 100)
    x = wav.detach().double().flatten()
    if len(x) < n:
        return SILENCE_DB
    level = 20.0 * torch.log10(x[: len(x) // n * n].reshape(-1, n).pow(2).mean(1).sqrt() + 1e-9)
    low, loud = float(level.min()), float(torch.quantile(level, 0.95))
    return max(SILENCE_DB, low) if loud - low >= gap_db else SILENCE_DB


def score_part(measure: str, codec: Any, x: torch.Tensor, codes: torch.Tensor | None = None) -> float:
    """One check's score for one part: ``x`` a (3, R, R) image or a (samples,) waveform at the codec's rate."""
    if measure == "reconstruction_mse":
        return float(image_error(codec, x[None], codes)[0])
    if measure == "reconstruction_logspec_l1":
        return audio_error(codec, x, codes)
    if measure == "pause_floor_db":
        return pause_floor_db(x, codec.sample_rate)
    raise ValueError(f"unknown familiarity measure {measure!r}")


def checks(familiarity: dict | None, kind: str) -> list[dict]:
    """The checks ``familiarity.json`` holds for one modality (a single object or a list), in order."""
    entry = (familiarity or {}).get(kind)
    if entry is None:
        return []
    return list(entry) if isinstance(entry, list) else [entry]


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
    for kind, value in data.items():
        if kind not in MEASURES:
            raise ValueError(f"{f}: unknown modality {kind!r} (known: {', '.join(MEASURES)})")
        entries = value if isinstance(value, list) else [value]
        if not entries:
            raise ValueError(f"{f}: {kind} has an empty list of checks")
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("measure") not in MEASURES[kind] \
                    or not isinstance(entry.get("threshold"), (int, float)) or isinstance(entry["threshold"], bool):
                raise ValueError(f"{f}: each {kind} check needs {{'measure': one of {', '.join(MEASURES[kind])}, "
                                 f"'threshold': number}}, got {entry!r}")
    return data


def unfamiliar_note(kind: str, score: float, entry: dict, where: str) -> dict:
    """The note a flagged part carries (and the warning the server and CLI show)."""
    if entry["measure"] == "pause_floor_db":
        why = (f"its pauses sit at {score:.0f} dBFS, a recording's noise floor, above {entry['threshold']:.0f} dBFS; "
               f"the model's training audio falls to {float(entry.get('calibrated', SILENCE_DB)):.0f} dBFS between words")
    else:
        why = (f"codec {entry['measure']} {score:.4g} > {entry['threshold']:.4g}, the "
               f"{100 * float(entry.get('quantile', 1)):g}th percentile of its training {kind}s")
    msg = f"{where}: this {kind} is unlike the model's training data ({why}); the answer is likely wrong"
    return {"modality": kind, "score": score, "threshold": float(entry["threshold"]), "message": msg}


def calibrate(codecs: dict[str, Any], images: Iterable[torch.Tensor] = (), audio: Iterable[torch.Tensor] = (),
              quantile: float = 0.995, source: str = "", progress: bool = True) -> dict:
    """Training input media -> the ``familiarity.json`` content: per modality and check the score's
    ``quantile`` as the threshold (so about 1 - quantile of training-like input is flagged), with its
    median and n. Give the media the model reads (user turns), not what it writes: the world's spoken
    answers are trimmed to the word and have no pauses."""
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {quantile}")
    out: dict[str, dict] = {}
    for kind, items in (("image", images), ("audio", audio)):
        items = list(items)
        if not items:
            continue
        if kind not in codecs:
            raise ValueError(f"the model has no {kind} codec to calibrate")
        if len(items) < 20:
            raise ValueError(f"{len(items)} {kind} items are too few to set a threshold; give at least 20")
        codec = codecs[kind]
        it = items
        if progress:
            from tqdm import tqdm

            it = tqdm(items, desc=f"familiarity {kind}", unit=kind)
        scores = torch.tensor([[score_part(m, codec, x) for m in MEASURES[kind]] for x in it], dtype=torch.float64)
        entries = []
        for j, measure in enumerate(MEASURES[kind]):
            q = float(torch.quantile(scores[:, j], quantile))
            entry = {"measure": measure, "threshold": q, "quantile": quantile, "median": float(scores[:, j].median()),
                     "n": len(scores), "source": source}
            if measure == "pause_floor_db":
                entry.update(threshold=max(q, FLOOR_MIN_DB), calibrated=q, min_threshold=FLOOR_MIN_DB)
            entries.append(entry)
        out[kind] = entries[0] if len(entries) == 1 else entries
    if not out:
        raise ValueError("no images or audio given to calibrate on")
    return out
