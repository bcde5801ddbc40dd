"""Scenes of the shapes world: vocabulary, sampling, canonical phrasing and parsing.

Everything here is the world's public contract (vocabulary and phrasings; docs/world.md).
A scene is 1 to 3 objects, each in its own cell of a 3x3 grid; cells are numbered
row-major 0..8 (0 = top left, 4 = center, 8 = bottom right).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 200),
    "white": (240, 240, 240),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: dict[str, int] = {"small": 11, "big": 17}  # nominal extent in pixels
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
CELL_NAMES: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
CELL_PHRASES: tuple[str, ...] = (
    "at the top left", "at the top", "at the top right",
    "on the left", "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
)
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)

# (color, shape) pairs never seen in train/val/test; only the `compositional` split uses them.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "star"), ("blue", "triangle"), ("yellow", "square")}
)


@dataclass(frozen=True, order=True)
class Object:
    """One object: `cell` first so that sorting objects gives row-major cell order."""

    cell: int
    size: str
    color: str
    shape: str

    def __post_init__(self) -> None:
        if not 0 <= self.cell < 9:
            raise ValueError(f"cell must be in 0..8, got {self.cell}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {SIZE_NAMES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; expected one of {COLOR_NAMES}")
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")

    @property
    def pair(self) -> tuple[str, str]:
        return (self.color, self.shape)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "cell": self.cell}

    @staticmethod
    def from_dict(d: dict) -> "Object":
        return Object(cell=int(d["cell"]), size=d["size"], color=d["color"], shape=d["shape"])


@dataclass(frozen=True)
class Scene:
    """1 to 3 objects in distinct cells, stored sorted by cell (row-major)."""

    objects: tuple[Object, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        objs = tuple(sorted(self.objects))
        cells = [o.cell for o in objs]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")
        object.__setattr__(self, "objects", objs)

    def __len__(self) -> int:
        return len(self.objects)

    def at(self, cell: int) -> Object | None:
        return next((o for o in self.objects if o.cell == cell), None)

    def with_shape(self, shape: str) -> list[Object]:
        return [o for o in self.objects if o.shape == shape]

    def replace(self, old: Object, new: Object | None) -> "Scene":
        objs = [o for o in self.objects if o != old]
        if new is not None:
            objs.append(new)
        return Scene(tuple(objs))

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects]}

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        return Scene(tuple(Object.from_dict(o) for o in d["objects"]))


def allowed_pairs(held_out: str = "exclude") -> list[tuple[str, str]]:
    """(color, shape) pairs; held_out='exclude' drops HELD_OUT_PAIRS, 'only' keeps just them, 'any' all."""
    pairs = [(c, s) for c in COLOR_NAMES for s in SHAPES]
    if held_out == "exclude":
        return [p for p in pairs if p not in HELD_OUT_PAIRS]
    if held_out == "only":
        return sorted(HELD_OUT_PAIRS)
    if held_out == "any":
        return pairs
    raise ValueError(f"held_out must be exclude|only|any, got {held_out!r}")


def sample_object(rng: np.random.Generator, cell: int, pairs: list[tuple[str, str]]) -> Object:
    color, shape = pairs[int(rng.integers(len(pairs)))]
    return Object(cell=cell, size=SIZE_NAMES[int(rng.integers(2))], color=color, shape=shape)


def sample_scene(
    rng: np.random.Generator,
    n: int | None = None,
    compositional: bool = False,
    unique_shapes: bool = False,
) -> Scene:
    """A random scene of `n` (default 1..3) objects.

    compositional=False: no held-out (color, shape) pair appears.
    compositional=True: at least one object uses a held-out pair (others are free).
    unique_shapes: every shape appears at most once (so "the {shape}" is unambiguous).
    """
    n = int(rng.integers(1, 4)) if n is None else n
    if not 1 <= n <= 3:
        raise ValueError(f"a scene has 1 to 3 objects, got {n}")
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    objs: list[Object] = []
    forced = int(rng.integers(n)) if compositional else -1
    for i, cell in enumerate(cells):
        pairs = allowed_pairs("only" if i == forced else ("any" if compositional else "exclude"))
        if unique_shapes:
            used = {o.shape for o in objs}
            pairs = [p for p in pairs if p[1] not in used] or pairs
        objs.append(sample_object(rng, cell, pairs))
    if unique_shapes and len({o.shape for o in objs}) != len(objs):
        return sample_scene(rng, n, compositional, unique_shapes)  # rare: retry
    return Scene(tuple(objs))


def has_held_out(scene: Scene) -> bool:
    return any(o.pair in HELD_OUT_PAIRS for o in scene.objects)


# ---------------------------------------------------------------- phrasing

def object_phrase(obj: Object, with_cell: bool = True) -> str:
    """`a {size} {color} {shape} {cell phrase}`."""
    base = f"a {obj.size} {obj.color} {obj.shape}"
    return f"{base} {CELL_PHRASES[obj.cell]}" if with_cell else base


def join_phrases(phrases: list[str]) -> str:
    """`x`, `x and y`, `x, y and z`."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene) -> str:
    """Object phrases in row-major cell order joined by `, ` and a final ` and `."""
    return join_phrases([object_phrase(o) for o in scene.objects])


