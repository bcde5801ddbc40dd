"""A tiny random omni model (gibberish answers, real shapes) for tests, demos and load runs.

``python -m omniloom.serve.tiny DIR`` writes one to ``DIR`` so that ``omniloom serve --model DIR``
runs by hand before the reference model exists. The layout is the one :meth:`OmniModel.load` reads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import config_to_dict, preset
from ..infer.generate import OmniModel
from ..utils.fileio import atomic_path, atomic_write_json

__all__ = ["build_tiny_model", "save_model"]

CORPUS = ["what color is the star?", "a big red circle at the top left", "draw a small blue square", "three",
          "say hello world", "transcribe the audio", "how many shapes are there?"] * 20


def build_tiny_model(seed: int = 0, voices: tuple[str, ...] = ("nova", "atlas"), mesh: bool = False) -> OmniModel:
    """BPE on a few sentences, untrained image/audio codecs, the ``debug`` decoder: all random.
    ``mesh=True`` adds an untrained 3D codec and its vocabulary range."""
    from ..codecs.audio import AudioCodec, AudioCodecConfig
    from ..codecs.image import ImageCodec, ImageCodecConfig
    from ..codecs.text import TextTokenizer
    from ..model import Transformer
    from ..tokens import Vocab

    torch.manual_seed(seed)
    tok = TextTokenizer.train(CORPUS, vocab_size=300)
    image = ImageCodec(ImageCodecConfig()).eval()
    audio = AudioCodec(AudioCodecConfig()).eval()
    codecs = {"image": image, "audio": audio}
    if mesh:
        from ..codecs.mesh import MeshCodec

        codecs["mesh"] = MeshCodec().eval()
    vocab = Vocab.for_codecs(tok.vocab_size, image, audio, mesh_codec=codecs.get("mesh"), voices=list(voices))
    cfg = preset("debug")
    cfg.model.vocab_size = vocab.size
    prompts = {"caption": "describe the image", "transcribe": "transcribe the audio", "speak": "say {text}"}
    omni = OmniModel(Transformer(cfg.model), vocab, tok, codecs, generation={"prompts": prompts})
    omni.full_config = cfg  # type: ignore[attr-defined]  # kept for save_model
    return omni


def save_model(omni: OmniModel, directory: str | Path) -> Path:
    """Write ``omni`` as a model directory (each file atomically); codecs go to sub-folders."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = getattr(omni, "full_config", None) or preset("debug")
    cfg.model = omni.model.cfg
    state = {k: v.detach().contiguous() for k, v in omni.model.state_dict().items()}
    with atomic_path(d / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write_json(d / "config.json", config_to_dict(cfg))
    omni.vocab.save(d / "vocab.json")
    omni.tok.save(d / "tokenizer.json")
    names = {}
    for kind, codec in omni.codecs.items():
        codec.save(d / f"codec-{kind}")
        names[kind] = f"codec-{kind}"
    atomic_write_json(d / "codecs.json", names)
    if omni.generation:
        atomic_write_json(d / "generation.json", omni.generation)
    return d


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m omniloom.serve.tiny DIR", file=sys.stderr)
        raise SystemExit(2)
    print(save_model(build_tiny_model(), sys.argv[1]))
