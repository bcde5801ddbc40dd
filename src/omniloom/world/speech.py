"""Speech for the shapes world: eSpeak NG (from the `espeakng-loader` wheel) through ctypes.

`synthesize(text, voice, rng=None)` returns float32 mono audio at 16 kHz. The library is loaded
lazily once per process (the process id is checked, so forked or spawned workers each initialise
their own copy); nothing else is cached.

User voices vary English variant, voice variant, pitch, range and rate (`sample_user_voice`);
the assistant speaks with named presets (`ASSISTANT_VOICES`).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_RATE = 16000

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / espeak_POSITION_TYPE values from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


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
    """The per-process eSpeak state (library handle, native rate, callback buffer)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        data = os.path.dirname(espeakng_loader.get_data_path())  # eSpeak wants the parent of espeak-ng-data
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), 0)
        if self.rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise with data at {data}")
        self.chunks: list[np.ndarray] = []
        self._cb = _CALLBACK(self._collect)  # keep a reference: ctypes callbacks must outlive their use
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lock = threading.Lock()
        self.has_seed = hasattr(self.lib, "espeak_ng_SetRandSeed")

    def _collect(self, wav, n, events) -> int:  # noqa: ANN001 - ctypes callback
        if n > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, text: str, voice: VoiceSpec) -> np.ndarray:
        """Synthesize in this process: (samples,) float32 at `self.rate`.

        eSpeak keeps hidden state between utterances (pitch smoothing, glottal phase), so
        repeated calls differ slightly; `synth_isolated` avoids that.
        """
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.espeak_name().encode()) != 0:
                raise ValueError(f"eSpeak has no voice {voice.espeak_name()!r}")
            for param, value in ((_RATE, voice.rate), (_PITCH, voice.pitch), (_RANGE, voice.range), (_VOLUME, 100)):
                self.lib.espeak_SetParameter(param, int(value), 0)
            self.chunks = []
            if self.has_seed:
                self.lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if err != 0:
                raise RuntimeError(f"eSpeak synthesis failed (error {err}) for {text!r}")
            pcm = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
            self.chunks = []
        return pcm.astype(np.float32) / 32768.0

    def synth_isolated(self, text: str, voice: VoiceSpec) -> np.ndarray:
        """Deterministic synthesis: a forked child (whose eSpeak has never spoken) does the work.

        Falls back to in-process synthesis where `os.fork` does not exist.
        """
        if not hasattr(os, "fork"):
            return self.synth(text, voice)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: speak once, send status + samples, exit without cleanup
            code = 0
            try:
                os.close(r)
                try:
                    payload = b"\x00" + self.synth(text, voice).tobytes()
                except Exception as e:  # noqa: BLE001 - sent to the parent
                    payload = b"\x01" + f"{type(e).__name__}: {e}".encode()
                with os.fdopen(w, "wb") as f:
                    f.write(payload)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"eSpeak child process died synthesizing {text!r}")
        if data[:1] != b"\x00":
            msg = data[1:].decode(errors="replace")
            raise (ValueError if msg.startswith("ValueError") else RuntimeError)(msg)
        return np.frombuffer(data[1:], dtype=np.float32).copy()


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
