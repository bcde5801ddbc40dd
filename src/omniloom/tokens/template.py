"""Chat template: conversations (with code parts) <-> global ids, a loss mask, and parsing back.

One conversation::

    <|bos|> (<|system|>|<|user|>|<|assistant|>) content... <|end|> ... <|eos|>

Content parts (after codecs ran) become spans:

- text: the text tokenizer's ids.
- ``image_codes``: ``<|image|> c_1 .. c_N <|/image|>`` with exactly ``vocab.image_tokens`` codes.
- ``audio_codes``: ``<|audio|> <|voice:v|>`` then, when a transcript is given, chunks of
  ``speech_interleave[0]`` transcript text ids each followed by ``speech_interleave[1]`` audio frames
  (frame-major, codebook order), so that the first audio comes after only a few text ids; then
  ``<|/audio|>``.
- ``video_codes``: ``<|video|>`` then per frame a time tag ``<|t:k|>`` (or ``<|frame|>`` without
  fps) and an image span; then ``<|/video|>``.
- ``mesh_codes``: ``<|mesh|> c_1 .. c_N <|/mesh|>`` with exactly ``vocab.mesh_tokens`` 3D shape codes
  (the markers are aliases of reserved slots 3 and 4; the vocabulary needs a mesh range).
- ``task_tag``: the one id ``<|task|>`` (reserved slot 5), no payload: it marks a conversation as a
  task for gated adapters (``with_task_tag`` puts it first in the first user turn); parsing skips it.

``loss_mask[i] == 1`` means id ``i`` is a training target (the data pipeline shifts ids and mask
together). ``sft``: the content and ``<|end|>`` of assistant turns; ``pretrain``: every id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from .vocab import RESERVED_NAMES, Vocab

__all__ = [
    "Encoded",
    "Segment",
    "ROLES",
    "OUTPUT_MODALITIES",
    "normalize_content",
    "TASK_TAG_PART",
    "task_tag_id",
    "has_media",
    "with_task_tag",
    "tag_by_rule",
    "tag_prompt",
    "TASK_TAG_RULES",
    "encode_part",
    "encode_conversation",
    "build_prompt",
    "decode_ids",
    "segments_to_messages",
    "null_condition",
    "drop_condition",
]

ROLES = ("system", "user", "assistant")
OUTPUT_MODALITIES = ("text", "image", "audio", "video", "mesh")
CODE_PART_TYPES = ("text", "image_codes", "audio_codes", "video_codes", "mesh_codes", "task_tag")
#: the content part that writes the task tag ``<|task|>`` (a reserved slot, so every vocabulary has
#: it): one appended id with no payload. A model trained with gated adapters (``train.lora_gate_mode``
#: ``onward``) on data tagged this way (``omniloom tokenize --task-tag``) runs a tagged text-only
#: conversation through its adapters, an untagged one through the base (docs/graft.md)
TASK_TAG_PART = {"type": "task_tag"}


@dataclass
class Encoded:
    """Ids of one conversation and its loss mask (same length; 1 = the id is a training target)."""

    ids: list[int]
    loss_mask: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Segment:
    """One parsed span: role of the turn it sits in, and its modality's payload.

    text: ``text``. image, mesh: ``codes`` (list of local codes). audio: ``codes`` ((frames, codebooks)
    local codes as lists), ``voice``, ``transcript``. video: ``frames`` (lists of local image codes)
    and ``times`` (seconds, or None per frame without a time tag). ``complete`` is False when the
    ids stopped inside the span (e.g. generation cut off).
    """

    role: str | None
    modality: str
    text: str | None = None
    codes: list[Any] | None = None
    voice: str | None = None
    transcript: str | None = None
    frames: list[list[int]] | None = None
    times: list[float | None] | None = None
    complete: bool = True
    turn: int = -1  # index of the turn (role header) it sits in; -1 before any header

    @property
    def fps(self) -> float | None:
        """Frame rate implied by the first two time tags of a video (None if unknown)."""
        if not self.times or len(self.times) < 2 or self.times[0] is None or self.times[1] is None:
            return None
        dt = self.times[1] - self.times[0]
        return 1.0 / dt if dt > 0 else None


# ---------------------------------------------------------------------------------------------
# encoding


def normalize_content(content: Any, where: str = "message") -> list[dict]:
    """``str`` or list of parts -> list of part dicts (a string becomes one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        return []
    if not isinstance(content, list):
        raise ValueError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise ValueError(f"{where} part {j}: a part must be a dict with a 'type' key, got {part!r:.80}")
    return content


def _fixed_span(vocab: Vocab, modality: str, name: str, tokens: int, codes: Any, where: str) -> list[int]:
    """``<|m|> c_1 .. c_tokens <|/m|>`` of a modality whose every item is exactly ``tokens`` codes
    (an image, a mesh); ``name`` says one item in the errors ("an image")."""
    if tokens == 0:
        raise ValueError(f"{where}: this vocabulary has no {modality} codes ({modality}_codebook_size=0)")
    arr = np.asarray(_np(codes), dtype=np.int64).reshape(-1)
    if arr.size != tokens:
        raise ValueError(f"{where}: {name} needs exactly {tokens} codes, got {arr.size}")
    try:
        g = vocab.to_global(modality, arr)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return [vocab.special(modality), *g.tolist(), vocab.special("/" + modality)]


def _image_span(vocab: Vocab, codes: Any, where: str) -> list[int]:
    return _fixed_span(vocab, "image", "an image", vocab.image_tokens, codes, where)


def _mesh_span(vocab: Vocab, codes: Any, where: str) -> list[int]:
    if codes is None:
        raise ValueError(f"{where}: mesh_codes part has no 'codes'")
    return _fixed_span(vocab, "mesh", "a mesh", vocab.mesh_tokens, codes, where)


def _audio_span(vocab: Vocab, part: dict, text_tokenizer: Any, where: str) -> list[int]:
    if vocab.audio_codebooks == 0:
        raise ValueError(f"{where}: this vocabulary has no audio codes (audio_codebooks=0)")
    codes = part.get("codes")
    if codes is None:
        raise ValueError(f"{where}: audio_codes part has no 'codes'")
    arr = np.asarray(_np(codes), dtype=np.int64)
    if arr.size == 0:
        arr = arr.reshape(0, vocab.audio_codebooks)
    try:
        voice = vocab.voice_id(part.get("voice"))
        flat = vocab.audio_to_global(arr)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    K = vocab.audio_codebooks
    out = [vocab.special("audio"), voice]
    transcript = part.get("transcript")
    text = text_tokenizer.encode(transcript) if transcript else []
    t_chunk, a_chunk = vocab.speech_interleave
    ti, ai = 0, 0
    while ti < len(text) or ai < len(flat):
        out += text[ti:ti + t_chunk]
        ti += t_chunk
        out += flat[ai:ai + a_chunk * K]
        ai += a_chunk * K
    out.append(vocab.special("/audio"))
    return out


def _video_span(vocab: Vocab, part: dict, where: str) -> list[int]:
    frames = part.get("frames")
    if frames is None:
        raise ValueError(f"{where}: video_codes part has no 'frames'")
    times = part.get("times")
    fps = part.get("fps")
    if times is not None and len(times) != len(frames):
        raise ValueError(f"{where}: {len(times)} times for {len(frames)} frames")
    if fps is not None and float(fps) <= 0:
        raise ValueError(f"{where}: fps must be positive, got {fps}")
    out = [vocab.special("video")]
    for i, frame in enumerate(frames):
        t = times[i] if times is not None else (i / float(fps) if fps else None)
        try:
            out.append(vocab.special("frame") if t is None else vocab.time_id(t))
        except ValueError as e:
            raise ValueError(f"{where} frame {i}: {e}") from None
        out += _image_span(vocab, frame, f"{where} frame {i}")
    out.append(vocab.special("/video"))
    return out


def encode_part(part: dict, vocab: Vocab, text_tokenizer: Any, where: str = "part") -> list[int]:
    """Ids of one content part (text or a code span)."""
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{where}: text part needs a string 'text', got {text!r:.60}")
        return text_tokenizer.encode(text) if text else []
    if kind == "image_codes":
        if "codes" not in part:
            raise ValueError(f"{where}: image_codes part has no 'codes'")
        return _image_span(vocab, part["codes"], where)
    if kind == "audio_codes":
        return _audio_span(vocab, part, text_tokenizer, where)
    if kind == "video_codes":
        return _video_span(vocab, part, where)
    if kind == "mesh_codes":
        return _mesh_span(vocab, part.get("codes"), where)
    if kind == "task_tag":
        return [task_tag_id(vocab, where)]
    raise ValueError(
        f"{where}: part type {kind!r} is not a code part ({', '.join(CODE_PART_TYPES)}); "
        "raw media parts go through omniloom.processor.Processor"
    )


_TASK_SLOT = RESERVED_NAMES.index("task")  # the reserved slot the task tag is an alias of


def task_tag_id(vocab: Vocab, where: str = "task_tag") -> int:
    """The id of ``<|task|>``; a clear error for a vocabulary built with too few reserved specials."""
    if vocab.num_reserved_specials <= _TASK_SLOT:
        raise ValueError(f"{where}: this vocabulary has no task tag (it needs num_reserved_specials >= "
                         f"{_TASK_SLOT + 1}, has {vocab.num_reserved_specials})")
    return vocab.special("task")


def _part_types(messages: Sequence[dict]) -> Iterator[Any]:
    """The ``type`` of every part of every message whose content is a list of parts."""
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            yield from (p.get("type") for p in content if isinstance(p, dict))


def has_media(messages: Sequence[dict]) -> bool:
    """Whether any message holds a part other than text (a media part, raw or coded, or a task tag)."""
    return any(t != "text" for t in _part_types(messages))


def with_task_tag(messages: Sequence[dict]) -> list[dict]:
    """A copy of ``messages`` with the task tag put first in the first user turn (messages unchanged
    when that turn already starts with one; ValueError when there is no user turn)."""
    out = [dict(m) if isinstance(m, dict) else m for m in messages]
    for m in out:
        if isinstance(m, dict) and m.get("role") == "user":
            parts = normalize_content(m.get("content"), "user message")
            if not (parts and parts[0].get("type") == "task_tag"):
                parts = [dict(TASK_TAG_PART)] + parts
            m["content"] = parts
            return out
    raise ValueError("a task tag goes at the start of the first user turn, and this conversation has none")


#: which conversations a task-tag rule tags (``omniloom tokenize --task-tag``, generation.json ``task_tag``)
TASK_TAG_RULES = ("none", "text-only", "all")


def tag_by_rule(messages: Sequence[dict], rule: str | None) -> tuple[list[dict], bool]:
    """``(messages, tagged)``: with the task tag put first (:func:`with_task_tag`) when ``rule`` tags
    this conversation: ``"all"`` every one with a user turn, ``"text-only"`` those that also have no
    media part, ``"none"``/None none. A conversation that already holds a tag is left as it is."""
    if rule in (None, "none"):
        return list(messages), False
    if rule not in TASK_TAG_RULES:
        raise ValueError(f"task tag rule must be one of {', '.join(TASK_TAG_RULES)}, got {rule!r}")
    if not isinstance(messages, (list, tuple)) or not any(
            isinstance(m, dict) and m.get("role") == "user" for m in messages):
        return list(messages) if isinstance(messages, (list, tuple)) else messages, False
    if "task_tag" in _part_types(messages):
        return list(messages), False
    if rule == "text-only" and has_media(messages):
        return list(messages), False
    return with_task_tag(messages), True


def tag_prompt(prompt: Sequence[dict], rule: str | None, output_modality: str | None = None
               ) -> tuple[list[dict], bool]:
    """:func:`tag_by_rule` for a prompt whose answer will be of ``output_modality``, decided as the
    whole conversation was when its training data was tagged: under ``"text-only"`` a prompt of
    text alone is not tagged when its answer is an image, speech or a shape (a media part)."""
    if rule == "text-only" and output_modality not in (None, "text"):
        return list(prompt), False
    return tag_by_rule(prompt, rule)


def _encode_turns(messages: Sequence[dict], vocab: Vocab, text_tokenizer: Any, mode: str
                  ) -> tuple[list[int], list[int]]:
    if mode not in ("sft", "pretrain"):
        raise ValueError(f"mode must be 'sft' or 'pretrain', got {mode!r}")
    if isinstance(messages, dict) or not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of message dicts, got {type(messages).__name__}")
    ids: list[int] = []
    mask: list[int] = []
    end = vocab.end_ids
    default_system = vocab.default_system_ids
    if default_system and not any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
        ids += default_system  # the base's template opens every conversation without a system turn so
        mask += [1 if mode == "pretrain" else 0] * len(default_system)
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i}: must be a dict with 'role' and 'content', got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i}: role {role!r} is not one of {ROLES}")
        body: list[int] = []
        quiet: list[bool] = []  # ids never learnt, whatever the mode: the task tag
        for j, part in enumerate(normalize_content(msg.get("content"), f"message {i}")):
            got = encode_part(part, vocab, text_tokenizer, f"message {i} part {j}")
            body += got
            quiet += [part.get("type") == "task_tag"] * len(got)
        body += end
        quiet += [False] * len(end)
        learn = 1 if (mode == "pretrain" or role == "assistant") else 0
        head = vocab.header_ids(role)
        ids += head
        mask += [1 if mode == "pretrain" else 0] * len(head)
        ids += body
        mask += [0 if q else learn for q in quiet]
    return ids, mask


