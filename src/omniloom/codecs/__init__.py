"""omniloom.codecs: raw media <-> local integer codes (text BPE, image FSQ, audio, video frames).

Imports stay light: the torch-heavy codec classes load only when used (``load_codec``).
"""

from .base import Codec, available_codecs, load_codec, model_codec_refs

__all__ = ["Codec", "available_codecs", "load_codec", "model_codec_refs"]
