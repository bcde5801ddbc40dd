"""Image codecs from transformers (hf:DIR): Chameleon, Emu3 and Janus VQ-VAEs, random-init tiny configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from omniloom.codecs import Codec, load_codec  # noqa: E402
from omniloom.codecs.base import HF_ADAPTERS  # noqa: E402

# tiny random-init VQ-VAEs: 32x32 images, 4x down -> 8x8 = 64 codes of 64
TINY = {
    "chameleon": ("ChameleonVQVAE", "ChameleonVQVAEConfig",
                  dict(embed_dim=8, num_embeddings=64, latent_channels=32, resolution=32, base_channels=32,
                       channel_multiplier=[1, 1, 1], num_res_blocks=1, attn_resolutions=None)),
    "emu3": ("Emu3VQVAE", "Emu3VQVAEConfig",
             dict(codebook_size=64, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 1, 1],
                  num_res_blocks=1, attn_resolutions=[], temporal_downsample_factor=2, hidden_size=32)),
    "janus": ("JanusVQVAE", "JanusVQVAEConfig",
              dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 1, 1],
                   num_res_blocks=1, num_patches=8, projection_dim=16, image_token_embed_dim=16)),
}
# Emu3's VQ config names no image size (default 512): the tests pick 32
SPEC_OPTS = {"chameleon": "", "emu3": "?size=32", "janus": ""}
FAMILIES = sorted(TINY)


def _tiny_vq(family: str):
    model_cls, cfg_cls, kw = TINY[family]
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (folder written by save_pretrained, the transformers model)."""
    out = {}
    for family in FAMILIES:
        vq = _tiny_vq(family)
        d = tmp_path_factory.mktemp(family)
        vq.save_pretrained(d)
        out[family] = (d, vq)
    return out


def _spec(saved, family: str) -> str:
    return f"hf:{saved[family][0]}{SPEC_OPTS[family]}"


@pytest.mark.parametrize("family", FAMILIES)
def test_codes_in_range_and_decode_shapes(saved, family):
    codec = load_codec(_spec(saved, family))
    assert isinstance(codec, Codec) and codec.modality == "image" and codec.num_codebooks == 1
    assert (codec.resolution, codec.tokens_per_item, codec.codebook_size) == (32, 64, 64)
    assert codec.frame_rate is None and codec.sample_rate is None
    x = torch.rand(3, 3, 32, 32)
    codes = codec.encode(x)
    assert codes.shape == (3, 64) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 64
    assert len(codes.unique()) > 4  # random weights still spread images over the codebook
    assert torch.equal(codec.encode(x.clone()), codes)
    if family == "chameleon":
        assert not codec.can_decode
        with pytest.raises(ValueError, match="has no decoder"):
            codec.decode(codes)
        return
    y = codec.decode(codes)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1 and float(y.std()) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_codes_and_pixels_are_the_models_own(saved, family):
    # the adapter feeds 2x - 1 (Chameleon: x * 255 * 0.0078 - 1, its processor) and reads the grid row-major
    codec = load_codec(_spec(saved, family))
    vq = saved[family][1]
    x = torch.rand(2, 3, 32, 32)
    scale = 255 * 0.0078 if family == "chameleon" else 2.0
    with torch.no_grad():
        if family == "emu3":
            own = torch.stack(list(vq.encode(x * scale - 1, image_sizes=torch.tensor([[32, 32]] * 2)).image_tokens))
        else:
            own = vq.encode(x * scale - 1).image_tokens
    codes = codec.encode(x)
    assert torch.equal(codes, own.reshape(2, 64))
    if family != "chameleon":
        with torch.no_grad():
            pix = vq.decode(codes.view(2, 8, 8) if family == "emu3" else codes)
        assert torch.allclose(codec.decode(codes), ((pix + 1) / 2).clamp(0, 1), atol=1e-6)


def test_preprocessor_config_sets_the_normalisation(saved, tmp_path):
    d, vq = saved["janus"]
    folder = tmp_path / "janus-clip"
    vq.save_pretrained(folder)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std}))
    codec = load_codec(f"hf:{folder}")
    assert codec.normalization.endswith("preprocessor_config.json")
    x = torch.rand(2, 3, 32, 32)
    normed = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        own = vq.encode(normed).image_tokens.reshape(2, 64)
    assert torch.equal(codec.encode(x), own)
    assert not torch.equal(load_codec(f"hf:{d}").encode(x), own)  # the default (2x - 1) differs
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5], "image_std": [0.5, 0.5, 0.5]}))
    with pytest.raises(ValueError, match="image_mean and image_std must be 3 numbers"):
        load_codec(f"hf:{folder}")


