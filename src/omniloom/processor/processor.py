"""Processor: OpenAI-style messages with raw media <-> token ids, through the codecs and the template.

Raw parts it understands (anything else must already be a code part, see ``tokens.template``):

- ``{"type": "text", "text": ...}``
- ``{"type": "image_url", "image_url": {"url": data URL | path | file:// URL}}`` (or ``"image_url": str``)
- ``{"type": "image", "image" | "path": path | bytes | data URL | PIL image | array | (3, H, W) tensor}``
- ``{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}}``
- ``{"type": "audio", "audio" | "path": path | bytes | data URL | array, "voice"?, "transcript"?, "sample_rate"?}``
- ``{"type": "video", "video" | "path": video file | "frames": [image paths] | (F, 3, H, W) tensor, "fps"?}``
- ``{"type": "mesh", "mesh" | "path": mesh file (.stl/.obj/.glb...) | bytes | .npy voxels | (G, G, G) bool array}``
  (a 3D shape, voxelised to the mesh codec's grid)

Relative paths resolve against ``media_root`` (or the ``base_dir`` given to a call).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Sequence

import torch

from ..tokens.template import (
    CODE_PART_TYPES,
    Encoded,
    Segment,
    build_prompt,
    decode_ids,
    encode_conversation,
    normalize_content,
)
from ..tokens.vocab import Vocab
from ..utils.media import load_audio, load_image
from .familiarity import checks, score_part, unfamiliar_note

__all__ = ["Processor", "RAW_PART_TYPES"]

RAW_PART_TYPES = ("image_url", "image", "input_audio", "audio", "video", "mesh")
_NEEDS = {"image_url": "image", "image": "image", "input_audio": "audio", "audio": "audio", "video": "image",
          "mesh": "mesh"}
DEFAULT_VIDEO_FPS = 4.0


class Processor:
    """Turns messages with raw media into :class:`Encoded` ids (and ids back into segments and media).

    ``codecs`` maps ``"image"`` / ``"audio"`` (and optionally ``"video"``, a VideoCodec, and
    ``"mesh"``, a MeshCodec) to codec objects. Text-only conversations need none.
    """

    def __init__(
        self,
        vocab: Vocab,
        text_tokenizer: Any,
        codecs: dict[str, Any] | None = None,
        media_root: str | Path | None = None,
        max_video_frames: int = 64,
        familiarity: dict | None = None,
    ) -> None:
        self.vocab = vocab
        self.familiarity = familiarity  # familiarity.json: flag media unlike the training data
        self.text_tokenizer = text_tokenizer
        self.codecs = dict(codecs or {})
        self.media_root = Path(media_root) if media_root is not None else None
        self.max_video_frames = int(max_video_frames)
        if text_tokenizer.vocab_size > vocab.text_size:
            raise ValueError(f"text tokenizer has {text_tokenizer.vocab_size} ids but the vocab's text range holds "
                             f"only {vocab.text_size}; build the Vocab from this tokenizer")
        img = self.codecs.get("image")
        if img is not None and (img.codebook_size != vocab.image_codebook_size
                                or img.tokens_per_item != vocab.image_tokens):
            raise ValueError(f"image codec ({img.codebook_size} codes x {img.tokens_per_item} per image) does not "
                             f"match the vocab ({vocab.image_codebook_size} x {vocab.image_tokens})")
        aud = self.codecs.get("audio")
        if aud is not None and (aud.codebook_size != vocab.audio_codebook_size
                                or aud.num_codebooks != vocab.audio_codebooks):
            raise ValueError(f"audio codec ({aud.num_codebooks} codebooks of {aud.codebook_size}) does not match "
                             f"the vocab ({vocab.audio_codebooks} of {vocab.audio_codebook_size})")
        mesh = self.codecs.get("mesh")
        if mesh is not None and (mesh.codebook_size != vocab.mesh_codebook_size or mesh.tokens != vocab.mesh_tokens):
            raise ValueError(f"mesh codec ({mesh.codebook_size} codes x {mesh.tokens} per shape) does not match "
                             f"the vocab ({vocab.mesh_codebook_size} x {vocab.mesh_tokens})")

    # ------------------------------------------------------------------ raw -> codes

    def _codec(self, kind: str, where: str, part_type: str) -> Any:
        codec = self.codecs.get(kind)
        if codec is None:
            article = "an" if kind[0] in "aeiou" else "a"
            raise ValueError(f"{where} (type {part_type!r}) needs {article} {kind} codec, but this Processor has none "
                             f"(codecs: {sorted(self.codecs) or 'none'})")
        return codec

    def _image_codes(self, src: Any, base_dir: Path | None, where: str, part_type: str) -> tuple[list[int], dict]:
        """(codes, extra keys for the code part: an ``unfamiliar`` note when familiarity.json flags it)."""
        codec = self._codec("image", where, part_type)
        try:
            x = load_image(src, getattr(codec, "resolution", None), base_dir)  # (3, H, W)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        codes = codec.encode(x[None])  # (1, N)
        return codes[0].tolist(), self._familiarity_extra("image", codec, x, codes, where)

    def _audio_codes(self, src: Any, base_dir: Path | None, where: str, part_type: str,
                     source_rate: int | None = None) -> tuple[list[list[int]], dict]:
        codec = self._codec("audio", where, part_type)
        try:
            wav = load_audio(src, codec.sample_rate, base_dir, source_rate=source_rate)  # (samples,)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if wav.numel() == 0:
            raise ValueError(f"{where}: the audio has no samples")
        codes = codec.encode(wav[None])  # (1, F, K)
        return codes[0].tolist(), self._familiarity_extra("audio", codec, wav, codes, where)

    def _familiarity_extra(self, kind: str, codec: Any, x: Any, codes: Any, where: str) -> dict:
        """{"unfamiliar": note} when a check of familiarity.json flags the part (the first that does), else {}."""
        for entry in checks(self.familiarity, kind):
            score = score_part(entry["measure"], codec, x, codes)
            if score > entry["threshold"]:
                return {"unfamiliar": unfamiliar_note(kind, score, entry, where)}
        return {}

    def _mesh_codes(self, src: Any, base_dir: Path | None, where: str) -> list[int]:
        """A 3D shape (mesh file or bytes, .npy voxels, or a voxel array) -> the mesh codec's codes."""
        codec = self._codec("mesh", where, "mesh")
        from ..codecs.mesh import as_voxels, read_mesh_voxels

        try:
            if isinstance(src, (str, Path)):
                p = Path(src)
                vox = read_mesh_voxels(base_dir / p if not p.is_absolute() and base_dir is not None else p, codec.grid)
            elif isinstance(src, (bytes, bytearray)):
                vox = read_mesh_voxels(bytes(src), codec.grid)
            else:
                vox = as_voxels(src, codec.grid)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if vox.ndim != 3:
            raise ValueError(f"{where}: a mesh part holds one shape, got voxels of shape {tuple(vox.shape)}")
        return codec.encode(vox).reshape(-1).tolist()

    def _video_frames(self, part: dict, base_dir: Path | None, where: str) -> tuple[torch.Tensor, float]:
        """(F, 3, R, R) frames and their fps."""
        image_codec = self._codec("image", where, "video")
        res = getattr(image_codec, "resolution", None)
        fps = float(part.get("fps") or DEFAULT_VIDEO_FPS)
        src = part.get("frames", part.get("video", part.get("path")))
        if src is None:
            raise ValueError(f"{where}: video part needs 'video', 'path' or 'frames'")
        if isinstance(src, torch.Tensor):
            if src.ndim != 4:
                raise ValueError(f"{where}: video tensor must be (F, 3, H, W), got {tuple(src.shape)}")
            frames = torch.stack([load_image(f, res) for f in src])
        elif isinstance(src, (list, tuple)):
            if not src:
                raise ValueError(f"{where}: video part has no frames")
            try:
                frames = torch.stack([load_image(f, res, base_dir) for f in src])  # (F, 3, R, R)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        else:
            from ..codecs.video import read_video_frames

            p = Path(str(src))
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            if res is None:
                raise ValueError(f"{where}: decoding a video file needs an image codec with a 'resolution'")
            frames = read_video_frames(p, fps, self.max_video_frames, res)
        if frames.shape[0] > self.max_video_frames:
            raise ValueError(f"{where}: {frames.shape[0]} frames, at most {self.max_video_frames} allowed")
        return frames, fps

    def to_code_part(self, part: dict, base_dir: str | Path | None = None, where: str = "part") -> dict:
        """One raw part -> a code part (text and code parts pass through unchanged)."""
        kind = part.get("type")
        base = Path(base_dir) if base_dir is not None else self.media_root
        if kind in CODE_PART_TYPES:
            return part
        if kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not url:
                raise ValueError(f"{where}: image_url part has no url")
            codes, extra = self._image_codes(url, base, where, kind)
            return {"type": "image_codes", "codes": codes, **extra}
        if kind == "image":
            src = part.get("image", part.get("path"))
            if src is None:
                raise ValueError(f"{where}: image part needs 'image' or 'path'")
            codes, extra = self._image_codes(src, base, where, kind)
            return {"type": "image_codes", "codes": codes, **extra}
        if kind == "input_audio":
            spec = part.get("input_audio")
            if not isinstance(spec, dict) or not spec.get("data"):
                raise ValueError(f"{where}: input_audio part needs {{'data': base64, 'format': ...}}")
            self._codec("audio", where, kind)
            try:
                data = base64.b64decode(spec["data"], validate=False)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"{where}: input_audio data is not valid base64 ({e})") from None
            codes, extra = self._audio_codes(data, base, where, kind)
            return {"type": "audio_codes", "codes": codes, "voice": part.get("voice"),
                    "transcript": part.get("transcript"), **extra}
        if kind == "audio":
            src = part.get("audio", part.get("path"))
            if src is None:
                raise ValueError(f"{where}: audio part needs 'audio' or 'path'")
            codes, extra = self._audio_codes(src, base, where, kind, part.get("sample_rate"))
            return {"type": "audio_codes", "codes": codes, "voice": part.get("voice"),
                    "transcript": part.get("transcript"), **extra}
        if kind == "video":
            frames, fps = self._video_frames(part, base, where)
            codec = self.codecs.get("video") or self.codecs["image"]
            codes = codec.encode(frames)  # (F, N)
            return {"type": "video_codes", "frames": codes.tolist(), "fps": fps}
        if kind == "mesh":
            src = part.get("mesh", part.get("path"))
            if src is None:
                raise ValueError(f"{where}: mesh part needs 'mesh' or 'path'")
            return {"type": "mesh_codes", "codes": self._mesh_codes(src, base, where)}
        raise ValueError(f"{where}: unknown part type {kind!r} (raw: {', '.join(RAW_PART_TYPES)}; "
                         f"codes: {', '.join(CODE_PART_TYPES)})")

    def to_code_messages(self, messages: Sequence[dict], base_dir: str | Path | None = None) -> list[dict]:
        """Messages with raw media -> messages with code parts only (new dicts; inputs are not changed)."""
        if isinstance(messages, dict) or not isinstance(messages, (list, tuple)):
            raise ValueError(f"messages must be a list of message dicts, got {type(messages).__name__}")
        out = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise ValueError(f"message {i}: must be a dict with 'role' and 'content'")
            parts = normalize_content(msg.get("content"), f"message {i}")
            new = [self.to_code_part(p, base_dir, f"message {i} part {j}") for j, p in enumerate(parts)]
            out.append({**msg, "content": new})
        return out

    # ------------------------------------------------------------------ messages -> ids

    def encode_messages(self, messages: Sequence[dict], mode: str = "sft", base_dir: str | Path | None = None,
                        add_bos: bool = True, add_eos: bool = True) -> Encoded:
        """Raw messages -> :class:`Encoded` (ids and loss mask; see ``tokens.template``)."""
        coded = self.to_code_messages(messages, base_dir)
        return encode_conversation(coded, self.vocab, self.text_tokenizer, mode=mode, add_bos=add_bos,
                                   add_eos=add_eos)

    def prompt_ids(self, messages: Sequence[dict], output_modality: str | None = None, voice: str | None = None,
                   base_dir: str | Path | None = None) -> list[int]:
        """Generation prefix: conversation so far + assistant header (+ an opened span)."""
        coded = self.to_code_messages(messages, base_dir)
        return build_prompt(coded, self.vocab, self.text_tokenizer, output_modality, voice)

    # ------------------------------------------------------------------ ids -> segments / media

    def decode_ids(self, ids: Sequence[int] | Any, strict: bool = False) -> list[Segment]:
        return decode_ids(ids, self.vocab, self.text_tokenizer, strict=strict)

    def decode_media(self, segment: Segment) -> Any:
        """A segment's payload as media: text -> str; image -> (3, H, W); audio -> (samples,); video -> (F, 3, H, W);
        mesh -> (G, G, G) bool voxels."""
        if segment.modality == "text":
            return segment.text or ""
        if segment.modality == "image":
            codec = self._codec("image", "image segment", "image_codes")
            if len(segment.codes or []) != self.vocab.image_tokens:
                raise ValueError(f"image segment has {len(segment.codes or [])} codes, "
                                 f"expected {self.vocab.image_tokens}")
            return codec.decode(torch.tensor([segment.codes], dtype=torch.long))[0]  # (3, H, W)
        if segment.modality == "audio":
            codec = self._codec("audio", "audio segment", "audio_codes")
            codes = torch.tensor(segment.codes or [], dtype=torch.long).reshape(1, -1, self.vocab.audio_codebooks)
            return codec.decode(codes)[0]  # (samples,)
        if segment.modality == "video":
            codec = self._codec("image", "video segment", "video_codes")
            full = [f for f in segment.frames or [] if len(f) == self.vocab.image_tokens]
            if not full:
                raise ValueError("video segment has no complete frame")
            return codec.decode(torch.tensor(full, dtype=torch.long))  # (F, 3, H, W)
        if segment.modality == "mesh":
            codec = self._codec("mesh", "mesh segment", "mesh_codes")
            if len(segment.codes or []) != self.vocab.mesh_tokens:
                raise ValueError(f"mesh segment has {len(segment.codes or [])} codes, "
                                 f"expected {self.vocab.mesh_tokens}")
            return codec.decode(torch.tensor(segment.codes, dtype=torch.long))  # (G, G, G) bool
        raise ValueError(f"unknown segment modality {segment.modality!r}")
