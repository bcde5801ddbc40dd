"""`generate()`: messages in, a stream of events out (text deltas, audio chunks, images, 3D shapes, done).

An :class:`OmniModel` bundles what answering needs: the decoder, its vocabulary, the text
tokenizer and the codecs, loaded from one directory::

    model.safetensors  config.json   # the decoder (an omniloom checkpoint)
    vocab.json  tokenizer.json       # the token format it was trained on
    codecs.json                      # optional: {"image": "image-world", "audio": "audio-world", "mesh": ...}
    generation.json                  # optional: the model's recommended decoding for image answers,
                                     # {"cfg_scale": 2.0, "image_candidates": 16}, used by `omniloom
                                     # chat` and `omniloom serve` when a request does not say; its task
                                     # "prompts", "voice_aliases" and "speak_via_text" (docs/serve.md)
    familiarity.json                 # optional: thresholds that flag input unlike the training data

Audio is decoded while its codes arrive: every ``audio_chunk_frames`` frames (80 ms at 25 frames/s)
the stream decoder turns them into samples and an :class:`AudioChunk` is yielded. Text inside an
audio span is the answer's transcript and arrives as :class:`TranscriptDelta`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..config import config_from_dict
from ..model import Transformer
from ..model.export_cli import MODEL_DIR_REQUIRED
from ..processor import Processor
from ..processor.familiarity import read_familiarity
from ..tokens import Vocab, build_prompt, null_condition
from ..utils.fileio import read_json
from .engine import Engine, Request
from .grammar import OUTPUTS, SpanGrammar
from .rerank import edits_an_image, last_user_parts
from .sampling import SamplingParams

__all__ = ["OmniModel", "GENERATION_KEYS", "TASK_PROMPTS", "read_generation", "resolve_model_dir", "MODELS_DIR", "TextDelta",
           "TranscriptDelta", "AudioChunk", "ImageOut", "MeshOut", "Done", "generate"]

log = logging.getLogger("omniloom.infer")


@dataclass
class TextDelta:
    text: str


@dataclass
class TranscriptDelta:
    text: str


@dataclass
class AudioChunk:
    pcm: np.ndarray  # (samples,) float32 in [-1, 1]
    sample_rate: int
    voice: str | None = None


@dataclass
class ImageOut:
    image: np.ndarray  # (H, W, 3) uint8
    codes: list[int] = field(default_factory=list)


@dataclass
class MeshOut:
    voxels: np.ndarray  # (G, G, G) bool occupancy; (0, 0, 0) when the model has no mesh codec
    codes: list[int] = field(default_factory=list)


@dataclass
class Done:
    finish_reason: str  # "stop" (the model ended its turn) or "length"
    usage: dict[str, int]  # prompt_tokens, completion_tokens, and completion tokens per modality
    warnings: list[str] = field(default_factory=list)  # e.g. input unlike the model's training data
    best_of: dict | None = None  # verifier-guided decoding (infer.best_of): n, chosen, scores, seconds


class _TextStream:
    """Incremental BPE decoding: emit only complete characters."""

    def __init__(self, tok: Any):
        self.tok, self.ids, self.sent = tok, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character not complete yet
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


from ..utils.model_dir import MODELS_DIR, resolve_model_dir  # noqa: E402  (re-exported)


#: keys of a model directory's generation.json: type and inclusive range. ``describe_edits``: the
#: model was trained to answer an edit of a given image by describing the edited scene in text
#: before drawing it (``omniloom world generate --restate edit``); :func:`generate` then lets it
#: write that description first, and judges its candidate drawings against it
GENERATION_KEYS = {"cfg_scale": (float, 1.0, 10.0), "image_candidates": (int, 1, 64), "describe_edits": (bool, 0, 1),
                   "prompts": (dict, 0, 0), "voice_aliases": (dict, 0, 0), "speak_via_text": (bool, 0, 1),
                   "untrained": (dict, 0, 0), "task_tag": (str, 0, 0)}
#: ``untrained`` maps an output modality the model's vocabulary and codecs allow but its weights were
#: never trained to write (e.g. the world model's 3D shapes) to the warning every such answer carries

#: the task prompts a model directory may name in generation.json's ``prompts``: the instruction it
#: was trained to answer for each job the server and the drawing search give it (``speak`` holds
#: ``{text}``, where the words to say go). A model without one cannot do that job; the server says so
TASK_PROMPTS = {
    "caption": "describe a given image in text (the drawing search's judge)",
    "transcribe": "transcribe given speech (/v1/audio/transcriptions, Realtime input transcription, spoken "
                  "drawing requests)",
    "speak": "say {text} aloud (/v1/audio/speech)",
}


def read_generation(path: str | Path) -> dict:
    """A model directory's ``generation.json`` -> validated defaults ({} when there is none)."""
    f = Path(path) / "generation.json"
    if not f.is_file():
        return {}
    data = read_json(f, "generation defaults")
    if not isinstance(data, dict):
        raise ValueError(f"generation defaults {f} must be a JSON object")
    out = {}
    for key, value in data.items():
        if key not in GENERATION_KEYS:
            raise ValueError(f"generation defaults {f}: unknown key {key!r} (known: {', '.join(GENERATION_KEYS)})")
        kind, lo, hi = GENERATION_KEYS[key]
        if key == "voice_aliases":  # other names (OpenAI's) -> the model's own voices (checked when served)
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                      for k, v in value.items()):
                raise ValueError(f"generation defaults {f}: voice_aliases must be an object of name -> voice name")
            out[key] = dict(value)
            continue
        if key == "task_tag":  # the rule its training data was tagged by (tokenize --task-tag): eval asks so
            from ..tokens import TASK_TAG_RULES

            if value not in TASK_TAG_RULES:
                raise ValueError(f"generation defaults {f}: task_tag must be one of {', '.join(TASK_TAG_RULES)}, "
                                 f"got {value!r}")
            out[key] = value
            continue
        if key == "untrained":
            if not isinstance(value, dict) or not all(m in OUTPUTS and isinstance(w, str) and w.strip()
                                                      for m, w in value.items()):
                raise ValueError(f"generation defaults {f}: untrained must be an object of output modality "
                                 f"({', '.join(OUTPUTS)}) -> warning text")
            out[key] = dict(value)
            continue
        if kind is dict:
            if not isinstance(value, dict):
                raise ValueError(f"generation defaults {f}: {key} must be an object of task -> prompt")
            for task, prompt in value.items():
                if task not in TASK_PROMPTS:
                    raise ValueError(f"generation defaults {f}: unknown task prompt {task!r} "
                                     f"(known: {', '.join(TASK_PROMPTS)})")
                if not isinstance(prompt, str) or not prompt.strip():
                    raise ValueError(f"generation defaults {f}: prompts.{task} must be a non-empty string")
                if task == "speak" and "{text}" not in prompt:
                    raise ValueError(f"generation defaults {f}: prompts.speak must contain {{text}}, got {prompt!r}")
            out[key] = dict(value)
            continue
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"generation defaults {f}: {key} must be true or false, got {value!r}")
            out[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
                or not lo <= value <= hi:
            raise ValueError(f"generation defaults {f}: {key} must be {kind.__name__} in [{lo:g}, {hi:g}], "
                             f"got {value!r}")
        out[key] = kind(value)
    return out


class OmniModel:
    """Decoder + vocab + text tokenizer + codecs, ready to answer.

    ``generation``: the model's recommended decoding defaults (``generation.json``; see
    :data:`GENERATION_KEYS`); :meth:`image_options` applies them where a caller gives none.

    ``on_prompt``: if set, :func:`generate` calls it with the prompt's ids once the request's media
    are encoded and its prompt is built, before any token is decoded (so bad input has raised by
    then). The server's scheduler sets it on each worker's view to learn that a job's input was
    fine and to count prompt tokens per modality. Nested answers (the model transcribing a spoken
    drawing request for its search) call it too, after the answer's own prompt.
    """

    def __init__(self, model: Transformer, vocab: Vocab, text_tokenizer: Any, codecs: dict[str, Any] | None = None,
                 compile: bool = False, generation: dict | None = None, familiarity: dict | None = None):
        if model.cfg.vocab_size < vocab.size:
            raise ValueError(f"model vocabulary ({model.cfg.vocab_size}) is smaller than vocab.json ({vocab.size})")
        self.model = model.eval()
        self.vocab = vocab
        self.tok = text_tokenizer
        self.codecs = dict(codecs or {})
        self.processor = Processor(vocab, text_tokenizer, self.codecs, familiarity=familiarity)
        self.engine = Engine(model, compile=compile)
        self.generation = dict(generation or {})
        self.source: str | None = None  # set by load()
        self.on_prompt: Callable[[list[int]], None] | None = None

    def task_prompt(self, task: str, text: str | None = None) -> str:
        """The instruction this model was trained to answer for ``task`` (see :data:`TASK_PROMPTS`),
        from its generation.json; ValueError naming the missing key when it has none."""
        prompt = (self.generation.get("prompts") or {}).get(task)
        if prompt is None:
            raise ValueError(f"this model names no {task!r} prompt (generation.json \"prompts\": "
                             f"{{\"{task}\": ...}}), so it cannot {TASK_PROMPTS[task].split(' (')[0]}")
        return prompt.replace("{text}", text) if task == "speak" else prompt

    def as_trained(self, messages: Sequence[dict], output_modality: str | None = None) -> list[dict]:
        """``messages`` built on this model's own task prompts (transcribe, speak, caption), tagged
        as its training data was (generation.json ``task_tag``, from ``tokenize --task-tag``): a
        language taught through tag-gated adapters is asked in that language. Unchanged for a model
        without a rule."""
        from ..tokens import tag_prompt

        return tag_prompt(messages, self.generation.get("task_tag"), output_modality)[0]

    def has_task(self, task: str) -> bool:
        return task in (self.generation.get("prompts") or {})

    def image_options(self, cfg_scale: float | None = None, image_candidates: int | None = None) -> tuple[float, int]:
        """(guidance, candidates) for an image answer: what the caller asked for, else the model's defaults."""
        g = self.generation
        return (float(g.get("cfg_scale", 1.0)) if cfg_scale is None else cfg_scale,
                int(g.get("image_candidates", 1)) if image_candidates is None else image_candidates)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", int8: bool = False, compile: bool = False) -> "OmniModel":
        """Load a model directory (or bundled name, or training run).

        ``int8``: int8 weight-only quantization of the decoder's linear layers (CPU; about 4x fewer
        bytes read per token than fp32). ``compile``: ``torch.compile`` the one-token decode step
        (the first answer of each batch size and cache length pays the compilation: about 5 s for the
        reference model on a 2-core CPU).
        """
        from safetensors.torch import load_file

        from ..codecs import load_codec, model_codec_refs
        from ..codecs.text import TextTokenizer

        path = resolve_model_dir(path)
        from ..model.delta import is_delta_dir, read_delta

        tok = None
        if is_delta_dir(path):  # only adapters + new rows here; the weights are rebuilt from the base
            if not (path / "vocab.json").is_file():
                raise ValueError(f"{path} is not an omniloom model directory: vocab.json is missing")
            cfg, state, base_tok = read_delta(path)
            tok = TextTokenizer(base_tok)
        else:
            for name in ("model.safetensors", "config.json") + MODEL_DIR_REQUIRED:
                if not (path / name).is_file():
                    raise ValueError(f"{path} is not an omniloom model directory: {name} is missing")
            cfg = config_from_dict(read_json(path / "config.json", "model config"))
            state = load_file(str(path / "model.safetensors"), device=device)
        model = Transformer(cfg.model)
        vocab = Vocab.load(path / "vocab.json")
        from ..model.lora import adapters_for_inference

        # a run with adapters: folded into the weights, or kept (position-gated ones)
        state = adapters_for_inference(model, state, cfg, vocab)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} weights do not fit config.json: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        codecs: dict[str, Any] = {}
        for kind, ref in model_codec_refs(path).items():
            codecs[kind] = load_codec(ref)
        tok = tok or TextTokenizer.load(path / "tokenizer.json")
        model = model.to(device)
        if int8:
            from ..model.quant import quantize_int8

            quantize_int8(model)
        omni = cls(model, vocab, tok, codecs, compile=compile, generation=read_generation(path),
                   familiarity=read_familiarity(path))
        omni.source = str(path)  # the directory it was loaded from (what its outputs may be keyed on)
        return omni


