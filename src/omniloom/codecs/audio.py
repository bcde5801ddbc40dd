"""Streaming speech codec: causal conv encoder -> FSQ codes (25 frames/s) -> causal conv decoder
with an iSTFT head (Vocos-style: magnitude + phase per STFT frame, windowed overlap-add).

Timing (defaults): 16 kHz, one code frame per 640 samples (40 ms, 25 frames/s), one FSQ codebook
of 8*8*8*6*5 = 15360 entries (13.9 bits -> 348 bits/s).

- Encoder: code frame j depends only on samples [0, 640*(j+1)): no look-ahead past its own frame.
- Decoder: output sample i depends only on code frames <= (i + delay) // 640, delay = 240 samples
  (15 ms). Each code frame yields 4 STFT frames (hop 160, window 640) that are overlap-added with
  a constant normaliser, so decoding chunk by chunk (`stream_decoder()`) equals decoding the whole.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.fileio import atomic_path, atomic_write_json, read_json

AUDIO_EXTS = (".wav", ".flac")


@dataclass
class AudioCodecConfig:
    """Hyper-parameters of `AudioCodec` (stored in the shipped `config.json`)."""

    sample_rate: int = 16000
    hop: int = 640  # samples per code frame (25 frames/s at 16 kHz)
    stft_hop: int = 160  # samples per STFT frame (encoder front end and decoder head)
    enc_win: int = 400  # encoder analysis window (causal: covers the 400 samples up to its hop's end)
    n_mels: int = 80
    n_fft: int = 640  # decoder synthesis window, a multiple of stft_hop
    delay: int = 240  # decoder look-ahead in samples (< n_fft - stft_hop + 1)
    levels: list[int] = field(default_factory=lambda: [8, 8, 8, 6, 5])
    enc_dim: int = 64  # encoder width at the STFT frame rate
    enc_blocks: int = 2
    frame_dim: int = 192  # width at the code frame rate (encoder and decoder)
    frame_blocks: int = 4
    dec_dim: int = 128  # decoder width at the STFT frame rate
    dec_blocks: int = 3
    kernel: int = 7

    def __post_init__(self) -> None:
        if self.hop % self.stft_hop or self.n_fft % self.stft_hop:
            raise ValueError(f"hop {self.hop} and n_fft {self.n_fft} must be multiples of stft_hop {self.stft_hop}")
        if not 0 <= self.delay <= self.n_fft - self.stft_hop:
            raise ValueError(f"delay {self.delay} must lie in [0, n_fft - stft_hop]")

    @classmethod
    def from_dict(cls, d: dict) -> "AudioCodecConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"type"}
        if unknown:
            raise ValueError(f"unknown audio codec config keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- building blocks


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only. With `cache` (a dict) it keeps its left context between calls,
    so feeding a sequence in chunks gives the same output as feeding it whole."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1) -> None:
        super().__init__(cin, cout, k, groups=groups)
        self.ctx = k - 1

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:  # (B, C, T)
        if self.ctx:
            prev = None if cache is None else cache.get(self)
            if prev is None:
                prev = x.new_zeros(x.shape[0], x.shape[1], self.ctx)
            x = torch.cat([prev, x], dim=-1)  # (B, C, ctx + T)
            if cache is not None:
                cache[self] = x[..., -self.ctx :]
        return super().forward(x)  # (B, Cout, T)

    def forward_last(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:  # (B, T, C)
        """Depthwise only, channels last, for inference: a windowed sum is far cheaper than a conv
        call on short streaming chunks and needs no transposes. Same maths as `forward`."""
        prev = None if cache is None else cache.get(self)
        if prev is None:
            prev = x.new_zeros(x.shape[0], self.ctx, x.shape[2])
        x = torch.cat([prev, x], dim=1)  # (B, ctx + T, C)
        if cache is not None:
            cache[self] = x[:, x.shape[1] - self.ctx :]
        return (x.unfold(1, self.ctx + 1, 1) * self.weight[:, 0]).sum(-1) + self.bias  # (B, T, C)


class Block(nn.Module):
    """ConvNeXt block with a causal depthwise conv (as in Vocos, but causal)."""

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.dw = CausalConv1d(dim, dim, k, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 3 * dim)
        self.down = nn.Linear(3 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:  # (B, T, D)
        if torch.is_grad_enabled():
            h = self.dw(x.transpose(1, 2), cache).transpose(1, 2)  # (B, T, D)
        else:
            h = self.dw.forward_last(x, cache)  # (B, T, D)
        h = self.down(F.gelu(self.up(self.norm(h))))
        return x + self.gamma * h


def mel_filterbank(n_fft: int, n_mels: int, sr: int, fmin: float = 0.0, fmax: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_fft // 2 + 1, n_mels)."""
    fmax = fmax or sr / 2
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    pts = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    lo, ce, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    fb = np.maximum(0.0, np.minimum((freqs - lo) / (ce - lo), (hi - freqs) / (hi - ce)))  # (n_mels, F)
    return torch.tensor(fb.T, dtype=torch.float32)


