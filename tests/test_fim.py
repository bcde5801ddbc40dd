"""Fill-in-the-middle: the tokenize transform (omniloom.data.fim), its sentinels in the vocabulary, and
``POST /v1/completions`` with and without ``suffix`` through the official openai client."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from omniloom.cli import main
from omniloom.codecs.text import TextTokenizer
from omniloom.data.fim import FimSettings, apply_fim, fim_layout
from omniloom.data.shards import ShardSet
from omniloom.tokens.vocab import RESERVED_NAMES, Vocab

WORLD_VOCAB = Path(__file__).resolve().parents[1] / "src/omniloom/assets/models/world/vocab.json"
TEXTS = [f"the red square {i} sits left of the blue circle number {2 * i}." for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(TEXTS * 3, vocab_size=300, min_frequency=1)


@pytest.fixture(scope="module")
def vocab(tok):
    return Vocab.build(tok.vocab_size)


def _doc(tok, vocab, text):
    """A pretrain-like document: bos, the text (a loss target), eos."""
    ids = [vocab.bos_id] + tok.encode(text) + [vocab.eos_id]
    return ids, [0] + [1] * (len(ids) - 2) + [1]


def _sentinels(vocab):
    return [vocab.special(n) for n in ("fim_prefix", "fim_suffix", "fim_middle")]


def test_shipped_vocab_ids_are_unchanged_and_the_sentinels_are_reserved_slots():
    """The world model's vocab.json loads, every stored special keeps its id, and the FIM names are
    aliases of reserved slots 0-2 (no id moved, nothing stored changed)."""
    d = json.loads(WORLD_VOCAB.read_text())
    v = Vocab.load(WORLD_VOCAB)
    assert v.to_dict()["special_tokens"] == d["special_tokens"]
    for i, name in enumerate(d["special_tokens"]):
        assert v.special(name) == d["text_size"] + i
    assert v.size == d["size"] and v.range_of("image") == tuple(d["ranges"]["image"])
    for i, name in enumerate(RESERVED_NAMES):
        assert v.special(name) == v.special(f"reserved:{i}") == v.special(f"<|{name}|>")
        assert v.is_special(v.special(name))
    assert len(set(_sentinels(v))) == 3


def test_psm_and_spm_layouts(vocab):
    pre, suf, mid = _sentinels(vocab)
    p, m, s = [1, 2], [3], [4, 5]
    assert fim_layout(p, m, s, vocab, spm=False) == [pre, 1, 2, suf, 4, 5, mid, 3]
    assert fim_layout(p, m, s, vocab, spm=True) == [pre, suf, 4, 5, mid, 1, 2, 3]


def test_transform_keeps_the_text_moves_the_middle_last_and_masks(tok, vocab):
    pre, suf, mid = _sentinels(vocab)
    seen = set()
    for rec in range(30):
        text = TEXTS[rec]
        ids, mask = _doc(tok, vocab, text)
        out, omask, how = apply_fim(ids, mask, vocab, tok, FimSettings(1.0, 0.5), seed=3, input_index=0, record=rec)
        seen.add(how)
        assert len(out) == len(omask) and out[0] == vocab.bos_id and out[-1] == vocab.eos_id
        assert omask[0] == 0 and all(omask[1:])  # the whole transformed span is a target
        body = out[1:-1]
        assert body[0] == pre and body.count(suf) == 1 and body.count(mid) == 1
        i_suf, i_mid = body.index(suf), body.index(mid)
        if how == "psm":
            prefix, suffix, middle = body[1:i_suf], body[i_suf + 1:i_mid], body[i_mid + 1:]
        else:
            assert i_suf == 1
            suffix, pm = body[2:i_mid], body[i_mid + 1:]
            prefix, middle = pm, []  # SPM: prefix and middle run together
        assert tok.decode(prefix) + tok.decode(middle) + tok.decode(suffix) == text
    assert seen == {"psm", "spm"}


def test_transform_is_seeded_per_document_and_follows_the_rates(tok, vocab):
    ids, mask = _doc(tok, vocab, TEXTS[0])
    a = [apply_fim(ids, mask, vocab, tok, FimSettings(0.5, 0.5), 7, 0, r) for r in range(400)]
    b = [apply_fim(ids, mask, vocab, tok, FimSettings(0.5, 0.5), 7, 0, r) for r in range(400)]
    assert a == b  # same seed and position: same transform
    c = [apply_fim(ids, mask, vocab, tok, FimSettings(0.5, 0.5), 8, 0, r) for r in range(400)]
    assert [x[0] for x in a] != [x[0] for x in c]
    hows = [x[2] for x in a]
    share = sum(h is not None for h in hows) / len(hows)
    assert 0.4 < share < 0.6
    spm = sum(h == "spm" for h in hows) / max(1, sum(h is not None for h in hows))
    assert 0.38 < spm < 0.62
    assert all(x[2] is None for x in (apply_fim(ids, mask, vocab, tok, FimSettings(0.0), 7, 0, r) for r in range(50)))
    assert all(x[2] == "psm" for x in (apply_fim(ids, mask, vocab, tok, FimSettings(1.0, 0.0), 7, 0, r)
                                       for r in range(50)))


def test_transform_leaves_documents_without_a_text_target_alone(tok, vocab):
    ids = [vocab.bos_id] + tok.encode(TEXTS[1]) + [vocab.eos_id]
    mask = [0] * len(ids)  # nothing to learn: nothing to split
    assert apply_fim(ids, mask, vocab, tok, FimSettings(1.0), 0, 0, 0) == (ids, mask, None)


def test_sft_splits_the_answer_only(tok, vocab):
    """In an sft document the split text is the assistant's answer; the user's turn stays in place."""
    from omniloom.processor import Processor

    enc = Processor(vocab, tok, {}).encode_messages(
        [{"role": "user", "content": TEXTS[2]}, {"role": "assistant", "content": TEXTS[3]}], mode="sft")
    out, omask, how = apply_fim(enc.ids, enc.loss_mask, vocab, tok, FimSettings(1.0), 0, 0, 5)
    a = out.index(_sentinels(vocab)[0])
    assert out[:a] == enc.ids[:a] and tok.decode([t for t in out[:a] if t < tok.vocab_size]) == TEXTS[2]
    e = len(out) - 1 - out[::-1].index(vocab.end_id)  # the middle is followed by the answer's turn end
    tail = enc.ids[len(enc.ids) - 1 - enc.ids[::-1].index(vocab.end_id):]
    assert out[e:] == tail and omask[e] == 1 and how is not None


@pytest.mark.parametrize("bad", [["--fim-rate", "1.5"], ["--fim-spm-rate", "-0.1"]])
def test_cli_rejects_bad_rates(tmp_path, tok, bad, capsys):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"messages": [{"role": "assistant", "content": TEXTS[0]}]}) + "\n")
    rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok.save(tmp_path / "tok")),
               "--out", str(tmp_path / "out"), "--no-progress", *bad])
    assert rc != 0 and "fim" in capsys.readouterr().err


def test_tokenize_fim_flags_write_fim_training_documents_and_keep_val_left_to_right(tmp_path, tok, capsys):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"messages": [{"role": "assistant", "content": t}]}) for t in TEXTS) + "\n")
    tok_path = tok.save(tmp_path / "tok")
    args = ["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--mode", "pretrain",
            "--val-fraction", "0.25", "--no-progress", "--workers", "1", "--fim-rate", "0.5", "--fim-spm-rate", "0.5"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = (ShardSet.open(tmp_path / x / "train") for x in ("a", "b"))
    v = Vocab.load(tmp_path / "a" / "train" / "vocab.json")
    pre = v.special("fim_prefix")
    docs = [a.doc(d)[0].tolist() for d in range(a.num_docs)]
    assert docs == [b.doc(d)[0].tolist() for d in range(b.num_docs)]  # deterministic
    n_fim = sum(pre in d for d in docs)
    assert n_fim == summary["fim_documents"] and 0 < n_fim < len(docs)
    assert a.manifest["fim"] == {"rate": 0.5, "spm_rate": 0.5}
    val = ShardSet.open(tmp_path / "a" / "val")
    assert val.num_docs and not any(pre in val.doc(d)[0].tolist() for d in range(val.num_docs))


# -- POST /v1/completions ---------------------------------------------------------------------------
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server():
    from omniloom.serve import ServeSettings, create_app
    from omniloom.serve.testing import serve_in_thread
    from omniloom.serve.tiny import build_tiny_model

    omni = build_tiny_model()
    prompts = []
    app = create_app(omni, ServeSettings(model_id="tiny", api_key=KEY))
    engine = type(omni.engine)
    real = engine.stream

    def spy(self, reqs, *a, **kw):  # what the workers send to their engines
        prompts.append(list(reqs[0].prompt))
        return real(self, reqs, *a, **kw)

    engine.stream = spy
    try:
        with serve_in_thread(app) as url:
            yield url, omni, prompts
    finally:
        engine.stream = real


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_completion_without_suffix_continues_the_prompt_text(client, server):
    _, omni, prompts = server
    r = client.completions.create(model="tiny", prompt="a red circle", max_tokens=8, temperature=0, seed=1)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("stop", "length")
    assert isinstance(r.choices[0].text, str)
    v = omni.vocab  # framed as a tokenized plain document: bos, the assistant header, the text
    assert prompts[-1] == v.bos_ids + v.header_ids("assistant") + omni.tok.encode("a red circle")
    assert r.usage.prompt_tokens == len(prompts[-1]) and r.usage.completion_tokens <= 8


def test_completion_with_suffix_sends_the_psm_prompt(client, server):
    _, omni, prompts = server
    v, tok = omni.vocab, omni.tok
    r = client.completions.create(model="tiny", prompt="a red ", suffix=" on the left", max_tokens=6, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert prompts[-1] == v.bos_ids + v.header_ids("assistant") + [v.special("fim_prefix")] + tok.encode("a red ") + [v.special("fim_suffix")] \
        + tok.encode(" on the left") + [v.special("fim_middle")]


def test_completion_stream_matches_the_whole_answer(client):
    args = dict(model="tiny", prompt="a blue", max_tokens=10, temperature=0)
    whole = client.completions.create(**args).choices[0].text
    chunks = list(client.completions.create(stream=True, **args))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_stop_strings_cut_the_text():
    from omniloom.serve.completions import StopScanner

    s = StopScanner(["END"])
    out = [s.push(d) for d in ("abc E", "N", "Dxyz")]
    assert "".join(o for o, _ in out) == "abc " and out[-1][1] and not out[0][1]
    s = StopScanner([])
    assert s.push("abc") == ("abc", False)


@pytest.mark.parametrize("body, word", [
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "suffix": 3}, "suffix"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "a", "echo": True}, "echo"),
    ({"prompt": "a", "n": 2}, "n"),
    ({"prompt": "a" * 5000}, "context"),
])
def test_bad_input_is_a_400_that_names_the_problem(server, body, word):
    r = httpx.post(server[0] + "/v1/completions", json={"model": "tiny", **body},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 400, r.text
    assert word in r.json()["error"]["message"]
