"""The shapes world in other languages: a fixed lexicon per language, kept as data.

A lexicon (`lexicon/<code>.json`, or any JSON file of the same layout passed as the language)
holds the world's words (shapes with their grammatical gender, colors and sizes with their agreeing
forms, cell phrases, numbers, directions), the noun-phrase order and articles, and one template per
sentence form (`FORMS`). Every world sentence is one of a closed set of forms, so translation is
exact: an English sentence is looked up (or, for captions, parsed) into its form and slots, and the
form is rendered from the target lexicon. Tasks are generated in English and translated, so sample
i of `--lang es` shows the same scene, question and voice draw as sample i in English.

English itself never goes through this module's renderer when generating (its bytes stay those of
`scene.py`/`tasks.py`); `en.json` renders the same sentences and a test checks that they agree.

Grammar is handled by agreement, not by rules of word formation: each adjective lists its form per
agreement tag (Spanish/French: the noun's gender; German: stem + ending per article kind and
gender, `adjective_endings`), articles are listed per kind (`indef`, `def`, `indef_acc`, `def_acc`)
and gender, and French elides `le`/`la` before a vowel (`elision`). Everything is singular.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from pathlib import Path

from .scene import (
    COLOR_NAMES,
    DIRECTIONS,
    SHAPES,
    SIZE_NAMES,
    Object,
    Scene,
    normalize_text,
)

LEXICON_DIR = Path(__file__).with_name("lexicon")
DEFAULT_LANG = "en"

# sentence forms -> the slots each one takes (slot values are the world's English names, cells 0..8)
FORMS: dict[str, tuple[str, ...]] = {
    "object": ("size", "color", "shape", "cell"), "object_acc": ("size", "color", "shape", "cell"),
    "q_color": ("shape",), "q_shape": ("cell",), "q_count": (), "q_where": ("color", "shape"),
    "q_exists": ("color", "shape"),
    "a_color": ("color",), "a_shape": ("shape",), "a_number": ("n",), "a_yes": (), "a_no": (), "a_cell": ("cell",),
    "r_color": ("shape", "color"), "r_shape": ("cell", "shape"), "r_where": ("color", "shape", "cell"),
    "r_exists": ("color", "shape", "yesno"),
    "q_plus": ("a", "b"), "q_minus": ("a", "b"), "r_plus": ("a", "b", "c"), "r_minus": ("a", "b", "c"),
    "e_add": ("size", "color", "shape", "cell"), "e_recolor": ("shape", "color"), "e_remove": ("shape",),
    "e_move": ("shape", "cell"),
    "video_q": (), "video_a": ("size", "color", "shape", "direction"),
    "p_caption": (), "p_asr": (), "draw_reply": (),
}
# forms that wrap a sentence: the tts prompt ("say {text}") and the drawing prompt ("draw {caption}")
WRAPPERS: tuple[str, ...] = ("p_tts", "p_draw")
_DOMAINS: dict[str, tuple] = {
    "size": SIZE_NAMES, "color": COLOR_NAMES, "shape": SHAPES, "cell": tuple(range(9)), "direction": DIRECTIONS,
    "n": tuple(range(21)), "a": tuple(range(11)), "b": tuple(range(11)), "c": tuple(range(21)),
    "yesno": ("yes", "no"),
}
_NP_KINDS = ("indef", "def", "indef_acc", "def_acc")
_REQUIRED = ("name", "shapes", "colors", "sizes", "citation", "articles", "np_order", "cells", "move_targets",
             "numbers", "directions", "and", "templates", "voices")


def available() -> list[str]:
    """The bundled language codes (`lexicon/*.json`)."""
    return sorted(p.stem for p in LEXICON_DIR.glob("*.json"))


def _check(lex: dict, where: str) -> None:
    """ValueError naming the file and the first missing key a lexicon needs."""
    missing = [k for k in _REQUIRED if k not in lex]
    missing += [f"shapes.{s}" for s in SHAPES if s not in lex.get("shapes", {})]
    missing += [f"colors.{c}" for c in COLOR_NAMES if c not in lex.get("colors", {})]
    missing += [f"sizes.{s}" for s in SIZE_NAMES if s not in lex.get("sizes", {})]
    missing += [f"directions.{d}" for d in DIRECTIONS if d not in lex.get("directions", {})]
    missing += [f"templates.{f}" for f in (*FORMS, *WRAPPERS) if f not in lex.get("templates", {})]
    missing += [f"voices.{k}" for k in ("user", "assistant", "judge") if k not in lex.get("voices", {})]
    if missing:
        raise ValueError(f"lexicon {where}: missing {', '.join(missing)}")
    for key, n in (("cells", 9), ("move_targets", 9), ("numbers", 21)):
        if len(lex[key]) != n:
            raise ValueError(f"lexicon {where}: {key} needs {n} entries, got {len(lex[key])}")


class Language:
    """One language's lexicon: renders every sentence form and parses it back."""

    def __init__(self, code: str, lex: dict, where: str = "") -> None:
        _check(lex, where or code)
        self.code, self.lex, self.name = code, lex, lex["name"]
        self.templates: dict[str, str] = lex["templates"]
        self._elision = [(re.compile(p), r) for p, r in lex.get("elision", [])]

    # ------------------------------------------------------------ words
    def _gender(self, shape: str) -> str:
        return self.lex["shapes"][shape]["gender"]

    def _adjective(self, entry: str | dict, kind: str, gender: str) -> str:
        endings = self.lex.get("adjective_endings")
        if endings is not None:  # stem + ending per article kind and gender (German)
            return entry + endings[kind][gender]
        return entry[gender] if isinstance(entry, dict) else entry

    def color_word(self, color: str, gender: str | None = None) -> str:
        """A color agreeing with `gender` in predicate position, or its citation form."""
        entry = self.lex["colors"][color]
        if gender is None:
            gender = self.lex["citation"]
            if self.lex.get("adjective_endings") is not None:
                return entry
            return entry.get(gender, next(iter(entry.values()))) if isinstance(entry, dict) else entry
        return self._adjective(entry, "pred", gender)

    def noun_phrase(self, kind: str, shape: str, color: str | None = None, size: str | None = None) -> str:
        """`a big red circle`, `una estrella roja`, `einen kleinen roten Kreis`: the parts in `np_order`."""
        g = self._gender(shape)
        arts = self.lex["articles"]
        art = (arts.get(kind) or arts[kind.removesuffix("_acc")])[g]
        adj_kind = kind if kind in self.lex.get("adjective_endings", {}) else kind.removesuffix("_acc")
        parts = {
            "art": art, "noun": self.lex["shapes"][shape]["noun"],
            "color": self._adjective(self.lex["colors"][color], adj_kind, g) if color else None,
            "size": self._adjective(self.lex["sizes"][size], adj_kind, g) if size else None,
        }
        return " ".join(parts[k] for k in self.lex["np_order"] if parts[k])

    def number(self, n: int) -> str:
        return self.lex["numbers"][n]

    # ------------------------------------------------------------ sentences
    def render(self, form: str, **slots) -> str:  # noqa: ANN003 - slots of the form (FORMS)
        """One sentence of `form` with its slots (world names: shape, color, size, cell 0..8, numbers)."""
        if form not in self.templates:
            raise ValueError(f"{self.code}: unknown sentence form {form!r}")
        v: dict[str, str] = {}
        shape, color, size = slots.get("shape"), slots.get("color"), slots.get("size")
        if shape is not None:
            g = self._gender(shape)
            v["the_shape"] = self.noun_phrase("def", shape)
            v["the_shape_acc"] = self.noun_phrase("def_acc", shape)
            v["a_shape"] = self.noun_phrase("indef", shape)
            if color is not None:
                v["color_pred"] = self.color_word(color, g)
                v["the_object"] = self.noun_phrase("def", shape, color)
                v["a_object_acc"] = self.noun_phrase("indef_acc", shape, color)
                if size is not None:
                    v["a_full"] = self.noun_phrase("indef", shape, color, size)
                    v["a_full_acc"] = self.noun_phrase("indef_acc", shape, color, size)
        if color is not None:
            v["color"] = self.color_word(color)
        if "cell" in slots:
            v["cell"] = self.lex["cells"][slots["cell"]]
            v["move_target"] = self.lex["move_targets"][slots["cell"]]
        for k in ("n", "a", "b", "c"):
            if k in slots:
                v[k] = self.number(slots[k])
        if "yesno" in slots:
            v["yesno"] = self.templates["a_" + slots["yesno"]]
        if "direction" in slots:
            v["direction"] = self.lex["directions"][slots["direction"]]
        for k in ("text", "caption"):
            if k in slots:
                v[k] = slots[k]
        try:
            out = self.templates[form].format(**v)
        except KeyError as e:
            raise ValueError(f"{self.code}: template {form!r} uses {e} which its slots do not give") from None
        for pattern, repl in self._elision:
            out = pattern.sub(repl, out)
        return out

    def object_phrase(self, obj: Object, form: str = "object") -> str:
        return self.render(form, size=obj.size, color=obj.color, shape=obj.shape, cell=obj.cell)

    def caption(self, scene: Scene | list[Object], form: str = "object") -> str:
        """Object phrases in row-major order (a list: its order) joined by `, ` and a final ` <and> `;
        `form="object_acc"` puts them in the accusative (a drawing request's object, German `zeichne einen ...`)."""
        phrases = [self.object_phrase(o, form) for o in (scene.objects if isinstance(scene, Scene) else scene)]
        if len(phrases) <= 1:
            return "".join(phrases)
        return ", ".join(phrases[:-1]) + f" {self.lex['and']} " + phrases[-1]

    @functools.cached_property
    def _objects(self) -> dict[str, Object]:
        """Normalised object phrase (nominative or accusative) -> Object (432 objects)."""
        out = {}
        for size, color, shape, cell in itertools.product(SIZE_NAMES, COLOR_NAMES, SHAPES, range(9)):
            obj = Object(cell=cell, size=size, color=color, shape=shape)
            for form in ("object_acc", "object"):
                out[normalize_text(self.object_phrase(obj, form))] = obj
        return out

    def caption_phrases(self, text: str) -> list[str]:
        conj = re.escape(normalize_text(self.lex["and"]))
        parts = re.split(rf",\s*(?:{conj}\s+)?|\s+{conj}\s+", normalize_text(text))
        return [p.strip() for p in parts if p.strip()]

    def parse_caption(self, text: str) -> Scene:
        """Caption text in this language -> Scene (any phrase order); ValueError names the text."""
        return Scene(tuple(self.caption_objects(text)))

    def caption_objects(self, text: str) -> list[Object]:
        """Caption text -> its objects in phrase order (two may share a cell: a judge's distractor)."""
        parts = self.caption_phrases(text)
        if not parts:
            raise ValueError(f"empty caption: {text!r}")
        objs = []
        for p in parts:
            if p not in self._objects:
                raise ValueError(f"not a {self.name} object phrase: {p!r} (in {text!r})")
            objs.append(self._objects[p])
        return objs

    @functools.cached_property
    def table(self) -> dict[str, tuple[str, tuple]]:
        """Every sentence of a closed form -> (form, sorted slot items). A clash is a lexicon error."""
        out: dict[str, tuple[str, tuple]] = {}
        for form, names in FORMS.items():
            if form.startswith("object"):  # object phrases are captions: `parse_caption`
                continue
            for values in itertools.product(*(_DOMAINS[n] for n in names)):
                slots = dict(zip(names, values))
                text = self.render(form, **slots)
                key = (form, tuple(sorted(slots.items())))
                if out.setdefault(text, key) != key:
                    raise ValueError(f"lexicon {self.code}: {text!r} renders both {out[text]} and {key}")
        return out

    def parse(self, text: str) -> tuple[str, dict]:
        """A world sentence in this language -> (form, slots); captions give ("caption", {"objects": [...]})."""
        hit = self.table.get(text)
        if hit is not None:
            return hit[0], dict(hit[1])
        for form, key in (("p_tts", "text"), ("p_draw", "caption")):
            prefix, _, suffix = self.templates[form].partition("{" + key + "}")
            if text.startswith(prefix) and text.endswith(suffix) and len(text) > len(prefix) + len(suffix):
                return form, {key: text[len(prefix):len(text) - len(suffix)]}
        try:
            return "caption", {"objects": self.caption_objects(text)}
        except ValueError:
            raise ValueError(f"not a sentence of the {self.name} shapes world: {text!r}") from None

    def render_parsed(self, form: str, slots: dict, source: "Language") -> str:
        """Render a parse of `source`'s sentence in this language (wrapped sentences translated too)."""
        if form == "caption":
            return self.caption(slots["objects"])
        if form == "p_tts":
            return self.render(form, text=translate(slots["text"], self.code, source.code))
        if form == "p_draw":
            return self.render(form, caption=self.caption(source.caption_objects(slots["caption"]), "object_acc"))
        return self.render(form, **slots)