# ----------------------------------------------------------------------------- encoder / decoder


class Encoder(nn.Module):
    """Waveform -> continuous latents at the code frame rate; causal throughout."""

    def __init__(self, c: AudioCodecConfig) -> None:
        super().__init__()
        self.c = c
        self.register_buffer("window", torch.hann_window(c.enc_win), persistent=False)
        self.register_buffer("mel", mel_filterbank(c.enc_win, c.n_mels, c.sample_rate), persistent=False)
        self.inp = nn.Linear(c.n_mels, c.enc_dim)
        self.blocks = nn.ModuleList(Block(c.enc_dim, c.kernel) for _ in range(c.enc_blocks))
        r = c.hop // c.stft_hop
        self.down = nn.Conv1d(c.enc_dim, c.frame_dim, r, stride=r)  # non-overlapping: causal
        self.fblocks = nn.ModuleList(Block(c.frame_dim, c.kernel) for _ in range(c.frame_blocks))
        self.norm = nn.LayerNorm(c.frame_dim)
        self.out = nn.Linear(c.frame_dim, len(c.levels))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:  # (B, N), N a multiple of hop
        c = self.c
        x = F.pad(wav, (c.enc_win - c.stft_hop, 0))  # frame t sees samples [160t - 240, 160t + 160)
        st = torch.stft(x, c.enc_win, c.stft_hop, window=self.window, center=False, return_complex=True)
        power = torch.view_as_real(st).pow(2).sum(-1).transpose(1, 2)  # (B, T, win/2+1)
        h = self.inp(torch.log(power @ self.mel + 1e-5))  # (B, T, enc_dim)
        for b in self.blocks:
            h = b(h)
        h = self.down(h.transpose(1, 2)).transpose(1, 2)  # (B, F, frame_dim)
        for b in self.fblocks:
            h = b(h)
        return self.out(self.norm(h))  # (B, F, len(levels))


