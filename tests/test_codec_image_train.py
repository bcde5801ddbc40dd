"""Image codec training on a tiny folder of PNG/JPEG files, resume, CLI errors."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from omniloom.codecs import load_codec
from omniloom.train import codec_image
from omniloom.train.codec_cli import build_sub_parser


def _make_folder(d, n=6, size=40):
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((size, size + 8, 3), np.uint8)  # not square: exercises resize + crop
        x, y = rng.integers(4, size - 14, size=2)
        img[y:y + 10, x:x + 10] = rng.integers(60, 255, size=3)
        Image.fromarray(img).save(d / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return d


def _args(*argv):
    return build_sub_parser("train", "image").parse_args(list(argv))


@pytest.mark.slow
def test_train_on_folder_loss_decreases_and_resumes(tmp_path):
    data = _make_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    args = _args("--data", str(data), "--out", str(out), "--config", "tiny", "--steps", "30", "--batch", "8",
                 "--lr", "3e-3", "--warmup", "5", "--ckpt-every", "15", "--no-progress")
    codec_image.train(args)
    state = torch.load(out / "ckpt.pt", weights_only=True)
    losses = state["losses"]
    assert state["step"] == 30 and len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert (out / "loss.png").stat().st_size > 0
    codec = load_codec(out)
    assert codec.encode(torch.rand(1, 3, 32, 32)).shape == (1, 64)
    # resume: more steps continue from the checkpoint instead of starting over
    args.steps = 33
    codec_image.train(args)
    state = torch.load(out / "ckpt.pt", weights_only=True)
    assert state["step"] == 33 and state["losses"][:30] == losses


def test_missing_and_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        codec_image.train(_args("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--config", "tiny"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG/JPEG"):
        codec_image.train(_args("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--config", "tiny"))
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def test_eval_on_folder(tmp_path):
    data = _make_folder(tmp_path / "imgs", n=4)
    torch.manual_seed(0)
    from omniloom.codecs.image import ImageCodec, image_codec_config

    codec = ImageCodec(image_codec_config("tiny")).eval()
    res = codec_image.evaluate(codec, str(data), n=10, batch=3)
    assert res["images"] == 4
    assert 0 <= res["codes_used"] <= 1 and res["bits_per_image"] == pytest.approx(64 * np.log2(125))
    assert -1 <= res["ssim"] <= 1 and res["psnr_db"] > 0


def test_codec_verb_rejects_unknown_codec(tmp_path):
    from omniloom.train import codec_cli

    p = argparse.ArgumentParser()
    codec_cli.add_arguments(p)
    args = p.parse_args(["eval", "image", "--codec", str(tmp_path / "missing"), "--n", "2"])
    with pytest.raises(ValueError, match="unknown codec"):
        codec_cli.run(args)


@pytest.mark.slow
def test_decoder_only_finetune_keeps_every_code(tmp_path):
    # --init + --decoder-only: the decoder learns, the encoder (so every code) stays bit-identical,
    # which is what keeps token shards and models trained on the codes valid
    data = _make_folder(tmp_path / "imgs")
    base = tmp_path / "base"
    codec_image.train(_args("--data", str(data), "--out", str(base), "--config", "tiny", "--steps", "10",
                            "--batch", "8", "--lr", "3e-3", "--warmup", "2", "--no-progress"))
    before = load_codec(base)
    out = tmp_path / "dec"
    args = _args("--data", str(data), "--out", str(out), "--init", str(base), "--decoder-only", "--steps", "12",
                 "--batch", "8", "--lr", "3e-3", "--warmup", "2", "--ckpt-every", "6", "--no-progress")
    codec_image.train(args)
    after = load_codec(out)
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(after.encode(x), before.encode(x))
    for k, v in before.encoder.state_dict().items():
        assert torch.equal(after.encoder.state_dict()[k], v), k
    assert any(not torch.equal(after.decoder.state_dict()[k], v) for k, v in before.decoder.state_dict().items())
    # resuming the decoder-only run without the flag is refused instead of silently unfreezing
    with pytest.raises(ValueError, match="decoder-only"):
        codec_image.train(_args("--data", str(data), "--out", str(out), "--init", str(base), "--steps", "14",
                                "--no-progress"))
    with pytest.raises(ValueError, match="--init"):
        codec_image.train(_args("--data", str(data), "--out", str(tmp_path / "new"), "--decoder-only",
                                "--no-progress"))


@pytest.mark.slow
def test_decoder_only_finetune_can_grow_the_decoder(tmp_path):
    data = _make_folder(tmp_path / "imgs")
    base = tmp_path / "base"
    codec_image.train(_args("--data", str(data), "--out", str(base), "--config", "tiny", "--steps", "6",
                            "--batch", "8", "--lr", "3e-3", "--warmup", "2", "--no-progress"))
    before = load_codec(base)
    out = tmp_path / "grown"
    grow = ("--data", str(data), "--out", str(out), "--init", str(base), "--decoder-only", "--decoder-res-blocks",
            "1,1,2", "--batch", "8", "--lr", "3e-3", "--warmup", "2", "--ckpt-every", "4", "--no-progress")
    codec_image.train(_args(*grow, "--steps", "4"))
    codec_image.train(_args(*grow, "--steps", "8"))  # resumes: the checkpoint's config is the grown one
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 8
    after = load_codec(out)
    assert after.cfg.dec_res_blocks == [1, 1, 2] and after.cfg.res_blocks == before.cfg.res_blocks
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(after.encode(x), before.encode(x))
    with pytest.raises(ValueError, match="--decoder-res-blocks"):
        codec_image.train(_args(*[("1,x,2" if a == "1,1,2" else a) for a in grow], "--steps", "8"))


def test_outline_weight_adds_the_outline_loss_to_what_is_trained(tmp_path):
    # the first step's recorded loss is the reconstruction loss plus weight x the outline loss of the
    # same batch through the same freshly initialised codec
    from omniloom.codecs.image import ImageCodec, image_codec_config
    from omniloom.train.codec_image import batches, outline_loss, recon_loss

    data = _make_folder(tmp_path / "imgs")
    first = {}
    for w in (0.0, 2.0):
        out = tmp_path / f"w{w}"
        args = _args("--data", str(data), "--out", str(out), "--config", "tiny", "--steps", "1", "--batch", "4",
                     "--outline-weight", str(w), "--no-progress")
        codec_image.train(args)
        first[w] = torch.load(out / "ckpt.pt", weights_only=True)["losses"][0]
    torch.manual_seed(0)
    codec = ImageCodec(image_codec_config("tiny")).train()
    x = next(batches(str(data), 32, 4, seed=0))
    with torch.no_grad():
        recon, _ = codec(x)
        base, extra = recon_loss(recon, x, args.grad_weight).item(), outline_loss(recon, x).item()
    assert first[0.0] == pytest.approx(base, rel=1e-5)
    assert extra > 0.01
    assert first[2.0] == pytest.approx(base + 2.0 * extra, rel=1e-5)
