"""Input unlike the model's training data is flagged (issue 21.4): familiarity.json, the processor's
scores, the warnings in generate(), the CLI and the server. The measured rates are in
docs/benchmarks.md (bench/familiarity.py)."""

import base64
import io
import json
import re

import httpx2 as httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from omniloom.infer.generate import Done, OmniModel, generate
from omniloom.processor.familiarity import (FAMILIARITY_FILE, FLOOR_MIN_DB, calibrate, checks, pause_floor_db,
                                            read_familiarity)
from omniloom.serve import ServeSettings, create_app
from omniloom.serve.testing import serve_in_thread
from omniloom.serve.tiny import build_tiny_model


@pytest.fixture(scope="module")
def world():
    return OmniModel.load("world")


def _world_image(seed: int) -> np.ndarray:
    from omniloom.world.render import render_scene
    from omniloom.world.scene import sample_scene

    rng = np.random.default_rng(seed)
    return render_scene(sample_scene(rng), rng)  # (H, W, 3) uint8


def _world_speech(text: str, seed: int) -> np.ndarray:
    from omniloom.world.speech import sample_user_voice, synthesize

    rng = np.random.default_rng(seed)
    return synthesize(text, sample_user_voice(rng), rng)  # 16 kHz float


def _photo_like(seed: int) -> np.ndarray:
    """Smooth random texture with fine detail: nothing the shapes world draws."""
    rng = np.random.default_rng(seed)
    base = rng.random((8, 8, 3))
    img = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((96, 96), Image.Resampling.BICUBIC))
    return np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)


def _warnings(omni, content) -> list[str]:
    done = [ev for ev in generate(omni, [{"role": "user", "content": content}], outputs=("text",))
            if isinstance(ev, Done)]
    return done[0].warnings


def test_the_world_model_ships_its_familiarity(world):
    fam = read_familiarity("src/omniloom/assets/models/world")
    assert fam["image"]["measure"] == "reconstruction_mse" and fam["image"]["median"] < fam["image"]["threshold"]
    codec, floor = checks(fam, "audio")
    assert codec["measure"] == "reconstruction_logspec_l1" and codec["median"] < codec["threshold"]
    # the world's user speech is digitally silent between words, so the floor threshold is the clamp
    assert floor["measure"] == "pause_floor_db" and floor["calibrated"] < -150 and floor["threshold"] == FLOOR_MIN_DB
    assert world.processor.familiarity == fam


def test_world_images_pass_and_other_images_are_flagged(world):
    ask = {"type": "text", "text": "what is in the picture?"}
    for seed in range(3):
        assert _warnings(world, [{"type": "image", "image": _world_image(100 + seed)}, ask]) == []
    for seed in range(3):
        w = _warnings(world, [{"type": "image", "image": _photo_like(seed)}, ask])
        assert len(w) == 1 and "this image is unlike the model's training data" in w[0], w


def test_world_speech_passes_and_other_audio_is_flagged(world):
    ask = {"type": "text", "text": "transcribe the audio"}
    for seed, text in enumerate(["how many circles are there", "what color is the big square"]):
        speech = _world_speech(text, 200 + seed)
        assert _warnings(world, [{"type": "audio", "audio": speech, "sample_rate": 16000}, ask]) == []
    t = np.arange(32000) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 1500 * t) * t).astype(np.float32)  # a sweep, no speech at all
    chord = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (262, 330, 392, 523)).astype(np.float32)  # music
    for clip in (chirp, chord):
        w = _warnings(world, [{"type": "audio", "audio": clip, "sample_rate": 16000}, ask])
        assert len(w) == 1 and "this audio is unlike" in w[0], w


def test_a_noise_floor_flags_world_speech_as_a_recording(world):
    """The same world sentence passes clean and with 16-bit dither, and is flagged once it carries a
    microphone-like noise floor (-60 dBFS, where the read speech measured sits): its pauses are heard."""
    ask = {"type": "text", "text": "transcribe the audio"}
    speech = _world_speech("how many circles are there", 7)
    rng = np.random.default_rng(0)
    dithered = speech + rng.uniform(-1, 1, speech.shape) / 32768  # about -100 dBFS
    assert _warnings(world, [{"type": "audio", "audio": dithered.astype(np.float32), "sample_rate": 16000}, ask]) == []
    noisy = speech + rng.normal(0, 10 ** (-60 / 20), speech.shape)
    w = _warnings(world, [{"type": "audio", "audio": noisy.astype(np.float32), "sample_rate": 16000}, ask])
    assert len(w) == 1 and re.search(r"its pauses sit at -6[0-2] dBFS", w[0]), w  # the quietest frame of many


def test_pause_floor_measures_pauses_only():
    t = torch.arange(16000) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * 220 * t)
    assert pause_floor_db(tone, 16000) == -180.0  # no pause at all: a trimmed word gives no evidence
    gap = torch.cat([tone, torch.zeros(1600), tone])
    assert pause_floor_db(gap, 16000) == -180.0  # digital silence
    floor = gap + torch.randn(len(gap), generator=torch.Generator().manual_seed(0)) * 10 ** (-60 / 20)
    assert abs(pause_floor_db(floor, 16000) + 60) < 3
    assert pause_floor_db(torch.zeros(10), 16000) == -180.0  # shorter than a frame


@pytest.mark.skipif(not __import__("os").path.isdir("/usr/share/pocketsphinx/test/data/librivox"),
                    reason="pocketsphinx-testdata is not installed")
def test_real_read_speech_is_flagged(world):
    """LibriVox read speech, which the codec check alone let through half the time (issue 21.4)."""
    import glob

    files = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav"))
    assert files
    ask = {"type": "text", "text": "transcribe the audio"}
    for f in files:
        w = _warnings(world, [{"type": "audio", "audio": open(f, "rb").read()}, ask])
        assert len(w) == 1 and "this audio is unlike" in w[0], (f, w)