class Decoder(nn.Module):
    """Quantized latents -> windowed STFT frames (magnitude and phase), causal; `cache` streams it."""

    def __init__(self, c: AudioCodecConfig) -> None:
        super().__init__()
        self.c = c
        self.inp = nn.Linear(len(c.levels), c.frame_dim)
        self.fblocks = nn.ModuleList(Block(c.frame_dim, c.kernel) for _ in range(c.frame_blocks))
        r = c.hop // c.stft_hop
        self.up = nn.ConvTranspose1d(c.frame_dim, c.dec_dim, r, stride=r)  # no overlap: stateless
        self.blocks = nn.ModuleList(Block(c.dec_dim, c.kernel) for _ in range(c.dec_blocks))
        self.norm = nn.LayerNorm(c.dec_dim)
        self.head = nn.Linear(c.dec_dim, 2 * (c.n_fft // 2 + 1))
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        # sum of window^2 over all overlapping hops is constant for a periodic Hann at hop n_fft/4
        self.ola_norm = float((torch.hann_window(c.n_fft) ** 2).sum() / c.stft_hop)

    def forward(self, z: torch.Tensor, cache: dict | None = None, embedded: bool = False) -> torch.Tensor:
        h = z if embedded else self.inp(z)  # (B, F, L) -> (B, F, frame_dim)
        for b in self.fblocks:
            h = b(h, cache)
        if torch.is_grad_enabled():
            h = self.up(h.transpose(1, 2)).transpose(1, 2)  # (B, T = F*r, dec_dim)
        else:  # the same non-overlapping transposed conv as one matmul (cheaper on short chunks)
            w = self.up.weight.permute(0, 2, 1).reshape(h.shape[-1], -1)  # (frame_dim, r * dec_dim)
            h = (h @ w).view(h.shape[0], -1, self.c.dec_dim) + self.up.bias  # (B, F*r, dec_dim)
        for b in self.blocks:
            h = b(h, cache)
        mag, ph = self.head(self.norm(h)).float().chunk(2, dim=-1)  # (B, T, n_fft/2+1) each
        spec = torch.polar(torch.exp(mag.clamp(max=6.0)), ph)
        frames = torch.fft.irfft(spec, n=self.c.n_fft) * self.window  # (B, T, n_fft)
        return frames / self.ola_norm


# ----------------------------------------------------------------------------- the codec


class AudioStreamDecoder:
    """Decodes codes chunk by chunk; `push` returns the samples completed so far, `flush` the rest.
    Concatenating every output equals `AudioCodec.decode` of all the codes."""

    def __init__(self, codec: "AudioCodec") -> None:
        self.codec = codec
        self.cache: dict = {}  # causal conv left contexts
        self.tail: torch.Tensor | None = None  # (B, n_fft - stft_hop) overlap-add carried over
        self.ola_pos = 0  # overlap-add samples completed so far (output sample i = ola[i + delay])
        self.frames = 0
        self.emitted = 0

    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:  # (B, f, 1) -> (B, samples)
        c = self.codec.cfg
        codes = self.codec._check_codes(codes)
        B, f = codes.shape[0], codes.shape[1]
        if self.tail is None:
            self.tail = torch.zeros(B, c.n_fft - c.stft_hop)
        if f == 0:
            return torch.zeros(B, 0)
        h = self.codec._code_table()[codes[..., 0]]  # (B, f, frame_dim) = decoder.inp(FSQ value)
        fr = self.codec.decoder(h, self.cache, embedded=True)  # (B, T, n_fft)
        T, k = fr.shape[1], c.n_fft // c.stft_hop
        blocks = fr.new_zeros(B, T + k - 1, c.stft_hop)  # overlap-add in hop-sized blocks
        blocks[:, : k - 1] += self.tail.view(B, k - 1, c.stft_hop)
        for i in range(k):
            blocks[:, i : i + T] += fr[:, :, i * c.stft_hop : (i + 1) * c.stft_hop]
        done = blocks[:, :T].reshape(B, -1)  # (B, T * stft_hop) now complete
        self.tail = blocks[:, T:].reshape(B, -1)
        out = done[:, max(0, c.delay - self.ola_pos) :]
        self.ola_pos += done.shape[1]
        self.frames += f
        self.emitted += out.shape[1]
        return out

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:  # (B, remaining samples up to frames * hop)
        c = self.codec.cfg
        if self.tail is None:
            return torch.zeros(0, 0)
        start = max(0, c.delay - self.ola_pos)
        out = self.tail[:, start : start + self.frames * c.hop - self.emitted]
        self.emitted += out.shape[1]
        self.ola_pos += self.tail.shape[1]
        self.tail = torch.zeros_like(self.tail)
        return out


class AudioCodec(nn.Module):
    """16 kHz mono speech <-> (B, frames, 1) FSQ codes at 25 frames/s. See the module docstring."""

    modality = "audio"
    tokens_per_item = None

    def __init__(self, cfg: AudioCodecConfig | dict | None = None) -> None:
        super().__init__()
        from vector_quantize_pytorch import FSQ

        if isinstance(cfg, dict):
            cfg = AudioCodecConfig.from_dict(cfg)
        self.cfg = cfg = cfg or AudioCodecConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.fsq = FSQ(list(cfg.levels))
        self.codebook_size = int(math.prod(cfg.levels))
        self.num_codebooks = 1
        self.sample_rate = cfg.sample_rate
        self.frame_rate = cfg.sample_rate / cfg.hop
        self.bits_per_second = self.frame_rate * math.log2(self.codebook_size)
        self.lookahead_samples = cfg.delay  # decoder; the encoder has none past its own frame

    # -- training-time forward (straight-through FSQ) --
    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, N)
        wav = self._pad(wav)
        q, idx = self.fsq(self.encoder(wav))  # (B, F, L), (B, F)
        fr = self.decoder(q)  # (B, T, n_fft)
        return self._ola(fr)[:, : wav.shape[1]], idx

    def _ola(self, fr: torch.Tensor) -> torch.Tensor:  # (B, T, n_fft) -> (B, samples from delay)
        c = self.cfg
        B, T = fr.shape[:2]
        k = c.n_fft // c.stft_hop
        L = (T + k - 1) * c.stft_hop
        ola = F.fold(fr.transpose(1, 2), (1, L), (1, c.n_fft), stride=(1, c.stft_hop))  # (B, 1, 1, L)
        return ola.reshape(B, L)[:, c.delay :]

    def _code_table(self) -> torch.Tensor:
        """(codebook_size, frame_dim): `decoder.inp` of every FSQ value, rebuilt when weights change;
        one gather per streaming chunk instead of the FSQ arithmetic and a linear layer."""
        w, b = self.decoder.inp.weight, self.decoder.inp.bias
        key = (w.data_ptr(), w._version, b._version)
        if getattr(self, "_table_key", None) != key:
            with torch.no_grad():
                idx = torch.arange(self.codebook_size)
                self._table = self.decoder.inp(self.fsq.indices_to_codes(idx[None])[0]).clone()
            self._table_key = key
        return self._table

    def _pad(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"audio must be (B, samples), got shape {tuple(wav.shape)}")
        n = wav.shape[1]
        return F.pad(wav.float(), (0, -n % self.cfg.hop))  # (B, frames * hop)

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.dim() == 2:
            codes = codes[..., None]
        if codes.dim() != 3 or codes.shape[-1] != 1:
            raise ValueError(f"audio codes must be (B, frames, 1), got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"audio codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long()

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, ceil(N / hop), 1)
        wav = self._pad(torch.as_tensor(wav))
        _, idx = self.fsq(self.encoder(wav))
        return idx.long()[..., None]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, F, 1) -> (B, F * hop)
        s = self.stream_decoder()
        return torch.cat([s.push(codes), s.flush()], dim=1)

    def stream_decoder(self) -> AudioStreamDecoder:
        return AudioStreamDecoder(self)

    # -- persistence --
    def save(self, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> None:
        """Write `model.safetensors` (in `dtype`; float16 halves a shipped codec) + `config.json`
        into the folder `path`, each file atomically."""
        from safetensors.torch import save_file

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        with atomic_path(p / "model.safetensors") as tmp:
            save_file(sd, str(tmp))
        atomic_write_json(p / "config.json", {"type": "audio", **asdict(self.cfg)})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu") -> "AudioCodec":
        from safetensors.torch import load_file

        p = Path(path)
        for f in ("config.json", "model.safetensors"):
            if not (p / f).is_file():
                raise ValueError(f"audio codec folder {p} has no {f}")
        cfg = read_json(p / "config.json", "audio codec config")
        if cfg.get("type", "audio") != "audio":
            raise ValueError(f"{p / 'config.json'} is a {cfg.get('type')!r} codec, not audio")
        m = cls(AudioCodecConfig.from_dict(cfg))
        sd = {k: v.float() for k, v in load_file(str(p / "model.safetensors")).items()}
        m.load_state_dict(sd)
        return m.to(device).eval()


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Read an audio file (WAV/FLAC/MP3/OGG by libsndfile; m4a, WebM and the rest through FFmpeg) as
    mono float32 at `sample_rate` (resampled with soxr)."""
    from ..utils.media import load_audio as decode

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"audio file not found: {p}")
    try:
        return decode(p, sample_rate).numpy()
    except ValueError as e:  # name the whole path (the media helper shortens it)
        raise ValueError(f"cannot read audio file {p}: {e}") from e
