"""OpenAI-message JSONL -> token shards (the engine behind ``omniloom tokenize``).

Each input line is ``{"messages": [{"role": ..., "content": str | [parts]}, ...]}``. Media parts
are turned into codes by the :class:`~omniloom.processor.Processor` and its codecs. Documents go
to the validation split with probability ``val_fraction`` (seeded, so reruns are identical).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

from .readers import read_documents, read_jsonl
from .shards import ShardWriter

__all__ = ["read_jsonl", "tokenize_files", "build_vocab"]


def _count_lines(path: str | Path) -> int:
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def discover_voices(inputs: list[str | Path], input_format: str = "messages",
                    reader_options: dict[str, Any] | None = None) -> list[str]:
    """Named voices of audio parts in the inputs, in order of first appearance."""
    seen: dict[str, None] = {}
    for path in inputs:
        for _, messages in read_documents(path, input_format, **(reader_options or {})):
            for m in messages:
                content = m.get("content") if isinstance(m, dict) else None
                for part in content if isinstance(content, list) else []:
                    voice = part.get("voice") if isinstance(part, dict) else None
                    if isinstance(voice, str) and voice and not voice.startswith("voice:"):
                        seen.setdefault(voice)
    return list(seen)


def build_vocab(text_tokenizer: Any, codecs: dict[str, Any], voices: list[str] | None = None) -> Any:
    """A fresh :class:`Vocab` sized for the tokenizer and the given codecs."""
    from ..tokens.vocab import Vocab

    return Vocab.for_codecs(text_tokenizer.vocab_size, image_codec=codecs.get("image"),
                            audio_codec=codecs.get("audio"), voices=voices or None)


def tokenize_files(
    inputs: list[str | Path],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    mode: str = "sft",
    shard_tokens: int = 1 << 24,
    val_fraction: float = 0.0,
    seed: int = 0,
    codecs: dict[str, Any] | None = None,
    vocab: Any | None = None,
    progress: bool = True,
    codec_names: dict[str, str] | None = None,
    voices: list[str] | None = None,
    cfg_drop: float = 0.0,
    workers: int = 1,
    input_format: str = "messages",
    reader_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/train`` (and ``out_dir/val`` when ``val_fraction > 0``). Returns a summary.

    ``codec_names`` (modality -> shipped name or path) is recorded in the manifests so that a model
    trained on these shards knows its codecs. ``voices``: assistant voice names for a new vocab
    (default: the named voices found in the data). ``cfg_drop``: the share of training documents
    with an image answer whose condition (the turns before it) is replaced by ``<|null|>``, so that
    ``--cfg-scale`` can guide image generation (``tokens.drop_condition``). ``workers`` > 1 encodes
    lines in that many processes (one torch thread each; the codecs are loaded again in each from
    ``codec_names``); the shards are identical whatever the count. ``input_format`` names the
    reader of every input (``omniloom.data.readers.FORMATS``), ``reader_options`` its keyword options.
    """
    from ..codecs.text import TextTokenizer
    from ..processor import Processor
    from ..tokens import drop_condition

    if mode not in ("sft", "pretrain"):
        raise ValueError(f"--mode must be 'sft' or 'pretrain', got {mode!r}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not 0.0 <= cfg_drop <= 1.0:
        raise ValueError(f"--cfg-drop must be in [0, 1], got {cfg_drop}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if not inputs:
        raise ValueError("give at least one --input FILE.jsonl")
    for p in inputs:
        if not Path(p).exists():
            raise ValueError(f"input {p} does not exist")
    codecs = dict(codecs or {})
    tok = TextTokenizer.load(tokenizer_path)
    if vocab is None:
        vocab = build_vocab(tok, codecs, voices if voices is not None else discover_voices(inputs, input_format, reader_options))
    processor = Processor(vocab, tok, codecs)
    out = Path(out_dir)
    meta = {"mode": mode, "input_format": input_format, "sources": [str(p) for p in inputs], "codecs": dict(codec_names or {}), "cfg_drop": cfg_drop}
    writers = {"train": ShardWriter(out / "train", vocab, tokenizer_path, shard_tokens, meta)}
    if val_fraction > 0:
        writers["val"] = ShardWriter(out / "val", vocab, tokenizer_path, shard_tokens, meta)
    rng = random.Random(seed)
    drop_rng = random.Random(f"cfg-drop:{seed}")  # its own stream: the split does not depend on cfg_drop
    counts = {"train": 0, "val": 0, "dropped": 0}
    from tqdm import tqdm

    total_lines = sum(_count_lines(p) for p in inputs) if progress and input_format == "messages" else None
    bar = tqdm(total=total_lines, desc="tokenize", unit="line", disable=not progress)
    done, current = 0, None
    docs = ((str(path), where, messages) for path in inputs
            for where, messages in read_documents(path, input_format, **(reader_options or {})))
    for path, lineno, enc in _encoded(docs, processor, mode, workers, vocab, tokenizer_path, codec_names):
        if path != current:  # lines of the next file count on from the previous files' total
            done, current = bar.n, path
        split = "val" if "val" in writers and rng.random() < val_fraction else "train"
        if split == "train" and cfg_drop > 0:
            dropped = drop_condition(enc, vocab)
            if dropped is not None and drop_rng.random() < cfg_drop:
                enc = dropped
                counts["dropped"] += 1
        writers[split].add(enc.ids, enc.loss_mask)
        counts[split] += 1
        bar.update(lineno - bar.n + done)
    bar.close()
    if counts["train"] == 0:
        raise ValueError(f"no documents for the training split in {', '.join(map(str, inputs))}")
    if "val" in writers and counts["val"] == 0:
        raise ValueError(f"--val-fraction {val_fraction} left the validation split empty; use more data or 0")
    manifests = {k: w.close() for k, w in writers.items()}
    # task prompts written beside the input (e.g. by `omniloom world generate`) travel with the
    # shards into every checkpoint, so the trained model can name them (generation.json "prompts")
    prompts = Path(inputs[0]).parent / "generation.json"
    if prompts.is_file():
        from ..utils.fileio import atomic_write_text

        for k in writers:
            atomic_write_text(out / k / "generation.json", prompts.read_text())
    return {k: {"docs": m["total_docs"], "tokens": m["total_tokens"], "shards": len(m["shards"]),
                "dir": str(out / k)} for k, m in manifests.items()} | {"vocab_size": vocab.size,
                                                                     "condition_dropped": counts["dropped"]}


# -- encoding, in this process or in a pool -------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(vocab: Any, tokenizer_path: str, codec_refs: dict[str, str], mode: str) -> None:
    import torch

    from ..codecs import load_codec
    from ..codecs.text import TextTokenizer
    from ..processor import Processor

    torch.set_num_threads(1)
    codecs = {m: load_codec(ref) for m, ref in codec_refs.items()}
    _WORKER.update(proc=Processor(vocab, TextTokenizer.load(tokenizer_path), codecs), mode=mode)


def _encode_line(processor: Any, mode: str, path: str, lineno: int, messages: list) -> Any:
    """One line's :class:`Encoded`; a bad line raises ValueError naming file and line."""
    try:
        return processor.encode_messages(messages, mode=mode, base_dir=Path(path).parent)
    except ValueError as e:
        raise ValueError(f"{path}:{lineno}: {e}") from e


def _encode_job(job: tuple[str, int, list]) -> tuple[str, int, Any]:
    path, lineno, messages = job
    return path, lineno, _encode_line(_WORKER["proc"], _WORKER["mode"], path, lineno, messages)


def _encoded(jobs, processor, mode, workers, vocab, tokenizer_path, codec_names) -> Iterator[tuple[str, int, Any]]:
    """``(path, lineno, Encoded)`` for every ``(path, lineno, messages)`` job, in order."""
    import torch

    refs = dict(codec_names or {})
    if workers > 1 and set(refs) != set(processor.codecs):
        workers = 1  # codec objects without names cannot be re-created in worker processes
    if workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small convolutions: one thread is faster than two (measured)
        try:
            for path, lineno, messages in jobs:
                yield path, lineno, _encode_line(processor, mode, path, lineno, messages)
        finally:
            torch.set_num_threads(threads)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch's thread pools
    with ctx.Pool(workers, _worker_init, (vocab, str(tokenizer_path), refs, mode)) as pool:
        yield from pool.imap(_encode_job, jobs, chunksize=32)  # a worker's ValueError is re-raised here
