"""``hf``: Hugging Face ``datasets`` data, read with pyarrow alone (no ``datasets`` decoding).

The input is a ``save_to_disk`` folder of one split (``state.json`` / ``dataset_info.json`` beside
``data-*.arrow``), a ``.parquet`` file, a glob of them or a folder of them. Columns play roles:

- ``image`` / ``audio``: datasets' Image / Audio features (stored as ``{"bytes", "path"}``), raw
  bytes, a file path (under ``--image-root``, default the data's folder) or ``{"array",
  "sampling_rate"}``; with ``text`` they make caption / draw or asr / tts documents;
- ``text``: the caption or transcript;
- ``messages``: a conversation; its ``{"type": "image"}`` parts without data take the row's
  ``image`` column (one image or a list, in order), as in TRL-style vision data sets.

Without ``--column ROLE=NAME`` the roles are found: the one Image and the one Audio feature, a
``messages`` column, and the text column named text, caption, sentence, transcription,
transcript or normalized_text (else the only string column). With ``--column``, only the named
columns are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from .common import Documents, Message, Pairs, is_glob, media_folder, resolve_media

__all__ = ["read_hf", "ROLES", "HF_MARKERS"]

ROLES = ("image", "audio", "text", "messages")
HF_MARKERS = ("state.json", "dataset_info.json")  # what save_to_disk writes beside the data
_TEXT_NAMES = ("text", "caption", "sentence", "transcription", "transcript", "normalized_text")
_BATCH_ROWS = 64  # rows decoded at a time (media columns make rows large)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:
        raise ValueError(f"--format hf needs pyarrow: pip install 'omniloom[data]' ({e})") from e
    return pyarrow


def read_hf(path: str | Path, columns: dict[str, str] | None = None, media_root: str | None = None,
            audio_task: str | None = None, image_task: str | None = None, prompts: dict[str, str] | None = None,
            tts_voice: str | None = None) -> Documents:
    """``(row number, messages)``: rows counted from 1 over the input's files in order."""
    pa = _pyarrow()
    pairs = Pairs.make(audio_task=audio_task, image_task=image_task, prompts=prompts, tts_voice=tts_voice)
    for role in columns or {}:
        if role not in ROLES:
            raise ValueError(f"--column {role}=...: unknown role (roles: {', '.join(ROLES)})")
    n = 0
    for f in data_files(path):
        schema, batches = _open(pa, f)
        features = _features(schema, f)
        roles = _roles(schema, features, columns, f)
        root = media_folder(media_root, f.parent.resolve())
        for r, row in enumerate(_rows(batches, list(roles.values())), 1):
            n += 1
            for messages in _row_documents(row, roles, features, pairs, root, f"{f}: row {r}"):
                yield n, messages