def _describe_edit(omni: OmniModel, header: list[int], sampling: SamplingParams) -> list[int]:
    """The text ids a ``describe_edits`` model writes after the assistant header, up to (not
    including) the image it opens next; empty when it opens the image at once."""
    vocab = omni.vocab
    grammar = SpanGrammar(vocab, omni.model.cfg.vocab_size, outputs=("text", "image"), prefix=header)
    params = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, 128),
                     stop_ids=tuple(set(sampling.stop_ids) | {vocab.special("image"), vocab.end_id}))
    out = omni.engine.generate([Request(header, params, grammar)])[0]
    return [t for t in out if t < vocab.text_size]


def generate(
    omni: OmniModel,
    messages: Sequence[dict],
    output_modality: str | None = None,
    outputs: Sequence[str] = OUTPUTS,
    voice: str | None = None,
    sampling: SamplingParams | None = None,
    cfg_scale: float = 1.0,
    audio_chunk_frames: int = 2,
    base_dir: str | Path | None = None,
    image_candidates: int = 1,
    describe: str | None = None,
    speak_via_text: bool | None = None,
) -> Iterator[TextDelta | TranscriptDelta | AudioChunk | ImageOut | Done]:
    """Answer ``messages`` (OpenAI-style, raw media allowed) as a stream of events.

    ``speak_via_text`` (default: the model's generation.json ``speak_via_text``): a spoken answer
    (``output_modality="audio"``, no image) to a written question about an image or video (the last
    user turn shows one and holds no audio) is written first as text, which streams out as its
    transcript, and then spoken by the same model through its ``speak`` task prompt. For a model
    whose text answers about images are better than its direct spoken ones (the world model answers
    "what color is the star?" right in text, but speaks about shapes it was not asked about). Other
    spoken answers (to spoken questions, to "say ...") stay direct, as the model was trained
    (bench/spoken_answers.py, docs/serve.md).
    ``max_new_tokens`` bounds both parts together; the text may take at most half of it.

    ``output_modality`` forces how the answer starts ("text", "image", "audio", "mesh": a 3D shape, yielded
    as a :class:`MeshOut` once its span closes); ``outputs`` limits
    what it may contain. ``cfg_scale`` > 1 applies classifier-free guidance inside image spans
    (the unconditional prompt replaces the user's turns with ``<|null|>``).

    ``image_candidates`` > 1 (with ``output_modality="image"``) draws that many images in one batch
    and keeps the one whose caption, by the model itself, is most likely to be ``describe`` (by
    default the request's own text without its drawing verb; see :mod:`omniloom.infer.rerank`).
    A request that gives no description (an edit of a given image), or whose ``max_new_tokens``
    leaves no room for a whole image, gets a single sample.

    A model whose ``generation.json`` sets ``describe_edits`` answers an edit of a given image
    (``output_modality="image"``, an image in the last user turn) as it was trained to: it first
    writes the edited scene's description (a text event, when ``outputs`` holds text), then draws;
    with ``image_candidates`` > 1 the candidates are judged against that description.
    """
    if speak_via_text is None:
        speak_via_text = bool(omni.generation.get("speak_via_text"))
    if speak_via_text and output_modality == "audio" and "image" not in outputs and omni.has_task("speak"):
        shown = {p.get("type") for p in last_user_parts(messages) or []}
        if shown & _SHOWN_PARTS and not shown & _HEARD_PARTS:  # a written question about an image or video
            yield from _speak_via_text(omni, messages, voice, sampling, audio_chunk_frames, base_dir)
            return
    vocab, proc = omni.vocab, omni.processor
    if output_modality is not None and output_modality not in OUTPUTS:
        raise ValueError(f"output_modality {output_modality!r} is not one of {OUTPUTS}")
    if output_modality == "audio" and voice is None:
        named = [v for v in vocab.voices if not v.startswith("voice:")]
        voice = named[0] if named else vocab.voices[0]
    if image_candidates < 1:
        raise ValueError(f"image_candidates must be >= 1, got {image_candidates}")
    sampling = sampling or SamplingParams(temperature=0.0)
    sampling.stop_ids = tuple(set(sampling.stop_ids) | {vocab.end_id})
    # media encoded once, for the prompt and the drawing search
    coded = proc.to_code_messages(messages, base_dir)
    prompt = proc.prompt_ids(coded, output_modality, voice)
    warnings = [p["unfamiliar"]["message"] for m in coded for p in m["content"]
                if isinstance(p, dict) and "unfamiliar" in p]
    untrained = (omni.generation.get("untrained") or {}).get(output_modality or "")
    if untrained:
        warnings.append(untrained)
    for w in warnings:
        log.warning(w)
    if omni.on_prompt is not None:
        omni.on_prompt(prompt)
    uncond = None
    if cfg_scale != 1.0:
        # the null condition, then the same assistant header and opened span (no media to encode again)
        uncond = null_condition(vocab) + build_prompt([], vocab, omni.tok, output_modality, voice, add_bos=False)
    usage = {"prompt_tokens": len(prompt), "completion_tokens": 0, "text_tokens": 0, "audio_tokens": 0,
             "image_tokens": 0, "mesh_tokens": 0}
    said = None  # an edit's description of its result (text ids), written before the drawing
    if output_modality == "image" and omni.generation.get("describe_edits") and edits_an_image(coded):
        said = _describe_edit(omni, prompt[:-1], sampling)  # the header without the opened image span
        said_text = omni.tok.decode(said)
        prompt = prompt[:-1] + said + [vocab.special("image")]
        if uncond is not None:
            uncond = uncond[:-1] + said + [vocab.special("image")]
        usage["completion_tokens"] += len(said)
        usage["text_tokens"] += len(said)
        sampling = replace(sampling, max_new_tokens=max(1, sampling.max_new_tokens - len(said)))
        if said and "text" in outputs:
            yield TextDelta(said_text)
    chosen = None
    if image_candidates > 1 and output_modality == "image" and sampling.max_new_tokens > vocab.image_tokens \
            and omni.has_task("caption"):  # the search judges drawings by the model's own captions
        from .rerank import best_image, request_description

        if describe is not None:
            desc = describe
        elif said is not None:
            desc = said_text.strip()  # the model's own account of the edited scene
        else:
            desc = request_description(omni, coded)
        if desc:
            span, _, drawn = best_image(omni, prompt, image_candidates, desc, sampling, uncond, cfg_scale)
            chosen = span[:-1]
            prompt = prompt + span  # the chosen image is now part of the answer so far
            usage["completion_tokens"] += len(span)
            usage["image_tokens"] += len(chosen)
            usage["image_candidates"] = drawn
            uncond = None  # guidance applies inside image spans, and the one image is done
            sampling = replace(sampling, max_new_tokens=max(1, sampling.max_new_tokens - len(span)))
    grammar = SpanGrammar(vocab, omni.model.cfg.vocab_size, outputs=outputs, prefix=prompt)
    req = Request(prompt, sampling, grammar, uncond_prompt=uncond, cfg_scale=cfg_scale if uncond else 1.0)
    if chosen is not None:
        yield _image_event(omni, [t - vocab.range_of("image")[0] for t in chosen])
    text = _TextStream(omni.tok)
    transcript = _TextStream(omni.tok)
    audio_codec = omni.codecs.get("audio")
    image_codes: list[int] = []
    mesh_codes: list[int] = []
    audio_frame: list[int] = []
    audio_pending: list[list[int]] = []
    stream_dec = None
    cur_voice = voice
    finish = "length"
    sp = vocab.special
    K = max(vocab.audio_codebooks, 1)

    def flush_audio(final: bool = False):
        nonlocal audio_pending
        if audio_codec is None or stream_dec is None:
            audio_pending = []
            return None
        parts = []
        if audio_pending:
            codes = torch.tensor(audio_pending, dtype=torch.long)[None]  # (1, f, K)
            parts.append(stream_dec.push(codes)[0])
            audio_pending = []
        if final:
            tail = stream_dec.flush()  # (B, samples), or empty when no frame ever arrived
            if tail.numel():
                parts.append(tail[0])
        parts = [p for p in parts if p.numel()]
        if not parts:
            return None
        pcm = torch.cat(parts).float().numpy()
        return AudioChunk(pcm, audio_codec.sample_rate, cur_voice)

    state = grammar.state  # the state *before* each token, to route it
    if state == "audio":
        stream_dec = audio_codec.stream_decoder() if audio_codec is not None else None
    for _, tok in omni.engine.stream([req]):
        usage["completion_tokens"] += 1
        before, after = state, grammar.state
        state = after
        if tok == vocab.end_id:
            finish = "stop"
            break
        if before == "free":
            if tok < vocab.text_size:
                usage["text_tokens"] += 1
                d = text.push(tok)
                if d:
                    yield TextDelta(d)
            elif after == "voice":  # <|audio|> opened
                stream_dec = audio_codec.stream_decoder() if audio_codec is not None else None
            continue
        if before == "voice":
            cur_voice = vocab.voice_name(tok)
            continue
        if before == "mesh":
            if after == "free":  # <|/mesh|>
                yield _mesh_event(omni, mesh_codes)
                mesh_codes = []
            else:
                usage["mesh_tokens"] += 1
                mesh_codes.append(tok - vocab.mesh_start)
            continue
        if before == "image":
            if tok == sp("/image"):
                if after == "free":
                    yield _image_event(omni, image_codes)
                image_codes = []
            else:
                usage["image_tokens"] += 1
                image_codes.append(tok - vocab.range_of("image")[0])
            continue
        if before == "audio":
            if tok == sp("/audio"):
                ev = flush_audio(final=True)
                if ev is not None:
                    yield ev
                transcript = _TextStream(omni.tok)
            elif tok < vocab.text_size:
                usage["text_tokens"] += 1
                d = transcript.push(tok)
                if d:
                    yield TranscriptDelta(d)
            else:
                usage["audio_tokens"] += 1
                k = len(audio_frame)
                audio_frame.append(int(vocab.to_local("audio", tok, codebook=k)))
                if len(audio_frame) == K:
                    audio_pending.append(audio_frame)
                    audio_frame = []
                    if len(audio_pending) >= audio_chunk_frames:
                        ev = flush_audio()
                        if ev is not None:
                            yield ev
            continue
    if state == "audio":  # stopped mid-span: play what was decoded
        ev = flush_audio(final=True)
        if ev is not None:
            yield ev
    yield Done(finish, usage, warnings)