def test_calibrate_sets_the_quantile_and_checks_its_input():
    omni = build_tiny_model()
    rng = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=rng) for _ in range(40)]
    fam = calibrate(omni.codecs, images=images, quantile=0.9, progress=False)
    assert set(fam) == {"image"} and fam["image"]["n"] == 40 and fam["image"]["quantile"] == 0.9
    assert fam["image"]["median"] <= fam["image"]["threshold"]
    with pytest.raises(ValueError, match="too few"):
        calibrate(omni.codecs, images=images[:5], progress=False)
    with pytest.raises(ValueError, match="quantile"):
        calibrate(omni.codecs, images=images, quantile=1.0, progress=False)
    g = torch.Generator().manual_seed(1)
    audio = [torch.cat([torch.randn(4000, generator=g) * 0.1, torch.zeros(800), torch.randn(4000, generator=g) * 0.1])
             for _ in range(30)]
    fam = calibrate(omni.codecs, audio=audio, progress=False)
    codec, floor = fam["audio"]
    assert codec["measure"] == "reconstruction_logspec_l1" and codec["n"] == 30
    assert floor["calibrated"] == -180.0 and floor["threshold"] == FLOOR_MIN_DB  # the clamp, recorded as such


def test_bad_familiarity_json_is_named(tmp_path):
    (tmp_path / FAMILIARITY_FILE).write_text(json.dumps({"image": {"measure": "psnr", "threshold": 1}}))
    with pytest.raises(ValueError, match="reconstruction_mse"):
        read_familiarity(tmp_path)
    (tmp_path / FAMILIARITY_FILE).write_text(json.dumps({"audio": [
        {"measure": "reconstruction_logspec_l1", "threshold": 1.0}, {"measure": "loudness", "threshold": 1}]}))
    with pytest.raises(ValueError, match="pause_floor_db.*loudness"):
        read_familiarity(tmp_path)
    (tmp_path / FAMILIARITY_FILE).write_text(json.dumps({"audio": []}))
    with pytest.raises(ValueError, match="empty list"):
        read_familiarity(tmp_path)
    (tmp_path / FAMILIARITY_FILE).write_text(json.dumps({"smell": {}}))
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        read_familiarity(tmp_path)
    assert read_familiarity(tmp_path / "nothing") is None


def test_familiarity_verb_writes_the_file(tmp_path, capsys):
    from omniloom.cli import main
    from omniloom.serve.tiny import save_model

    model = tmp_path / "tiny"
    save_model(build_tiny_model(), model)
    for i in range(25):
        Image.fromarray(_world_image(i)).save(tmp_path / f"w{i}.png")
    assert main(["familiarity", "--model", str(model), "--images", str(tmp_path / "*.png")]) == 0
    fam = read_familiarity(model)
    assert fam["image"]["n"] == 25 and "25 images" in fam["image"]["source"]
    # --data: the user turns' media only (an assistant's drawing is what the model writes, not reads)
    rows = [{"messages": [{"role": "user", "content": [{"type": "image", "path": f"w{i}.png"}]},
                          {"role": "assistant", "content": [{"type": "image", "path": "absent.png"}]}]}
            for i in range(22)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["familiarity", "--model", str(model), "--data", str(tmp_path / "train.jsonl")]) == 0
    fam = read_familiarity(model)
    assert fam["image"]["n"] == 22 and "(user turns)" in fam["image"]["source"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image", "path": "gone.png"}]}]}) + "\n")
    assert main(["familiarity", "--model", str(model), "--data", str(tmp_path / "bad.jsonl")]) == 2
    assert "named in --data do not exist" in capsys.readouterr().err
    assert main(["familiarity", "--model", str(model), "--images", str(tmp_path / "none*.png")]) == 2
    assert "no image files match" in capsys.readouterr().err


def test_server_answers_carry_the_warning_and_log_it(caplog):
    omni = build_tiny_model()
    flag_all = {"image": {"measure": "reconstruction_mse", "threshold": -1.0, "quantile": 0.995},
                "audio": {"measure": "reconstruction_logspec_l1", "threshold": -1.0, "quantile": 0.995}}
    omni.processor.familiarity = flag_all
    app = create_app(omni, ServeSettings(model_id="tiny"))
    buf = io.BytesIO()
    Image.fromarray(_photo_like(0)).save(buf, format="PNG")
    url_img = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    wav = io.BytesIO()
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 16000), 16000, format="WAV")
    with serve_in_thread(app) as url, caplog.at_level("WARNING", logger="omniloom.infer"):
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={"model": "tiny", "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url_img}},
                                         {"type": "text", "text": "what is it?"}]}]})
        assert r.status_code == 200 and "this image is unlike" in r.json()["warnings"][0]
        body = {"model": "tiny", "max_tokens": 2, "stream": True, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url_img}}]}]}
        chunks = [json.loads(x[6:]) for x in httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
                  .text.split("\n\n") if x.startswith("data: {")]
        assert any("warnings" in c for c in chunks)
        r = httpx.post(url + "/v1/audio/transcriptions", data={"model": "tiny"}, timeout=60,
                       files={"file": ("a.wav", wav.getvalue(), "audio/wav")})
        assert r.status_code == 200 and "this audio is unlike" in r.json()["warnings"][0]
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={"model": "tiny", "max_tokens": 2,
                                                                       "messages": [{"role": "user", "content": "hi"}]})
        assert "warnings" not in r.json()  # text alone: nothing to flag
    assert any("unlike the model's training data" in rec.getMessage() for rec in caplog.records)
