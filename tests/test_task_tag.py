"""The task tag: one appended id (`<|task|>`, a reserved slot) that routes a text-only conversation
through onward-gated adapters, written by `tokenize --task-tag`, recorded by training, and asked
with by eval, chat and serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from omniloom.tokens import (
    TASK_TAG_PART,
    decode_ids,
    encode_conversation,
    has_media,
    tag_by_rule,
    tag_prompt,
    task_tag_id,
    with_task_tag,
)
from omniloom.tokens.vocab import RESERVED_NAMES, Vocab
from test_train_adapters import ARGS, TEXT, _setup, _tiny_tokenizer_json


class _Words:
    """A text tokenizer over 'w<i>' words (ids 0..TEXT-1)."""

    def encode(self, text: str) -> list[int]:
        return [int(w[1:]) for w in text.split()]

    def decode(self, ids) -> str:
        return " ".join(f"w{int(i)}" for i in ids)


TEXT_ONLY = [{"role": "user", "content": "w3 w4"}, {"role": "assistant", "content": "w5"}]


def test_the_tag_is_reserved_slot_5_in_every_vocabulary():
    v = Vocab.build(text_size=TEXT)
    assert RESERVED_NAMES[5] == "task"
    assert task_tag_id(v) == v.special("<|task|>") == v.special("reserved:5")
    assert v.special_name(task_tag_id(v)) == "<|reserved:5|>"  # vocab.json is unchanged: an alias only
    small = Vocab.build(text_size=TEXT, num_reserved_specials=5)
    with pytest.raises(ValueError, match="no task tag .*num_reserved_specials >= 6, has 5"):
        encode_conversation(with_task_tag(TEXT_ONLY), small, _Words())


def test_the_tag_sits_first_in_the_first_user_turn_unlearnt_and_parsing_skips_it():
    v = Vocab.build(text_size=TEXT)
    tagged = with_task_tag(TEXT_ONLY)
    assert TEXT_ONLY[0]["content"] == "w3 w4"  # the input is not changed
    assert tagged[0]["content"] == [TASK_TAG_PART, {"type": "text", "text": "w3 w4"}]
    assert with_task_tag(tagged) == tagged  # once only
    enc, plain = encode_conversation(tagged, v, _Words()), encode_conversation(TEXT_ONLY, v, _Words())
    head = v.header_ids("user")
    at = enc.ids.index(head[-1]) + 1
    assert enc.ids[at] == task_tag_id(v) and enc.ids.count(task_tag_id(v)) == 1
    assert enc.ids[:at] + enc.ids[at + 1:] == plain.ids  # the one id more, nothing else moved
    assert enc.loss_mask[at] == 0
    segs = decode_ids(enc.ids, v, _Words(), strict=True)
    assert [(s.role, s.text) for s in segs] == [("user", "w3 w4"), ("assistant", "w5")]
    with pytest.raises(ValueError, match="no user turn|has none"):
        with_task_tag([{"role": "assistant", "content": "w1"}])


def test_rules_tag_text_only_or_all_conversations():
    image = [{"role": "user", "content": [{"type": "image_codes", "codes": [1, 2]}, {"type": "text", "text": "w1"}]},
             {"role": "assistant", "content": "w2"}]
    assert not has_media(TEXT_ONLY) and has_media(image)
    assert tag_by_rule(TEXT_ONLY, "text-only") == (with_task_tag(TEXT_ONLY), True)
    assert tag_by_rule(image, "text-only") == (image, False)
    assert tag_by_rule(image, "all") == (with_task_tag(image), True)
    assert tag_by_rule(TEXT_ONLY, "none") == (TEXT_ONLY, False)
    assert tag_by_rule(TEXT_ONLY, None) == (TEXT_ONLY, False)
    already = with_task_tag(TEXT_ONLY)
    assert tag_by_rule(already, "all") == (already, False)
    no_user = [{"role": "assistant", "content": "w9"}]
    assert tag_by_rule(no_user, "all") == (no_user, False)
    with pytest.raises(ValueError, match="task tag rule must be one of none, text-only, all"):
        tag_by_rule(TEXT_ONLY, "some")


def test_a_prompt_is_tagged_as_its_whole_conversation_was():
    draw = [{"role": "user", "content": "w1 w2"}]  # text alone, but the answer will be an image
    assert tag_prompt(draw, "text-only", "image") == (draw, False)
    assert tag_prompt(draw, "text-only", "audio") == (draw, False)
    assert tag_prompt(draw, "text-only", "text") == (with_task_tag(draw), True)
    assert tag_prompt(draw, "all", "image") == (with_task_tag(draw), True)
    # and so does tag_by_rule on the whole conversation it begins
    whole = draw + [{"role": "assistant", "content": [{"type": "image_codes", "codes": [1]}]}]
    assert tag_by_rule(whole, "text-only")[1] is False


def test_the_tag_is_never_a_loss_target_even_in_pretrain_mode():
    v = Vocab.build(text_size=TEXT)
    enc = encode_conversation(with_task_tag(TEXT_ONLY), v, _Words(), mode="pretrain")
    at = enc.ids.index(task_tag_id(v))
    assert enc.loss_mask[at] == 0 and sum(enc.loss_mask) == len(enc.ids) - 1


def _jsonl(path: Path, docs: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": d}) + "\n" for d in docs))
    return path


def _tokenize(tmp_path: Path, rule: str, docs, name: str = "shards", vocab: Vocab | None = None) -> tuple[dict, Path]:
    from omniloom.data.tokenize import tokenize_files

    tok = tmp_path / "tokenizer.json"
    tok.write_text(_tiny_tokenizer_json())
    src = _jsonl(tmp_path / f"{name}.jsonl", docs)
    out = tmp_path / name
    summary = tokenize_files([src], tok, out, vocab=vocab or Vocab.build(text_size=TEXT), progress=False, task_tag=rule)
    return summary, out


def test_tokenize_tags_text_only_documents_and_records_the_rule(tmp_path):
    from omniloom.data.shards import ShardSet

    vocab = Vocab.build(text_size=TEXT, image_codebook_size=8, image_tokens=4)
    image = [{"role": "user", "content": [{"type": "image_codes", "codes": [0] * 4}, {"type": "text", "text": "w1"}]},
             {"role": "assistant", "content": "w2"}]
    text = [{"role": "user", "content": "w3 w4"}, {"role": "assistant", "content": "w5 w6"}]
    summary, out = _tokenize(tmp_path, "text-only", [text, image, text], vocab=vocab)
    assert summary["task_tagged"] == 2
    s = ShardSet.open(out / "train")
    assert s.manifest["task_tag"] == "text-only"
    tag = task_tag_id(Vocab.load(out / "train" / "vocab.json"))
    counts = [int((s.doc(d)[0] == tag).sum()) for d in range(s.num_docs)]
    assert counts == [1, 0, 1]
    plain, out2 = _tokenize(tmp_path, "none", [text, image, text], name="plain", vocab=vocab)
    assert plain["task_tagged"] == 0 and "task_tag" not in ShardSet.open(out2 / "train").manifest
    # read as one set with an untagged one, the model is still asked with the tag
    both = ShardSet.open(f"{out2 / 'train'},{out / 'train'}")
    assert both.manifest["task_tag"] == "text-only"
    assert "task_tag" not in ShardSet.open(f"{out2 / 'train'},{out2 / 'train'}").manifest
    with pytest.raises(ValueError, match="--task-tag must be one of none, text-only, all"):
        _tokenize(tmp_path, "maybe", [text], name="bad")
    # two sets tagged by different rules cannot be one training set: the model is asked by one rule
    _, out3 = _tokenize(tmp_path, "all", [text, image], name="all", vocab=vocab)
    with pytest.raises(ValueError, match="different task tag rules .*--task-tag text-only vs all"):
        ShardSet.open(f"{out / 'train'},{out3 / 'train'}")


def test_tokenize_tags_preference_pairs_by_the_same_rule(tmp_path):
    from omniloom.data.shards import ShardSet
    from omniloom.data.tokenize import tokenize_files

    tok = tmp_path / "tokenizer.json"
    tok.write_text(_tiny_tokenizer_json())
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"prompt": "w3 w4", "chosen": "w5", "rejected": "w6"}) + "\n")
    vocab = Vocab.build(text_size=TEXT)
    summary = tokenize_files([src], tok, tmp_path / "o", vocab=vocab, progress=False, input_format="preference",
                             task_tag="text-only")
    assert summary["task_tagged"] == 1
    s = ShardSet.open(tmp_path / "o" / "train")
    (chosen, cmask), (rejected, _) = s.doc(0), s.doc(1)
    tag = task_tag_id(vocab)
    assert int((chosen == tag).sum()) == 1 and int((rejected == tag).sum()) == 1
    assert cmask[list(chosen).index(tag)] == 0


def test_tokenize_cli_task_tag_all(tmp_path):
    from omniloom.cli import main

    tok = tmp_path / "tokenizer.json"
    tok.write_text(_tiny_tokenizer_json())
    Vocab.build(text_size=TEXT).save(tmp_path / "vocab.json")
    src = _jsonl(tmp_path / "d.jsonl", [[{"role": "user", "content": "w3"}, {"role": "assistant", "content": "w5"}]])
    assert main(["tokenize", "--input", str(src), "--tokenizer", str(tok), "--vocab", str(tmp_path / "vocab.json"),
                 "--out", str(tmp_path / "o"), "--task-tag", "all", "--no-progress", "--workers", "1"]) == 0
    assert json.loads((tmp_path / "o" / "train" / "manifest.json").read_text())["task_tag"] == "all"


@pytest.mark.slow
def test_a_tagged_run_answers_tagged_text_with_its_adapters_and_untagged_text_as_the_base(tmp_path, monkeypatch):
    """End to end: tokenize --task-tag, an onward-gated run, its generation.json, and what eval,
    chat and the model then do with a tagged and an untagged text-only prompt."""
    from omniloom.eval.runner import LocalBackend
    from omniloom.infer.generate import OmniModel
    from omniloom.model import Transformer

    _, base, ref = _setup(tmp_path)
    (base / "tokenizer.json").write_text(_tiny_tokenizer_json())
    # a grafted vocabulary: the role headers and turn end are base text ids, so only the tag is appended
    vocab = Vocab.build(text_size=TEXT, chat={"system": [96], "user": [97], "assistant": [98], "end": [99]})
    vocab.save(base / "vocab.json")
    docs = [[{"role": "user", "content": f"w{i % 50} w{(i * 7) % 50}"},
             {"role": "assistant", "content": f"w{(i * 3) % 90} w{(i + 1) % 90}"}] for i in range(120)]
    _, shards = _tokenize(tmp_path, "text-only", docs, vocab=vocab)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "omniloom.cli", "train", "--preset", "debug", "--stop-after", "6",
                        *ARGS, f"data.train={shards / 'train'}", f"train.out_dir={out}", f"train.init_from={base}",
                        "train.steps=100", "train.lora_gate_from=-1", "train.lora_gate_mode=onward"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    root = out / "ckpt"
    ck = root / (root / "latest").read_text().strip()
    assert json.loads((ck / "generation.json").read_text())["task_tag"] == "text-only"
    assert all(v.abs().sum() > 0 for k, v in load_file(str(ck / "model.safetensors")).items() if k.endswith(".lora_b"))
    omni = OmniModel.load(ck)
    plain = Transformer(omni.model.cfg).eval()
    plain.load_state_dict(ref)
    ask = [{"role": "user", "content": "w3 w21"}]
    untagged = torch.tensor([omni.processor.prompt_ids(ask)])
    tagged = torch.tensor([omni.processor.prompt_ids(with_task_tag(ask))])
    with torch.no_grad():
        assert torch.equal(omni.model(untagged)[..., :TEXT], plain(untagged)[..., :TEXT])
        assert (omni.model(tagged)[0, -1] - plain(tagged)[0, -1]).abs().max() > 1e-4
    # eval asks as the data was tokenized (auto), unless told otherwise
    seen = []
    import omniloom.infer.generate as gen_mod

    def recording_generate(o, messages, **kw):  # what eval asks, not how the tiny model answers
        seen.append(messages)
        return iter(())

    monkeypatch.setattr(gen_mod, "generate", recording_generate)
    sample = {"task": "math", "messages": ask + [{"role": "assistant", "content": "w1"}], "truth": {}}
    LocalBackend(omni).answer(sample, tmp_path)
    LocalBackend(omni, task_tag="none").answer(sample, tmp_path)
    LocalBackend(omni).answer(dict(sample, task="draw"), tmp_path)  # an image answer: untagged in training too
    assert seen[0] == with_task_tag(ask) and seen[1] == ask and seen[2] == ask
    assert LocalBackend(omni).task_tag == "text-only"
    # chat --task-tag asks the same way
    import omniloom.infer.chat_cli as chat_cli
    from omniloom.cli import main

    asked = []
    monkeypatch.setattr(chat_cli, "_answer", lambda o, messages, *a: asked.append(messages) or {})
    assert main(["chat", "--model", str(ck), "--task-tag", "w3 w21"]) == 0
    assert main(["chat", "--model", str(ck), "w3 w21"]) == 0
    assert asked[0][0]["content"][0] == TASK_TAG_PART
    assert all(p.get("type") == "text" for p in asked[1][0]["content"])


def test_serve_accepts_a_task_tag_part_and_eval_sends_one():
    from types import SimpleNamespace

    from omniloom.eval.runner import ServerBackend
    from omniloom.serve.errors import APIError
    from omniloom.serve.state import ServerState

    served = SimpleNamespace(omni=SimpleNamespace(vocab=Vocab.build(text_size=TEXT)))
    assert ServerState.convert_part(served, {"type": "task_tag"}, "messages[0].content[0]", None) == TASK_TAG_PART
    old = SimpleNamespace(omni=SimpleNamespace(vocab=Vocab.build(text_size=TEXT, num_reserved_specials=4)))
    with pytest.raises(APIError) as e:
        ServerState.convert_part(old, {"type": "task_tag"}, "messages[0].content[0]", None)
    assert e.value.status == 400 and "no task tag" in str(e.value.message)
    sb = ServerBackend.__new__(ServerBackend)
    assert sb._part({"type": "task_tag"}, Path(".")) == [TASK_TAG_PART]


@pytest.mark.slow
def test_a_tag_gated_run_leaves_every_untagged_conversation_to_the_source_bit_for_bit(tmp_path):
    """A whole (not grafted) model taught on tagged data with lora_gate_mode=tag and no trainable
    rows: untagged input of any kind runs the source exactly, tagged input runs the adapters."""
    from omniloom.infer.generate import OmniModel
    from omniloom.model import Transformer

    _, base, ref = _setup(tmp_path)
    (base / "tokenizer.json").write_text(_tiny_tokenizer_json())
    docs = [[{"role": "user", "content": f"w{i % 50} w{(i * 7) % 50}"},
             {"role": "assistant", "content": f"w{(i * 3) % 90} w{(i + 1) % 90}"}] for i in range(120)]
    summary, shards = _tokenize(tmp_path, "all", docs)
    assert summary["task_tagged"] == 120
    vocab = Vocab.load(shards / "train" / "vocab.json")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "omniloom.cli", "train", "--preset", "debug", "--stop-after", "6",
                        *ARGS, f"data.train={shards / 'train'}", f"train.out_dir={out}", f"train.init_from={base}",
                        "train.steps=100", "train.lora_gate_from=-1", "train.lora_gate_mode=tag",
                        f"train.train_rows_from={vocab.size}"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    root = out / "ckpt"
    ck = root / (root / "latest").read_text().strip()
    sd = load_file(str(ck / "model.safetensors"))
    assert all(sd[k].abs().sum() > 0 for k in sd if k.endswith(".lora_b"))  # the adapters learnt
    assert all(torch.equal(sd[k], v) for k, v in ref.items())  # every source weight, rows included, as it was
    omni = OmniModel.load(ck)
    assert omni.model.lora_gate_from == task_tag_id(vocab) and omni.model.lora_gate_mode == "tag"
    plain = Transformer(omni.model.cfg).eval()
    plain.load_state_dict(ref)
    ask = [{"role": "user", "content": "w3 w21"}]
    untagged = torch.tensor([omni.processor.prompt_ids(ask)])
    appended = untagged.clone()
    appended[0, 1] = vocab.special_start + 30  # an appended id that is not the tag keeps the gate shut
    tagged = torch.tensor([omni.processor.prompt_ids(with_task_tag(ask))])
    with torch.no_grad():
        assert torch.equal(omni.model(untagged), plain(untagged))  # every id's logit, not just the text ones
        assert torch.equal(omni.model(appended), plain(appended))
        assert (omni.model(tagged)[0, -1] - plain(tagged)[0, -1]).abs().max() > 1e-4


def test_a_realtime_session_with_task_tag_true_tags_its_conversation(monkeypatch):
    """The Realtime session extension: session.update {"task_tag": true} puts the tag first in the
    first user turn of what the session answers; bad values and a vocabulary without the slot are refused."""
    from types import SimpleNamespace

    from omniloom.serve import realtime

    monkeypatch.setattr(realtime, "ServerVAD", lambda *a, **k: None)  # no silero for this check
    st = SimpleNamespace(settings=SimpleNamespace(model_id="m"), voices=["nova"],
                         omni=SimpleNamespace(vocab=Vocab.build(text_size=TEXT)))
    rt = realtime.RealtimeSession(st, ws=None, beta=False)
    rt.items = [{"id": "i1", "role": "user", "content": [{"type": "input_text", "text": "w3 w4"}]}]
    assert rt._messages() == [{"role": "user", "content": [{"type": "text", "text": "w3 w4"}]}]
    rt._apply_session({"task_tag": True})
    assert rt.session["task_tag"] is True
    assert rt._messages() == [{"role": "user", "content": [TASK_TAG_PART, {"type": "text", "text": "w3 w4"}]}]
    rt.items = [{"id": "i2", "role": "assistant", "content": [{"type": "output_text", "text": "w5"}]}]
    assert rt._messages() == [{"role": "assistant", "content": [{"type": "text", "text": "w5"}]}]  # no user turn
    rt._apply_session({"task_tag": False})
    assert rt.session["task_tag"] is False
    with pytest.raises(ValueError, match="task_tag must be true or false"):
        rt._apply_session({"task_tag": "yes"})
    st.omni.vocab = Vocab.build(text_size=TEXT, num_reserved_specials=5)
    with pytest.raises(ValueError, match="task tag"):
        rt._apply_session({"task_tag": True})
