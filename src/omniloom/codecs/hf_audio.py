"""Pretrained transformers speech codecs behind omniloom's audio codec interface (``hf:PATH`` specs).

Four model types are adapted (``config.json`` ``model_type`` -> class): ``mimi`` (MimiModel),
``encodec`` (EncodecModel), ``dac`` (DacModel) and ``xcodec`` (XcodecModel). Each adapter has the
attributes and methods of :class:`omniloom.codecs.audio.AudioCodec` that the processor, the engine
and the server use:

- ``encode((B, samples) float at sample_rate) -> (B, frames, K) long``, ``frames = ceil(samples / hop)``;
- ``decode((B, frames, K)) -> (B, frames * hop)``;
- ``stream_decoder()``: ``push((B, f, K)) -> (B, samples completed so far)``, ``flush() -> the rest``.

Codebooks: these are residual quantizers, so codebook ``k`` refines codebooks ``< k`` and keeping the
first ``K`` is a coarser codec of the same model. The spec option ``codebooks=N`` picks ``K``
(EnCodec and X-codec also take ``bandwidth=KBPS``, one of the model's ``target_bandwidths``); the
default is the model's own default in transformers: all of Mimi's and DAC's, EnCodec's smallest
bandwidth, X-codec's largest. ``hop`` (samples per code frame) comes from the config's strides and
``frame_rate = sample_rate / hop``. Input must already be at ``sample_rate``: the processor and
``codec eval`` resample with soxr (``omniloom.utils.media.load_audio``) to ``codec.sample_rate``.

Streaming decode: Mimi and EnCodec (24 kHz) decoders are causal (left-padded convolutions, transposed
convolutions trimmed on the right, a unidirectional LSTM, Mimi's causal transformer), so their
stream decoder carries each layer's state and chunked decoding equals whole decoding. DAC and X-codec
decoders are not causal; their stream decoder re-decodes a window of code frames around each new
chunk, ``context`` frames before and ``lookahead`` frames after (the decoder's receptive field,
computed from its convolutions), so it too equals whole decoding, ``lookahead`` frames late. Mimi
also encodes in a stream (``stream_encoder()``, through transformers' own streaming encoder).
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import register_hf_adapter

for _model_type, _cls in (("mimi", "MimiCodec"), ("encodec", "EncodecCodec"), ("dac", "DacCodec"),
                          ("xcodec", "XcodecCodec")):
    register_hf_adapter(_model_type, __name__, _cls)


def _int_option(name: str, value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where}: option {name}={value!r} is not an integer") from None


def _float_option(name: str, value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where}: option {name}={value!r} is not a number") from None


class HFAudioCodec:
    """Common part of the adapters: a transformers model, ``hop``, the codebooks kept, shape checks.

    Subclasses set ``MODEL_CLASS`` (the transformers class name), implement ``_encode``
    (``(B, 1, N)`` with ``N`` a multiple of hop -> ``(B, >= K, frames)``), ``_decode`` (``(B, K, F)`` ->
    ``(B, samples)``), ``_read_config`` and ``stream_decoder``.
    """

    modality = "audio"
    tokens_per_item = None
    MODEL_CLASS = ""
    OPTIONS: tuple[str, ...] = ("codebooks",)

    def __init__(self, model: Any, codebooks: int | None = None, where: str = "codec") -> None:
        self.model = model.eval()
        self.where = where
        self.sample_rate, self.hop, self.total_codebooks, self.default_codebooks = self._read_config(model.config)
        self.codebook_size = int(model.config.codebook_size)
        k = self.default_codebooks if codebooks is None else int(codebooks)
        if not 1 <= k <= self.total_codebooks:
            raise ValueError(f"{where}: codebooks={k} is out of range: this {model.config.model_type} model "
                             f"has {self.total_codebooks} codebooks (give 1..{self.total_codebooks})")
        self.num_codebooks = k
        self.frame_rate = self.sample_rate / self.hop
        self.bits_per_second = self.frame_rate * k * math.log2(self.codebook_size)
        self.lookahead_samples = 0  # decoder look-ahead (non-causal adapters set theirs)

    # -- loading --
    @classmethod
    def from_hf(cls, directory: str | Path, device: str = "cpu", **options: str) -> "HFAudioCodec":
        """Load a folder written by ``save_pretrained``; ``options`` are the spec's ``k=v`` strings."""
        where = f"codec hf:{directory}"
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)} (this adapter takes: "
                             f"{', '.join(cls.OPTIONS)})")
        transformers = importlib.import_module("transformers")
        try:
            model = getattr(transformers, cls.MODEL_CLASS).from_pretrained(str(directory))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{where}: cannot load it as a {cls.MODEL_CLASS}: {e}") from e
        codebooks = _int_option("codebooks", options["codebooks"], where) if "codebooks" in options else None
        return cls._build(model.to(device), codebooks, options, where)

    @classmethod
    def _build(cls, model: Any, codebooks: int | None, options: dict[str, str], where: str) -> "HFAudioCodec":
        return cls(model, codebooks, where)

    def _read_config(self, cfg: Any) -> tuple[int, int, int, int]:
        """(sample_rate, hop, codebooks in the model, default codebooks)."""
        raise NotImplementedError

    # -- shapes --
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _pad(self, wav: Any) -> torch.Tensor:
        wav = torch.as_tensor(wav)
        if wav.dim() != 2:
            raise ValueError(f"audio must be (B, samples), got shape {tuple(wav.shape)}")
        n = wav.shape[1]
        return nn.functional.pad(wav.float(), (0, -n % self.hop)).to(self.device)  # (B, frames * hop)

    def _check_codes(self, codes: Any) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        K = self.num_codebooks
        if codes.dim() != 3 or codes.shape[-1] != K:
            raise ValueError(f"audio codes must be (B, frames, {K}), got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"audio codes must lie in [0, {self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long().to(self.device)

    def _fit(self, y: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, n) decoder output -> exactly (B, frames * hop) (DAC's odd strides give a few samples less)."""
        n = frames * self.hop
        return nn.functional.pad(y[:, :n], (0, max(0, n - y.shape[1]))).float().cpu()

    # -- the codec interface --
    @torch.inference_mode()
    def encode(self, wav: Any) -> torch.Tensor:  # (B, N) -> (B, ceil(N / hop), K)
        x = self._pad(wav)
        frames = x.shape[1] // self.hop
        codes = self._encode(x[:, None])[:, : self.num_codebooks]  # (B, K, F)
        if codes.shape[2] != frames:
            raise RuntimeError(f"{self.where}: {x.shape[1]} samples gave {codes.shape[2]} code frames, "
                               f"expected {frames} (hop {self.hop})")
        return codes.transpose(1, 2).long().cpu()

    @torch.inference_mode()
    def decode(self, codes: Any) -> torch.Tensor:  # (B, F, K) -> (B, F * hop)
        codes = self._check_codes(codes)
        if codes.shape[1] == 0:
            return torch.zeros(codes.shape[0], 0)
        return self._fit(self._decode(codes.transpose(1, 2)), codes.shape[1])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def stream_decoder(self) -> Any:
        raise NotImplementedError


# ----------------------------------------------------------------------------- causal stream decoding


class CausalStreamState:
    """Runs a causal SEANet stack (Mimi's or EnCodec's decoder layers) chunk by chunk.

    Each layer keeps what the next chunk needs: a convolution its last ``padding_total`` inputs (the
    left padding whole decoding would see), a transposed convolution the overlapping tail of its
    output (samples that the next input frame still adds to; whole decoding trims exactly that tail on
    the right), an LSTM its hidden state. So the concatenated outputs equal one whole pass.
    """

    def __init__(self) -> None:
        self.state: dict[int, Any] = {}

    @staticmethod
    def check(layers: nn.Module, where: str) -> None:
        """ValueError naming the first layer that cannot be streamed exactly."""
        for m in layers.modules():
            if isinstance(m, nn.ConvTranspose1d) or isinstance(m, nn.Conv1d) or isinstance(m, nn.LSTM):
                continue
            if hasattr(m, "conv") and not getattr(m, "causal", False):
                raise ValueError(f"{where}: its decoder has non-causal convolutions (use_causal_conv=false), "
                                 "which this adapter cannot stream")
            if getattr(m, "norm_type", "weight_norm") != "weight_norm":
                raise ValueError(f"{where}: its decoder normalises over time ({m.norm_type}), "
                                 "which this adapter cannot stream")
            if hasattr(m, "trim_right_ratio") and m.trim_right_ratio != 1.0:
                raise ValueError(f"{where}: trim_right_ratio={m.trim_right_ratio}; streaming needs 1.0")

    @staticmethod
    def first_frames(layers: nn.Module) -> int:
        """Code frames the first chunk needs so that no reflect-padded convolution sees fewer inputs
        than its padding (reflection then takes the same samples as in whole decoding)."""
        need, rate = 1, 1.0  # rate: positions per code frame at the current layer
        for m in layers.modules():
            if isinstance(getattr(m, "conv", None), nn.ConvTranspose1d):
                rate *= m.conv.stride[0]
            elif isinstance(getattr(m, "conv", None), nn.Conv1d) and m.pad_mode == "reflect":
                need = max(need, int(int(m.padding_total) // rate) + 1)
        return need

    def run(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:  # (B, C, T) -> (B, C', T')
        if isinstance(getattr(layer, "conv", None), nn.ConvTranspose1d):
            return self._conv_transpose(layer, x)
        if isinstance(getattr(layer, "conv", None), nn.Conv1d):
            return self._conv(layer, x)
        if isinstance(getattr(layer, "lstm", None), nn.LSTM):
            h, self.state[id(layer)] = layer.lstm(x.permute(2, 0, 1), self.state.get(id(layer)))
            return (h + x.permute(2, 0, 1)).permute(1, 2, 0)
        if hasattr(layer, "block") and hasattr(layer, "shortcut"):  # SEANet residual block
            h = x
            for sub in layer.block:
                h = self.run(sub, h)
            return self.run(layer.shortcut, x) + h
        if isinstance(layer, (nn.ModuleList, nn.Sequential)):
            for sub in layer:
                x = self.run(sub, x)
            return x
        if any(True for _ in layer.parameters()):
            raise ValueError(f"cannot stream layer {type(layer).__name__}")
        return layer(x)  # activations, Identity

    def _conv(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        conv: nn.Conv1d = layer.conv
        if conv.stride[0] != 1:
            raise ValueError(f"cannot stream a strided convolution ({type(layer).__name__})")
        ctx = int(layer.padding_total)
        prev = self.state.get(id(layer))
        if prev is None:  # the first chunk: pad as whole decoding pads the start
            x = layer._pad1d(x, (ctx, 0), mode=layer.pad_mode)
        else:
            x = torch.cat([prev, x], dim=-1)
        self.state[id(layer)] = x[..., x.shape[-1] - ctx :]
        return conv(x)

    def _conv_transpose(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        conv: nn.ConvTranspose1d = layer.conv
        overlap = conv.kernel_size[0] - conv.stride[0]  # trimmed on the right by whole decoding
        y = conv(x)  # (B, C, T * stride + overlap), bias added everywhere
        tail = self.state.get(id(layer))
        if tail is not None:
            y[..., :overlap] += tail
        done, rest = y[..., : y.shape[-1] - overlap], y[..., y.shape[-1] - overlap :]
        self.state[id(layer)] = rest - conv.bias[:, None] if conv.bias is not None else rest
        return done


class CausalStreamDecoder:
    """``push`` codes, get every sample they complete. Only the very first chunk may wait: a decoder
    with reflect padding (EnCodec) needs ``codec.first_frames`` frames before it starts, since whole
    decoding mirrors the first samples into its left padding; ``flush`` returns what still waits."""

    def __init__(self, codec: "HFAudioCodec") -> None:
        self.codec = codec
        self.state = CausalStreamState()
        self.waiting: torch.Tensor | None = None  # (B, f, K) frames held before the first chunk
        self.started = False

    @torch.inference_mode()
    def push(self, codes: Any) -> torch.Tensor:  # (B, f, K) -> (B, samples)
        codes = self.codec._check_codes(codes)
        if not self.started:
            codes = codes if self.waiting is None else torch.cat([self.waiting, codes], dim=1)
            if codes.shape[1] < self.codec.first_frames:
                self.waiting = codes
                return torch.zeros(codes.shape[0], 0)
            self.waiting, self.started = None, True
        return self._step(codes)

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        if self.waiting is None:
            return torch.zeros(0, 0)
        codes, self.waiting, self.started = self.waiting, None, True
        return self._step(codes)

    def _step(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.shape[1] == 0:
            return torch.zeros(codes.shape[0], 0)
        return self.codec._stream_step(self.state, codes.transpose(1, 2)).float().cpu()


# ----------------------------------------------------------------------------- window stream decoding


def conv_reach(module: nn.Module, unit: float) -> tuple[float, float]:
    """(left, right) reach in output samples of a stack of symmetric-padded convolutions whose input
    positions are ``unit`` output samples apart: how far before and after a sample the inputs that
    change it can lie. Layers are taken in registration order (the order data flows through them in
    DAC's decoder); parallel residual paths are summed, which over-estimates and so stays safe."""
    left = right = 0.0
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose1d):
            k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
            left += (k - 1 - p) * unit / s
            right += p * unit / s
            unit /= s
        elif isinstance(m, nn.Conv1d):
            span, p, s = m.dilation[0] * (m.kernel_size[0] - 1), m.padding[0], m.stride[0]
            left += p * unit
            right += (span - p) * unit
            unit *= s
    return left, right


class WindowStreamDecoder:
    """Stream decoding for a non-causal decoder: each push decodes the frames that arrived plus
    ``context`` frames before them and waits for ``lookahead`` frames after them; samples of a frame
    are returned once its look-ahead has arrived (``flush`` returns the rest). With ``context`` and
    ``lookahead`` covering the decoder's receptive field the output equals whole decoding."""

    def __init__(self, codec: "HFAudioCodec", context: int, lookahead: int) -> None:
        self.codec, self.context, self.lookahead = codec, context, lookahead
        self.buf: torch.Tensor | None = None  # (B, n, K): frames from `start` on
        self.start = 0  # absolute index of buf's first frame
        self.emitted = 0  # frames whose samples were returned

    @torch.inference_mode()
    def push(self, codes: Any) -> torch.Tensor:
        codes = self.codec._check_codes(codes)
        self.buf = codes if self.buf is None else torch.cat([self.buf, codes], dim=1)
        return self._emit(self.start + self.buf.shape[1] - self.lookahead)

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        if self.buf is None:
            return torch.zeros(0, 0)
        return self._emit(self.start + self.buf.shape[1])

    def _emit(self, ready: int) -> torch.Tensor:
        B, hop = self.buf.shape[0], self.codec.hop
        if ready <= self.emitted:
            return torch.zeros(B, 0)
        y = self.codec.decode(self.buf.cpu())  # (B, n * hop): the window, whole
        out = y[:, (self.emitted - self.start) * hop : (ready - self.start) * hop]
        self.emitted = ready
        keep_from = max(self.start, self.emitted - self.context)
        self.buf, self.start = self.buf[:, keep_from - self.start :], keep_from
        return out


# ----------------------------------------------------------------------------- the adapters


class MimiCodec(HFAudioCodec):
    """Kyutai's Mimi (``MimiModel``): 24 kHz, 12.5 frames/s, 32 codebooks of 2048 (the first one
    semantic); Moshi speaks with the first 8 (``codebooks=8``, 1.1 kbps). Causal: streams both ways."""

    MODEL_CLASS = "MimiModel"

    def _read_config(self, cfg: Any) -> tuple[int, int, int, int]:
        hop = round(cfg.sampling_rate / cfg.frame_rate)
        if cfg.audio_channels != 1:
            raise ValueError(f"{self.where}: audio_channels={cfg.audio_channels}; only mono is supported")
        dec = self.model.decoder
        for part in (dec.upsample, dec.decoder_seanet):
            if part is not None:
                CausalStreamState.check(part, self.where)
        self.first_frames = CausalStreamState.first_frames(dec)
        return int(cfg.sampling_rate), hop, int(cfg.num_quantizers), int(cfg.num_quantizers)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x, num_quantizers=self.num_codebooks).audio_codes

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes).audio_values[:, 0]

    def _stream_step(self, st: CausalStreamState, codes: torch.Tensor) -> torch.Tensor:
        dec = self.model.decoder
        h = self.model.quantizer.decode(codes)  # (B, hidden, f): per frame, stateless
        if dec.upsample is not None:
            h = st.run(dec.upsample, h)
        out = dec.decoder_transformer(h.transpose(1, 2), cache=st.state.get("kv"), use_cache=True)
        st.state["kv"] = out.cache
        return st.run(dec.decoder_seanet.layers, out.last_hidden_state.transpose(1, 2))[:, 0]

    def stream_decoder(self) -> CausalStreamDecoder:
        return CausalStreamDecoder(self)

    def stream_encoder(self) -> "MimiStreamEncoder":
        return MimiStreamEncoder(self)


class MimiStreamEncoder:
    """``push((B, samples))`` -> codes of the frames completed so far; ``flush()`` pads the last
    partial frame with zeros (as whole encoding does). Uses transformers' streaming Mimi encoder
    (convolution padding cache + transformer key/value cache)."""

    def __init__(self, codec: MimiCodec) -> None:
        self.codec = codec
        self.pending: torch.Tensor | None = None
        self.padding_cache = self.kv = None

    @torch.inference_mode()
    def push(self, wav: Any) -> torch.Tensor:  # (B, n) -> (B, f, K)
        wav = torch.as_tensor(wav).float()
        if wav.dim() != 2:
            raise ValueError(f"audio must be (B, samples), got shape {tuple(wav.shape)}")
        self.pending = wav if self.pending is None else torch.cat([self.pending, wav], dim=1)
        n = self.pending.shape[1] // self.codec.hop * self.codec.hop
        x, self.pending = self.pending[:, :n], self.pending[:, n:]
        return self._encode(x)

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        if self.pending is None or self.pending.shape[1] == 0:
            return torch.zeros(0 if self.pending is None else self.pending.shape[0], 0, self.codec.num_codebooks,
                               dtype=torch.long)
        x = self.codec._pad(self.pending)
        self.pending = x[:, :0]
        return self._encode(x)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        c = self.codec
        if x.shape[1] == 0:
            return torch.zeros(x.shape[0], 0, c.num_codebooks, dtype=torch.long)
        out = c.model.encode(x[:, None].to(c.device), num_quantizers=c.num_codebooks, use_streaming=True,
                             padding_cache=self.padding_cache, encoder_cache=self.kv)
        self.padding_cache, self.kv = out.padding_cache, out.encoder_cache
        return out.audio_codes.transpose(1, 2).long().cpu()


class _BandwidthCodec(HFAudioCodec):
    """EnCodec and X-codec choose their codebooks by a target bandwidth (kbps) too."""

    OPTIONS = ("codebooks", "bandwidth")

    def _codebooks_for(self, bandwidth: float) -> int:
        return int(self.model.quantizer.get_num_quantizers_for_bandwidth(bandwidth))

    @classmethod
    def _build(cls, model: Any, codebooks: int | None, options: dict[str, str], where: str) -> "HFAudioCodec":
        if "bandwidth" in options:
            bw = _float_option("bandwidth", options["bandwidth"], where)
            allowed = [float(b) for b in model.config.target_bandwidths]
            if bw not in allowed:
                raise ValueError(f"{where}: bandwidth={bw:g} is not one of the model's target_bandwidths "
                                 f"({', '.join(f'{b:g}' for b in allowed)})")
            k = int(model.quantizer.get_num_quantizers_for_bandwidth(bw))
            if codebooks is not None and codebooks != k:
                raise ValueError(f"{where}: bandwidth={bw:g} means {k} codebooks, but codebooks={codebooks}")
            codebooks = k
        return cls(model, codebooks, where)

    def _encode_bandwidth(self) -> float:
        """The smallest target bandwidth that yields at least ``num_codebooks`` codebooks."""
        for bw in sorted(self.model.config.target_bandwidths):
            if self._codebooks_for(bw) >= self.num_codebooks:
                return bw
        raise AssertionError("num_codebooks was checked against the largest bandwidth")


class EncodecCodec(_BandwidthCodec):
    """Meta's EnCodec (``EncodecModel``), the causal 24 kHz model: 75 frames/s, 32 codebooks of 1024;
    transformers encodes at 1.5 kbps (2 codebooks) unless told otherwise, and so does this adapter.
    The 48 kHz model (stereo, per-chunk loudness scales that codes do not carry) is refused."""

    MODEL_CLASS = "EncodecModel"

    def _read_config(self, cfg: Any) -> tuple[int, int, int, int]:
        if cfg.normalize or cfg.chunk_length_s is not None or cfg.audio_channels != 1:
            raise ValueError(f"{self.where}: EnCodec with normalize/chunk_length_s/stereo (the 48 kHz model) "
                             "keeps per-chunk scales that discrete codes do not carry; use the 24 kHz model")
        CausalStreamState.check(self.model.decoder, self.where)
        self.first_frames = CausalStreamState.first_frames(self.model.decoder)
        total = max(self._codebooks_for(float(b)) for b in cfg.target_bandwidths)
        return int(cfg.sampling_rate), int(cfg.hop_length), total, self._codebooks_for(cfg.target_bandwidths[0])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x, bandwidth=self._encode_bandwidth()).audio_codes[0]  # (B, Kbw, F)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes[None], [None]).audio_values[:, 0]

    def _stream_step(self, st: CausalStreamState, codes: torch.Tensor) -> torch.Tensor:
        h = self.model.quantizer.decode(codes.transpose(0, 1))  # (B, D, f)
        return st.run(self.model.decoder.layers, h)[:, 0]

    def stream_decoder(self) -> CausalStreamDecoder:
        return CausalStreamDecoder(self)


class _WindowedCodec(HFAudioCodec):
    """DAC-style non-causal decoders: windowed stream decoding sized by the receptive field."""

    def _decoder(self) -> nn.Module:
        raise NotImplementedError

    def __init__(self, model: Any, codebooks: int | None = None, where: str = "codec") -> None:
        super().__init__(model, codebooks, where)
        left, right = conv_reach(self._decoder(), float(self.hop))
        self.context_frames = math.ceil(left / self.hop)
        self.lookahead_frames = math.ceil(right / self.hop)
        self.lookahead_samples = self.lookahead_frames * self.hop

    def stream_decoder(self) -> WindowStreamDecoder:
        return WindowStreamDecoder(self, self.context_frames, self.lookahead_frames)


class DacCodec(_WindowedCodec):
    """Descript's DAC (``DacModel``): 16/24/44.1 kHz, 12 (16 kHz) or 9 codebooks of 1024, all used by
    default. Its decoder is not causal (about 10 frames of look-ahead for the 16 kHz model)."""

    MODEL_CLASS = "DacModel"

    def _read_config(self, cfg: Any) -> tuple[int, int, int, int]:
        return int(cfg.sampling_rate), int(cfg.hop_length), int(cfg.n_codebooks), int(cfg.n_codebooks)

    def _decoder(self) -> nn.Module:
        return self.model.decoder

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x, n_quantizers=self.num_codebooks).audio_codes

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(audio_codes=codes).audio_values


class XcodecCodec(_BandwidthCodec, _WindowedCodec):
    """X-codec (``XcodecModel``): a DAC acoustic codec whose quantizer also sees HuBERT features, so its
    codes carry semantics; 16 kHz, 50 frames/s, 8 codebooks of 1024 at the default (largest)
    bandwidth, 4 kbps. Decoding uses only the acoustic decoder (not causal)."""

    MODEL_CLASS = "XcodecModel"

    def _read_config(self, cfg: Any) -> tuple[int, int, int, int]:
        total = int(self.model.quantizer.num_quantizers)
        return int(cfg.sample_rate), int(cfg.hop_length), total, self._codebooks_for(max(cfg.target_bandwidths))

    def _decoder(self) -> nn.Module:
        return self.model.acoustic_decoder

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x, bandwidth=self._encode_bandwidth()).audio_codes

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decode(codes).audio_values[:, 0]
