"""Speech for the shapes world: eSpeak NG (from the `espeakng-loader` wheel) through ctypes.

`synthesize(text, voice, rng=None)` returns float32 mono audio at 16 kHz. The library is loaded
lazily once per process (the process id is checked, so forked or spawned workers each initialise
their own copy); nothing else is cached. Each utterance is spoken by a fresh eSpeak, forked from a
small server process (`espeak_server.py`), so the same text and voice always give the same samples.

User voices vary English variant, voice variant, pitch, range and rate (`sample_user_voice`);
the assistant speaks with named presets (`ASSISTANT_VOICES`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from .espeak_server import Client, Espeak, checked

SAMPLE_RATE = 16000

# espeak_PARAMETER values from speak_lib.h
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7


@dataclass(frozen=True)
class VoiceSpec:
    """An eSpeak voice: language (e.g. `en-us`), variant (e.g. `m3`, `f2`, or "" for the default),
    pitch 0..99, pitch range 0..99, rate in words per minute (80..450)."""

    name: str
    language: str = "en-us"
    variant: str = ""
    pitch: int = 50
    range: int = 50
    rate: int = 170

    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}" if self.variant else self.language

    def to_dict(self) -> dict:
        return asdict(self)


# English variants shipped by eSpeak NG and voice variants for the user side.
USER_LANGUAGES: tuple[str, ...] = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan")
USER_VARIANTS: tuple[str, ...] = ("", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5")
USER_PITCH = (30, 70)
USER_RANGE = (30, 80)
USER_RATE = (140, 195)

ASSISTANT_VOICES: dict[str, VoiceSpec] = {
    "nova": VoiceSpec("nova", language="en-us", variant="f3", pitch=60, range=55, rate=165),
    "atlas": VoiceSpec("atlas", language="en-gb-x-rp", variant="m3", pitch=42, range=50, rate=160),
}
DEFAULT_ASSISTANT_VOICE = "nova"


def sample_user_voice(rng: np.random.Generator) -> VoiceSpec:
    """A random user voice (English variant, voice variant, pitch, range, rate)."""
    lang = USER_LANGUAGES[int(rng.integers(len(USER_LANGUAGES)))]
    var = USER_VARIANTS[int(rng.integers(len(USER_VARIANTS)))]
    return VoiceSpec(
        name=f"user:{lang}+{var or 'default'}",
        language=lang,
        variant=var,
        pitch=int(rng.integers(USER_PITCH[0], USER_PITCH[1] + 1)),
        range=int(rng.integers(USER_RANGE[0], USER_RANGE[1] + 1)),
        rate=int(rng.integers(USER_RATE[0], USER_RATE[1] + 1)),
    )


def assistant_voice(name: str) -> VoiceSpec:
    if name not in ASSISTANT_VOICES:
        raise ValueError(f"unknown assistant voice {name!r}; expected one of {sorted(ASSISTANT_VOICES)}")
    return ASSISTANT_VOICES[name]


class _Engine:
    """The per-process speech engine: eSpeak NG loaded here, and a small server process
    (`espeak_server.py`) that forks a fresh speaker per utterance far more cheaply than this
    process could fork itself."""

    def __init__(self) -> None:
        import espeakng_loader

        self.library = espeakng_loader.get_library_path()
        self.data = os.path.dirname(espeakng_loader.get_data_path())  # eSpeak wants the parent of espeak-ng-data
        self.local = Espeak(self.library, self.data)
        self.rate = self.local.rate
        self.client: Client | None = None
        if hasattr(os, "fork"):
            try:
                self.client = Client(self.library, self.data)
            except (OSError, EOFError):  # no server: fork this process per utterance instead
                self.client = None

    @staticmethod
    def _params(voice: VoiceSpec) -> list[tuple[int, int]]:
        return [(_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.range), (_VOLUME, 100)]

    def synth(self, text: str, voice: VoiceSpec) -> np.ndarray:
        """Synthesize in this process: (samples,) float32 at `self.rate`.

        eSpeak keeps hidden state between utterances (pitch smoothing, glottal phase), so
        repeated calls differ slightly; `synth_isolated` avoids that.
        """
        pcm = self.local.speak(voice.espeak_name(), self._params(voice), text)
        return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0

    def synth_isolated(self, text: str, voice: VoiceSpec) -> np.ndarray:
        """Deterministic synthesis: a speaker whose eSpeak has never spoken does the work (a child
        of the server, else a child of this process, else, without `os.fork`, this process)."""
        if self.client is not None:
            pcm = self.client.speak(voice.espeak_name(), self._params(voice), text)
        elif hasattr(os, "fork"):
            pcm = checked(*self.local.speak_forked(voice.espeak_name(), self._params(voice), text))
        else:
            return self.synth(text, voice)
        return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


_engine: _Engine | None = None
_engine_pid: int = -1


def _get_engine() -> _Engine:
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        _engine, _engine_pid = _Engine(), os.getpid()
    return _engine


def synthesize(text: str, voice: VoiceSpec, rng: np.random.Generator | None = None) -> np.ndarray:
    """Speak `text` in `voice` -> float32 mono waveform at 16 kHz, shape (samples,).

    With `rng`, the clip also varies in gain (0.5..0.95 peak) and leading/trailing silence
    (0..150 ms); without it the result is deterministic for (text, voice).
    """
    if not text.strip():
        raise ValueError("cannot synthesize empty text")
    eng = _get_engine()
    wav = eng.synth_isolated(text, voice)
    if eng.rate != SAMPLE_RATE:
        import soxr

        wav = soxr.resample(wav, eng.rate, SAMPLE_RATE).astype(np.float32)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if rng is not None:
        if peak > 0:
            wav = wav * (float(rng.uniform(0.5, 0.95)) / peak)
        lead, trail = (int(rng.integers(0, int(0.15 * SAMPLE_RATE))) for _ in range(2))
        wav = np.concatenate([np.zeros(lead, np.float32), wav, np.zeros(trail, np.float32)])
    elif peak > 0.99:
        wav = wav * (0.99 / peak)
    return wav.astype(np.float32)


def write_wav(path: str, wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float32 [-1, 1] mono as 16-bit PCM WAV (stdlib only, deterministic bytes)."""
    import wave

    pcm = np.clip(np.rint(wav * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM mono WAV -> (float32 waveform, sample rate)."""
    import wave

    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono PCM WAV")
        sr = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, sr
