"""``webdataset``: tar shards of samples, the files of a sample sharing a key (``KEY.EXT``).

The input is a ``.tar`` file, a glob of them or a folder of them (read in sorted order, each as a
stream: a sample's files must be adjacent, as WebDataset writes them). Per sample:

- ``KEY.json`` holding ``{"messages": [...]}``: that conversation; a media part whose ``image`` /
  ``audio`` / ``path`` names a file of the sample (``"jpg"`` or ``"KEY.jpg"``) gets its bytes;
- else an image (``jpg``, ``png``, ...) and ``KEY.txt``: caption documents (or draw: ``--image-task``);
- else audio (``flac``, ``wav``, ...) and ``KEY.txt``: asr documents (or tts: ``--audio-task``).

Other files (``cls``, a ``json`` of metadata as img2dataset writes) are ignored. Media go into the
parts as bytes, decoded by the processor like a file.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from pathlib import Path
from typing import Any, Iterator

from .common import AUDIO_EXTS, IMAGE_EXTS, Documents, Message, Pairs, input_files

__all__ = ["read_webdataset", "TAR_SUFFIXES"]

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_MEDIA_KEYS = {"image": "image", "audio": "audio"}  # part type -> the key its bytes go under


def read_webdataset(path: str | Path, audio_task: str | None = None, image_task: str | None = None,
                    prompts: dict[str, str] | None = None, tts_voice: str | None = None) -> Documents:
    """``(sample number, messages)``: samples counted from 1 over the input's shards in order."""
    pairs = Pairs.make(audio_task=audio_task, image_task=image_task, prompts=prompts, tts_voice=tts_voice)
    n = 0
    for tar in input_files(path, TAR_SUFFIXES, "tar shards"):
        for key, files in samples(tar):
            n += 1
            for messages in sample_documents(key, files, pairs, f"{tar}: sample {n} (key {key!r})"):
                yield n, messages


def samples(tar: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` of each sample of one shard, in order."""
    try:
        stream = tarfile.open(tar, "r|*")
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"{tar}: not a readable tar file ({e})") from e
    key, files = None, {}
    with stream:
        try:
            for member in stream:
                folder, name = posixpath.split(member.name)
                if not member.isfile() or name.startswith(".") or "." not in name:
                    continue
                stem, ext = name.split(".", 1)
                if posixpath.join(folder, stem) != key:
                    if files:
                        yield key, files
                    key, files = posixpath.join(folder, stem), {}
                ext = ext.lower()
                if ext in files:
                    raise ValueError(f"{tar}: sample {key!r} holds two .{ext} files")
                files[ext] = stream.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"{tar}: broken tar after sample {key!r} ({e})") from e
    if files:
        yield key, files


def _kind(ext: str) -> str:
    return ext.rsplit(".", 1)[-1]


def sample_documents(key: str, files: dict[str, bytes], pairs: Pairs, where: str) -> list[list[Message]]:
    """The documents of one sample (``files``: extension -> bytes)."""
    for ext, data in files.items():
        if _kind(ext) == "json":
            try:
                obj = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{where}: .{ext} is not valid JSON ({e})") from e
            if isinstance(obj, dict) and "messages" in obj:
                return [_with_members(obj["messages"], posixpath.basename(key), files, f"{where} .{ext}")]
    names = ", ".join("." + e for e in files)
    texts = [e for e in files if _kind(e) == "txt"]
    images = [e for e in files if _kind(e) in IMAGE_EXTS]
    audios = [e for e in files if _kind(e) in AUDIO_EXTS]
    if len(texts) != 1:
        raise ValueError(f"{where}: needs one .txt caption/transcript or a .json with \"messages\" "
                         f"(it holds {names})")
    if len(images) + len(audios) != 1:
        raise ValueError(f"{where}: needs exactly one image ({', '.join(IMAGE_EXTS)}) or audio file "
                         f"({', '.join(AUDIO_EXTS)}) beside its .txt (it holds {names})")
    try:
        text = files[texts[0]].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: .{texts[0]} is not UTF-8 text ({e.reason})") from e
    if not text:
        raise ValueError(f"{where}: .{texts[0]} is empty")
    if images:
        return pairs.image({"type": "image", "image": files[images[0]]}, text)
    return pairs.audio({"type": "audio", "audio": files[audios[0]]}, text)


def _with_members(messages: Any, stem: str, files: dict[str, bytes], where: str) -> list[Message]:
    """``messages`` with media parts that name a file of the sample given its bytes."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: \"messages\" must be a non-empty list")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"{where}: message {i} must be an object with \"role\" and \"content\"")
        content = msg.get("content")
        if isinstance(content, list):
            content = [_member_part(p, stem, files, f"{where}: message {i} part {j}") for j, p in enumerate(content)]
        out.append({**msg, "content": content})
    return out


def _member_part(part: Any, stem: str, files: dict[str, bytes], where: str) -> Any:
    key = _MEDIA_KEYS.get(part.get("type")) if isinstance(part, dict) else None
    if key is None:
        return part
    ref = part.get(key, part.get("path"))
    if not isinstance(ref, str) or ref.startswith(("data:", "/", "file://")):
        return part  # bytes, a data URL or an absolute path: the processor reads it as it is
    ext = ref[len(stem) + 1:] if ref.startswith(stem + ".") else ref
    if ext.lower() not in files:
        raise ValueError(f"{where}: {key} {ref!r} is not a file of this sample (it holds "
                         f"{', '.join('.' + e for e in files)})")
    return {k: v for k, v in part.items() if k != "path"} | {key: files[ext.lower()]}