def encode_conversation(
    messages: Sequence[dict],
    vocab: Vocab,
    text_tokenizer: Any,
    mode: str = "sft",
    add_bos: bool = True,
    add_eos: bool = True,
) -> Encoded:
    """Messages with code parts -> :class:`Encoded` ids and loss mask (see the module docstring)."""
    ids, mask = _encode_turns(messages, vocab, text_tokenizer, mode)
    full = 1 if mode == "pretrain" else 0
    if add_bos:
        bos = vocab.bos_ids
        ids, mask = bos + ids, [full] * len(bos) + mask
    if add_eos:
        eos = vocab.eos_ids
        ids, mask = ids + eos, mask + [full] * len(eos)
    return Encoded(ids=ids, loss_mask=mask)


def null_condition(vocab: Vocab) -> list[int]:
    """The conversation prefix that stands for "no condition" in classifier-free guidance:
    ``<|bos|> <|user|> <|null|> <|end|>`` (in a grafted vocab: the base's begin, user header and turn
    end around ``<|null|>``). Training replaces the turns before an image answer with it
    (:func:`drop_condition`); generation uses it as the unconditional prompt."""
    return vocab.bos_ids + vocab.header_ids("user") + [vocab.null_id] + vocab.end_ids


def drop_condition(enc: Encoded, vocab: Vocab) -> Encoded | None:
    """``enc`` with everything before its last image-answering assistant turn replaced by
    :func:`null_condition` (mask 0 there, or 1 when ``enc`` is a pre-training document), so the
    model also learns images without their condition. ``None`` when no assistant turn holds an image,
    or no user turn comes before it (a document with no condition, e.g. an interleaved web page)."""
    ids = [int(t) for t in enc.ids]
    img_id = vocab.special("image")
    heads = vocab.find_headers(ids)
    start = None
    for h, (a, b, role) in enumerate(heads):
        stop = heads[h + 1][0] if h + 1 < len(heads) else len(ids)
        if role == "assistant" and img_id in ids[b:stop]:
            start = h
    if start is None or not any(role == "user" for _, _, role in heads[:start]):
        return None
    start = heads[start][0]
    head = null_condition(vocab)
    full = 1 if enc.loss_mask and all(enc.loss_mask) else 0
    return Encoded(ids=head + ids[start:], loss_mask=[full] * len(head) + list(enc.loss_mask[start:]))


