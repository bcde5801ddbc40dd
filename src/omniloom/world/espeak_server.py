"""eSpeak NG through ctypes, and a small process that speaks for a big one.

eSpeak keeps hidden state between utterances (pitch smoothing, glottal phase), so for
deterministic audio every utterance is synthesized in a child forked from a process whose eSpeak
has never spoken. Forking the data generator itself, with torch and the codecs mapped (hundreds of
MB), costs tens of milliseconds of kernel time per utterance; forking a process that has loaded
nothing but this file and the library costs about one. `speech.py` therefore starts this file as a
script (`python espeak_server.py LIBRARY DATA_DIR`), which imports only the standard library, and
sends it one request per utterance.

Protocol on stdin/stdout. Request: 4-byte little-endian length, then UTF-8 JSON
`{"voice": "en-us+f3", "params": [[id, value], ...], "text": "..."}`. Reply: 1 status byte (0: the
payload is int16 PCM at the library's rate; 1: a ValueError message; 2: another error's message),
4-byte little-endian length, payload. The server exits when stdin closes.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
import threading

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
OK, VALUE_ERROR, ERROR = 0, 1, 2


class Espeak:
    """One process's eSpeak NG: library handle, native sample rate, callback buffer."""

    def __init__(self, library: str, data_dir: str) -> None:
        self.lib = ctypes.CDLL(library)
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir.encode(), 0)
        if self.rate <= 0:
            raise RuntimeError(f"eSpeak NG failed to initialise with data at {data_dir}")
        self.chunks: list[bytes] = []
        self._cb = _CALLBACK(self._collect)  # keep a reference: ctypes callbacks must outlive their use
        self.lib.espeak_SetSynthCallback(self._cb)
        self.lock = threading.Lock()
        self.has_seed = hasattr(self.lib, "espeak_ng_SetRandSeed")

    def _collect(self, wav, n, events) -> int:  # noqa: ANN001 - ctypes callback
        if n > 0 and wav:
            self.chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    def speak(self, voice: str, params: list[tuple[int, int]], text: str) -> bytes:
        """Synthesize in this process -> native-endian int16 PCM at ``self.rate``."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak has no voice {voice!r}")
            for param, value in params:
                self.lib.espeak_SetParameter(int(param), int(value), 0)
            self.chunks = []
            if self.has_seed:
                self.lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            err = self.lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if err != 0:
                raise RuntimeError(f"eSpeak synthesis failed (error {err}) for {text!r}")
            pcm, self.chunks = b"".join(self.chunks), []
        return pcm

    def speak_forked(self, voice: str, params: list[tuple[int, int]], text: str) -> tuple[int, bytes]:
        """Synthesize in a forked child, so this process's eSpeak never speaks -> (status, payload)."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: speak once, send status + payload, exit without cleanup
            code = 0
            try:
                os.close(r)
                try:
                    payload = bytes([OK]) + self.speak(voice, params, text)
                except ValueError as e:
                    payload = bytes([VALUE_ERROR]) + str(e).encode()
                except Exception as e:  # noqa: BLE001 - sent to the parent
                    payload = bytes([ERROR]) + f"{type(e).__name__}: {e}".encode()
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
            return ERROR, f"eSpeak child process died synthesizing {text!r}".encode()
        return data[0], data[1:]


def checked(status: int, payload: bytes) -> bytes:
    """A reply's payload, or the error it carries raised as ValueError / RuntimeError."""
    if status == OK:
        return payload
    raise (ValueError if status == VALUE_ERROR else RuntimeError)(payload.decode(errors="replace"))


def _read_exact(f, n: int) -> bytes:  # noqa: ANN001 - a binary stream
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def serve(engine: Espeak, inp, out) -> None:  # noqa: ANN001 - binary streams
    """Answer requests until ``inp`` closes."""
    while True:
        try:
            (n,) = struct.unpack("<I", _read_exact(inp, 4))
            req = json.loads(_read_exact(inp, n).decode("utf-8"))
        except EOFError:
            return
        status, payload = engine.speak_forked(req["voice"], [tuple(p) for p in req["params"]], req["text"])
        out.write(bytes([status]) + struct.pack("<I", len(payload)) + payload)
        out.flush()


class Client:
    """The big process's end: starts the server and sends it requests (one at a time)."""

    def __init__(self, library: str, data_dir: str) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), library, data_dir],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self.lock = threading.Lock()
        (self.rate,) = struct.unpack("<I", _read_exact(self.proc.stdout, 4))  # the server's first word

    def speak(self, voice: str, params: list[tuple[int, int]], text: str) -> bytes:
        req = json.dumps({"voice": voice, "params": [list(p) for p in params], "text": text}).encode()
        with self.lock:
            try:
                self.proc.stdin.write(struct.pack("<I", len(req)) + req)
                self.proc.stdin.flush()
                status = _read_exact(self.proc.stdout, 1)[0]
                (n,) = struct.unpack("<I", _read_exact(self.proc.stdout, 4))
                payload = _read_exact(self.proc.stdout, n)
            except (EOFError, BrokenPipeError, OSError) as e:
                raise RuntimeError(f"the eSpeak server process stopped (exit code {self.proc.poll()}) "
                                   f"while synthesizing {text!r}") from e
        return checked(status, payload)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: espeak_server.py LIBRARY DATA_DIR (started by omniloom.world.speech)", file=sys.stderr)
        return 2
    engine = Espeak(argv[0], argv[1])
    out = sys.stdout.buffer
    out.write(struct.pack("<I", engine.rate))
    out.flush()
    serve(engine, sys.stdin.buffer, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
