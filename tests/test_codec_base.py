"""Codec protocol and load_codec: names, directories, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from omniloom.codecs import Codec, load_codec
from omniloom.codecs.base import available_codecs
from omniloom.codecs.image import ImageCodec, image_codec_config


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown codec 'no-such-codec'"):
        load_codec("no-such-codec")


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_codec(tmp_path)


def test_config_with_unknown_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "smell"}))
    with pytest.raises(ValueError, match="unknown codec type 'smell'"):
        load_codec(tmp_path)


def test_config_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"type": "image", **image_codec_config("tiny").__dict__}))
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_codec(tmp_path)


def test_load_saved_directory_satisfies_protocol(tmp_path):
    torch.manual_seed(0)
    codec = ImageCodec(image_codec_config("tiny")).eval()
    codec.save(tmp_path / "c")
    loaded = load_codec(tmp_path / "c")
    assert isinstance(loaded, ImageCodec) and isinstance(loaded, Codec)
    assert loaded.modality == "image" and loaded.num_codebooks == 1
    assert loaded.codebook_size == 125 and loaded.tokens_per_item == 64
    assert loaded.frame_rate is None and loaded.sample_rate is None


def test_shipped_image_world():
    if "image-world" not in available_codecs():
        pytest.skip("image-world not shipped yet")
    codec = load_codec("image-world")
    assert codec.modality == "image" and codec.codebook_size == 1000 and codec.tokens_per_item == 64
    x = torch.zeros(2, 3, 64, 64)
    x[:, 0, 10:25, 10:25] = 0.9
    codes = codec.encode(x)
    assert codes.shape == (2, 64) and codes.dtype == torch.long
    y = codec.decode(codes)
    assert ((y - x) ** 2).mean() < 0.01  # a trained codec reconstructs a plain red square well


def test_codec_specs_parse_and_resolve_inside_a_model_directory(tmp_path):
    """One spec string names every codec: hf: options parse, bad ones are named, and a model
    directory's codecs.json may point to codec folders inside it (hf: or omniloom)."""
    import json

    from omniloom.codecs.base import canonical_codec_spec, load_codec, model_codec_refs, parse_codec_spec

    assert parse_codec_spec("hf:/m/mimi?codebooks=8&x=1") == ("hf", "/m/mimi", {"codebooks": "8", "x": "1"})
    assert parse_codec_spec("image-world") == ("omniloom", "image-world", {})
    with pytest.raises(ValueError, match="is not key=value"):
        parse_codec_spec("hf:/m?codebooks")
    with pytest.raises(ValueError, match="give the folder"):
        parse_codec_spec("hf:")
    assert canonical_codec_spec("image-world") == "image-world"
    (tmp_path / "codecs" / "mimi").mkdir(parents=True)
    (tmp_path / "codecs" / "mimi" / "config.json").write_text(json.dumps({"model_type": "no-such-codec"}))
    (tmp_path / "codecs.json").write_text(json.dumps({"audio": "hf:codecs/mimi?codebooks=8", "image": "image-world"}))
    refs = model_codec_refs(tmp_path)
    assert refs == {"audio": f"hf:{tmp_path / 'codecs' / 'mimi'}?codebooks=8", "image": "image-world"}
    with pytest.raises(ValueError, match="model_type 'no-such-codec' has no adapter"):
        load_codec(refs["audio"])
