"""What the readers share: the files of an input, media references, and the paired documents
(caption / draw for image + text, asr / tts for speech + text) built with prompts the user chooses."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

__all__ = ["Documents", "Message", "Pairs", "json_lines", "DEFAULT_PROMPTS", "AUDIO_TASKS", "IMAGE_TASKS", "IMAGE_EXTS",
           "AUDIO_EXTS", "is_glob", "input_files", "media_folder", "resolve_media", "text_part"]

Message = dict[str, Any]
Documents = Iterator[tuple[int, list[Message]]]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")
AUDIO_EXTS = ("flac", "wav", "mp3", "ogg")

#: the instruction of each paired task; ``{text}`` is where the caption / transcript goes. The keys
#: caption, transcribe and speak are the task prompts a model directory names in generation.json
DEFAULT_PROMPTS = {
    "caption": "describe the image",
    "draw": "draw {text}",
    "transcribe": "transcribe the audio",
    "speak": "say {text}",
}
_NEEDS_TEXT = ("draw", "speak")  # prompts that carry the text (the answer is the media)
AUDIO_TASKS = ("asr", "tts", "both")
IMAGE_TASKS = ("caption", "draw", "both")


def is_glob(path: str | Path) -> bool:
    return any(c in str(path) for c in "*?[")


def input_files(path: str | Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """A file, a glob pattern or a folder (its files ending in ``suffixes``) -> sorted files."""
    if is_glob(path):
        files = sorted(Path(f) for f in glob.glob(str(path)) if Path(f).is_file())
        if not files:
            raise ValueError(f"{path} matches no file")
        return files
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(suffixes))
        if not files:
            raise ValueError(f"folder {p} holds no {what} ({', '.join('*' + s for s in suffixes)})")
        return files
    if p.is_file():
        return [p]
    raise ValueError(f"input {p} does not exist")


def json_lines(path: str | Path, seek: int = 0, first_line: int = 1) -> Iterator[tuple[int, int, Any]]:
    """``(line number, byte offset, object)`` of every non-blank line of a JSON-lines file, from
    byte ``seek`` (lines numbered from ``first_line``). Bad UTF-8 or JSON is a ValueError naming the
    file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist")
    with open(path, "rb") as f:
        f.seek(seek)
        offset = seek
        for lineno, raw in enumerate(f, first_line):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from e
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
            yield lineno, start, obj


def resolve_media(ref: Any, root: Path, where: str, what: str = "image") -> str:
    """A media reference of a record -> an absolute path (or the ``data:`` URL itself).

    Relative paths are taken under ``root``; an ``http(s)`` URL is not fetched but looked up by its
    file name under ``root`` (where a downloader such as img2dataset put it). A missing file is a
    ValueError naming ``where`` and the file."""
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"{where}: {what} reference must be a non-empty string, got {ref!r}")
    if ref.startswith("data:"):
        return ref
    if ref.startswith(("http://", "https://")):
        name = Path(unquote(urlparse(ref).path)).name
        local = root / name
        if not name or not local.is_file():
            raise ValueError(f"{where}: {what} {ref} is a URL (never fetched) and its file {local} does not "
                             "exist; download the media and pass their folder as --image-root")
        return str(local.resolve())
    p = Path(ref[7:] if ref.startswith("file://") else ref).expanduser()
    if not p.is_absolute():
        p = root / p
    if not p.is_file():
        raise ValueError(f"{where}: {what} file {p} does not exist (relative paths are taken under {root}; "
                         "--image-root DIR sets that folder)")
    return str(p.resolve())


def text_part(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


@dataclass(frozen=True)
class Pairs:
    """How a (media, text) pair becomes documents: which directions and with which prompts.

    ``audio_task``: ``asr`` (speech -> transcript), ``tts`` (text -> spoken answer) or ``both`` (one
    document of each); ``image_task``: ``caption`` (image -> text), ``draw`` (text -> image) or
    ``both``. ``prompts`` overrides :data:`DEFAULT_PROMPTS`; ``tts_voice`` names the voice of spoken
    answers (None: ``<|voice:none|>``; a name gets a voice slot in a new vocabulary)."""

    audio_task: str = "asr"
    image_task: str = "caption"
    prompts: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    tts_voice: str | None = None

    @classmethod
    def make(cls, audio_task: str | None = None, image_task: str | None = None,
             prompts: dict[str, str] | None = None, tts_voice: str | None = None) -> "Pairs":
        """Checked options (ValueError naming the flag)."""
        audio_task, image_task = audio_task or "asr", image_task or "caption"
        if audio_task not in AUDIO_TASKS:
            raise ValueError(f"--audio-task must be one of {', '.join(AUDIO_TASKS)}, got {audio_task!r}")
        if image_task not in IMAGE_TASKS:
            raise ValueError(f"--image-task must be one of {', '.join(IMAGE_TASKS)}, got {image_task!r}")
        merged = dict(DEFAULT_PROMPTS)
        for task, prompt in (prompts or {}).items():
            if task not in DEFAULT_PROMPTS:
                raise ValueError(f"--prompt {task}=...: unknown task (known: {', '.join(DEFAULT_PROMPTS)})")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"--prompt {task}=...: the prompt is empty")
            if (task in _NEEDS_TEXT) != ("{text}" in prompt):
                need = "must contain" if task in _NEEDS_TEXT else "must not contain (the text is the answer)"
                raise ValueError(f"--prompt {task}={prompt!r}: {need} {{text}}")
            merged[task] = prompt
        if tts_voice is not None and (not tts_voice or tts_voice.startswith("voice:")):
            raise ValueError(f"--tts-voice must be a voice name, got {tts_voice!r}")
        return cls(audio_task, image_task, merged, tts_voice)

    def image(self, image: dict[str, Any], text: str) -> list[list[Message]]:
        """Documents of an image part and its caption."""
        docs = []
        if self.image_task in ("caption", "both"):
            docs.append([{"role": "user", "content": [image, text_part(self.prompts["caption"])]},
                         {"role": "assistant", "content": [text_part(text)]}])
        if self.image_task in ("draw", "both"):
            docs.append([{"role": "user", "content": [text_part(self.prompts["draw"].replace("{text}", text))]},
                         {"role": "assistant", "content": [image]}])
        return docs

    def audio(self, audio: dict[str, Any], text: str) -> list[list[Message]]:
        """Documents of a speech part and its transcript."""
        docs = []
        if self.audio_task in ("asr", "both"):
            docs.append([{"role": "user", "content": [audio, text_part(self.prompts["transcribe"])]},
                         {"role": "assistant", "content": [text_part(text)]}])
        if self.audio_task in ("tts", "both"):
            spoken = {**audio, "transcript": text}
            if self.tts_voice is not None:
                spoken["voice"] = self.tts_voice
            docs.append([{"role": "user", "content": [text_part(self.prompts["speak"].replace("{text}", text))]},
                         {"role": "assistant", "content": [spoken]}])
        return docs


def media_folder(option: str | Path | None, default: Path) -> Path:
    """The folder relative media paths are taken under: ``--image-root`` or ``default``."""
    if option is None:
        return default
    root = Path(option).expanduser()
    if not root.is_dir():
        raise ValueError(f"--image-root {option}: not a folder")
    return root.resolve()
