"""Image codec: shapes, ranges, FSQ code usage, save/load, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniloom.codecs.image import ImageCodec, ImageCodecConfig, image_codec_config
from omniloom.train.codec_image import code_stats, psnr, ssim


@pytest.fixture
def tiny() -> ImageCodec:
    torch.manual_seed(0)
    return ImageCodec(image_codec_config("tiny")).eval()


def test_encode_decode_shapes_dtypes_ranges(tiny):
    x = torch.rand(3, 3, 32, 32)
    codes = tiny.encode(x)
    assert codes.shape == (3, tiny.tokens_per_item) == (3, 64)
    assert codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < tiny.codebook_size
    y = tiny.decode(codes)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_codebook_size_from_levels():
    cfg = ImageCodecConfig(levels=[8, 5, 5, 5])
    assert cfg.codebook_size == 1000 and cfg.tokens_per_image == 64
    assert abs(cfg.bits_per_image - 64 * np.log2(1000)) < 1e-9
    photo = image_codec_config("photo-256")
    assert photo.tokens_per_image == 256 and photo.codebook_size == 8 * 8 * 8 * 6 * 5


def test_decode_of_encode_is_a_fixed_point_of_codes(tiny):
    # decode -> encode is not identity for an untrained model, but encode is deterministic
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(tiny.encode(x), tiny.encode(x.clone()))


def test_fsq_reaches_every_code_and_inverts():
    # the FSQ grid: latents spread over the bounded range hit every one of the prod(levels) codes,
    # and decoding an index gives the latent that encodes back to the same index
    torch.manual_seed(0)
    codec = ImageCodec(image_codec_config("tiny")).eval()
    z = torch.randn(1, 20000, 3) * 3  # (B, N, d) pre-bound latents
    _, idx = codec.fsq(z)
    stats = code_stats(idx.long(), codec.codebook_size)
    assert stats["codes_used"] == 1.0
    all_idx = torch.arange(codec.codebook_size)[None]  # (1, K)
    grid = codec.fsq.indices_to_codes(all_idx)  # (1, K, d)
    assert torch.equal(codec.fsq.codes_to_indices(grid).long(), all_idx)


def test_save_load_round_trip_identical_codes(tiny, tmp_path):
    x = torch.rand(4, 3, 32, 32)
    tiny.save(tmp_path / "codec")
    assert not list((tmp_path / "codec").glob("*.tmp"))
    again = ImageCodec.from_pretrained(tmp_path / "codec")
    assert again.cfg == tiny.cfg
    assert torch.equal(again.encode(x), tiny.encode(x))
    codes = tiny.encode(x)
    assert torch.equal(again.decode(codes), tiny.decode(codes))


def test_wrong_image_size_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        tiny.encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="shape"):
        tiny.encode(torch.rand(3, 32, 32))


def test_bad_codes_are_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"\[0, 125\)"):
        tiny.decode(torch.full((1, 64), 125))
    with pytest.raises(ValueError, match=r"\(B, 64\)"):
        tiny.decode(torch.zeros(1, 10, dtype=torch.long))


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="power of two"):
        ImageCodecConfig(downsample=6)
    with pytest.raises(ValueError, match="levels"):
        ImageCodecConfig(levels=[2, 5])
    with pytest.raises(ValueError, match="unknown image codec config"):
        image_codec_config("huge")


def test_metrics_known_values():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert float(psnr(x, (x + 0.1).clamp(0, 1)).min()) < 30
    y = torch.zeros(1, 3, 16, 16)
    z = torch.full((1, 3, 16, 16), 0.1)
    assert abs(float(psnr(y, z)) - 20.0) < 1e-4  # mse 0.01 -> 20 dB
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert float(ssim(x, noisy).max()) < 0.9


def test_foreground_weight_counts_lit_pixel_errors_more():
    from omniloom.train.codec_image import recon_loss

    x = torch.zeros(1, 3, 8, 8)
    x[..., :2, :2] = 0.5  # a lit patch
    on_lit, on_dark = x.clone(), x.clone()
    on_lit[..., 0, 0] += 0.1
    on_dark[..., 7, 7] += 0.1
    assert torch.isclose(recon_loss(on_lit, x, 0.0), recon_loss(on_dark, x, 0.0))
    assert recon_loss(on_lit, x, 0.0, fg_weight=4.0) > 4 * recon_loss(on_dark, x, 0.0, fg_weight=4.0)


def _square(size: int = 16, at: int = 4, level: float = 0.9) -> torch.Tensor:
    x = torch.zeros(1, 3, size, size)
    x[:, :2, at:at + 8, at:at + 8] = level  # a yellow-ish square
    return x


def test_outline_loss_prices_rounded_corners_and_bridges_more_than_l1_does():
    from omniloom.train.codec_image import outline_loss, recon_loss

    x = _square()
    assert outline_loss(x, x) < 0.05  # the soft step leaves a small floor at the exact image
    rounded = x.clone()
    for y, xx in ((4, 4), (4, 11), (11, 4), (11, 11)):
        rounded[:, :2, y, xx] = 0.3  # each corner pixel below half the square's brightness
    faint = x.clone()
    faint[:, :2, 6:8, 4:12] = 0.75  # the same total L1 error spread inside the body, far from any level
    faint_err = float((faint - x).abs().sum())
    rounded_err = float((rounded - x).abs().sum())
    assert abs(faint_err - rounded_err) / rounded_err < 0.25
    assert recon_loss(faint, x, 0.0) >= 0.6 * recon_loss(rounded, x, 0.0)  # L1 + L2 tell them apart little
    assert outline_loss(rounded, x) > outline_loss(faint, x) + 0.02  # the outline loss does
    # a faint bridge between two shapes: above the foreground level in a gap that must stay dark
    two = _square(size=24, at=2) + _square(size=24, at=14)
    bridged = two.clone()
    bridged[:, :2, 5:8, 10:14] = 0.3  # 0.3 > 60/255
    dimmer = two.clone()
    dimmer[:, :2, 5:8, 10:14] = 0.15  # below it: same place, half the error
    assert outline_loss(bridged, two) > 2 * outline_loss(dimmer, two)
    y = rounded.clone().requires_grad_(True)
    outline_loss(y, x).backward()
    assert y.grad[:, :2, 4, 4].lt(0).all()  # it pushes a dimmed corner back up


def test_grown_decoder_decodes_exactly_as_before_and_keeps_codes(tiny, tmp_path):
    # tiny: res_blocks [0, 0, 1]; grow to [2, 1, 2]: every old layer is kept, each added block is the identity
    with torch.no_grad():  # give the existing blocks' zero-initialised convolutions real weights first
        for p in tiny.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grown = tiny.with_decoder_res_blocks([2, 1, 2])
    assert grown.cfg.dec_res_blocks == [2, 1, 2] and grown.cfg.res_blocks == [0, 0, 1]
    n_res = lambda c: sum(type(m).__name__ == "ResBlock" for m in c.decoder.blocks)
    assert (n_res(tiny), n_res(grown)) == (1, 5)
    x = torch.rand(4, 3, 32, 32)
    codes = tiny.encode(x)
    assert torch.equal(grown.encode(x), codes)
    assert torch.allclose(grown.decode(codes), tiny.decode(codes), atol=1e-6)
    # the config round-trips through save/load with the grown decoder
    grown.save(tmp_path / "g")
    back = ImageCodec.from_pretrained(tmp_path / "g")
    assert back.cfg.decoder_res_blocks == [2, 1, 2]
    assert torch.equal(back.decode(codes), grown.decode(codes))
    # a codec without decoder_res_blocks writes the config as before (no new key)
    assert "decoder_res_blocks" not in tiny.config_dict()


def test_decoder_can_only_grow(tiny):
    with pytest.raises(ValueError, match="only grow"):
        tiny.with_decoder_res_blocks([0, 0, 0])
    with pytest.raises(ValueError, match="only grow"):
        tiny.with_decoder_res_blocks([1, 1])
    with pytest.raises(ValueError, match="decoder_res_blocks"):
        ImageCodecConfig(decoder_res_blocks=[1, 1])
