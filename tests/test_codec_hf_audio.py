"""transformers audio codecs through ``hf:PATH`` specs (Mimi, EnCodec, DAC, X-codec), at random init.

Tiny configs saved with ``save_pretrained``: code shapes and ranges, decode lengths, ``codebooks=N``,
option errors, streaming (chunked == whole), and tokenize -> one train step -> generate -> decode
through each adapter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
sf = pytest.importorskip("soundfile")

from omniloom.codecs import load_codec  # noqa: E402

KINDS = ("mimi", "encodec", "dac", "xcodec")
TOTAL = 4  # codebooks in each tiny model


def _seed_codebooks(model, latents: torch.Tensor, seed: int = 0) -> None:
    """Random init leaves Euclidean codebooks at zero (every code 0) or far from the encoder's
    latents (every frame the same code): draw each entry near a latent frame of a probe signal."""
    g = torch.Generator().manual_seed(seed)
    frames = latents.transpose(1, 2).reshape(-1, latents.shape[1])  # (N, D)
    for name, buf in model.named_buffers():
        if name.endswith(("embed_sum", ".embed", "embed_avg")):
            pick = frames[torch.randint(len(frames), (buf.shape[0],), generator=g)]
            scale = 1.0 if ".layers.0." in name or ".quantizers.0." in name else 0.1  # the first stage
            buf.copy_(scale * pick[:, : buf.shape[1]] + 0.05 * torch.randn(buf.shape, generator=g))
        elif name.endswith("cluster_usage"):
            buf.fill_(1.0)


def speechy(n: int, sr: int = 16000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / sr
    return 0.3 * torch.sin(2 * torch.pi * 180 * t * (1 + 3 * t)) + 0.05 * torch.randn(n, generator=g)


def build_tiny(kind: str, path: Path) -> Path:
    """A random-init tiny ``kind`` codec at 16 kHz saved into ``path`` (4 codebooks of 64)."""
    T = transformers
    torch.manual_seed(0)
    probe = speechy(3200)[None, None]
    if kind == "mimi":
        cfg = T.MimiConfig(sampling_rate=16000, hidden_size=32, num_filters=4, upsampling_ratios=[4, 4, 5],
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                           codebook_size=64, codebook_dim=16, vector_quantization_hidden_dimension=16,
                           num_quantizers=TOTAL, upsample_groups=32, sliding_window=6, max_position_embeddings=512)
        m = T.MimiModel(cfg).eval()
        with torch.no_grad():
            lat = m.quantizer.semantic_residual_vector_quantizer.input_proj(m.encoder(probe).latents)
    elif kind == "encodec":
        cfg = T.EncodecConfig(sampling_rate=16000, hidden_size=16, num_filters=4, upsampling_ratios=[4, 4, 5],
                              num_lstm_layers=1, codebook_size=64, codebook_dim=16, target_bandwidths=[1.2, 2.4, 4.8])
        m = T.EncodecModel(cfg).eval()
        with torch.no_grad():
            lat = m.encoder(probe)
    elif kind == "dac":
        cfg = T.DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 4, 5], decoder_hidden_size=32,
                          n_codebooks=TOTAL, codebook_size=64, codebook_dim=4)
        m = T.DacModel(cfg).eval()
        lat = None  # DAC's codebooks are embeddings with a random init already
    else:
        hubert = T.HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                conv_dim=(8, 8), conv_stride=(5, 8), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                                num_conv_pos_embedding_groups=2)
        acoustic = dict(encoder_hidden_size=4, downsampling_ratios=[2, 4, 5], decoder_hidden_size=32,
                        upsampling_ratios=[5, 4, 2], hidden_size=32, codebook_dim=4)
        cfg = T.XcodecConfig(acoustic_model_config=acoustic, semantic_model_config=hubert, codebook_size=64,
                             target_bandwidths=[2.4, 4.8, 9.6])
        m = T.XcodecModel(cfg).eval()
        lat = 0.5 * torch.randn(1, cfg.hidden_size, 64, generator=torch.Generator().manual_seed(1))
    if lat is not None:
        _seed_codebooks(m, lat)
    m.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_codecs")
    return {k: build_tiny(k, root / k) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_codes_in_range_and_decode_shapes(tiny_dirs, kind):
    codec = load_codec(f"hf:{tiny_dirs[kind]}")
    assert codec.modality == "audio" and codec.sample_rate == 16000 and codec.codebook_size == 64
    assert codec.frame_rate == codec.sample_rate / codec.hop
    assert codec.bits_per_second == pytest.approx(codec.frame_rate * codec.num_codebooks * 6)
    x = torch.stack([speechy(3000), speechy(3000, seed=1)])  # not a whole number of frames
    codes = codec.encode(x)
    frames = -(-3000 // codec.hop)
    assert codes.shape == (2, frames, codec.num_codebooks) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    assert codes.unique().numel() > 2  # the seeded codebooks are used, not one code everywhere
    y = codec.decode(codes)
    assert y.shape == (2, frames * codec.hop) and torch.isfinite(y).all() and y.abs().max() > 0


def test_default_codebooks_follow_transformers(tiny_dirs):
    assert load_codec(f"hf:{tiny_dirs['mimi']}").num_codebooks == TOTAL  # all
    assert load_codec(f"hf:{tiny_dirs['dac']}").num_codebooks == TOTAL  # all
    assert load_codec(f"hf:{tiny_dirs['encodec']}").num_codebooks == 1  # smallest bandwidth: 1.2 kbps / 1.2 per codebook
    assert load_codec(f"hf:{tiny_dirs['xcodec']}").num_codebooks == TOTAL  # largest bandwidth


@pytest.mark.parametrize("kind", KINDS)
def test_codebooks_option_keeps_the_first_n(tiny_dirs, kind):
    full = load_codec(f"hf:{tiny_dirs[kind]}?codebooks={TOTAL}")
    two = load_codec(f"hf:{tiny_dirs[kind]}?codebooks=2")
    assert two.num_codebooks == 2 and two.bits_per_second == pytest.approx(full.bits_per_second / 2)
    x = speechy(2400)[None]
    c_full, c_two = full.encode(x), two.encode(x)
    assert torch.equal(c_two, c_full[..., :2])  # residual quantizers: the first 2 do not depend on the rest
    y2, y4 = two.decode(c_two), full.decode(c_full)
    assert y2.shape == y4.shape and not torch.allclose(y2, y4)  # the last codebooks change the sound
    with pytest.raises(ValueError, match=r"audio codes must be \(B, frames, 2\)"):
        two.decode(c_full)


@pytest.mark.parametrize("spec, match", [
    ("?codebooks=0", "codebooks=0 is out of range"),
    ("?codebooks=5", r"codebooks=5 is out of range.*has 4 codebooks"),
    ("?codebooks=two", "codebooks='two' is not an integer"),
    ("?bitrate=6", r"unknown option\(s\) bitrate"),
])
def test_bad_options_are_named(tiny_dirs, spec, match):
    with pytest.raises(ValueError, match=match):
        load_codec(f"hf:{tiny_dirs['mimi']}{spec}")


def test_bandwidth_option(tiny_dirs):
    assert load_codec(f"hf:{tiny_dirs['encodec']}?bandwidth=2.4").num_codebooks == 2
    with pytest.raises(ValueError, match=r"bandwidth=3 is not one of the model's target_bandwidths \(1.2, 2.4, 4.8\)"):
        load_codec(f"hf:{tiny_dirs['encodec']}?bandwidth=3")
    with pytest.raises(ValueError, match="bandwidth=2.4 means 2 codebooks, but codebooks=3"):
        load_codec(f"hf:{tiny_dirs['encodec']}?bandwidth=2.4&codebooks=3")
    with pytest.raises(ValueError, match=r"unknown option\(s\) bandwidth"):
        load_codec(f"hf:{tiny_dirs['dac']}?bandwidth=2.4")


def _stream(dec, codes: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    parts, i = [], 0
    while i < codes.shape[1]:
        for c in chunks:
            parts.append(dec.push(codes[:, i : i + c]))
            i += c
    parts.append(dec.flush())
    return torch.cat([p for p in parts if p.numel()], dim=1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunks", [[2], [1, 3, 2, 5]])
def test_stream_decode_equals_whole(tiny_dirs, kind, chunks):
    codec = load_codec(f"hf:{tiny_dirs[kind]}")
    codes = codec.encode(speechy(16 * codec.hop)[None])
    whole = codec.decode(codes)
    streamed = _stream(codec.stream_decoder(), codes, chunks)
    assert streamed.shape == whole.shape
    # float32 rounding only: measured max |diff| / peak <= 4e-7 for all four
    assert (streamed - whole).abs().max() <= 1e-5 * whole.abs().max()


def test_stream_decode_latency(tiny_dirs):
    """Causal decoders answer the first chunk at once (EnCodec's reflect padding waits for its first
    frames once); windowed ones hold back exactly their look-ahead."""
    mimi = load_codec(f"hf:{tiny_dirs['mimi']}")
    codes = mimi.encode(speechy(10 * mimi.hop)[None])
    assert mimi.stream_decoder().push(codes[:, :2]).shape[1] == 2 * mimi.hop and mimi.lookahead_samples == 0
    enc = load_codec(f"hf:{tiny_dirs['encodec']}")
    s = enc.stream_decoder()
    codes = enc.encode(speechy(20 * enc.hop)[None])
    first = s.push(codes[:, : enc.first_frames - 1])
    assert first.shape[1] == 0 and s.push(codes[:, enc.first_frames - 1 : enc.first_frames]).shape[1] == \
        enc.first_frames * enc.hop
    dac = load_codec(f"hf:{tiny_dirs['dac']}")
    assert dac.lookahead_frames > 0 and dac.lookahead_samples == dac.lookahead_frames * dac.hop
    codes = dac.encode(speechy((dac.lookahead_frames + 6) * dac.hop)[None])
    assert dac.stream_decoder().push(codes).shape[1] == 6 * dac.hop


def test_mimi_stream_encode_equals_whole(tiny_dirs):
    codec = load_codec(f"hf:{tiny_dirs['mimi']}")
    x = torch.stack([speechy(3000), speechy(3000, seed=3)])  # 18.75 frames: the last one partial
    whole = codec.encode(x)
    enc = codec.stream_encoder()
    parts = [enc.push(x[:, a : a + 500]) for a in range(0, 3000, 500)] + [enc.flush()]
    assert torch.equal(torch.cat(parts, dim=1), whole)
    assert parts[0].shape[1] == 500 // codec.hop  # frames come out as soon as their samples are in


# ----------------------------------------------------------------------------- the whole loom


def _write_wav(path: Path, seconds: float, seed: int, sr: int = 8000) -> str:
    """A clip at 8 kHz: the processor resamples it (soxr) to the codec's rate."""
    sf.write(path, speechy(int(seconds * sr), sr, seed).numpy(), sr)
    return path.name


