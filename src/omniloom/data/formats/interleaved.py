"""``interleaved``: web documents of text and images, one JSON object per line.

- OBELICS: ``{"texts": [str | null, ...], "images": [path | url | null, ...]}``, aligned lists where
  each position holds a text or an image;
- MMC4: ``{"text_list": [sentence, ...], "image_info": [{"image_name" | "raw_url",
  "matched_text_index"}, ...]}``, each image placed before the sentence it was matched to.

Images are local files: a path under ``--image-root`` (default: the JSONL file's folder), or a URL
looked up by its file name there (URLs are never fetched). A document becomes one ``assistant``
message, so both ``--mode sft`` (loss on assistant content) and ``--mode pretrain`` (loss on
every id) learn the whole document. Adjacent paragraphs (OBELICS) are joined by a blank line,
adjacent sentences (MMC4) by a space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Documents, json_lines, media_folder, resolve_media, text_part

__all__ = ["read_interleaved"]


def read_interleaved(path: str | Path, media_root: str | None = None) -> Documents:
    """``(line number, [one assistant message])`` of an OBELICS / MMC4 JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input file {path} does not exist (--format interleaved reads JSONL)")
    root = media_folder(media_root, path.parent.resolve())
    for lineno, _, doc in json_lines(path):
        where = f"{path}:{lineno}"
        if isinstance(doc, dict) and "texts" in doc and "images" in doc:
            parts = _obelics(doc, root, where)
        elif isinstance(doc, dict) and "text_list" in doc:
            parts = _mmc4(doc, root, where)
        else:
            raise ValueError(f"{where}: expected an OBELICS {{\"texts\", \"images\"}} or an MMC4 "
                             "{\"text_list\", \"image_info\"} object")
        if not parts:
            raise ValueError(f"{where}: the document is empty")
        yield lineno, [{"role": "assistant", "content": parts}]


def _add_text(parts: list[dict[str, Any]], text: str, sep: str) -> None:
    if parts and parts[-1]["type"] == "text":
        parts[-1] = text_part(parts[-1]["text"] + sep + text)
    else:
        parts.append(text_part(text))


def _obelics(doc: dict, root: Path, where: str) -> list[dict[str, Any]]:
    texts, images = doc["texts"], doc["images"]
    if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
        raise ValueError(f"{where}: \"texts\" and \"images\" must be lists of the same length")
    parts: list[dict[str, Any]] = []
    for i, (text, image) in enumerate(zip(texts, images)):
        if text is not None and image is not None:
            raise ValueError(f"{where}: position {i} holds both a text and an image")
        if image is not None:
            parts.append({"type": "image", "image": resolve_media(image, root, f"{where}: position {i}")})
        elif isinstance(text, str):
            if text.strip():
                _add_text(parts, text, "\n\n")
        elif text is not None:
            raise ValueError(f"{where}: texts[{i}] must be a string or null")
    return parts


def _mmc4(doc: dict, root: Path, where: str) -> list[dict[str, Any]]:
    sentences, info = doc["text_list"], doc.get("image_info") or []
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise ValueError(f"{where}: \"text_list\" must be a list of strings")
    if not isinstance(info, list):
        raise ValueError(f"{where}: \"image_info\" must be a list")
    before: dict[int, list[dict[str, Any]]] = {}
    for k, img in enumerate(info):
        at = img.get("matched_text_index") if isinstance(img, dict) else None
        if not isinstance(at, int) or not 0 <= at < len(sentences):
            raise ValueError(f"{where}: image_info[{k}] needs a matched_text_index in [0, {len(sentences)})")
        ref = img.get("image_name") or img.get("raw_url")
        before.setdefault(at, []).append({"type": "image", "image": resolve_media(ref, root, f"{where}: image_info[{k}]")})
    parts: list[dict[str, Any]] = []
    for i, sentence in enumerate(sentences):
        parts += before.get(i, [])
        if sentence.strip():
            _add_text(parts, sentence.strip(), " ")
    return parts
