"""Audio codec: shapes, code ranges, streaming == whole, causality, save/load, resampling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("vector_quantize_pytorch")
sf = pytest.importorskip("soundfile")

from omniloom.codecs.audio import AudioCodec, AudioCodecConfig, load_audio  # noqa: E402

TINY = dict(enc_dim=16, enc_blocks=1, frame_dim=32, frame_blocks=2, dec_dim=16, dec_blocks=2)


def tiny_codec(seed: int = 0) -> AudioCodec:
    torch.manual_seed(seed)
    m = AudioCodec(AudioCodecConfig(**TINY)).eval()
    # random init leaves the decoder near silent; scale the head so outputs differ clearly
    with torch.no_grad():
        m.decoder.head.weight.mul_(2)  # peaks ~0.5, like speech
    return m


def speechy(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16000
    return (0.3 * torch.sin(2 * torch.pi * 180 * t * (1 + t)) + 0.05 * torch.randn(n, generator=g))[None]


def test_shapes_ranges_and_rates():
    m = tiny_codec()
    x = torch.cat([speechy(3000), speechy(3000, 1)])  # (2, 3000): not a whole number of frames
    codes = m.encode(x)
    assert codes.shape == (2, 5, 1) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < m.codebook_size
    assert m.codebook_size == 8 * 8 * 8 * 6 * 5 and m.num_codebooks == 1
    assert m.frame_rate == 25.0 and m.sample_rate == 16000
    assert m.bits_per_second <= 400
    y = m.decode(codes)
    assert y.shape == (2, 5 * 640) and torch.isfinite(y).all() and y.abs().max() > 0


@pytest.mark.parametrize("chunks", [[2] * 10, [1, 3, 2, 5, 1, 4, 4]])
def test_chunked_stream_decode_equals_whole(chunks):
    m = tiny_codec()
    codes = m.encode(speechy(20 * 640))  # (1, 20, 1)
    whole = m.decode(codes)
    s = m.stream_decoder()
    parts, i = [], 0
    for c in chunks:
        parts.append(s.push(codes[:, i : i + c]))
        i += c
    assert i == 20
    parts.append(s.flush())
    streamed = torch.cat(parts, dim=1)
    assert streamed.shape == whole.shape
    assert (streamed - whole).abs().max() <= 1e-5
    # the first 80 ms chunk already yields all samples up to the look-ahead
    assert parts[0].shape[1] == 2 * 640 - m.lookahead_samples if chunks[0] == 2 else True


def test_encoder_is_causal():
    m = tiny_codec()
    x = speechy(12 * 640)
    codes = m.encode(x)
    for j in (3, 7):
        x2 = x.clone()
        x2[:, 640 * (j + 1) :] = torch.randn(1, x.shape[1] - 640 * (j + 1))  # change only the future
        c2 = m.encode(x2)
        assert torch.equal(c2[:, : j + 1], codes[:, : j + 1])
        assert not torch.equal(c2[:, j + 1 :], codes[:, j + 1 :])


def test_decoder_lookahead_is_bounded():
    m = tiny_codec()
    codes = m.encode(speechy(10 * 640))
    y = m.decode(codes)
    j = 6
    c2 = codes.clone()
    c2[:, j:] = (c2[:, j:] + 777) % m.codebook_size
    y2 = m.decode(c2)
    cut = 640 * j - m.lookahead_samples  # output samples before this cannot see frame j
    assert torch.equal(y[:, :cut], y2[:, :cut])
    assert not torch.allclose(y[:, cut : cut + 160], y2[:, cut : cut + 160])


def test_save_load_round_trip(tmp_path):
    m = tiny_codec()
    m.save(tmp_path / "c")
    m2 = AudioCodec.from_pretrained(tmp_path / "c")
    x = speechy(8000)
    assert torch.equal(m.encode(x), m2.encode(x))
    assert torch.equal(m.decode(m.encode(x)), m2.decode(m2.encode(x)))
    from omniloom.codecs.base import load_codec

    m3 = load_codec(tmp_path / "c")
    assert isinstance(m3, AudioCodec) and torch.equal(m3.encode(x), m.encode(x))


def test_resampling_path(tmp_path):
    t = np.arange(int(22050 * 0.5)) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "a.wav", np.stack([tone, tone], 1), 22050)  # stereo 22.05 kHz
    sf.write(tmp_path / "b.flac", tone, 22050)
    for name in ("a.wav", "b.flac"):
        y = load_audio(tmp_path / name)
        assert y.dtype == np.float32 and y.ndim == 1 and abs(len(y) - 8000) <= 1
        spec = np.abs(np.fft.rfft(y[1000:7000]))
        assert abs(np.argmax(spec) * 16000 / 6000 - 440) < 5  # pitch kept: really resampled


def test_clear_errors(tmp_path):
    m = tiny_codec()
    with pytest.raises(ValueError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="bad.wav"):
        load_audio(tmp_path / "bad.wav")
    with pytest.raises(ValueError, match="codes must lie"):
        m.decode(torch.full((1, 3, 1), m.codebook_size))
    with pytest.raises(ValueError, match="shape"):
        m.encode(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="unknown audio codec config keys"):
        AudioCodecConfig.from_dict({"hop_size": 3})
    with pytest.raises(ValueError, match="no config.json"):
        AudioCodec.from_pretrained(tmp_path)


def test_training_forward_matches_inference_decode():
    """The training path (conv1d, transposed conv, fold) and the streaming inference path (windowed
    sums, matmul, blockwise overlap-add) compute the same function."""
    m = tiny_codec()
    x = torch.cat([speechy(9000), speechy(9000, 2)])
    with torch.enable_grad():
        y, idx = m(x)
    assert torch.equal(idx.long()[..., None], m.encode(x))
    z = m.decode(m.encode(x))[:, : x.shape[1]]
    assert (y.detach()[:, : x.shape[1]] - z).abs().max() <= 1e-5