@pytest.mark.parametrize("kind", KINDS)
def test_tokenize_train_generate_decode(tiny_dirs, tmp_path, kind):
    from omniloom.cli import main
    from omniloom.codecs.text import TextTokenizer
    from omniloom.data.shards import ShardSet
    from omniloom.infer.generate import AudioChunk, Done, OmniModel, generate
    from omniloom.infer.sampling import SamplingParams

    spec = f"hf:{tiny_dirs[kind]}?codebooks=2"
    rows = []
    for i in range(4):
        wav = _write_wav(tmp_path / f"a{i}.wav", 0.1 + 0.02 * i, i)
        rows.append({"messages": [{"role": "user", "content": f"say {i}"},
                                  {"role": "assistant", "content": [{"type": "audio", "path": wav,
                                                                     "transcript": f"{i}"}]}]})
        rows.append({"messages": [{"role": "user", "content": [{"type": "audio", "path": wav}]},
                                  {"role": "assistant", "content": f"{i}"}]})
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tok = TextTokenizer.train([f"say {i} {i}" for i in range(10)] * 5, vocab_size=300, min_frequency=1)
    tok_path = tok.save(tmp_path / "tok")
    assert main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(tmp_path / "sh"),
                 "--codec", spec, "--val-fraction", "0", "--no-progress"]) == 0
    shards = ShardSet.open(tmp_path / "sh" / "train")
    codec = load_codec(spec)
    vocab_json = json.loads((tmp_path / "sh" / "train" / "vocab.json").read_text())
    assert vocab_json["audio"] == {"codebook_size": 64, "codebooks": 2}
    lo, hi = (vocab_json["ranges"]["audio"])
    audio_ids = shards.ids[(shards.ids >= lo) & (shards.ids < hi)]
    # 4 clips of 0.1-0.16 s (16 kHz after resampling), each in 2 documents, 2 ids per frame
    frames = sum(-(-round((0.1 + 0.02 * i) * 16000) // codec.hop) for i in range(4))
    assert len(audio_ids) == 2 * 2 * frames

    run = tmp_path / "run"
    assert main(["train", "--preset", "debug", f"data.train={tmp_path / 'sh'}", f"train.out_dir={run}",
                 "model.vocab_size=0", "model.dim=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
                 "model.ffn_dim=64", "data.seq_len=128", "train.steps=1", "train.batch_size=2",
                 "train.micro_batch_size=2", "train.progress=false", "train.dtype=fp32", "train.ckpt_every=1"]) == 0
    latest = run / "ckpt" / (run / "ckpt" / "latest").read_text().strip()
    assert json.loads((latest / "codecs.json").read_text())["audio"].startswith("hf:")
    omni = OmniModel.load(latest)
    assert omni.codecs["audio"].num_codebooks == 2
    events = list(generate(omni, [{"role": "user", "content": "say 1"}], output_modality="audio",
                           sampling=SamplingParams(max_new_tokens=24, temperature=1.0, seed=0)))
    done = events[-1]
    assert isinstance(done, Done)
    pcm = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)] or [np.zeros(0)])
    generated_frames = done.usage["audio_tokens"] // 2
    assert generated_frames > 0 and len(pcm) == generated_frames * codec.hop  # every frame decoded, in chunks
    assert all(e.sample_rate == 16000 for e in events if isinstance(e, AudioChunk))


