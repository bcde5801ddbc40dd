"""``preference``: preference pairs as JSON lines, in TRL's conversational preference format.

One record per line::

    {"prompt": [messages], "chosen": [messages], "rejected": [messages]}

``prompt`` is the conversation so far (system/user turns, possibly earlier assistant turns);
``chosen`` and ``rejected`` are the two answers to it, each a list of assistant messages. Media
parts are taken by path relative to the JSONL file (``{"type": "image", "image": "media/3.png"}``),
as in the ``messages`` format. Shorthands: a string ``prompt`` is one user message, a string
answer one assistant message; without ``prompt``, ``chosen`` and ``rejected`` are whole
conversations and the prompt is the messages they share from the start (TRL's implicit prompt).

A record becomes **two documents that stay together** (:func:`encode_preference`): the prompt
followed by the chosen answer, then the prompt followed by the rejected one. Their prompt ids are
identical (the prompt's media are encoded once) and their loss masks cover only the answer span
(the chat template's ``sft`` mask, zeroed over the prompt), whatever the answer's modality.
``omniloom tokenize`` writes the two consecutively into the same shard and split and marks the
manifest ``"pairs": true``; ``train.objective=dpo`` reads them as pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .common import Message, json_lines

__all__ = ["Preference", "read_preference", "preference_offsets", "preference_record", "encode_preference"]


@dataclass(frozen=True)
class Preference:
    """One preference record: the shared prompt and the two answers (message lists)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]

    @property
    def messages(self) -> list[Message]:
        """Every message of the record (to find its voices)."""
        return [*self.prompt, *self.chosen, *self.rejected]


def read_preference(path: str | Path, seek: int = 0, first_line: int = 1) -> Iterator[tuple[int, Preference]]:
    """``(line, Preference)`` of a preference JSONL file (``seek``/``first_line``: start mid-file)."""
    for lineno, _offset, pref in _records(path, seek, first_line):
        yield lineno, pref


def preference_offsets(path: str | Path) -> Iterator[tuple[int, int, Preference]]:
    """``(line, byte offset, Preference)`` of every record (tokenize's work units start at an offset)."""
    return _records(path, 0, 1)


def _records(path: str | Path, seek: int, first_line: int) -> Iterator[tuple[int, int, Preference]]:
    for lineno, start, obj in json_lines(path, seek, first_line):
        yield lineno, start, preference_record(obj, f"{path}:{lineno}")


def _messages(value: Any, key: str, role: str, where: str) -> list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: \"{key}\" is empty")
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise ValueError(f"{where}: \"{key}\" must be a list of messages ({{\"role\", \"content\"}}) or a string")
    return value


def preference_record(obj: Any, where: str) -> Preference:
    """A parsed JSON record -> :class:`Preference` (ValueError naming ``where`` when malformed)."""
    if not isinstance(obj, dict) or "chosen" not in obj or "rejected" not in obj:
        raise ValueError(f"{where}: expected an object with \"chosen\" and \"rejected\" (and \"prompt\")")
    chosen = _messages(obj["chosen"], "chosen", "assistant", where)
    rejected = _messages(obj["rejected"], "rejected", "assistant", where)
    if obj.get("prompt") is not None:
        prompt = _messages(obj["prompt"], "prompt", "user", where)
    else:  # implicit prompt: the messages both conversations open with
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        if not answer:
            raise ValueError(f"{where}: \"{key}\" holds no answer after the prompt")
        roles = {m["role"] for m in answer}
        if roles != {"assistant"}:
            raise ValueError(f"{where}: \"{key}\" must hold assistant messages only (the answer), got roles "
                             f"{sorted(map(str, roles))}; earlier turns go in \"prompt\"")
    return Preference(prompt, chosen, rejected)


def encode_preference(processor: Any, pref: Preference, base_dir: str | Path | None = None) -> tuple[Any, Any]:
    """A :class:`Preference` -> (chosen, rejected) :class:`~omniloom.tokens.Encoded` documents.

    Both start with the same prompt ids; each loss mask covers only its answer (the content and
    closing turn end of its assistant messages). ValueError names the part that failed, and refuses
    a pair whose two answers encode to the same ids (it would teach nothing)."""
    from ...tokens.template import Encoded, encode_conversation

    coded = {}
    for key in ("prompt", "chosen", "rejected"):
        try:
            coded[key] = processor.to_code_messages(getattr(pref, key), base_dir)
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    vocab, tok = processor.vocab, processor.text_tokenizer
    head = encode_conversation(coded["prompt"], vocab, tok, mode="sft", add_eos=False).ids
    out = []
    for key in ("chosen", "rejected"):
        enc = encode_conversation(coded["prompt"] + coded[key], vocab, tok, mode="sft")
        if enc.ids[:len(head)] != head:  # the template concatenates turns, so this cannot happen
            raise ValueError(f"{key}: the prompt does not encode to the same ids inside the conversation")
        out.append(Encoded(ids=enc.ids, loss_mask=[0] * len(head) + list(enc.loss_mask[len(head):])))
    if out[0].ids == out[1].ids:
        raise ValueError("\"chosen\" and \"rejected\" encode to the same ids: the pair prefers nothing")
    return out[0], out[1]