def build_prompt(
    messages: Sequence[dict],
    vocab: Vocab,
    text_tokenizer: Any,
    output_modality: str | None = None,
    voice: str | None = None,
    add_bos: bool = True,
) -> list[int]:
    """Generation prefix: the conversation so far, then ``<|assistant|>``, optionally opening a span.

    ``output_modality="image"`` appends ``<|image|>``; ``"audio"`` appends ``<|audio|><|voice:v|>``;
    ``"video"`` appends ``<|video|>``; ``"mesh"`` appends ``<|mesh|>``; ``"text"``/None appends nothing more.
    """
    ids, _ = _encode_turns(messages, vocab, text_tokenizer, "sft")
    if add_bos:
        ids = vocab.bos_ids + ids
    ids += vocab.header_ids("assistant")
    if output_modality in (None, "text"):
        return ids
    if output_modality == "image":
        return ids + [vocab.special("image")]
    if output_modality == "audio":
        return ids + [vocab.special("audio"), vocab.voice_id(voice)]
    if output_modality == "video":
        return ids + [vocab.special("video")]
    if output_modality == "mesh":
        if vocab.mesh_tokens == 0:
            raise ValueError("output_modality 'mesh': this vocabulary has no mesh codes (mesh_codebook_size=0)")
        return ids + [vocab.special("mesh")]
    raise ValueError(f"output_modality {output_modality!r} is not one of {OUTPUT_MODALITIES}")


