"""Audio codec training on a tiny WAV/FLAC + .txt folder: loss decreases, checkpoint resumes, errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

pytest.importorskip("vector_quantize_pytorch")
sf = pytest.importorskip("soundfile")

from omniloom.train import codec_audio as ca  # noqa: E402

TINY = json.dumps(dict(enc_dim=16, enc_blocks=1, frame_dim=32, frame_blocks=1, dec_dim=32, dec_blocks=1))


def make_folder(d, n=3):
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.arange(16000) / 16000
        f0 = 120 + 40 * i
        x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        x = (0.2 * x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        sf.write(d / f"u{i}.{'flac' if i == 2 else 'wav'}", x, 16000)
        (d / f"u{i}.txt").write_text(f"utterance {i}\n")
    return d


def args(data, out, steps, **kw):
    p = argparse.ArgumentParser()
    ca.add_train_arguments(p)
    a = p.parse_args(["--data", str(data), "--out", str(out), "--steps", str(steps), "--config", TINY,
                      "--batch", "4", "--seconds", "0.4", "--lr", "3e-3", "--warmup", "1", "--ckpt-every", "10",
                      "--threads", "1", "--no-progress"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


@pytest.mark.slow
def test_train_tiny_folder_loss_decreases_and_resumes(tmp_path):
    data = make_folder(tmp_path / "data")
    clips, texts = ca.load_folder(data)
    assert len(clips) == 3 and texts == ["utterance 0", "utterance 1", "utterance 2"]
    out = tmp_path / "run"
    ca.train(args(data, out, 30))
    hist = json.loads(torch.load(out / "ckpt.pt", weights_only=True)["history"])
    assert [h["step"] for h in hist] == [10, 20, 30]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert (out / "loss.png").stat().st_size > 0
    assert (out / "codec" / "config.json").is_file() and (out / "codec" / "model.safetensors").is_file()
    ca.train(args(data, out, 40))  # resumes at step 30
    hist = json.loads(torch.load(out / "ckpt.pt", weights_only=True)["history"])
    assert [h["step"] for h in hist] == [10, 20, 30, 40]
    from omniloom.codecs.audio import AudioCodec

    codec = AudioCodec.from_pretrained(out / "codec")
    assert codec.encode(torch.from_numpy(clips[0])[None]).shape == (1, 25, 1)


def test_train_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        ca.train(args(tmp_path / "nope", tmp_path / "o1", 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        ca.train(args(tmp_path / "empty", tmp_path / "o2", 1))
    bad = make_folder(tmp_path / "bad", n=1)
    (bad / "broken.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(ValueError, match="broken.wav"):
        ca.train(args(bad, tmp_path / "o3", 1))
    with pytest.raises(ValueError, match="config"):
        ca.train(args(make_folder(tmp_path / "ok", n=1), tmp_path / "o4", 1, config='{"nonsense": 1}'))


@pytest.mark.slow
def test_train_on_world_speech(tmp_path):
    pytest.importorskip("espeakng_loader")
    out = tmp_path / "w"
    a = args("world", out, 2, world_clips=3)
    ca.train(a)
    wavs = sorted((out / "world_cache").glob("*.wav"))
    assert len(wavs) == 3 and all(p.with_suffix(".txt").read_text().strip() for p in wavs)
    assert (out / "codec" / "model.safetensors").is_file()