_SHOWN_PARTS = {"image", "image_url", "input_image", "image_codes", "video", "video_url", "video_codes"}
_HEARD_PARTS = {"audio", "input_audio", "audio_codes"}


def _speak_via_text(omni: OmniModel, messages: Sequence[dict], voice: str | None, sampling: SamplingParams | None,
                    audio_chunk_frames: int, base_dir: str | Path | None) -> Iterator[Any]:
    """A spoken answer written first as text (streamed as its transcript), then spoken by the model."""
    sampling = sampling or SamplingParams(temperature=0.0)
    text, first = [], None
    budget = replace(sampling, max_new_tokens=max(1, sampling.max_new_tokens // 2))  # half is left to speak it
    for ev in generate(omni, messages, None, ("text",), None, budget, base_dir=base_dir, speak_via_text=False):
        if isinstance(ev, TextDelta):
            text.append(ev.text)
            yield TranscriptDelta(ev.text)
        elif isinstance(ev, Done):
            first = ev
    assert first is not None
    said = "".join(text).strip()
    left = sampling.max_new_tokens - int(first.usage.get("completion_tokens", 0))
    if not said or left < 2:
        yield Done("length" if said else first.finish_reason, first.usage, first.warnings)
        return
    usage = dict(first.usage)
    speak = omni.as_trained([{"role": "user", "content": omni.task_prompt("speak", said)}], "audio")
    for ev in generate(omni, speak, "audio", ("audio",), voice, replace(sampling, max_new_tokens=left),
                       audio_chunk_frames=audio_chunk_frames, speak_via_text=False):
        if isinstance(ev, AudioChunk):
            yield ev
        elif isinstance(ev, Done):
            for k in ("completion_tokens", "text_tokens", "audio_tokens", "image_tokens"):
                usage[k] = usage.get(k, 0) + int(ev.usage.get(k, 0))
            yield Done(ev.finish_reason, usage, first.warnings)


def _mesh_event(omni: OmniModel, codes: list[int]) -> MeshOut:
    codec = omni.codecs.get("mesh")
    if codec is None or len(codes) != omni.vocab.mesh_tokens:
        return MeshOut(np.zeros((0, 0, 0), dtype=bool), codes)
    with torch.inference_mode():
        vox = codec.decode(torch.tensor(codes, dtype=torch.long))  # (G, G, G) bool
    return MeshOut(vox.cpu().numpy().astype(bool), codes)


def _image_event(omni: OmniModel, codes: list[int]) -> ImageOut:
    codec = omni.codecs.get("image")
    if codec is None or len(codes) != omni.vocab.image_tokens:
        return ImageOut(np.zeros((0, 0, 3), dtype=np.uint8), codes)
    with torch.inference_mode():
        img = codec.decode(torch.tensor([codes], dtype=torch.long))[0]  # (3, H, W) in [0, 1]
    arr = (img.clamp(0, 1).permute(1, 2, 0).float().numpy() * 255 + 0.5).astype(np.uint8)
    return ImageOut(arr, codes)
