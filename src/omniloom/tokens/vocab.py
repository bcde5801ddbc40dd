"""The global vocabulary: one id space for text, special tokens and every modality's codes.

Layout (see ``docs/token-format.md``)::

    [0, text_size)                      text BPE ids (the text tokenizer's own ids)
    [special_start, image_start)        named special tokens, voice tags, time tags, reserved
    [image_start, audio_start)          image codes (one codebook)
    [audio_start, audio_end)            audio codes: codebook k at audio_start + k * audio_codebook_size
    [mesh_start, mesh_end)              3D shape codes (optional; mesh_start == audio_end, empty when absent)
    [mesh_end, size)                    reserved room (future modalities; size is padded to a multiple)

Local codes are a codec's own integers; ``to_global``/``to_local`` map them. Audio local codes are
either given per codebook (``codebook=k``) or "flat" (``k * audio_codebook_size + code``).

A vocabulary grafted onto a pretrained text model carries a **chat format** (``chat``): the base's
own role headers, turn end and begin-of-text as *text ids* (e.g. ``<|im_start|>user\n`` ...
``<|im_end|>\n``), used instead of the ``<|user|>``/``<|end|>`` specials so that a text-only
conversation is the very id sequence the base was tuned on. ``header_ids``, ``end_ids``,
``bos_ids`` and ``eos_ids`` give whichever form the vocabulary uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..utils.fileio import atomic_write_text, read_json

__all__ = ["Vocab", "VOCAB_FORMAT", "VOCAB_VERSION", "NAMED_SPECIALS", "CHAT_KEYS", "RESERVED_NAMES"]

VOCAB_FORMAT = "omniloom-vocab"
VOCAB_VERSION = 1

# Named special tokens, in id order. Their names without the ``<|...|>`` brackets are the keys
# accepted by :meth:`Vocab.special` (both forms work).
NAMED_SPECIALS: tuple[str, ...] = (
    "bos", "eos", "pad",
    "system", "user", "assistant", "end",
    "image", "/image", "audio", "/audio", "video", "/video",
    "frame",  # a video frame whose time is unknown (no fps)
    "null",  # classifier-free guidance: the null condition
    "voice:none",  # audio whose speaker is not one of the named voices (e.g. user speech)
)

#: names given to the first reserved slots (``<|reserved:i|>`` is the i-th name): fill-in-the-middle
#: sentinels (``omniloom.data.fim``), then the 3D shape span's markers, then the task tag (a
#: ``{"type": "task_tag"}`` content part: an appended id that opens gated adapters for a text-only
#: conversation, docs/graft.md). An alias only: the slot's id, and the ``special_tokens`` list stored
#: in vocab.json, stay as they were, so every vocabulary written before keeps its meaning
RESERVED_NAMES: tuple[str, ...] = ("fim_prefix", "fim_suffix", "fim_middle", "mesh", "/mesh", "task")

#: keys of a chat format: each a list of text ids. ``system``/``user``/``assistant``: a role's header;
#: ``end``: after each turn (its first id is the one generation stops at); ``bos``/``eos``: before and
#: after a conversation (may be empty); ``default_system``: a whole system turn put first when a
#: conversation has none (the base's template does so), or empty
CHAT_KEYS = ("bos", "system", "user", "assistant", "end", "eos", "default_system")


def _bracket(name: str) -> str:
    return name if name.startswith("<|") else f"<|{name}|>"


def _unbracket(name: str) -> str:
    return name[2:-2] if name.startswith("<|") and name.endswith("|>") else name


@dataclass
class Vocab:
    """The global id space. Build with :meth:`build`, persist with :meth:`save` / :meth:`load`."""

    MODALITIES = ("text", "special", "image", "audio", "mesh")

    text_size: int
    image_codebook_size: int = 0
    image_tokens: int = 0  # codes per image span
    audio_codebook_size: int = 0
    audio_codebooks: int = 0
    mesh_codebook_size: int = 0  # 3D shape codes (0: no mesh range)
    mesh_tokens: int = 0  # codes per mesh span
    voices: list[str] = field(default_factory=list)  # slot i -> name (token <|voice:i|>)
    num_time_tags: int = 256
    time_step: float = 0.25  # seconds per time tag: <|t:k|> marks time k * time_step
    num_reserved_specials: int = 32
    reserve: int = 0  # extra ids after the audio (and mesh) range (future modalities)
    pad_multiple: int = 64  # total size rounded up to this
    speech_interleave: tuple[int, int] = (6, 12)  # (text tokens, audio frames) per chunk
    chat: dict[str, list[int]] | None = None  # the base's chat format in text ids (see CHAT_KEYS), or None
    chat_strings: dict[str, str] | None = None  # the same as text, for people reading vocab.json

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        text_size: int,
        image_codebook_size: int = 0,
        image_tokens: int = 0,
        audio_codebook_size: int = 0,
        audio_codebooks: int = 0,
        mesh_codebook_size: int = 0,
        mesh_tokens: int = 0,
        num_voices: int = 16,
        voices: Sequence[str] | None = None,
        num_time_tags: int = 256,
        time_step: float = 0.25,
        num_reserved_specials: int = 32,
        reserve: int = 0,
        pad_multiple: int = 64,
        speech_interleave: tuple[int, int] = (6, 12),
        chat: dict[str, list[int]] | None = None,
        chat_strings: dict[str, str] | None = None,
    ) -> "Vocab":
        """Lay out a vocabulary. ``voices`` names the first voice slots (others are ``voice:i``)."""
        names = list(voices or [])
        if len(names) > num_voices:
            num_voices = len(names)
        names += [f"voice:{i}" for i in range(len(names), num_voices)]
        v = cls(
            text_size=int(text_size),
            image_codebook_size=int(image_codebook_size),
            image_tokens=int(image_tokens),
            audio_codebook_size=int(audio_codebook_size),
            audio_codebooks=int(audio_codebooks),
            mesh_codebook_size=int(mesh_codebook_size),
            mesh_tokens=int(mesh_tokens),
            voices=names,
            num_time_tags=int(num_time_tags),
            time_step=float(time_step),
            num_reserved_specials=int(num_reserved_specials),
            reserve=int(reserve),
            pad_multiple=int(pad_multiple),
            speech_interleave=(int(speech_interleave[0]), int(speech_interleave[1])),
            chat=chat,
            chat_strings=chat_strings,
        )
        return v

    @classmethod
    def for_codecs(cls, text_size: int, image_codec: Any = None, audio_codec: Any = None, mesh_codec: Any = None,
                   **kw: Any) -> "Vocab":
        """Build from codec objects (anything with the Codec attributes; a mesh codec gives
        ``codebook_size`` and ``tokens``, its codes per shape)."""
        if image_codec is not None:
            kw.setdefault("image_codebook_size", image_codec.codebook_size)
            kw.setdefault("image_tokens", image_codec.tokens_per_item)
        if audio_codec is not None:
            kw.setdefault("audio_codebook_size", audio_codec.codebook_size)
            kw.setdefault("audio_codebooks", audio_codec.num_codebooks)
        if mesh_codec is not None:
            kw.setdefault("mesh_codebook_size", mesh_codec.codebook_size)
            kw.setdefault("mesh_tokens", mesh_codec.tokens)
        return cls.build(text_size, **kw)

    def __post_init__(self) -> None:
        self.voices = list(self.voices)
        self.speech_interleave = (int(self.speech_interleave[0]), int(self.speech_interleave[1]))
        if self.chat is not None:
            self.chat = {k: [int(i) for i in v] for k, v in self.chat.items()}
        self._validate()
        specials = [_bracket(n) for n in NAMED_SPECIALS]
        specials += [f"<|voice:{i}|>" for i in range(len(self.voices))]
        specials += [f"<|t:{i}|>" for i in range(self.num_time_tags)]
        specials += [f"<|reserved:{i}|>" for i in range(self.num_reserved_specials)]
        self.special_tokens: list[str] = specials
        self.special_start = self.text_size
        self._special_ids = {s: self.special_start + i for i, s in enumerate(specials)}
        for i, name in enumerate(RESERVED_NAMES[:self.num_reserved_specials]):
            self._special_ids[_bracket(name)] = self._special_ids[f"<|reserved:{i}|>"]
        self.image_start = self.special_start + len(specials)
        self.audio_start = self.image_start + self.image_codebook_size
        self.audio_end = self.audio_start + self.audio_codebook_size * self.audio_codebooks
        self.mesh_start = self.audio_end
        self.mesh_end = self.mesh_start + self.mesh_codebook_size
        raw = self.mesh_end + self.reserve
        self.size = -(-raw // self.pad_multiple) * self.pad_multiple
        self._voice_slot = {name: i for i, name in enumerate(self.voices)}
        self.voice_start = self._special_ids["<|voice:0|>"] if self.voices else -1
        self.time_start = self.special_start + len(NAMED_SPECIALS) + len(self.voices)
        # boundaries for modality_of: [text | special | image | audio | mesh | reserved(special)]; an
        # empty mesh range has mesh_start == mesh_end, and searchsorted then lands on the last label
        self._bounds = np.array([0, self.special_start, self.image_start, self.audio_start, self.mesh_start,
                                 self.mesh_end], dtype=np.int64)
        self._labels = np.array([0, 1, 2, 3, 4, 1], dtype=np.int8)

    def _validate(self) -> None:
        if self.text_size <= 0:
            raise ValueError(f"vocab text_size must be positive, got {self.text_size}")
        for name in ("image_codebook_size", "image_tokens", "audio_codebook_size", "audio_codebooks",
                     "mesh_codebook_size", "mesh_tokens", "num_time_tags", "num_reserved_specials", "reserve"):
            if getattr(self, name) < 0:
                raise ValueError(f"vocab {name} must be >= 0, got {getattr(self, name)}")
        if (self.image_codebook_size > 0) != (self.image_tokens > 0):
            raise ValueError(
                f"vocab: image_codebook_size ({self.image_codebook_size}) and image_tokens "
                f"({self.image_tokens}) must both be set or both be 0"
            )
        if (self.audio_codebook_size > 0) != (self.audio_codebooks > 0):
            raise ValueError(
                f"vocab: audio_codebook_size ({self.audio_codebook_size}) and audio_codebooks "
                f"({self.audio_codebooks}) must both be set or both be 0"
            )
        if (self.mesh_codebook_size > 0) != (self.mesh_tokens > 0):
            raise ValueError(
                f"vocab: mesh_codebook_size ({self.mesh_codebook_size}) and mesh_tokens "
                f"({self.mesh_tokens}) must both be set or both be 0"
            )
        mesh_slots = RESERVED_NAMES.index("/mesh") + 1
        if self.mesh_codebook_size and self.num_reserved_specials < mesh_slots:
            raise ValueError(f"vocab: a mesh range needs at least {mesh_slots} reserved specials (its span markers "
                             f"are reserved slots 3 and 4), got num_reserved_specials={self.num_reserved_specials}")
        if self.pad_multiple <= 0:
            raise ValueError(f"vocab pad_multiple must be positive, got {self.pad_multiple}")
        if self.time_step <= 0:
            raise ValueError(f"vocab time_step must be positive, got {self.time_step}")
        if len(set(self.voices)) != len(self.voices):
            raise ValueError(f"vocab voices must be unique, got {self.voices}")
        for name in self.voices:
            if not isinstance(name, str) or not name or name == "none":
                raise ValueError(f"vocab voice name {name!r} is not allowed (non-empty string, not 'none')")
        t, a = self.speech_interleave
        if t <= 0 or a <= 0:
            raise ValueError(f"vocab speech_interleave must be two positive ints, got {self.speech_interleave}")
        if self.chat is not None:
            unknown = sorted(set(self.chat) - set(CHAT_KEYS))
            if unknown:
                raise ValueError(f"vocab chat format: unknown key(s) {unknown} (known: {', '.join(CHAT_KEYS)})")
            for key in ("system", "user", "assistant", "end"):
                if not self.chat.get(key):
                    raise ValueError(f"vocab chat format: {key!r} must be a non-empty list of text ids")
            for key, ids in self.chat.items():
                bad = [i for i in ids if not 0 <= i < self.text_size]
                if bad:
                    raise ValueError(f"vocab chat format: {key!r} holds ids {bad[:3]} outside the text range "
                                     f"[0, {self.text_size})")
            heads = [tuple(self.chat[r]) for r in ("system", "user", "assistant")]
            if len(set(heads)) != 3:
                raise ValueError("vocab chat format: the system, user and assistant headers must differ")

    # ------------------------------------------------------------------ specials

    def special(self, name: str) -> int:
        """Id of a special token by name: ``"bos"`` or ``"<|bos|>"``, ``"voice:3"``, ``"t:7"``..."""
        key = _bracket(name)
        try:
            return self._special_ids[key]
        except KeyError:
            raise ValueError(f"unknown special token {name!r} (e.g. {', '.join(self.special_tokens[:8])})") from None

    def special_name(self, id_: int) -> str:
        """``<|...|>`` string of a special id; ValueError if ``id_`` is not a special."""
        i = int(id_) - self.special_start
        if not 0 <= i < len(self.special_tokens):
            raise ValueError(f"id {id_} is not a special token id")
        return self.special_tokens[i]

    def is_special(self, id_: int) -> bool:
        return self.special_start <= int(id_) < self.image_start

    @property
    def bos_id(self) -> int:
        return self._special_ids["<|bos|>"]

    @property
    def eos_id(self) -> int:
        return self._special_ids["<|eos|>"]

    @property
    def pad_id(self) -> int:
        return self._special_ids["<|pad|>"]

    @property
    def null_id(self) -> int:
        return self._special_ids["<|null|>"]

    # chat format ------------------------------------------------------------

    def header_ids(self, role: str) -> list[int]:
        """Ids that open a turn of ``role``: ``[<|role|>]``, or the base's header in a grafted vocab."""
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"role {role!r} is not one of system, user, assistant")
        return list(self.chat[role]) if self.chat else [self._special_ids[_bracket(role)]]

    @property
    def end_ids(self) -> list[int]:
        """Ids that close a turn: ``[<|end|>]``, or the base's turn end (e.g. ``<|im_end|>\\n``)."""
        return list(self.chat["end"]) if self.chat else [self._special_ids["<|end|>"]]

    @property
    def end_id(self) -> int:
        """The id an answer stops at: ``<|end|>``, or the first id of the base's turn end."""
        return self.chat["end"][0] if self.chat else self._special_ids["<|end|>"]

    @property
    def bos_ids(self) -> list[int]:
        return list(self.chat.get("bos", [])) if self.chat else [self._special_ids["<|bos|>"]]

    @property
    def eos_ids(self) -> list[int]:
        return list(self.chat.get("eos", [])) if self.chat else [self._special_ids["<|eos|>"]]

    @property
    def default_system_ids(self) -> list[int]:
        """A whole system turn that a conversation without one starts with (empty: none)."""
        return list(self.chat.get("default_system", [])) if self.chat else []

    def chat_runs(self, roles_only: bool = False) -> list[tuple[list[int], str | None]]:
        """The id runs that structure a conversation, longest first (so that one run beginning another
        is matched whole): each role's header with its role, and (unless ``roles_only``) the turn end,
        bos and eos with None. Single special ids for omniloom's own format, text-id runs for a graft."""
        runs: list[tuple[list[int], str | None]] = [(self.header_ids(r), r) for r in ("system", "user", "assistant")]
        if not roles_only:
            runs += [(self.end_ids, None)] + [(ids, None) for ids in (self.bos_ids, self.eos_ids) if ids]
        return sorted(runs, key=lambda r: -len(r[0]))

    @staticmethod
    def run_at(ids: Sequence[int], pos: int, runs: list[tuple[list[int], str | None]]) -> tuple[int, str | None] | None:
        """(length, role or None) of the first of ``runs`` that starts at ``ids[pos]``, else None."""
        for run, role in runs:
            if run and ids[pos] == run[0] and list(ids[pos:pos + len(run)]) == run:
                return len(run), role
        return None

    def find_headers(self, ids: Sequence[int]) -> list[tuple[int, int, str]]:
        """``(start, stop, role)`` of every turn header in ``ids``, in order."""
        ids = [int(i) for i in ids]
        runs = self.chat_runs(roles_only=True)
        out, i = [], 0
        while i < len(ids):
            hit = self.run_at(ids, i, runs)
            if hit is None:
                i += 1
                continue
            out.append((i, i + hit[0], str(hit[1])))
            i += hit[0]
        return out

    # voices ---------------------------------------------------------------

    def voice_id(self, voice: str | None) -> int:
        """Voice tag id for a voice name (``None`` -> ``<|voice:none|>``). Accepts ``"voice:i"`` too."""
        if voice is None or voice == "none":
            return self._special_ids["<|voice:none|>"]
        if voice in self._voice_slot:
            return self.voice_start + self._voice_slot[voice]
        if voice.startswith("voice:") and voice[6:].isdigit() and int(voice[6:]) < len(self.voices):
            return self.voice_start + int(voice[6:])
        raise ValueError(f"unknown voice {voice!r}; this vocabulary has {self.voices}")

    def voice_name(self, id_: int) -> str | None:
        """Voice name of a voice tag id (``None`` for ``<|voice:none|>``); ValueError otherwise."""
        id_ = int(id_)
        if id_ == self._special_ids["<|voice:none|>"]:
            return None
        if self.voices and self.voice_start <= id_ < self.voice_start + len(self.voices):
            return self.voices[id_ - self.voice_start]
        raise ValueError(f"id {id_} is not a voice tag")

    def is_voice(self, id_: int) -> bool:
        id_ = int(id_)
        return id_ == self._special_ids["<|voice:none|>"] or (
            bool(self.voices) and self.voice_start <= id_ < self.voice_start + len(self.voices))

    # time tags ------------------------------------------------------------

    def time_id(self, seconds: float) -> int:
        """Time tag id for a time in seconds (rounded to the nearest ``time_step``)."""
        k = int(round(float(seconds) / self.time_step))
        if not 0 <= k < self.num_time_tags:
            raise ValueError(
                f"time {seconds}s is outside the time tags' range [0, {(self.num_time_tags - 1) * self.time_step}]s"
            )
        return self.time_start + k

    def time_of(self, id_: int) -> float:
        """Seconds of a time tag id; ValueError otherwise."""
        k = int(id_) - self.time_start
        if not 0 <= k < self.num_time_tags:
            raise ValueError(f"id {id_} is not a time tag")
        return k * self.time_step

    def is_time(self, id_: int) -> bool:
        return 0 <= int(id_) - self.time_start < self.num_time_tags

    # ------------------------------------------------------------------ ranges

    def range_of(self, modality: str) -> tuple[int, int]:
        """``[start, stop)`` of a modality's ids (``"text"``, ``"special"``, ``"image"``, ``"audio"``,
        ``"mesh"``: empty at ``audio_end`` when the vocabulary has no mesh range)."""
        if modality == "text":
            return 0, self.text_size
        if modality == "special":
            return self.special_start, self.image_start
        if modality == "image":
            return self.image_start, self.audio_start
        if modality == "audio":
            return self.audio_start, self.audio_end
        if modality == "mesh":
            return self.mesh_start, self.mesh_end
        raise ValueError(f"unknown modality {modality!r}; choose one of {self.MODALITIES}")

    def audio_codebook_range(self, k: int) -> tuple[int, int]:
        """``[start, stop)`` of audio codebook ``k``'s global ids."""
        if not 0 <= k < self.audio_codebooks:
            raise ValueError(f"audio codebook {k} out of range [0, {self.audio_codebooks})")
        start = self.audio_start + k * self.audio_codebook_size
        return start, start + self.audio_codebook_size

    def to_global(self, modality: str, local: Any, codebook: int | None = None) -> Any:
        """Local code(s) -> global id(s). int -> int; list/array/tensor -> same kind (lists -> ndarray).

        Audio: with ``codebook=k`` the local codes are codes of codebook ``k``; without it they are
        flat codes ``k * audio_codebook_size + code``.
        """
        start, stop = self.range_of(modality)
        if modality == "special":
            raise ValueError("special tokens have no local codes; use vocab.special(name)")
        n = stop - start
        if modality == "audio" and codebook is not None:
            start, stop = self.audio_codebook_range(codebook)
            n = stop - start
        elif codebook is not None:
            raise ValueError(f"codebook= only applies to audio, not {modality!r}")
        return _shift(local, start, n, f"{modality} local code")

    def to_local(self, modality: str, global_: Any, codebook: int | None = None) -> Any:
        """Inverse of :meth:`to_global`; ValueError if an id lies outside the modality's range."""
        start, stop = self.range_of(modality)
        if modality == "special":
            raise ValueError("special tokens have no local codes")
        if modality == "audio" and codebook is not None:
            start, stop = self.audio_codebook_range(codebook)
        elif codebook is not None:
            raise ValueError(f"codebook= only applies to audio, not {modality!r}")
        return _shift(global_, -start, stop - start, f"{modality} global id", offset_in=start)

    def audio_to_global(self, codes: Any) -> list[int]:
        """Audio codes ``(frames, codebooks)`` -> flat frame-major global ids (f0c0, f0c1, ..., f1c0, ...)."""
        arr = np.asarray(_to_numpy(codes), dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] != self.audio_codebooks:
            raise ValueError(
                f"audio codes must have shape (frames, {self.audio_codebooks}), got {tuple(arr.shape)}"
            )
        if arr.size and (arr.min() < 0 or arr.max() >= self.audio_codebook_size):
            raise ValueError(f"audio codes must lie in [0, {self.audio_codebook_size}), got [{arr.min()}, {arr.max()}]")
        offs = self.audio_start + np.arange(self.audio_codebooks, dtype=np.int64) * self.audio_codebook_size
        return (arr + offs[None, :]).reshape(-1).tolist()

    def audio_from_global(self, ids: Any) -> np.ndarray:
        """Flat frame-major global audio ids -> local codes ``(frames, codebooks)``; checks codebook order."""
        arr = np.asarray(_to_numpy(ids), dtype=np.int64).reshape(-1)
        K = self.audio_codebooks
        if K == 0 or arr.size % K:
            raise ValueError(f"{arr.size} audio ids are not a whole number of frames of {K} codebooks")
        grid = arr.reshape(-1, K) - self.audio_start
        book = grid // max(self.audio_codebook_size, 1)
        if grid.size and ((grid < 0).any() or (book != np.arange(K)[None, :]).any()):
            raise ValueError("audio ids are not frame-major in codebook order (codebook k at position k)")
        return grid - book * self.audio_codebook_size

    def modality_of(self, ids: Any) -> np.ndarray:
        """Vectorised: index into :attr:`MODALITIES` per id, as int8 (reserved tail -> special; out of range -> -1)."""
        arr = np.asarray(_to_numpy(ids), dtype=np.int64)
        out = self._labels[np.clip(np.searchsorted(self._bounds, arr, side="right") - 1, 0, None)]
        out = np.where((arr < 0) | (arr >= self.size), np.int8(-1), out).astype(np.int8)
        return out

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "text_size": self.text_size,
            "image": {"codebook_size": self.image_codebook_size, "tokens": self.image_tokens},
            "audio": {"codebook_size": self.audio_codebook_size, "codebooks": self.audio_codebooks},
            # only when present: a vocabulary without a mesh range writes the bytes it always did
            **({"mesh": {"codebook_size": self.mesh_codebook_size, "tokens": self.mesh_tokens}}
               if self.mesh_codebook_size else {}),
            "voices": list(self.voices),
            "time_tags": {"count": self.num_time_tags, "step": self.time_step},
            "num_reserved_specials": self.num_reserved_specials,
            "reserve": self.reserve,
            "pad_multiple": self.pad_multiple,
            "speech_interleave": list(self.speech_interleave),
            **({"chat": {k: list(v) for k, v in self.chat.items()}} if self.chat else {}),
            **({"chat_strings": dict(self.chat_strings)} if self.chat and self.chat_strings else {}),
            # derived, for readers; checked on load
            "size": self.size,
            "special_tokens": list(self.special_tokens),
            "ranges": {m: list(self.range_of(m)) for m in self.MODALITIES
                       if m != "mesh" or self.mesh_codebook_size},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "vocab") -> "Vocab":
        if not isinstance(d, dict) or d.get("format") != VOCAB_FORMAT:
            raise ValueError(f"{source}: not an omniloom vocabulary (missing format={VOCAB_FORMAT!r})")
        if d.get("version") != VOCAB_VERSION:
            raise ValueError(f"{source}: vocab format version {d.get('version')!r} is not supported "
                             f"(this omniloom reads version {VOCAB_VERSION})")
        try:
            mesh = d.get("mesh") or {"codebook_size": 0, "tokens": 0}
            v = cls(
                text_size=int(d["text_size"]),
                image_codebook_size=int(d["image"]["codebook_size"]),
                image_tokens=int(d["image"]["tokens"]),
                audio_codebook_size=int(d["audio"]["codebook_size"]),
                audio_codebooks=int(d["audio"]["codebooks"]),
                mesh_codebook_size=int(mesh["codebook_size"]),
                mesh_tokens=int(mesh["tokens"]),
                voices=list(d["voices"]),
                num_time_tags=int(d["time_tags"]["count"]),
                time_step=float(d["time_tags"]["step"]),
                num_reserved_specials=int(d["num_reserved_specials"]),
                reserve=int(d["reserve"]),
                pad_multiple=int(d["pad_multiple"]),
                speech_interleave=tuple(d["speech_interleave"]),
                chat=d.get("chat"),
                chat_strings=d.get("chat_strings"),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: missing or malformed key {e}") from e
        if "size" in d and int(d["size"]) != v.size:
            raise ValueError(f"{source}: stored size {d['size']} differs from the layout's size {v.size}")
        if "special_tokens" in d and list(d["special_tokens"]) != v.special_tokens:
            raise ValueError(f"{source}: stored special tokens differ from this omniloom's layout")
        return v

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (temp file + ``os.replace``); the bytes are those of every earlier
        release (``json.dumps(indent=1)``, no final newline), since shard sets compare them."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        path = Path(path)
        if path.is_dir():
            path = path / "vocab.json"
        return cls.from_dict(read_json(path, "vocab file"), source=str(path))

    def same_ids(self, other: "Vocab") -> bool:
        """True when every id means the same in both vocabularies: equal layouts, or equal but for a
        mesh range that only one of them holds in the same total size (the shipped world model gained
        one in its padding; data tokenized before still fits its weights, and the other way round)."""
        if self == other:
            return True
        if self.mesh_codebook_size and other.mesh_codebook_size:
            return False
        a, b = self.to_dict(), other.to_dict()
        for d in (a, b):
            d.pop("mesh", None)
            d["ranges"].pop("mesh", None)
        return a == b

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"Vocab(size={self.size}, text={self.text_size}, specials={len(self.special_tokens)}, "
                f"image={self.image_codebook_size}x{self.image_tokens}, "
                f"audio={self.audio_codebooks}x{self.audio_codebook_size}"
                + (f", mesh={self.mesh_codebook_size}x{self.mesh_tokens}" if self.mesh_codebook_size else "") + ")")


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        return x.detach().cpu().numpy()
    return x


def _shift(x: Any, delta: int, n: int, what: str, offset_in: int = 0) -> Any:
    """Return ``x + delta`` after checking ``0 <= x - offset_in < n`` (ints, lists, arrays, tensors)."""
    if isinstance(x, (int, np.integer)):
        if not 0 <= int(x) - offset_in < n:
            raise ValueError(f"{what} {int(x)} out of range [{offset_in}, {offset_in + n})")
        return int(x) + delta
    if isinstance(x, (list, tuple)):
        x = np.asarray(x, dtype=np.int64)
    if x.numel() if hasattr(x, "numel") else x.size:
        lo, hi = int(x.min()), int(x.max())
        if lo - offset_in < 0 or hi - offset_in >= n:
            raise ValueError(f"{what} out of range [{offset_in}, {offset_in + n}): got values in [{lo}, {hi}]")
    return x + delta
