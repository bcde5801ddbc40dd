"""``librispeech``: a LibriSpeech-style tree of ``*.trans.txt`` transcripts beside their audio.

Each transcript line is ``UTTERANCE-ID TRANSCRIPT``; the utterance's audio is ``UTTERANCE-ID.flac``
(or ``.wav``, ``.mp3``, ``.ogg``) in the transcript's folder. Every utterance becomes an ``asr``
document (speech -> transcript), a ``tts`` document (text -> spoken answer) or both, with the
prompts of :class:`~omniloom.data.formats.common.Pairs`. The input is the tree's root (every
``*.trans.txt`` under it, in sorted order) or one ``.trans.txt`` file. Transcripts are kept as
written (LibriSpeech's are upper case).
"""

from __future__ import annotations

from pathlib import Path

from .common import AUDIO_EXTS, Documents, Pairs

__all__ = ["read_librispeech", "TRANSCRIPT_SUFFIX"]

TRANSCRIPT_SUFFIX = ".trans.txt"


def transcript_files(path: str | Path) -> list[Path]:
    """The ``*.trans.txt`` files of an input (a tree or one file), sorted."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.rglob("*" + TRANSCRIPT_SUFFIX))
        if not files:
            raise ValueError(f"folder {p} holds no *{TRANSCRIPT_SUFFIX} transcripts (--format librispeech)")
        return files
    if p.is_file() and p.name.endswith(TRANSCRIPT_SUFFIX):
        return [p]
    raise ValueError(f"input {p} is neither a folder nor a *{TRANSCRIPT_SUFFIX} file (--format librispeech)")


def read_librispeech(path: str | Path, audio_task: str | None = None, prompts: dict[str, str] | None = None,
                     tts_voice: str | None = None) -> Documents:
    """``(utterance number, messages)``: utterances counted from 1 over the input's transcripts in
    sorted order (a document per direction, so ``both`` gives two per utterance)."""
    pairs = Pairs.make(audio_task=audio_task, prompts=prompts, tts_voice=tts_voice)
    n = 0
    for f in transcript_files(path):
        folder = f.parent.resolve()
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            text = text.strip()
            if not text:
                raise ValueError(f"{f}:{lineno}: expected \"UTTERANCE-ID TRANSCRIPT\", got {line.strip()[:80]!r}")
            audio = next((folder / f"{utt}.{ext}" for ext in AUDIO_EXTS if (folder / f"{utt}.{ext}").is_file()), None)
            if audio is None:
                raise ValueError(f"{f}:{lineno}: no audio file for utterance {utt} "
                                 f"({folder / utt}.{{{','.join(AUDIO_EXTS)}}} do not exist)")
            n += 1
            for messages in pairs.audio({"type": "audio", "audio": str(audio)}, text):
                yield n, messages