@functools.cache
def _load(code: str) -> Language:
    path = Path(code)
    if path.suffix == ".json":
        if not path.is_file():
            raise ValueError(f"lexicon file {path} does not exist")
        where = str(path)
    else:
        path = LEXICON_DIR / f"{code}.json"
        if not path.is_file():
            raise ValueError(f"unknown language {code!r}; available: {', '.join(available())} "
                             "(or a lexicon .json file, see docs/recipes/add-a-language.md)")
        where = str(path)
    try:
        lex = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"lexicon {where}: bad JSON at line {e.lineno} ({e.msg})") from None
    return Language(code, lex, where)


def get(code: str) -> Language:
    """The language `code` (`en`, `es`, ...) or a lexicon file `path/xx.json`; ValueError lists the codes."""
    if not isinstance(code, str) or not code:
        raise ValueError(f"a language is a code ({', '.join(available())}) or a lexicon .json file, got {code!r}")
    return _load(code)


def translate(text: str, lang: str, source: str = DEFAULT_LANG) -> str:
    """A world sentence from `source` (default English) into `lang` (the same text when they agree)."""
    if lang == source:
        return text
    src, dst = get(source), get(lang)
    form, slots = src.parse(text)
    return dst.render_parsed(form, slots, src)


def to_english(text: str, lang: str) -> str:
    return translate(text, DEFAULT_LANG, lang)


