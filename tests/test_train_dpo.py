"""Preference training: the `preference` tokenize format (pairs kept together, answer-only masks for
text, audio and image answers), the pair-preserving loader, DPO steps (the chosen-over-rejected
log-ratio rises, the reference stays bit-identical), resume, FSDP2 and the configuration errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from omniloom.cli import main
from omniloom.codecs.text import TextTokenizer
from omniloom.config import Config, ModelConfig, TrainConfig, apply_overrides, config_to_dict
from omniloom.data.pairs import PairLoader
from omniloom.data.shards import ShardSet, ShardWriter
from omniloom.tokens.vocab import Vocab

TEXT = 100


# -- data ------------------------------------------------------------------------------------------
def _world_pairs(tmp: Path, n: int = 18) -> tuple[Path, Path, list[dict]]:
    """Preference records built from world samples (text, spoken and drawn answers, media by path
    relative to the JSONL): each record's own answer is chosen, the next same-task record's answer
    rejected; plus a multi-turn record whose prompt holds an earlier assistant turn."""
    from omniloom.world.generate import generate

    jsonl = generate(tmp / "w", "train", n, seed=3, tasks=["caption", "draw", "tts"])
    recs = [json.loads(x) for x in jsonl.read_text().splitlines()]
    by_task: dict[str, list[dict]] = {}
    for r in recs:
        by_task.setdefault(r["task"], []).append(r)
    pairs = []
    for task, rs in sorted(by_task.items()):
        for a, b in zip(rs, rs[1:] + rs[:1]):
            pairs.append({"prompt": a["messages"][:-1], "chosen": a["messages"][-1:],
                          "rejected": b["messages"][-1:], "task": task})
    pairs.append({"prompt": [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"},
                             {"role": "user", "content": "describe the image"}],
                  "chosen": "a big red circle", "rejected": [{"role": "assistant", "content": "no"}], "task": "turns"})
    out = jsonl.parent / "pairs.jsonl"
    out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    texts = [json.dumps(r["messages"]) for r in recs] + ["say hi", "a big red circle", "no"]
    tok = TextTokenizer.train(texts * 3, vocab_size=300, min_frequency=1).save(tmp / "tok")
    return out, tok, pairs


def _docs(s: ShardSet) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(np.asarray(x) for x in s.doc(d)) for d in range(s.num_docs)]


def test_preference_records_tokenize_into_adjacent_pairs_with_answer_only_masks(tmp_path):
    """Auto-detected format; every pair in one split and one shard, chosen then rejected, the same
    prompt ids; each mask is 1 exactly on the answer (its content and turn end) for text, speech and
    image answers, 0 over the prompt, including an earlier assistant turn of the prompt."""
    from omniloom.processor import Processor
    from omniloom.tokens.template import encode_conversation

    pairs_jsonl, tok, pairs = _world_pairs(tmp_path)
    out = tmp_path / "sh"
    assert main(["tokenize", "--input", str(pairs_jsonl), "--tokenizer", str(tok), "--out", str(out),
                 "--codec", "image-world", "--codec", "audio-world", "--val-fraction", "0.3",
                 "--shard-tokens", "400", "--unit-docs", "4", "--workers", "1", "--no-progress"]) == 0
    vocab = Vocab.load(out / "train" / "vocab.json")
    from omniloom.codecs import load_codec

    proc = Processor(vocab, TextTokenizer.load(tok), {"image": load_codec("image-world"),
                                                      "audio": load_codec("audio-world")})
    found = []
    for split in ("train", "val"):
        s = ShardSet.open(out / split)
        assert s.pairs and s.manifest["input_format"] == "preference"
        assert len(s.manifest["shards"]) > 1 and all(e["docs"] % 2 == 0 for e in s.manifest["shards"])
        docs = _docs(s)
        for k in range(0, len(docs), 2):
            assert s.doc_shard[k] == s.doc_shard[k + 1]
            found.append((docs[k], docs[k + 1]))
    assert len(found) == len(pairs)
    want_modality = {"caption": {"text", "special"}, "draw": {"image", "special"},
                     "tts": {"audio", "text", "special"}, "turns": {"text", "special"}}
    seen = set()
    for p in pairs:
        prompt = proc.to_code_messages(p["prompt"], pairs_jsonl.parent)
        head = encode_conversation(prompt, vocab, proc.text_tokenizer, add_eos=False).ids
        answers = []
        for key in ("chosen", "rejected"):
            ans = p[key] if isinstance(p[key], list) else [{"role": "assistant", "content": p[key]}]
            enc = encode_conversation(prompt + proc.to_code_messages(ans, pairs_jsonl.parent), vocab,
                                      proc.text_tokenizer)
            answers.append(enc)
        (c_ids, c_mask), (r_ids, r_mask) = next(f for f in found if f[0][0].tolist() == answers[0].ids
                                                and f[1][0].tolist() == answers[1].ids)
        n = len(head)
        assert c_ids[:n].tolist() == r_ids[:n].tolist() == head  # the same prompt
        for ids, mask, enc in ((c_ids, c_mask, answers[0]), (r_ids, r_mask, answers[1])):
            assert not mask[:n].any()  # nothing of the prompt counts
            np.testing.assert_array_equal(mask[n:], enc.loss_mask[n:])  # the template's sft mask on the answer
            on = np.flatnonzero(mask)
            # the answer span: right after the assistant header, through the turn end, before <|eos|>
            assert ids[on[0] - 1] == vocab.header_ids("assistant")[-1] and on[-1] == len(ids) - 2
            assert np.all(np.diff(on) == 1) and ids[on[-1]] == vocab.end_ids[-1]
            mods = {vocab.MODALITIES[m] for m in vocab.modality_of(ids[on])}
            assert mods == want_modality[p["task"]], (p["task"], mods)
        seen.add(p["task"])
    assert seen == set(want_modality)
    # the multi-turn prompt's earlier assistant turn, which the sft mask would count, is masked above
    turns = next(p for p in pairs if p["task"] == "turns")
    n = len(encode_conversation(turns["prompt"], vocab, proc.text_tokenizer, add_eos=False).ids)
    sft = encode_conversation(turns["prompt"] + [{"role": "assistant", "content": turns["chosen"]}], vocab,
                              proc.text_tokenizer)
    assert any(sft.loss_mask[:n])


def _text_pairs(tmp_path: Path, n: int = 30) -> tuple[Path, Path]:
    recs = [{"prompt": [{"role": "user", "content": f"what is {i} plus {i}?"}],
             "chosen": [{"role": "assistant", "content": f"{2 * i}"}],
             "rejected": [{"role": "assistant", "content": f"{2 * i + 1}"}]} for i in range(n)]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    tok = TextTokenizer.train([f"what is {i} plus {i}? {2 * i} {2 * i + 1}" for i in range(n)] * 5, vocab_size=300,
                              min_frequency=1).save(tmp_path / "tok")
    return jsonl, tok


def test_pairs_land_in_the_same_split_however_the_work_is_cut(tmp_path):
    from omniloom.data.tokenize import tokenize_files

    jsonl, tok = _text_pairs(tmp_path)
    got = {}
    for unit_docs in (4, 1000):
        out = tmp_path / f"u{unit_docs}"
        summary = tokenize_files([jsonl], tok, out, val_fraction=0.3, unit_docs=unit_docs, progress=False,
                                 input_format="preference", cfg_drop=0.1)
        assert summary["train"]["pairs"] + summary["val"]["pairs"] == 30
        got[unit_docs] = {k: [d[0].tolist() for d in _docs(ShardSet.open(out / k))] for k in ("train", "val")}
        assert ShardSet.open(out / "train").manifest["cfg_drop"] == 0.0  # pairs keep their prompts
    assert got[4] == got[1000] and got[4]["val"]


def test_bad_preference_records_name_the_file_and_line(tmp_path, capsys):
    jsonl, tok = _text_pairs(tmp_path, 4)
    good = jsonl.read_text().splitlines()
    cases = [
        ('{"prompt": "hi", "chosen": "a"}', "expected an object with \"chosen\" and \"rejected\""),
        ('{"prompt": "hi", "chosen": "a", "rejected": "a"}', "encode to the same ids"),
        ('{"prompt": "hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}',
         "\"chosen\" must hold assistant messages only"),
        ('{"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "a"}]}',
         "\"chosen\" holds no answer after the prompt"),
        ('{"prompt": 3, "chosen": "a", "rejected": "b"}', "\"prompt\" must be a list of messages"),
    ]
    for k, (line, msg) in enumerate(cases):
        bad = tmp_path / f"bad{k}.jsonl"
        bad.write_text("\n".join(good[:2] + [line] + good[2:]) + "\n")
        rc = main(["tokenize", "--input", str(bad), "--format", "preference", "--tokenizer", str(tok),
                   "--out", str(tmp_path / f"o{k}"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc != 0 and f"{bad}:3: " in err and msg in err, err
        assert not (tmp_path / f"o{k}" / "train" / "manifest.json").exists()
    rc = main(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok), "--out", str(tmp_path / "p"),
               "--mode", "pretrain", "--no-progress"])
    assert rc != 0 and "--format preference needs --mode sft" in capsys.readouterr().err


# -- the loader ------------------------------------------------------------------------------------
def _pair_shards(root: Path, n: int = 48, seed: int = 0, long_pairs: int = 0, shard_tokens: int = 300) -> Path:
    """Synthetic pairs: a prompt of text ids, then a chosen answer that continues the prompt's
    arithmetic pattern and a rejected answer of random ids; masks 1 on the answers only."""
    vocab = Vocab.build(text_size=TEXT)
    rng = np.random.default_rng(seed)
    with ShardWriter(root, vocab, shard_tokens=shard_tokens, meta={"pairs": True, "mode": "sft"}) as w:
        for i in range(n + long_pairs):
            a, step = int(rng.integers(0, TEXT)), int(rng.integers(1, 5))
            plen = int(rng.integers(3, 7)) + (40 if i >= n else 0)
            prompt = [vocab.bos_ids[0]] + [(a + step * k) % TEXT for k in range(plen)]
            alen = int(rng.integers(2, 6))
            chosen = [(a + step * (plen + k)) % TEXT for k in range(alen)]
            rejected = rng.integers(0, TEXT, alen).tolist()
            mask = [0] * len(prompt) + [1] * alen
            w.add_pair((prompt + chosen, mask), (prompt + rejected, mask))
    return root


def _answers(s: ShardSet, d: int) -> list[int]:
    ids, mask = s.doc(d)
    return np.asarray(ids)[np.asarray(mask) == 1].tolist()


def test_the_loader_keeps_every_pair_whole_in_one_micro_batch_on_one_rank(tmp_path):
    path = _pair_shards(tmp_path / "sh", long_pairs=3)
    s = ShardSet.open(path)
    one = PairLoader(s, seq_len=40, batch_size=4, micro_batch_size=1, seed=1)
    assert one.skipped == 3 and one.num_pairs == 51  # longer than a row of 41 tokens
    seen = []
    for b in range(one.batches_per_epoch):
        mbs = one.batch_at(0, b)
        assert len(mbs) == 4
        for mb in mbs:
            P = int(mb["pairs"])
            m = mb["loss_mask"]
            assert m.any(1).all() and P >= 1
            for q in range(P):
                got = []
                for side in (0, 1):
                    sel = m & (mb["seq_ids"] == 2 * q + side)
                    rows = sel.any(1).nonzero().flatten().tolist()
                    assert len(rows) == 1  # both answers whole, in one row
                    got.append(mb["targets"][sel].tolist())
                match = [p for p in range(s.num_docs // 2) if _answers(s, 2 * p) == got[0]
                         and _answers(s, 2 * p + 1) == got[1]]
                assert match, got
                seen.append(match[0])
            assert not (m & (mb["seq_ids"] < 0)).any()  # padding never counts
        # two ranks together see exactly the batch one rank sees
        ranks = [PairLoader(s, 40, 4, 1, rank=r, world_size=2, seed=1).batch_at(0, b) for r in (0, 1)]
        for k, mb in enumerate(ranks[0] + ranks[1]):
            for key in ("ids", "targets", "loss_mask", "seq_ids"):
                assert torch.equal(mb[key], mbs[k][key]), key
    assert len(seen) == len(set(seen))  # no pair twice in an epoch
    # resume: the same next batch; the next epoch orders the rows anew
    one.next_batch()
    again = PairLoader(s, 40, 4, 1, seed=1)
    again.load_state_dict(one.state_dict())
    assert all(torch.equal(a["ids"], b["ids"]) for a, b in zip(one.next_batch(), again.next_batch()))
    e0 = torch.cat([mb["ids"] for b in range(one.batches_per_epoch) for mb in one.batch_at(0, b)])
    e1 = torch.cat([mb["ids"] for b in range(one.batches_per_epoch) for mb in one.batch_at(1, b)])
    assert not torch.equal(e0, e1)


def test_the_loader_refuses_sets_without_pairs_and_too_little_data(tmp_path):
    vocab = Vocab.build(text_size=TEXT)
    with ShardWriter(tmp_path / "plain", vocab) as w:
        w.add([1, 2, 3, 4], [0, 1, 1, 1])
    with pytest.raises(ValueError, match="holds no preference pairs .*--format preference"):
        PairLoader(tmp_path / "plain", 16, 1)
    path = _pair_shards(tmp_path / "sh", n=4)
    with pytest.raises(ValueError, match="fewer than one global batch of 64 rows"):
        PairLoader(path, 40, 64)
    with pytest.raises(ValueError, match=r"data.seq_len=\d+ or more"):
        PairLoader(path, 4, 1)
    # a paired set does not mix with an unpaired one, nor goes through a filter of single documents
    with pytest.raises(ValueError, match="only one of them holds preference pairs"):
        ShardSet.open(f"{path},{tmp_path / 'plain'}")
    from omniloom.data.shards import filter_shards

    with pytest.raises(ValueError, match="holds preference pairs"):
        filter_shards(path, tmp_path / "f", lambda ids: True, progress=False)


# -- DPO steps -------------------------------------------------------------------------------------
def _model_cfg(vocab: Vocab) -> ModelConfig:
    return ModelConfig(vocab_size=(vocab.size + 63) // 64 * 64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                       ffn_dim=64, max_seq_len=64)


def _logratios(model: torch.nn.Module, reference: torch.nn.Module, loader: PairLoader) -> torch.Tensor:
    """Per pair: (log p(chosen) - log p(rejected)) under ``model`` minus the same under ``reference``,
    computed from full logits (independently of the training step's code)."""

    def answer_logps(m, mb):
        logits = m(mb["ids"], positions=mb["positions"], doc_ids=mb["doc_ids"]).float()
        lp = logits.log_softmax(-1).gather(-1, mb["targets"][..., None])[..., 0]
        sel = mb["loss_mask"]
        return torch.zeros(2 * int(mb["pairs"])).index_add(0, mb["seq_ids"][sel], lp[sel]).view(-1, 2)

    out = []
    with torch.no_grad():
        for b in range(loader.batches_per_epoch):
            for mb in loader.batch_at(0, b):
                pol, ref = answer_logps(model, mb), answer_logps(reference, mb)
                out.append((pol[:, 0] - pol[:, 1]) - (ref[:, 0] - ref[:, 1]))
    return torch.cat(out)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_dpo_steps_raise_the_chosen_log_ratio_and_leave_the_reference_untouched(tmp_path, dtype):
    import copy

    from omniloom.model import Transformer
    from omniloom.train.dpo import DPOStep

    path = _pair_shards(tmp_path / "sh")
    s = ShardSet.open(path)
    vocab = Vocab.load(s.vocab_path())
    torch.manual_seed(0)
    model = Transformer(_model_cfg(vocab))
    reference = copy.deepcopy(model).requires_grad_(False).eval()
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    tc = TrainConfig(steps=30, lr=1e-2, warmup_steps=1, batch_size=4, micro_batch_size=2, dtype=dtype,
                     objective="dpo", dpo_beta=0.5, progress=False)
    step = DPOStep(model, reference, tc, vocab=vocab)
    loader = PairLoader(s, 40, 4, 2, seed=0)
    evals = PairLoader(s, 40, 4, 2, shuffle=False)
    assert (_logratios(model, reference, evals) == 0).all()
    first = step(loader.next_batch())
    # policy == reference at step 1: every reward is 0, the loss is log 2
    assert first["dpo/margin"] == 0.0 and first["dpo/accuracy"] == 0.0
    assert abs(first["dpo/loss"] - math.log(2)) < 1e-6 and first["pairs"] >= 4
    for _ in range(tc.steps - 1):
        last = step(loader.next_batch())
    gain = _logratios(model, reference, evals)
    assert gain.mean() > 2.0 and (gain > 0).float().mean() > 0.9, gain
    assert last["dpo/accuracy"] > 0.9 and last["dpo/margin"] > 0.5 and last["dpo/loss"] < first["dpo/loss"]
    for k, v in reference.state_dict().items():
        assert torch.equal(v, before[k]), k  # the reference stays bit-identical
    ev = step.eval_pairs([mb for b in range(evals.batches_per_epoch) for mb in evals.batch_at(0, b)])
    assert ev["dpo/accuracy"] == pytest.approx(float((gain > 0).float().mean()), abs=1e-6)
    if dtype == "fp32":  # the step's margin is beta times the independently computed log-ratio
        assert ev["dpo/margin"] == pytest.approx(0.5 * float(gain.mean()), rel=1e-4)


def test_the_sft_term_adds_the_chosen_cross_entropy(tmp_path):
    import copy

    from omniloom.model import Transformer
    from omniloom.train.dpo import DPOStep

    s = ShardSet.open(_pair_shards(tmp_path / "sh"))
    vocab = Vocab.load(s.vocab_path())
    batch = PairLoader(s, 40, 4, 2, seed=0).next_batch()
    grads = []
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        model = Transformer(_model_cfg(vocab))
        tc = TrainConfig(lr=1e-2, warmup_steps=1, dtype="fp32", objective="dpo", dpo_sft_weight=w, grad_clip=0)
        out = DPOStep(model, copy.deepcopy(model).requires_grad_(False), tc, vocab=vocab)(batch)
        assert out["loss"] == pytest.approx(out["dpo/loss"] + w * out["dpo/chosen_nll"])
        grads.append(out["grad_norm"])
    # at step 1 the DPO gradient alone is the log-ratio's; the SFT term adds the likelihood's
    assert grads[1] > grads[0] * 1.5


def test_dpo_span_text_counts_only_the_answers_text_ids(tmp_path):
    """train.dpo_span=text: the log-probabilities sum over the answers' text ids only, so a pair
    that differs only in its non-text ids (say, the audio codes of the same transcript) carries no
    preference, while the SFT term still covers the whole chosen answer."""
    import copy

    from omniloom.model import Transformer
    from omniloom.train.dpo import DPOStep

    vocab = Vocab.build(text_size=TEXT)
    rng = np.random.default_rng(3)
    with ShardWriter(tmp_path / "sh", vocab, shard_tokens=300, meta={"pairs": True, "mode": "sft"}) as w:
        for i in range(48):
            prompt = [vocab.bos_ids[0]] + rng.integers(0, TEXT, 5).tolist()
            said = rng.integers(0, TEXT, 2).tolist()
            codes = lambda: rng.integers(TEXT, vocab.size, 4).tolist()  # noqa: E731 (non-text ids)
            other = said if i % 2 else rng.integers(0, TEXT, 2).tolist()  # odd pairs: the same words
            mask = [0] * len(prompt) + [1] * 6
            w.add_pair((prompt + said + codes(), mask), (prompt + other + codes(), mask))
    s = ShardSet.open(tmp_path / "sh")
    evals = PairLoader(s, 40, 4, 2, shuffle=False)
    batches = [mb for b in range(evals.batches_per_epoch) for mb in evals.batch_at(0, b)]

    def text_logratio(m, mb):  # independently of the step: log p of the text targets per answer
        logits = m(mb["ids"], positions=mb["positions"], doc_ids=mb["doc_ids"]).float()
        lp = logits.log_softmax(-1).gather(-1, mb["targets"][..., None])[..., 0]
        sel = mb["loss_mask"] & (mb["targets"] < TEXT)
        lp = torch.zeros(2 * int(mb["pairs"])).index_add(0, mb["seq_ids"][sel], lp[sel]).view(-1, 2)
        return lp[:, 0] - lp[:, 1]

    torch.manual_seed(0)
    model = Transformer(_model_cfg(vocab))
    reference = copy.deepcopy(model).requires_grad_(False).eval()
    margins = {}
    for span in ("text", "answer"):
        tc = TrainConfig(steps=20, lr=1e-2, warmup_steps=1, batch_size=4, micro_batch_size=2, dtype="fp32",
                         objective="dpo", dpo_beta=0.5, dpo_span=span, progress=False)
        m = copy.deepcopy(model)
        step = DPOStep(m, reference, tc, vocab=vocab)
        loader = PairLoader(s, 40, 4, 2, seed=0)
        for _ in range(tc.steps):
            step(loader.next_batch())
        ev = step.eval_pairs(batches)
        with torch.no_grad():
            gain = torch.cat([text_logratio(m, mb) - text_logratio(reference, mb) for mb in batches])
        if span == "text":
            assert ev["dpo/margin"] == pytest.approx(0.5 * float(gain.mean()), rel=1e-4)
            # pairs with the same words have no text log-ratio at all, under any weights
            same = torch.cat([text_logratio(m, mb) for mb in batches]).abs() < 1e-6
            assert 0.3 < float(same.float().mean()) < 0.7
        margins[span] = ev["dpo/margin"]
    assert margins["text"] != pytest.approx(margins["answer"], rel=1e-3)
    with pytest.raises(ValueError, match="train.dpo_span=text needs the vocabulary"):
        DPOStep(model, reference, TrainConfig(objective="dpo", dpo_span="text"), vocab=None)
    with pytest.raises(ValueError, match="train.dpo_span must be one of answer, text"):
        apply_overrides(Config(), ["train.dpo_span=audio"]).validate()


# -- through the trainer ---------------------------------------------------------------------------
TINY = ["model.vocab_size=0", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1",
        "model.ffn_dim=64", "model.max_seq_len=64", "data.seq_len=40", "train.batch_size=4",
        "train.micro_batch_size=2", "train.dtype=fp32", "train.warmup_steps=1", "train.log_every=1",
        "train.progress=false", "train.lr=1e-2", "train.objective=dpo", "train.dpo_beta=0.5"]


def test_train_logs_dpo_metrics_and_validates_on_pairs(tmp_path):
    from omniloom.train.loop import train

    cfg = apply_overrides(Config(), [*TINY, f"data.train={_pair_shards(tmp_path / 'tr')}",
                                     f"data.val={_pair_shards(tmp_path / 'va', n=16, seed=9)}",
                                     "train.steps=8", "train.eval_every=4", "train.ckpt_every=100",
                                     f"train.out_dir={tmp_path / 'run'}"]).validate()
    logs: list[str] = []
    last = train(cfg, log=logs.append)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "dpo/loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert steps[-1]["dpo/accuracy"] > steps[0]["dpo/accuracy"] and steps[-1]["loss"] < steps[0]["loss"]
    evals = [r for r in recs if "eval_dpo/accuracy" in r]
    assert [r["step"] for r in evals] == [4, 8] and evals[-1]["eval_loss"] < math.log(2)
    assert last["eval_dpo/margin"] == evals[-1]["eval_dpo/margin"]
    assert (tmp_path / "run" / "ckpt" / "step_0000008" / "model.safetensors").is_file()


def test_objectives_refuse_data_and_settings_that_do_not_fit(tmp_path):
    from omniloom.train.loop import train

    pairs = _pair_shards(tmp_path / "pairs")
    vocab = Vocab.build(text_size=TEXT)
    rng = np.random.default_rng(0)
    for mode in ("sft", "pretrain"):
        with ShardWriter(tmp_path / mode, vocab, meta={"mode": mode}) as w:
            for _ in range(40):
                w.add(rng.integers(0, TEXT, 20).tolist(), [0] * 5 + [1] * 15)

    def run(data, *extra):
        cfg = apply_overrides(Config(), [*TINY, f"data.train={data}", "train.steps=1",
                                         f"train.out_dir={tmp_path / 'run'}", *extra])
        train(cfg.validate(), log=lambda s: None)

    with pytest.raises(ValueError, match=r"train.objective=dpo needs preference pairs, but data.train=.*sft"):
        run(tmp_path / "sft")
    with pytest.raises(ValueError, match="train.objective=sft: data.train=.* holds preference pairs"):
        run(pairs, "train.objective=sft")
    with pytest.raises(ValueError, match="train.objective=rft: data.train=.* holds preference pairs"):
        run(pairs, "train.objective=rft")
    with pytest.raises(ValueError, match="train.objective=rft .* tokenized with --mode pretrain"):
        run(tmp_path / "pretrain", "train.objective=rft")
    with pytest.raises(ValueError, match=r"train.objective=dpo needs preference pairs, but data.val="):
        run(pairs, f"data.val={tmp_path / 'sft'}")
    run(tmp_path / "sft", "train.objective=rft")  # rft on single answers with an answer-only loss: sft
    assert not (tmp_path / "run" / "metrics.jsonl").read_text().count("dpo/")
    for bad, key in (("train.dpo_beta=0", "train.dpo_beta"), ("train.dpo_beta=-1", "train.dpo_beta"),
                     ("train.dpo_sft_weight=-0.5", "train.dpo_sft_weight"), ("train.objective=ppo", "train.objective")):
        with pytest.raises(ValueError, match=key):
            apply_overrides(Config(), [bad]).validate()


# -- processes: resume, FSDP2 ----------------------------------------------------------------------
def _base_model(root: Path, data: Path) -> Path:
    """A random 'source' model directory to start from (train.init_from)."""
    from safetensors.torch import save_file

    from omniloom.model import Transformer

    vocab = Vocab.load(ShardSet.open(data).vocab_path())
    cfg = Config()
    cfg.model = _model_cfg(vocab)
    torch.manual_seed(5)
    d = root / "base"
    d.mkdir()
    save_file({k: v.detach().clone() for k, v in Transformer(cfg.model).state_dict().items()},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    vocab.save(d / "vocab.json")
    return d


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "omniloom.cli", "train", "--preset", "debug", *extra, *TINY,
            f"data.train={data}", f"train.out_dir={out}"]


def _latest(out: Path) -> Path:
    return out / "ckpt" / (out / "ckpt" / "latest").read_text().strip()


@pytest.mark.slow
def test_a_killed_dpo_run_resumes_to_bit_identical_weights(tmp_path):
    """SIGKILL after a checkpoint, then resume: the weights equal an uninterrupted run's bit for bit.
    The run starts from a model directory with LoRA adapters over a frozen base, so the resumed run
    must rebuild its reference from train.init_from, not from its own checkpoint."""
    from safetensors.torch import load_file

    from test_train_resume import kill_after_first_checkpoint

    data = _pair_shards(tmp_path / "sh", n=64)
    extra = [f"train.init_from={_base_model(tmp_path, data)}", "train.freeze_base=true", "train.lora_rank=4",
             "train.lora_targets=q_proj,down_proj", "train.ckpt_every=3", "train.steps=100000",
             "train.eval_every=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    k = kill_after_first_checkpoint(_cmd(data, killed) + extra, killed, env)
    r = subprocess.run(_cmd(data, killed, "--stop-after", str(k + 3)) + extra, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {killed / 'ckpt' / f'step_{k:07d}'}" in r.stderr
    ref = tmp_path / "ref"
    r = subprocess.run(_cmd(data, ref, "--stop-after", str(k + 3)) + extra, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    a, b = load_file(str(_latest(killed) / "model.safetensors")), load_file(str(_latest(ref) / "model.safetensors"))
    assert _latest(killed).name == _latest(ref).name == f"step_{k + 3:07d}" and sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    recs = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines() if '"dpo/loss"' in x]
    assert recs[-1]["dpo/accuracy"] > 0 and any(k.endswith(".lora_b") and a[k].abs().sum() > 0 for k in a)


@pytest.mark.slow
def test_two_fsdp_ranks_match_one_rank(tmp_path):
    """DPO under torchrun (gloo, FSDP2, reference sharded too): the same losses and metrics as one
    rank at the same global batch (2 ranks x 1 micro-batch vs 1 rank x 2)."""
    from test_train_distributed import TOL, _free_port

    data = _pair_shards(tmp_path / "sh", n=64)
    extra = ["train.steps=4", "train.ckpt_every=100", "train.eval_every=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, launch in (("one", [sys.executable]),
                         ("two", [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                                  "--master-addr", "127.0.0.1", "--master-port", str(_free_port())])):
        out = tmp_path / name
        cmd = launch + _cmd(data, out)[1:] + extra + (["train.micro_batch_size=1"] if name == "two" else [])
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-4000:]
        runs[name] = {x["step"]: x for x in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                      if "dpo/loss" in x}
    assert sorted(runs["two"]) == [1, 2, 3, 4]
    for s, one in runs["one"].items():
        two = runs["two"][s]
        for key in ("loss", "dpo/margin", "dpo/chosen_nll"):
            assert abs(one[key] - two[key]) <= TOL, (s, key, one[key], two[key])
        assert one["dpo/accuracy"] == two["dpo/accuracy"] and one["pairs"] == two["pairs"]
    assert runs["one"][4]["loss"] < runs["one"][1]["loss"]
