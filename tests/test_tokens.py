"""Property tests of the global vocabulary and the chat template (tokens/)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniloom.codecs.text import TextTokenizer
from omniloom.tokens import (
    Vocab,
    build_prompt,
    decode_ids,
    drop_condition,
    encode_conversation,
    null_condition,
    segments_to_messages,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=1)
def tokenizer() -> TextTokenizer:
    corpus = ["a big red circle at the top left", "what color is the star?", "hello world", "日本語 ✓ ünïcödé"] * 20
    return TextTokenizer.train(corpus, 320, min_frequency=1)


def vocab(**kw) -> Vocab:
    base = dict(image_codebook_size=64, image_tokens=8, audio_codebook_size=32, audio_codebooks=3,
                voices=["nova", "echo"])
    base.update(kw)
    return Vocab.build(tokenizer().vocab_size, **base)


vocab_params = st.fixed_dictionaries({
    "text_size": st.integers(1, 5000),
    "image_codebook_size": st.integers(0, 300),
    "image_tokens": st.integers(1, 70),
    "audio_codebook_size": st.integers(0, 200),
    "audio_codebooks": st.integers(1, 8),
    "num_voices": st.integers(0, 20),
    "num_time_tags": st.integers(0, 300),
    "reserve": st.integers(0, 500),
    "pad_multiple": st.sampled_from([1, 8, 64, 128]),
})


def build_from(p: dict) -> Vocab:
    p = dict(p)
    if p["image_codebook_size"] == 0:
        p["image_tokens"] = 0
    if p["audio_codebook_size"] == 0:
        p["audio_codebooks"] = 0
    return Vocab.build(**p)


# ---------------------------------------------------------------------------------------------
# vocab


@SETTINGS
@given(vocab_params, st.data())
def test_modality_of_agrees_with_ranges(p, data):
    v = build_from(p)
    assert v.size % p["pad_multiple"] == 0 and v.size >= v.audio_end
    ids = data.draw(st.lists(st.integers(-3, v.size + 3), min_size=1, max_size=60))
    got = v.modality_of(ids)
    assert got.dtype == np.int8 and got.shape == (len(ids),)
    for i, m in zip(ids, got):
        if not 0 <= i < v.size:
            expect = -1
        else:
            expect = next((k for k, name in enumerate(v.MODALITIES)
                           if v.range_of(name)[0] <= i < v.range_of(name)[1]), 1)  # reserved tail -> special
        assert m == expect, (i, m, expect)
    # torch tensors give the same answer
    import torch

    assert (v.modality_of(torch.tensor(ids)) == got).all()


@SETTINGS
@given(vocab_params, st.data())
def test_local_global_round_trip_every_modality(p, data):
    v = build_from(p)
    for modality in ("text", "image", "audio"):
        lo, hi = v.range_of(modality)
        if hi == lo:
            with pytest.raises(ValueError):
                v.to_global(modality, 0)
            continue
        local = data.draw(st.lists(st.integers(0, hi - lo - 1), min_size=1, max_size=20))
        g = v.to_global(modality, local)
        assert (v.modality_of(g) == v.MODALITIES.index(modality)).all()
        assert v.to_local(modality, g).tolist() == local
        assert v.to_local(modality, int(g[0])) == local[0]
        with pytest.raises(ValueError):
            v.to_global(modality, hi - lo)
        with pytest.raises(ValueError):
            v.to_local(modality, lo - 1 if modality != "text" else hi)
    if v.audio_codebooks:
        frames = np.asarray(data.draw(st.lists(
            st.lists(st.integers(0, v.audio_codebook_size - 1), min_size=v.audio_codebooks,
                     max_size=v.audio_codebooks), max_size=10)), dtype=np.int64).reshape(-1, v.audio_codebooks)
        flat = v.audio_to_global(frames)
        assert len(flat) == frames.size
        assert (v.audio_from_global(flat) == frames).all()
        for k in range(v.audio_codebooks):  # codebook k sits at position k of every frame, in its own range
            lo, hi = v.audio_codebook_range(k)
            assert all(lo <= x < hi for x in flat[k::v.audio_codebooks])
            assert v.to_local("audio", v.to_global("audio", 3 % v.audio_codebook_size, codebook=k), codebook=k) == \
                3 % v.audio_codebook_size


@SETTINGS
@given(vocab_params, st.lists(st.text(min_size=1, max_size=8), max_size=4, unique=True))
def test_vocab_json_round_trip(tmp_path_factory, p, names):
    names = [n for n in names if n != "none"]
    v = build_from({**p, "num_voices": max(p["num_voices"], len(names))})
    v = Vocab.build(v.text_size, v.image_codebook_size, v.image_tokens, v.audio_codebook_size, v.audio_codebooks,
                    voices=names, num_voices=p["num_voices"], num_time_tags=v.num_time_tags, reserve=v.reserve,
                    pad_multiple=v.pad_multiple)
    path = tmp_path_factory.mktemp("v") / "vocab.json"
    v.save(path)
    w = Vocab.load(path)
    assert w == v and w.size == v.size and w.special_tokens == v.special_tokens
    for n in names:
        assert w.voice_name(w.voice_id(n)) == n
    ids = np.arange(-1, v.size + 1)
    assert (w.modality_of(ids) == v.modality_of(ids)).all()


def test_vocab_load_rejects_bad_files(tmp_path):
    v = vocab()
    v.save(tmp_path / "vocab.json")
    d = json.loads((tmp_path / "vocab.json").read_text())
    d["version"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="version"):
        Vocab.load(tmp_path / "bad.json")
    d["version"] = 1
    d["size"] += 1
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="size"):
        Vocab.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="vocab file .* is missing"):
        Vocab.load(tmp_path / "missing.json")
    assert Vocab.load(tmp_path) == v  # a directory holding vocab.json


def test_specials_and_tags():
    v = vocab()
    assert len({v.bos_id, v.eos_id, v.pad_id, v.end_id, v.null_id}) == 5
    assert v.special("bos") == v.special("<|bos|>") == v.bos_id
    assert len(v.voices) >= 16 and v.voices[:2] == ["nova", "echo"]
    assert v.voice_id("voice:0") == v.voice_id("nova") and v.voice_name(v.voice_id(None)) is None
    assert v.time_of(v.time_id(1.25)) == 1.25
    with pytest.raises(ValueError, match="unknown voice"):
        v.voice_id("alloy")
    with pytest.raises(ValueError, match="outside"):
        v.time_id(10_000.0)
    with pytest.raises(ValueError, match="unknown special"):
        v.special("nope")
    with pytest.raises(ValueError, match="both"):
        Vocab.build(100, image_codebook_size=10, image_tokens=0)


# ---------------------------------------------------------------------------------------------
# template

V = None


def get_vocab() -> Vocab:
    global V
    if V is None:
        V = vocab()
    return V


text_st = st.text(min_size=1, max_size=20)


@st.composite
def part_st(draw):
    v = get_vocab()
    kind = draw(st.sampled_from(["text", "text", "image_codes", "audio_codes", "video_codes"]))
    img = st.lists(st.integers(0, v.image_codebook_size - 1), min_size=v.image_tokens, max_size=v.image_tokens)
    if kind == "text":
        return {"type": "text", "text": draw(text_st)}
    if kind == "image_codes":
        return {"type": "image_codes", "codes": draw(img)}
    if kind == "audio_codes":
        frame = st.lists(st.integers(0, v.audio_codebook_size - 1), min_size=v.audio_codebooks,
                         max_size=v.audio_codebooks)
        return {"type": "audio_codes", "codes": draw(st.lists(frame, max_size=40)),
                "voice": draw(st.sampled_from([None, "nova", "echo", "voice:5"])),
                "transcript": draw(st.one_of(st.none(), text_st))}
    return {"type": "video_codes", "frames": draw(st.lists(img, min_size=1, max_size=3)),
            "fps": draw(st.sampled_from([None, 1.0, 2.0, 4.0]))}


message_st = st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant"]),
    "content": st.one_of(text_st, st.lists(part_st(), min_size=1, max_size=4)),
})
conversation_st = st.lists(message_st, min_size=1, max_size=4)


def normalized(messages):
    """What decode_ids can give back: string content as a text part, adjacent text parts merged."""
    v = get_vocab()
    out = []
    for m in messages:
        parts = [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"]
        merged: list[dict] = []
        for p in parts:
            if p["type"] == "text" and merged and merged[-1]["type"] == "text":
                merged[-1] = {"type": "text", "text": merged[-1]["text"] + p["text"]}
            elif p["type"] == "audio_codes":
                voice = p["voice"]
                if voice and voice.startswith("voice:"):
                    voice = v.voices[int(voice[6:])]
                merged.append({"type": "audio_codes", "codes": p["codes"], "voice": voice,
                               "transcript": p["transcript"] or None})
            elif p["type"] == "video_codes":
                n = len(p["frames"])
                times = [None] * n if p["fps"] is None else [round(i / p["fps"] / v.time_step) * v.time_step
                                                             for i in range(n)]
                merged.append({"type": "video_codes", "frames": p["frames"], "times": times})
            else:
                merged.append(dict(p))
        out.append({"role": m["role"], "content": merged})
    return out


def comparable(messages):
    for m in messages:
        for p in m["content"]:
            p.pop("fps", None)
    return messages


@SETTINGS
@given(conversation_st, st.sampled_from(["sft", "pretrain"]))
def test_encode_decode_round_trip(messages, mode):
    v, tok = get_vocab(), tokenizer()
    enc = encode_conversation(messages, v, tok, mode=mode)
    assert len(enc.ids) == len(enc.loss_mask)
    assert enc.ids[0] == v.bos_id and enc.ids[-1] == v.eos_id
    assert all(0 <= i < v.size for i in enc.ids)
    segs = decode_ids(enc.ids, v, tok, strict=True)
    assert all(s.complete for s in segs)
    assert comparable(segments_to_messages(segs)) == normalized(messages)


@SETTINGS
@given(conversation_st)
def test_loss_mask(messages):
    v, tok = get_vocab(), tokenizer()
    pre = encode_conversation(messages, v, tok, mode="pretrain")
    assert all(m == 1 for m in pre.loss_mask)
    enc = encode_conversation(messages, v, tok, mode="sft")
    assert enc.ids == pre.ids  # the mode changes the mask only
    headers = {v.special(r): r for r in ("system", "user", "assistant")}
    # independent reading: 1 exactly from after an assistant header up to and including its <|end|>
    inside, expect = False, []
    for i in enc.ids:
        if i in headers:
            inside = headers[i] == "assistant"
            expect.append(0)
        else:
            expect.append(1 if inside else 0)
            if i == v.end_id:
                inside = False
    assert enc.loss_mask == expect
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    assert sum(1 for i, m in zip(enc.ids, enc.loss_mask) if m and i == v.end_id) == n_assistant
    for i, m in zip(enc.ids, enc.loss_mask):
        if i in headers or i in (v.bos_id, v.eos_id):
            assert m == 0


@SETTINGS
@given(conversation_st, st.data())
def test_truncated_tail_parses(messages, data):
    v, tok = get_vocab(), tokenizer()
    ids = encode_conversation(messages, v, tok).ids
    cut = data.draw(st.integers(0, len(ids)))
    full = decode_ids(ids, v, tok, strict=True)
    part = decode_ids(ids[:cut], v, tok, strict=True)  # a truncated tail is never an error
    assert len(part) <= len(full)
    for a, b in zip(part[:-1], full):
        assert a == b
    if part:
        last, ref = part[-1], full[len(part) - 1]
        assert last.modality == ref.modality and last.role == ref.role
        if last.modality in ("image", "audio") and last.codes:
            assert ref.codes[:len(last.codes)] == last.codes


def test_malformed_ids_strict_and_tolerant():
    v, tok = get_vocab(), tokenizer()
    text = tok.encode("hi")
    stray_code = [v.bos_id, v.special("user"), *text, v.image_start + 3, v.end_id]
    with pytest.raises(ValueError, match="outside any span"):
        decode_ids(stray_code, v, tok, strict=True)
    segs = decode_ids(stray_code, v, tok)
    assert [s.text for s in segs] == ["hi"]
    short_image = [v.special("image"), *v.to_global("image", [1, 2]).tolist(), v.special("/image")]
    with pytest.raises(ValueError, match="expected 8"):
        decode_ids(short_image, v, tok, strict=True)
    audio_wrong_order = [v.special("audio"), v.voice_id(None), *v.audio_to_global([[1, 2, 3]])[::-1],
                         v.special("/audio")]
    with pytest.raises(ValueError, match="codebook order"):
        decode_ids(audio_wrong_order, v, tok, strict=True)
    no_voice = [v.special("audio"), *v.audio_to_global([[1, 2, 3]]), v.special("/audio")]
    with pytest.raises(ValueError, match="voice tag"):
        decode_ids(no_voice, v, tok, strict=True)


def test_speech_answer_starts_audio_early():
    v, tok = get_vocab(), tokenizer()
    transcript = "a big red circle at the top left and a small blue star in the center"
    codes = [[1, 2, 3]] * 60
    msgs = [{"role": "assistant", "content": [{"type": "audio_codes", "codes": codes, "voice": "nova",
                                                "transcript": transcript}]}]
    ids = encode_conversation(msgs, v, tok).ids
    mods = v.modality_of(ids)
    first_audio = int(np.argmax(mods == 3))
    start = ids.index(v.special("audio"))
    n_text = len(tok.encode(transcript))
    assert n_text > v.speech_interleave[0]
    # begin, voice tag, one text chunk, then audio: not the whole transcript first
    assert first_audio - start == 2 + v.speech_interleave[0]
    seg = decode_ids(ids, v, tok, strict=True)[0]
    assert seg.transcript == transcript and seg.codes == codes and seg.voice == "nova"


def test_build_prompt_opens_span():
    v, tok = get_vocab(), tokenizer()
    msgs = [{"role": "user", "content": "draw a red circle"}]
    base = build_prompt(msgs, v, tok)
    assert base[0] == v.bos_id and base[-1] == v.special("assistant")
    assert base[:-1] == encode_conversation(msgs, v, tok, add_eos=False).ids
    assert build_prompt(msgs, v, tok, "image") == base + [v.special("image")]
    assert build_prompt(msgs, v, tok, "audio", voice="echo") == base + [v.special("audio"), v.voice_id("echo")]
    with pytest.raises(ValueError, match="output_modality"):
        build_prompt(msgs, v, tok, "smell")


def test_encode_errors_name_the_part():
    v, tok = get_vocab(), tokenizer()
    with pytest.raises(ValueError, match="message 1 part 0.*exactly 8"):
        encode_conversation([{"role": "user", "content": "x"},
                             {"role": "user", "content": [{"type": "image_codes", "codes": [1]}]}], v, tok)
    with pytest.raises(ValueError, match="message 0: role"):
        encode_conversation([{"role": "robot", "content": "x"}], v, tok)
    with pytest.raises(ValueError, match="image_url.*Processor"):
        encode_conversation([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], v, tok)
    with pytest.raises(ValueError, match="mode"):
        encode_conversation([], v, tok, mode="rl")


def test_drop_condition_keeps_the_image_answer_after_a_null_condition():
    v, tok = get_vocab(), tokenizer()
    img = {"type": "image_codes", "codes": list(range(8))}
    msgs = [{"role": "system", "content": "draw"},
            {"role": "user", "content": "a big red circle"},
            {"role": "assistant", "content": [img]}]
    for mode in ("sft", "pretrain"):
        enc = encode_conversation(msgs, v, tok, mode=mode)
        out = drop_condition(enc, v)
        answer = encode_conversation(msgs[2:], v, tok, mode=mode, add_bos=False)
        assert out.ids == null_condition(v) + answer.ids
        full = 1 if mode == "pretrain" else 0
        assert out.loss_mask == [full] * 4 + answer.loss_mask
        # the unconditional prompt generation uses is a prefix of it
        assert out.ids[:5] == null_condition(v) + [v.special("assistant")]
    # no image in an assistant turn: nothing to drop (an image from the user does not count)
    text_answer = [{"role": "user", "content": [img, {"type": "text", "text": "what color?"}]},
                   {"role": "assistant", "content": "red"}]
    assert drop_condition(encode_conversation(text_answer, v, tok), v) is None