# ---------------------------------------------------------------- voices

def _voice(name: str, spec: dict):  # noqa: ANN202 - speech.VoiceSpec
    from .speech import VoiceSpec

    return VoiceSpec(name=name, language=spec["language"], variant=spec.get("variant", ""),
                     pitch=int(spec.get("pitch", 50)), range=int(spec.get("range", 50)), rate=int(spec.get("rate", 170)))


def assistant_voice_names(lang: str) -> list[str]:
    from . import speech

    return sorted(speech.ASSISTANT_VOICES) if lang == DEFAULT_LANG else sorted(get(lang).lex["voices"]["assistant"])


def assistant_voice(name: str, lang: str = DEFAULT_LANG):  # noqa: ANN201 - speech.VoiceSpec
    """The assistant voice `name` speaking `lang` (English: `speech.ASSISTANT_VOICES`)."""
    from . import speech

    if lang == DEFAULT_LANG:
        return speech.assistant_voice(name)
    voices = get(lang).lex["voices"]["assistant"]
    if name not in voices:
        raise ValueError(f"language {lang!r} has no assistant voice {name!r}; it has {sorted(voices)}")
    return _voice(name, voices[name])


def sample_user_voice(rng, lang: str = DEFAULT_LANG):  # noqa: ANN001, ANN201
    """A random user voice speaking `lang`: the same draws as `speech.sample_user_voice`."""
    from . import speech

    if lang == DEFAULT_LANG:
        return speech.sample_user_voice(rng)
    langs = get(lang).lex["voices"]["user"]
    code = langs[int(rng.integers(len(langs)))]
    var = speech.USER_VARIANTS[int(rng.integers(len(speech.USER_VARIANTS)))]
    return speech.VoiceSpec(
        name=f"user:{code}+{var or 'default'}", language=code, variant=var,
        pitch=int(rng.integers(speech.USER_PITCH[0], speech.USER_PITCH[1] + 1)),
        range=int(rng.integers(speech.USER_RANGE[0], speech.USER_RANGE[1] + 1)),
        rate=int(rng.integers(speech.USER_RATE[0], speech.USER_RATE[1] + 1)),
    )


