"""The shipped `audio-world` codec: loads by name, meets the bitrate, streams exactly."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vector_quantize_pytorch")

from omniloom.codecs import load_codec  # noqa: E402
from omniloom.codecs.audio import AudioCodec  # noqa: E402


def test_shipped_audio_world_loads_and_streams():
    codec = load_codec("audio-world")
    assert isinstance(codec, AudioCodec) and codec.modality == "audio"
    assert codec.bits_per_second <= 400 and codec.frame_rate <= 25 and codec.sample_rate == 16000
    g = torch.Generator().manual_seed(0)
    t = torch.arange(16000) / 16000
    x = (0.3 * torch.sin(2 * torch.pi * 150 * t * (1 + t)) * (t * 4 % 1 < 0.6) + 0.01 * torch.randn(16000, generator=g))[None]
    codes = codec.encode(x)
    assert codes.shape == (1, 25, 1) and 0 <= int(codes.min()) and int(codes.max()) < codec.codebook_size
    whole = codec.decode(codes)
    s = codec.stream_decoder()
    streamed = torch.cat([s.push(codes[:, i : i + 2]) for i in range(0, 25, 2)] + [s.flush()], dim=1)
    assert (streamed - whole).abs().max() <= 1e-5
    # on real world speech a trained codec reproduces the spectrum and the energy envelope
    speech = pytest.importorskip("omniloom.world.speech")
    from omniloom.train.codec_audio import SpectralLoss

    x = torch.from_numpy(speech.synthesize("what is seven plus two", speech.assistant_voice("atlas")))[None]
    y = codec.decode(codec.encode(x))[:, : x.shape[1]]
    crit = SpectralLoss()
    assert float((crit.log_mel(y) - crit.log_mel(x)).abs().mean()) < 1.3  # untrained: ~3.8
    n = x.shape[1] // 1600 * 1600
    e_in, e_out = (v[:, :n].reshape(-1, 1600).pow(2).mean(-1) for v in (x, y))
    assert torch.corrcoef(torch.stack([e_in, e_out]))[0, 1] > 0.7