def test_codec_eval_cli_takes_any_spec_and_a_folder(tiny_dirs, tmp_path, capsys):
    from omniloom.cli import main

    data = tmp_path / "clips"
    data.mkdir()
    _write_wav(data / "a.wav", 0.1, 0)
    (data / "a.txt").write_text("hello there\n")
    _write_wav(data / "b.wav", 0.12, 1)
    out = tmp_path / "eval.json"
    assert main(["codec", "eval", "audio", f"hf:{tiny_dirs['mimi']}?codebooks=3", "--data", str(data),
                 "--judge", "auto", "--speed-seconds", "0.05", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    codec = load_codec(f"hf:{tiny_dirs['mimi']}?codebooks=3")
    assert res["n"] == 2 and res["num_codebooks"] == 3 and res["codec"].endswith("?codebooks=3")
    assert res["bits_per_second"] == pytest.approx(codec.frame_rate * 3 * 6)
    assert res["frame_rate"] == codec.frame_rate and res["encode_rtf_1t"] > 0 and res["decode_rtf_1t"] > 0
    assert ("judge" in res) != ("judge_note" in res)  # measured by an installed recogniser, or said why not
    table = capsys.readouterr().out
    assert f"| bits_per_second | {codec.bits_per_second:.4g} |" in table and "| num_codebooks | 3 |" in table
    assert main(["codec", "eval", "audio", "audio-world", "--data", str(tmp_path / "none")]) == 2
    assert "neither 'world' nor a folder" in capsys.readouterr().err
    assert main(["codec", "eval", "audio", f"hf:{tiny_dirs['mimi']}?codebooks=5", "--data", str(data)]) == 2
    assert "codebooks=5 is out of range" in capsys.readouterr().err
