"""Text codec: byte-level BPE through Hugging Face ``tokenizers``.

Train a fresh one (:meth:`TextTokenizer.train`) or load any ``tokenizer.json``
(:meth:`TextTokenizer.load`). Our own tokenizers carry no special tokens: omniloom's specials live in
the global :class:`~omniloom.tokens.vocab.Vocab`, after the text ids. Byte-level BPE round-trips
any unicode string exactly (``decode(encode(s)) == s``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ..utils.fileio import atomic_write_text

__all__ = ["TextTokenizer", "MIN_VOCAB_SIZE"]

MIN_VOCAB_SIZE = 256  # the 256 byte symbols of the byte-level alphabet


class TextTokenizer:
    """Thin typed wrapper around a ``tokenizers.Tokenizer``."""

    modality = "text"

    def __init__(self, tokenizer: "object") -> None:
        self.tok = tokenizer  # tokenizers.Tokenizer

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        min_frequency: int = 2,
        show_progress: bool = False,
        length: int | None = None,
    ) -> "TextTokenizer":
        """Train a byte-level BPE of at most ``vocab_size`` ids on ``texts``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if int(vocab_size) < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab size {vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE}")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            min_frequency=int(min_frequency),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=show_progress,
        )
        seen = [0]

        def counted() -> Iterator[str]:
            for t in texts:
                if not isinstance(t, str):
                    raise ValueError(f"texts must be strings, got {type(t).__name__}")
                seen[0] += 1
                yield t

        tok.train_from_iterator(counted(), trainer=trainer, length=length)
        if seen[0] == 0:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        """Load any ``tokenizer.json`` (a file, or a directory holding one)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"tokenizer file {path} does not exist")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from e
        return cls(tok)

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` atomically; ``path`` is a ``.json`` file or a directory. Returns the file."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / "tokenizer.json"
        atomic_write_text(path, self.tok.to_str())
        return path

    # ------------------------------------------------------------------ use

    @property
    def vocab_size(self) -> int:
        """Number of text ids (including the tokenizer's own added tokens, if any)."""
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a string, got {type(text).__name__}")
        if not text:
            return []
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if not ids:
            return ""
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"text ids {bad[:5]} are outside [0, {self.vocab_size})")
        return self.tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, id_: int) -> str | None:
        return self.tok.id_to_token(int(id_))

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size})"