# ---------------------------------------------------------------------------------------------
# decoding


class _Parser:
    """A small recursive-descent parser over global ids; ``strict`` raises on malformed ids."""

    def __init__(self, ids: Sequence[int], vocab: Vocab, text_tokenizer: Any, strict: bool) -> None:
        self.ids = [int(i) for i in ids]
        self.mod = vocab.modality_of(self.ids) if self.ids else np.zeros(0, np.int8)
        self.v = vocab
        self.tok = text_tokenizer
        self.strict = strict
        self.pos = 0
        self.role: str | None = None
        self.turn = -1
        self.out: list[Segment] = []
        self.text: list[int] = []
        s = vocab.special
        self.S = {n: s(n) for n in ("bos", "eos", "pad", "system", "user", "assistant", "end", "image", "/image",
                                    "audio", "/audio", "video", "/video", "frame", "null")}
        self.role_of = {self.S[r]: r for r in ROLES}
        # the mesh markers are reserved slots: spans only in a vocabulary with a mesh range
        self.S["mesh"], self.S["/mesh"] = (s("mesh"), s("/mesh")) if vocab.mesh_tokens else (-1, -1)
        self.S["task"] = s("task") if vocab.num_reserved_specials > _TASK_SLOT else -1
        # a grafted vocab's headers, turn end and begin/end of text are runs of text ids
        self.runs = vocab.chat_runs() if vocab.chat else []

    def run_at(self) -> tuple[int, str | None] | None:
        """(length, role or None) of a chat-format run starting at ``pos``, if one does."""
        return self.v.run_at(self.ids, self.pos, self.runs)

    def bad(self, msg: str) -> None:
        if self.strict:
            raise ValueError(f"malformed ids at position {self.pos}: {msg}")

    def name(self, i: int) -> str:
        m = self.v.MODALITIES[self.mod[i]] if self.mod[i] >= 0 else "out-of-range"
        return self.v.special_name(self.ids[i]) if m == "special" else f"{m} id {self.ids[i]}"

    def flush_text(self) -> None:
        if self.text:
            self.out.append(Segment(self.role, "text", text=self.tok.decode(self.text), turn=self.turn))
            self.text = []

    def run(self) -> list[Segment]:
        S, n = self.S, len(self.ids)
        while self.pos < n:
            i, m = self.ids[self.pos], self.mod[self.pos]
            hit = self.run_at() if (m == 0 and self.runs) else None
            if hit is not None:
                self.flush_text()
                length, role = hit
                if role is not None:
                    self.turn += 1
                self.role = role
                self.pos += length
                continue
            if m == 0:
                self.text.append(i)
                self.pos += 1
                continue
            self.flush_text()
            if i in self.role_of:
                self.role = self.role_of[i]
                self.turn += 1
                self.pos += 1
            elif i in (S["end"], S["eos"]):
                self.role = None
                self.pos += 1
            elif i in (S["bos"], S["pad"], S["null"], S["task"]):  # markers with nothing to show
                self.pos += 1
            elif i == S["image"]:
                seg = self.image_span()
                self.out.append(Segment(self.role, "image", codes=seg[0], complete=seg[1], turn=self.turn))
            elif i == S["audio"]:
                self.out.append(self.audio_span())
            elif i == S["video"]:
                self.out.append(self.video_span())
            elif i == S["mesh"]:
                codes, ok = self.coded_span("mesh", 4, self.v.mesh_tokens, self.v.mesh_start)
                self.out.append(Segment(self.role, "mesh", codes=codes, complete=ok, turn=self.turn))
            else:
                self.bad(f"unexpected {self.name(self.pos)} outside any span")
                self.pos += 1
        self.flush_text()
        return self.out

    def image_span(self) -> tuple[list[int], bool]:
        """At ``<|image|>``: read N codes and ``<|/image|>``. Returns (local codes, complete)."""
        return self.coded_span("image", 2, self.v.image_tokens, self.v.image_start)

    def coded_span(self, kind: str, label: int, N: int, start_id: int) -> tuple[list[int], bool]:
        """At ``<|kind|>``: read ``N`` codes of modality index ``label`` and ``<|/kind|>``.
        Returns (local codes, complete)."""
        self.pos += 1
        start = self.pos
        while self.pos < len(self.ids) and self.pos - start < N and self.mod[self.pos] == label:
            self.pos += 1
        codes = (np.asarray(self.ids[start:self.pos], dtype=np.int64) - start_id).tolist()
        if self.pos == len(self.ids):
            return codes, False  # truncated tail
        if self.pos - start < N:
            self.bad(f"{kind} span has {self.pos - start} codes, expected {N}, then {self.name(self.pos)}")
            return codes, False
        if self.ids[self.pos] != self.S[f"/{kind}"]:
            self.bad(f"{kind} span of {N} codes not closed by <|/{kind}|> but by {self.name(self.pos)}")
            return codes, False
        self.pos += 1
        return codes, True

    def audio_span(self) -> Segment:
        self.pos += 1
        seg = Segment(self.role, "audio", codes=[], complete=False, turn=self.turn)
        n, K = len(self.ids), max(self.v.audio_codebooks, 1)
        if self.pos < n and self.v.is_voice(self.ids[self.pos]):
            seg.voice = self.v.voice_name(self.ids[self.pos])
            self.pos += 1
        elif self.pos < n:
            self.bad(f"audio span must start with a voice tag, got {self.name(self.pos)}")
        text: list[int] = []
        flat: list[int] = []
        while self.pos < n:
            i, m = self.ids[self.pos], self.mod[self.pos]
            if m == 0:
                text.append(i)
            elif m == 3:
                flat.append(i)
            elif i == self.S["/audio"]:
                self.pos += 1
                seg.complete = True
                break
            else:
                self.bad(f"unexpected {self.name(self.pos)} inside an audio span")
                break
            self.pos += 1
        whole = len(flat) - len(flat) % K
        if whole != len(flat):
            if seg.complete:
                self.bad(f"audio span holds {len(flat)} codes, not a whole number of {K}-codebook frames")
            seg.complete = False
        try:
            seg.codes = self.v.audio_from_global(flat[:whole]).tolist()
        except ValueError as e:
            self.bad(str(e))
            seg.codes, seg.complete = [], False
        seg.transcript = self.tok.decode(text) if text else None
        return seg

    def video_span(self) -> Segment:
        self.pos += 1
        seg = Segment(self.role, "video", frames=[], times=[], complete=False, turn=self.turn)
        n = len(self.ids)
        while self.pos < n:
            i = self.ids[self.pos]
            if i == self.S["/video"]:
                self.pos += 1
                seg.complete = True
                break
            if self.v.is_time(i) or i == self.S["frame"]:
                t = self.v.time_of(i) if self.v.is_time(i) else None
                self.pos += 1
                if self.pos == n:
                    break
                if self.ids[self.pos] != self.S["image"]:
                    self.bad(f"video frame marker not followed by <|image|> but by {self.name(self.pos)}")
                    break
                codes, ok = self.image_span()
                seg.frames.append(codes)
                seg.times.append(t)
                if not ok:
                    break
            else:
                self.bad(f"expected a time tag, <|frame|> or <|/video|> inside a video span, got {self.name(self.pos)}")
                break
        return seg