def test_size_option(saved):
    janus = load_codec(f"hf:{saved['janus'][0]}?size=48")
    assert (janus.resolution, janus.tokens_per_item) == (48, 144)
    codes = janus.encode(torch.rand(1, 3, 48, 48))
    assert codes.shape == (1, 144) and janus.decode(codes).shape == (1, 3, 48, 48)
    emu3 = load_codec(f"hf:{saved['emu3'][0]}?size=16")
    assert emu3.tokens_per_item == 16 and emu3.decode(emu3.encode(torch.rand(2, 3, 16, 16))).shape == (2, 3, 16, 16)
    assert load_codec(f"hf:{saved['emu3'][0]}").resolution == 512  # Emu3's default: 512x512
    for bad, msg in (("size=30", "multiple of 4"), ("size=0", "multiple of 4"), ("size=big", "whole number"),
                     ("sz=32", "unknown option")):
        with pytest.raises(ValueError, match=msg):
            load_codec(f"hf:{saved['janus'][0]}?{bad}")


def test_bad_images_and_codes_are_clear_errors(saved):
    codec = load_codec(_spec(saved, "janus"))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        codec.encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        codec.decode(torch.full((1, 64), 64))
    with pytest.raises(ValueError, match=r"\(B, 64\)"):
        codec.decode(torch.zeros(1, 10, dtype=torch.long))


def test_registered_model_types():
    import omniloom.codecs.hf_image  # noqa: F401  (load_codec imports it on the first hf: spec)

    for t in ("chameleon_vqgan", "emu3_vqgan", "janus_vqgan", "chameleon", "emu3", "janus"):
        assert HF_ADAPTERS[t] == ("omniloom.codecs.hf_image", "HFImageCodec")


def _full_model(family: str):
    """A tiny whole model (LLM + VQ) of the family, random init."""
    _, _, vq_kw = TINY[family]
    torch.manual_seed(1)
    llm = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2)
    vocab_map = {**{f"IMGIMG{chr(65 + i)}Z": 10 + i for i in range(70)}, "<image>": 5}
    if family == "chameleon":
        cfg = transformers.ChameleonConfig(**llm, vq_config=vq_kw, vocabulary_map=vocab_map)
        return transformers.ChameleonForConditionalGeneration(cfg)
    if family == "emu3":
        cfg = transformers.Emu3Config(vq_config=vq_kw, vocabulary_map=vocab_map,
                                      text_config={**llm, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
        return transformers.Emu3ForConditionalGeneration(cfg)
    cfg = transformers.JanusConfig(
        vq_config={**vq_kw, "image_token_embed_dim": 32}, text_config={"model_type": "llama", **llm},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=4))
    return transformers.JanusForConditionalGeneration(cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_model_folder_gives_the_codes_of_its_vq(tmp_path, family):
    model = _full_model(family)
    model.save_pretrained(tmp_path / "full")
    model.get_submodule("model.vqmodel").save_pretrained(tmp_path / "vq")
    full = load_codec(f"hf:{tmp_path / 'full'}{SPEC_OPTS[family]}")
    alone = load_codec(f"hf:{tmp_path / 'vq'}{SPEC_OPTS[family]}")
    assert (full.family.name, full.tokens_per_item) == (family, 64)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(full.encode(x), alone.encode(x))
    if family != "chameleon":
        codes = full.encode(x)
        assert torch.equal(full.decode(codes), alone.decode(codes))


def test_full_model_without_vq_weights_says_how_to_save_the_vq(tmp_path):
    from safetensors.torch import save_file

    _, _, vq_kw = TINY["janus"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "janus", "vq_config": vq_kw}))
    save_file({"model.language_model.embed_tokens.weight": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"no vqmodel\.\* tensors.*save_pretrained"):
        load_codec(f"hf:{tmp_path}")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_codec(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "janus"}))
    with pytest.raises(ValueError, match="without a vq_config"):
        load_codec(f"hf:{tmp_path}")