# Spoken answers restate the question they heard before giving the answer (SpeechGPT's "chain of
# modality", folded into one reply): the restatement is what the model writes first in the spoken
# answer's interleaved transcript, so it has put the heard question into text before it commits to
# the answer, at no cost in latency (the first 6 transcript ids come before any audio anyway).
_RESTATE: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"what is (.+)"), r"\1 is "),  # what is three plus four -> three plus four is seven
    (re.compile(r"what color is (the .+)"), r"\1 is "),  # -> the circle is red
    (re.compile(r"where is (the .+)"), r"\1 is "),  # -> the red circle is at the top left
    (re.compile(r"what shape is (.+)"), r"\1 is "),  # -> at the top left is a square
    (re.compile(r"(is there a .+)"), r"\1? "),  # -> is there a red circle? yes
)


def spoken_reply(question: str, answer: str) -> str:
    """The spoken answer to `question`: the question restated, then `answer` (bare when no form fits).

    >>> spoken_reply("what is three plus four?", "seven")
    'three plus four is seven'
    >>> spoken_reply("how many shapes are there?", "two")
    'two'
    """
    q = normalize_text(question)
    for pattern, template in _RESTATE:
        m = pattern.fullmatch(q)
        if m:
            return m.expand(template) + answer
    return answer


def normalize_text(text: str) -> str:
    """Lower case, collapse whitespace, drop a final period/question mark/exclamation and stray quotes."""
    t = text.strip().lower().replace("\u2019", "'")
    t = re.sub(r"\s+", " ", t)
    t = t.strip(" \"'")
    t = re.sub(r"[.!?]+$", "", t).strip()
    return t


_OBJ_RE = re.compile(
    r"a (?P<size>%s) (?P<color>%s) (?P<shape>%s) (?P<cell>%s)"
    % ("|".join(SIZE_NAMES), "|".join(COLOR_NAMES), "|".join(SHAPES),
       "|".join(re.escape(p) for p in sorted(CELL_PHRASES, key=len, reverse=True)))
)
_BARE_OBJ_RE = re.compile(
    r"an? (?P<size>%s) (?P<color>%s) (?P<shape>%s)" % ("|".join(SIZE_NAMES), "|".join(COLOR_NAMES), "|".join(SHAPES))
)


def parse_object_phrase(text: str) -> Object:
    """Inverse of object_phrase (with cell); ValueError names the text when it does not parse."""
    m = _OBJ_RE.fullmatch(normalize_text(text))
    if not m:
        raise ValueError(f"not an object phrase: {text!r}")
    return Object(cell=CELL_PHRASES.index(m["cell"]), size=m["size"], color=m["color"], shape=m["shape"])


def caption_phrases(text: str) -> list[str]:
    """Caption text -> its (normalised) phrases, split at `,` and `and`."""
    return [p.strip() for p in re.split(r",\s*(?:and\s+)?|\s+and\s+", normalize_text(text)) if p.strip()]


def parse_caption(text: str) -> Scene:
    """Caption text -> Scene. Accepts any order of phrases and `,`/`and` separators.

    Raises ValueError (naming the text) when something other than object phrases remains,
    or two objects share a cell.
    """
    parts = caption_phrases(text)
    if not parts:
        raise ValueError(f"empty caption: {text!r}")
    return Scene(tuple(parse_object_phrase(p) for p in parts))


def parse_bare_object(text: str) -> tuple[str, str, str]:
    """`a {size} {color} {shape}` -> (size, color, shape)."""
    m = _BARE_OBJ_RE.fullmatch(normalize_text(text))
    if not m:
        raise ValueError(f"not a bare object phrase: {text!r}")
    return m["size"], m["color"], m["shape"]


def number_word(n: int) -> str:
    if not 0 <= n <= 20:
        raise ValueError(f"number out of range 0..20: {n}")
    return NUMBER_WORDS[n]


def parse_number_word(text: str) -> int:
    t = normalize_text(text)
    if t not in NUMBER_WORDS:
        raise ValueError(f"not a number word: {text!r}")
    return NUMBER_WORDS.index(t)
