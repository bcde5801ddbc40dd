"""Processor: raw media parts -> code parts -> ids, with small deterministic stand-in codecs."""

from __future__ import annotations

import base64
import functools

import numpy as np
import pytest
import torch

from omniloom.codecs.text import TextTokenizer
from omniloom.processor import Processor
from omniloom.tokens import Vocab
from omniloom.utils.media import audio_to_wav_bytes, image_to_png_bytes, load_audio, parse_data_url, to_data_url


class FakeImageCodec:
    """Codes = mean brightness of each 2x2 quadrant, quantized to 16 levels."""

    modality, codebook_size, num_codebooks, tokens_per_item = "image", 16, 1, 4
    frame_rate = sample_rate = None
    resolution = 8

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 8, 8) -> (B, 4)
        assert x.shape[1:] == (3, 8, 8)
        q = x.mean(1).reshape(-1, 2, 4, 2, 4).mean((2, 4)).reshape(-1, 4)
        return (q * 15).round().long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, 4) -> (B, 3, 8, 8)
        q = codes.float().reshape(-1, 1, 2, 1, 2, 1) / 15
        return q.expand(-1, 3, 2, 4, 2, 4).reshape(-1, 3, 8, 8)


class FakeAudioCodec:
    """25 frames/s at 16 kHz, two codebooks: loudness and sign of the frame mean."""

    modality, codebook_size, num_codebooks, tokens_per_item = "audio", 16, 2, None
    frame_rate, sample_rate = 25.0, 16000

    def encode(self, wav: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, F, 2)
        hop = 640
        n = -(-wav.shape[1] // hop) * hop
        fr = torch.nn.functional.pad(wav, (0, n - wav.shape[1])).reshape(wav.shape[0], -1, hop)
        loud = (fr.abs().mean(-1) * 15).clamp(0, 15).round().long()
        sign = (fr.mean(-1) > 0).long()
        return torch.stack([loud, sign], -1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, F, 2) -> (B, F * 640)
        return (codes[..., 0].float() / 15).repeat_interleave(640, dim=1)


@functools.lru_cache(maxsize=1)
def tok() -> TextTokenizer:
    return TextTokenizer.train(["describe the image", "a big red circle", "transcribe the audio"] * 10, 300)


def setup(codecs=True) -> Processor:
    v = Vocab.build(tok().vocab_size, 16, 4, 16, 2, voices=["nova", "atlas"])
    return Processor(v, tok(), {"image": FakeImageCodec(), "audio": FakeAudioCodec()} if codecs else {})


def png(color, size=(12, 10)) -> bytes:
    img = torch.zeros(3, size[1], size[0])
    img[:] = torch.tensor(color, dtype=torch.float32)[:, None, None]
    return image_to_png_bytes(img)


def test_text_only_needs_no_codecs():
    p = setup(codecs=False)
    enc = p.encode_messages([{"role": "user", "content": "describe the image"},
                             {"role": "assistant", "content": [{"type": "text", "text": "a big red circle"}]}])
    segs = p.decode_ids(enc.ids, strict=True)
    assert [(s.role, s.text) for s in segs] == [("user", "describe the image"), ("assistant", "a big red circle")]


@pytest.mark.parametrize("kind", ["image", "image_url", "input_audio", "audio", "video"])
def test_missing_codec_names_part_and_message(kind):
    part = {"image": {"type": "image", "path": "x.png"},
            "image_url": {"type": "image_url", "image_url": {"url": "x.png"}},
            "input_audio": {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            "audio": {"type": "audio", "path": "x.wav"},
            "video": {"type": "video", "frames": ["a.png"]}}[kind]
    with pytest.raises(ValueError, match=rf"message 1 part 1 \(type '{kind}'\) needs an? (image|audio) codec"):
        setup(codecs=False).encode_messages([{"role": "system", "content": "x"},
                                             {"role": "user", "content": [{"type": "text", "text": "q"}, part]}])


def test_image_sources_agree(tmp_path):
    p = setup()
    data = png((0.9, 0.2, 0.2))
    (tmp_path / "img.png").write_bytes(data)
    expect = FakeImageCodec().encode(torch.full((1, 3, 8, 8), 0.0) + torch.tensor([0.9, 0.2, 0.2])[None, :, None, None])
    expect = expect[0].tolist()
    parts = [{"type": "image", "path": str(tmp_path / "img.png")},
             {"type": "image", "path": "img.png"},  # relative to base_dir
             {"type": "image_url", "image_url": {"url": to_data_url(data, "image/png")}},
             {"type": "image_url", "image_url": f"file://{tmp_path / 'img.png'}"},
             {"type": "image", "image": torch.tensor([0.9, 0.2, 0.2])[:, None, None].expand(3, 8, 8)}]
    for part in parts:
        code_part = p.to_code_part(part, base_dir=tmp_path)
        assert code_part == {"type": "image_codes", "codes": expect}, part
    enc = p.encode_messages([{"role": "user", "content": parts[:1]}])
    seg = p.decode_ids(enc.ids, strict=True)[0]
    assert seg.modality == "image" and seg.codes == expect
    img = p.decode_media(seg)
    assert img.shape == (3, 8, 8)
    with pytest.raises(ValueError, match="does not exist"):
        p.to_code_part({"type": "image", "path": "nope.png"}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="remote URLs"):
        p.to_code_part({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}})


def test_audio_resampled_and_encoded(tmp_path):
    p = setup()
    sr = 8000
    t = np.arange(sr) / sr  # 1 s
    wav = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    data = audio_to_wav_bytes(wav, sr)
    (tmp_path / "a.wav").write_bytes(data)
    x = load_audio(tmp_path / "a.wav", 16000)
    assert abs(x.shape[0] - 16000) <= 2  # resampled to the codec rate
    assert abs(float(x.abs().mean()) - float(np.abs(wav).mean())) < 0.02
    a = p.to_code_part({"type": "audio", "path": "a.wav", "voice": "nova", "transcript": "a big red circle"},
                       base_dir=tmp_path)
    b = p.to_code_part({"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}})
    assert a["type"] == b["type"] == "audio_codes" and a["codes"] == b["codes"]
    assert len(a["codes"]) == 25 and all(len(f) == 2 for f in a["codes"])  # 1 s at 25 frames/s, 2 codebooks
    enc = p.encode_messages([{"role": "user", "content": "say a big red circle"},
                             {"role": "assistant", "content": [{"type": "audio", "path": "a.wav", "voice": "nova",
                                                                "transcript": "a big red circle"}]}], base_dir=tmp_path)
    seg = p.decode_ids(enc.ids, strict=True)[-1]
    assert (seg.modality, seg.voice, seg.transcript, seg.codes) == ("audio", "nova", "a big red circle", a["codes"])
    assert p.decode_media(seg).shape == (25 * 640,)
    with pytest.raises(ValueError, match="unknown voice"):
        p.encode_messages([{"role": "assistant", "content": [{"type": "audio", "path": "a.wav", "voice": "alloy"}]}],
                          base_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot read audio"):
        p.to_code_part({"type": "audio", "audio": b"not a wav"})


def test_video_frames(tmp_path):
    p = setup()
    names = []
    for i in range(3):
        (tmp_path / f"f{i}.png").write_bytes(png((0.1 * i, 0.1 * i, 0.1 * i), size=(8, 8)))
        names.append(f"f{i}.png")
    part = p.to_code_part({"type": "video", "frames": names, "fps": 4}, base_dir=tmp_path)
    assert part["fps"] == 4.0 and len(part["frames"]) == 3
    assert part["frames"][2] == p.to_code_part({"type": "image", "path": "f2.png"}, base_dir=tmp_path)["codes"]
    enc = p.encode_messages([{"role": "user", "content": [part]}])
    seg = p.decode_ids(enc.ids, strict=True)[0]
    assert seg.modality == "video" and seg.times == [0.0, 0.25, 0.5] and seg.fps == 4.0
    assert p.decode_media(seg).shape == (3, 3, 8, 8)


def test_prompt_and_mismatched_codec():
    p = setup()
    ids = p.prompt_ids([{"role": "user", "content": "say hi"}], output_modality="audio", voice="atlas")
    assert ids[-2:] == [p.vocab.special("audio"), p.vocab.voice_id("atlas")]
    with pytest.raises(ValueError, match="image codec .* does not match"):
        Processor(Vocab.build(tok().vocab_size, 32, 4), tok(), {"image": FakeImageCodec()})


def test_data_url_parsing():
    assert parse_data_url("data:text/plain,hi%20there") == ("text/plain", b"hi there")
    assert parse_data_url(to_data_url(b"\x00\x01", "audio/wav")) == ("audio/wav", b"\x00\x01")
    with pytest.raises(ValueError, match="not a data URL"):
        parse_data_url("http://x")


def test_real_codecs_fit_the_vocab(tmp_path):
    """The shipped codec classes (untrained weights) plug into Vocab.for_codecs and the Processor."""
    from omniloom.codecs.audio import AudioCodec
    from omniloom.codecs.image import ImageCodec

    torch.manual_seed(0)
    image, audio = ImageCodec().eval(), AudioCodec().eval()
    v = Vocab.for_codecs(tok().vocab_size, image_codec=image, audio_codec=audio, voices=["nova", "atlas"])
    assert v.image_tokens == image.tokens_per_item and v.audio_codebook_size == audio.codebook_size
    p = Processor(v, tok(), {"image": image, "audio": audio})
    (tmp_path / "a.png").write_bytes(png((0.9, 0.8, 0.1), size=(64, 64)))
    (tmp_path / "a.wav").write_bytes(audio_to_wav_bytes(np.zeros(8000, np.float32), 16000))
    enc = p.encode_messages([{"role": "user", "content": [{"type": "image", "path": "a.png"},
                                                          {"type": "audio", "path": "a.wav"}]},
                             {"role": "assistant", "content": "a big red circle"}], base_dir=tmp_path)
    segs = p.decode_ids(enc.ids, strict=True)
    assert [s.modality for s in segs] == ["image", "audio", "text"]
    assert len(segs[0].codes) == image.tokens_per_item and len(segs[1].codes) == -(-8000 * audio.frame_rate // 16000)
    assert p.decode_media(segs[0]).shape == (3, image.resolution, image.resolution)


def test_rgb_to_png_bytes_keeps_every_pixel_and_names_bad_input():
    import io

    from PIL import Image

    from omniloom.utils.media import image_to_png_bytes, rgb_to_png_bytes

    rgb = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    data = rgb_to_png_bytes(rgb)
    assert data == rgb_to_png_bytes(rgb.copy())  # deterministic bytes
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), rgb)
    # the float (3, H, W) form writes the same picture
    assert image_to_png_bytes(rgb.transpose(2, 0, 1) / 255.0) == data
    for bad in (rgb.astype(np.float32), rgb[..., :2], rgb[0]):
        with pytest.raises(ValueError, match=r"pixels must be \(H, W, 3\) uint8"):
            rgb_to_png_bytes(bad)