def _images(folder, n: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = np.zeros((40, 48, 3), dtype=np.uint8)
        y, x = rng.integers(0, 24, size=2)
        arr[y:y + 16, x:x + 16] = rng.integers(60, 255, size=3)
        paths.append(str(folder / f"im{i}.png"))
        Image.fromarray(arr).save(paths[-1])
    return paths


@pytest.mark.parametrize("family", FAMILIES)
def test_codec_eval_verb_on_a_folder(saved, tmp_path, family, capsys):
    from omniloom.cli import main

    _images(tmp_path / "imgs", 3)
    out = tmp_path / "eval.json"
    assert main(["codec", "eval", "image", _spec(saved, family), "--data", str(tmp_path / "imgs"),
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 3 and res["tokens_per_image"] == 64 and res["resolution"] == 32
    assert res["bits_per_image"] == pytest.approx(64 * 6) and res["encode_images_per_s"] > 0
    if family == "chameleon":
        assert res["psnr_db"] is None and res["decode_images_per_s"] is None
    else:
        assert res["psnr_db"] > 0 and res["decode_images_per_s"] > 0
    assert "tokens_per_image" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_tokenize_train_generate_decode(saved, tmp_path, family):
    """Shards through the hf codec -> one train step -> the checkpoint draws (and reads) images with it."""
    from omniloom.cli import main
    from omniloom.codecs.text import TextTokenizer
    from omniloom.infer.generate import Done, ImageOut, OmniModel, TextDelta, generate
    from omniloom.infer.sampling import SamplingParams

    imgs = _images(tmp_path / "imgs", 4)
    chats = []
    for i, p in enumerate(imgs):
        chats.append({"messages": [{"role": "user", "content": f"draw square {i}"},
                                   {"role": "assistant", "content": [{"type": "image", "path": p}]}]})
        chats.append({"messages": [{"role": "user", "content": [{"type": "image", "path": p},
                                                                {"type": "text", "text": "what is it?"}]},
                                   {"role": "assistant", "content": f"square {i}"}]})
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps(c) for c in chats) + "\n")
    tok = TextTokenizer.train([f"draw square {i} what is it? square {i}" for i in range(4)] * 10, vocab_size=280,
                              min_frequency=1)
    spec = _spec(saved, family)
    assert main(["tokenize", "--input", str(data), "--tokenizer", str(tok.save(tmp_path / "tok")),
                 "--codec", spec, "--out", str(tmp_path / "shards"), "--workers", "1", "--no-progress"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--preset", "debug", f"data.train={tmp_path / 'shards' / 'train'}", f"train.out_dir={run}",
                 "model.vocab_size=0", "data.seq_len=128", "train.steps=1", "train.batch_size=2",
                 "train.micro_batch_size=2", "train.progress=false", "train.dtype=fp32", "train.ckpt_every=1"]) == 0
    omni = OmniModel.load(run / "ckpt" / (run / "ckpt" / "latest").read_text().strip())
    assert omni.codecs["image"].family.name == family and omni.vocab.image_tokens == 64
    # reading an image: it goes in through the hf codec, a text answer comes out
    seen = [{"role": "user", "content": [{"type": "image", "path": imgs[0]}, {"type": "text", "text": "what is it?"}]}]
    events = list(generate(omni, seen, outputs=("text",), sampling=SamplingParams(max_new_tokens=3, seed=0)))
    assert isinstance(events[-1], Done) and all(isinstance(e, (TextDelta, Done)) for e in events)
    assert events[-1].usage["prompt_tokens"] > 64  # the image's 64 codes are in the prompt
    # drawing: 64 codes, decoded by the hf codec (Chameleon cannot decode: a clear error)
    ask = [{"role": "user", "content": "draw square 1"}]
    kw = dict(output_modality="image", outputs=("image",), sampling=SamplingParams(max_new_tokens=70, seed=0))
    if family == "chameleon":
        with pytest.raises(ValueError, match="has no decoder"):
            list(generate(omni, ask, **kw))
        return
    out = [e for e in generate(omni, ask, **kw) if isinstance(e, ImageOut)]
    assert len(out) == 1 and len(out[0].codes) == 64 and all(0 <= c < 64 for c in out[0].codes)
    assert out[0].image.shape == (32, 32, 3) and out[0].image.dtype == np.uint8