def decode_ids(ids: Sequence[int] | Any, vocab: Vocab, text_tokenizer: Any, strict: bool = False) -> list[Segment]:
    """Parse global ids back into :class:`Segment` s (inverse of :func:`encode_conversation`).

    A truncated tail (ids ending inside a span) gives a last segment with ``complete=False`` in both
    modes. Malformed ids (codes outside their span, wrong image length, unknown tokens in a span)
    raise ``ValueError`` when ``strict``; otherwise the parser skips what it cannot read.
    """
    return _Parser(list(np.asarray(_np(ids)).reshape(-1)), vocab, text_tokenizer, strict).run()


def segments_to_messages(segments: Sequence[Segment], default_role: str = "assistant") -> list[dict]:
    """Group segments into OpenAI-style messages with code parts, one message per turn."""
    messages: list[dict] = []
    last_turn: int | None = None
    for seg in segments:
        role = seg.role or default_role
        if seg.modality == "text":
            part: dict = {"type": "text", "text": seg.text or ""}
        elif seg.modality == "image":
            part = {"type": "image_codes", "codes": list(seg.codes or [])}
        elif seg.modality == "mesh":
            part = {"type": "mesh_codes", "codes": list(seg.codes or [])}
        elif seg.modality == "audio":
            part = {"type": "audio_codes", "codes": [list(f) for f in seg.codes or []], "voice": seg.voice,
                    "transcript": seg.transcript}
        else:
            part = {"type": "video_codes", "frames": [list(f) for f in seg.frames or []], "fps": seg.fps,
                    "times": list(seg.times or [])}
        if messages and last_turn == seg.turn and messages[-1]["role"] == role:
            messages[-1]["content"].append(part)
        else:
            messages.append({"role": role, "content": [part]})
        last_turn = seg.turn
    return messages


def _np(x: Any) -> Any:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return x
