"""``server_vad`` turn detection with silero-vad: speech start/stop times over a pcm16 24 kHz stream.

Audio is resampled to 16 kHz and scored in silero's 512-sample windows (32 ms). Speech starts at
the first window whose probability reaches ``threshold``; it stops once ``silence_duration_ms`` of
windows stay below ``threshold - 0.15`` (silero's own hysteresis). Times are in ms of audio pushed
since the detector was made (or last reset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .media import API_RATE, Resampler

__all__ = ["VadEvent", "ServerVAD"]

WINDOW = 512
VAD_RATE = 16000


@dataclass
class VadEvent:
    kind: str  # "start" or "stop"
    ms: int  # start: first speech window; stop: end of the last speech window


class ServerVAD:
    def __init__(self, threshold: float = 0.5, silence_duration_ms: int = 500, rate: int = API_RATE):
        from silero_vad import load_silero_vad

        if not 0.0 < threshold < 1.0:
            raise ValueError(f"turn_detection.threshold must be in (0, 1), got {threshold}")
        self.threshold = threshold
        self.silence_ms = int(silence_duration_ms)
        self.model = load_silero_vad()  # one per session: it keeps recurrent state
        self.rate = rate
        self.reset()

    def reset(self) -> None:
        self.model.reset_states()
        self._rs = Resampler(self.rate, VAD_RATE)
        self._pending = np.zeros(0, dtype=np.float32)
        self.samples = 0  # 16 kHz samples scored so far
        self.speaking = False
        self._silent = 0  # consecutive quiet samples while speaking
        self._last_speech_end = 0
        self.last_prob = 0.0

    def _ms(self, samples: int) -> int:
        return int(samples * 1000 // VAD_RATE)

    def push(self, pcm: np.ndarray) -> list[VadEvent]:
        """Feed float32 audio at ``rate``; returns the turn events it completes."""
        x = np.concatenate([self._pending, self._rs.push(pcm)])
        n = len(x) // WINDOW
        self._pending = x[n * WINDOW:]
        events: list[VadEvent] = []
        with torch.inference_mode():
            for i in range(n):
                w = torch.from_numpy(np.ascontiguousarray(x[i * WINDOW:(i + 1) * WINDOW]))
                p = float(self.model(w, VAD_RATE))
                self.last_prob = p
                start, self.samples = self.samples, self.samples + WINDOW
                if not self.speaking:
                    if p >= self.threshold:
                        self.speaking, self._silent = True, 0
                        self._last_speech_end = self.samples
                        events.append(VadEvent("start", self._ms(start)))
                    continue
                if p >= self.threshold - 0.15:
                    self._silent = 0
                    self._last_speech_end = self.samples
                else:
                    self._silent += WINDOW
                    if self._ms(self._silent) >= self.silence_ms:
                        self.speaking = False
                        events.append(VadEvent("stop", self._ms(self._last_speech_end)))
        return events