def judge_voices(lang: str) -> tuple:
    """The speech judge's reference voices for `lang` (never the assistant presets)."""
    return tuple(_voice(f"judge-{lang}-{i}", v) for i, v in enumerate(get(lang).lex["voices"]["judge"]))


def task_prompts(lang: str) -> dict[str, str]:
    """The task prompts (`tasks.TASK_PROMPTS` in `lang`) for generation.json."""
    t = get(lang).templates
    return {"caption": t["p_caption"], "transcribe": t["p_asr"], "speak": t["p_tts"]}


# ---------------------------------------------------------------- samples

# truth fields that hold world sentences (the rest are language-free: scenes, numbers, voices, kinds)
TEXT_FIELDS: tuple[str, ...] = ("answer", "question", "transcript", "prompt", "instruction")
# the tasks whose every sentence the lexicons cover (the 3D tasks speak another vocabulary)
LOCALIZED_TASKS: tuple[str, ...] = (
    "caption", "vqa", "draw", "edit", "video", "math", "asr", "tts", "spoken_vqa", "spoken_math", "spoken_draw",
)


def localize(task: str, messages: list[dict], truth: dict, lang: str) -> None:
    """Translate an English sample's text parts and truth sentences into `lang` in place, and mark
    the truth with `"lang"`. Speech was already spoken in `lang` (`tasks._user_speech` translates)."""
    if lang == DEFAULT_LANG:
        return
    if task not in LOCALIZED_TASKS:
        raise ValueError(f"task {task!r} has no translation; --lang {lang} covers {', '.join(LOCALIZED_TASKS)}")
    for m in messages:
        for part in m["content"] if isinstance(m["content"], list) else ():
            if part.get("type") == "text":
                part["text"] = translate(part["text"], lang)
    for k in TEXT_FIELDS:
        if isinstance(truth.get(k), str):
            truth[k] = translate(truth[k], lang)
    truth["lang"] = lang


def truth_lang(truth: dict) -> str:
    return truth.get("lang", DEFAULT_LANG)


def english_truth(truth: dict) -> dict:
    """The truth with its sentences back in English (for judges written against English candidates)."""
    lang = truth_lang(truth)
    if lang == DEFAULT_LANG:
        return truth
    out = dict(truth)
    for k in TEXT_FIELDS:
        if isinstance(out.get(k), str):
            out[k] = to_english(out[k], lang)
    out.pop("lang")
    return out