def data_files(path: str | Path) -> list[Path]:
    """The arrow / parquet files of an input, in order."""
    if is_glob(path):
        import glob

        files = sorted(Path(f) for f in glob.glob(str(path)) if f.endswith((".parquet", ".arrow")))
        if not files:
            raise ValueError(f"{path} matches no .parquet or .arrow file")
        return files
    p = Path(path)
    if p.is_file():
        if p.suffix not in (".parquet", ".arrow"):
            raise ValueError(f"{p}: --format hf reads .parquet or .arrow files, or a save_to_disk folder")
        return [p]
    if not p.is_dir():
        raise ValueError(f"input {p} does not exist")
    if (p / "dataset_dict.json").is_file():
        splits = sorted(d.name for d in p.iterdir() if (d / "state.json").is_file())
        raise ValueError(f"{p} is a DatasetDict (splits: {', '.join(splits) or 'none'}); pass one split's folder, "
                         f"e.g. --input {p / (splits[0] if splits else 'train')}")
    if (p / "state.json").is_file():
        try:
            state = json.loads((p / "state.json").read_text())
            files = [p / d["filename"] for d in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{p / 'state.json'}: not a datasets state file ({e})") from e
    else:
        files = sorted(p.glob("data-*.arrow")) or sorted(p.glob("*.parquet"))
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        raise ValueError(f"{p}: {'missing data file ' + str(missing[0]) if missing else 'holds no data'} "
                         "(--format hf reads a save_to_disk folder or .parquet files)")
    return files


def _open(pa: Any, f: Path) -> tuple[Any, Any]:
    """(schema, a function of column names -> record batches) of one file."""
    try:
        if f.suffix == ".parquet":
            pf = pa.parquet.ParquetFile(f)
            return pf.schema_arrow, lambda cols: pf.iter_batches(batch_size=_BATCH_ROWS, columns=cols)
        try:
            reader = pa.ipc.open_stream(f)  # save_to_disk writes the streaming format
            return reader.schema, lambda cols: (b.select(cols) for b in reader)
        except pa.ArrowInvalid:
            whole = pa.ipc.open_file(f)  # an Arrow IPC file
            return whole.schema, lambda cols: (whole.get_batch(i).select(cols) for i in range(whole.num_record_batches))
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{f}: not a readable {f.suffix[1:]} file ({e})") from e


def _rows(batches: Any, cols: list[str]) -> Iterator[dict[str, Any]]:
    for batch in batches(cols):
        yield from batch.to_pylist()


def _features(schema: Any, f: Path) -> dict[str, Any]:
    """datasets' feature types of the columns (``{}`` for plain arrow / parquet)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    info = f.parent / "dataset_info.json"
    try:
        if raw:
            return json.loads(raw).get("info", {}).get("features") or {}
        if info.is_file():
            return json.loads(info.read_text()).get("features") or {}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{f}: unreadable datasets feature metadata ({e})") from e
    return {}


def _kind(features: dict[str, Any], name: str) -> str | None:
    spec = features.get(name)
    if isinstance(spec, list):  # datasets' short form of a list feature
        spec = spec[0] if spec else None
    if isinstance(spec, dict):
        inner = spec.get("feature") if spec.get("_type") in ("Sequence", "List", "LargeList") else spec
        return inner.get("_type") if isinstance(inner, dict) else None
    return None


def _roles(schema: Any, features: dict[str, Any], columns: dict[str, str] | None, f: Path) -> dict[str, str]:
    """role -> column name of one file (ValueError listing the columns when it cannot tell)."""
    names = list(schema.names)
    listing = ", ".join(f"{c} ({_kind(features, c) or schema.field(c).type})" for c in names)
    if columns:
        for role, col in columns.items():
            if col not in names:
                raise ValueError(f"{f}: --column {role}={col}: no such column (columns: {listing})")
        roles = dict(columns)
    else:
        roles = {}
        for role, kind in (("image", "Image"), ("audio", "Audio")):
            found = [c for c in names if _kind(features, c) == kind]
            if len(found) > 1:
                raise ValueError(f"{f}: several {kind} columns ({', '.join(found)}); choose with --column {role}=NAME")
            if found:
                roles[role] = found[0]
        if "messages" in names:
            roles["messages"] = "messages"
        else:
            strings = [c for c in names if str(schema.field(c).type) in ("string", "large_string")]
            named = [c for c in _TEXT_NAMES if c in strings]
            if named or len(strings) == 1:
                roles["text"] = (named or strings)[0]
    if "messages" not in roles and ("text" not in roles or ("image" in roles) == ("audio" in roles)):
        raise ValueError(f"{f}: cannot tell which columns to read (found roles: "
                         f"{', '.join(f'{r}={c}' for r, c in roles.items()) or 'none'}; columns: {listing}); "
                         "pass --column text=NAME and one of --column image=NAME / --column audio=NAME, "
                         "or --column messages=NAME")
    return roles


def _row_documents(row: dict[str, Any], roles: dict[str, str], features: dict[str, Any], pairs: Pairs,
                   root: Path, where: str) -> list[list[Message]]:
    if "messages" in roles:
        images = row.get(roles["image"]) if "image" in roles else None
        images = [] if images is None else images if isinstance(images, list) else [images]
        return [_messages(row[roles["messages"]], [_media(i, "image", root, f"{where} column {roles['image']!r}")
                                                   for i in images], where)]
    text = row[roles["text"]]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: column {roles['text']!r} holds no text ({text!r:.40})")
    if "image" in roles:
        return pairs.image(_media(row[roles["image"]], "image", root, f"{where} column {roles['image']!r}"),
                           text.strip())
    spec = features.get(roles["audio"])
    rate = spec.get("sampling_rate") if isinstance(spec, dict) else None
    return pairs.audio(_media(row[roles["audio"]], "audio", root, f"{where} column {roles['audio']!r}", rate),
                       text.strip())


def _media(value: Any, kind: str, root: Path, where: str, rate: int | None = None) -> dict[str, Any]:
    """A cell of a media column -> a raw part (bytes, an absolute path or a sampled array)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("array") is not None and kind == "audio":
            import numpy as np

            sr = value.get("sampling_rate") or rate
            if not sr:
                raise ValueError(f"{where}: an audio array needs its sampling_rate")
            return {"type": "audio", "audio": np.asarray(value["array"], dtype=np.float32), "sample_rate": int(sr)}
        elif value.get("path"):
            value = value["path"]
        else:
            raise ValueError(f"{where}: the {kind} holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        return {"type": kind, kind: bytes(value)}
    if isinstance(value, str):
        return {"type": kind, kind: resolve_media(value, root, where, kind)}
    raise ValueError(f"{where}: expected an {kind} (bytes, path or {{'bytes', 'path'}}), got {type(value).__name__}")


def _messages(messages: Any, images: list[dict[str, Any]], where: str) -> list[Message]:
    """A messages cell (arrow fills absent struct fields with None: dropped) with its image slots filled."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: the messages column holds no message list")
    pending = list(images)
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"{where}: message {i} must be an object with \"role\" and \"content\"")
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                part = {k: v for k, v in part.items() if v is not None} if isinstance(part, dict) else part
                if isinstance(part, dict) and part.get("type") == "image" and not (part.keys() & {"image", "path"}):
                    if not pending:
                        raise ValueError(f"{where}: message {i} has more image slots than the row has images")
                    part = pending.pop(0)
                parts.append(part)
            content = parts
        out.append({"role": msg.get("role"), "content": content})
    if pending:
        raise ValueError(f"{where}: {len(pending)} image(s) left over after the messages' image slots")
    return out
