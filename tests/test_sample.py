"""omniloom sample: K candidates per prompt with media, resume, rewards (callable, file, command, world),
preference pairs and best answers. A tiny random-init model; nothing downloaded."""

import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import pytest
from PIL import Image

from omniloom.cli import main as cli
from omniloom.infer.rewards import load_reward, register_reward
from omniloom.infer.sample_file import (best_lines, code_message, make_pairs, read_prompts, read_samples,
                                        reference_lines, run_sampling, write_best, write_pairs)
from omniloom.infer.sampling import SamplingParams


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from omniloom.serve.tiny import build_tiny_model, save_model

    omni = build_tiny_model()
    return omni, save_model(omni, tmp_path_factory.mktemp("tiny") / "model")


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _photo(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _text_prompts(d: Path) -> Path:
    _photo(d / "in.png")
    return _write(d / "prompts.jsonl", [
        {"id": "a", "messages": [{"role": "user", "content": "what color is the star?"}], "output": "text", "key": 1},
        {"id": "b", "messages": [{"role": "user", "content": [{"type": "image", "path": "in.png"},
                                                              {"type": "text", "text": "describe the image"}]}],
         "output": "text"}])


def test_sample_writes_k_candidates_with_media(tiny, tmp_path, capsys):
    omni, model_dir = tiny
    res = omni.codecs["image"].resolution
    _photo(tmp_path / "in.png")
    prompts = _write(tmp_path / "prompts.jsonl", [
        {"id": "t", "messages": [{"role": "user", "content": "how many shapes are there?"}], "output": "text"},
        {"id": "i", "messages": [{"role": "user", "content": [{"type": "image", "path": "in.png"},
                                                              {"type": "text", "text": "draw a small blue square"}]}],
         "output": "image", "truth": {"x": 1}},
        # a data set line: its assistant turn is the reference, and its medium (speech, voice atlas) the output
        {"id": "s", "messages": [{"role": "user", "content": "say hello world"},
                                 {"role": "assistant", "content": [{"type": "audio", "path": "ref.wav",
                                                                    "voice": "atlas", "transcript": "hello world"}]}]},
    ])
    out = tmp_path / "run" / "samples.jsonl"
    assert cli(["sample", "--model", str(model_dir), "--input", str(prompts), "--n", "3", "--out", str(out),
                "--max-new-tokens", "70", "--temperature", "0.9", "--top-p", "0.95", "--no-progress"]) == 0
    lines = read_samples(out)
    assert [ln["id"] for ln in lines] == ["t"] * 3 + ["i"] * 3 + ["s"] * 3
    for ln in lines:
        s = ln["sampling"]
        assert s["n"] == 3 and s["temperature"] == 0.9 and s["top_p"] == 0.95 and s["latency_s"] > 0
        assert ln["candidate"]["role"] == "assistant" and ln["answer_ids"]
    for pid in "tis":
        group = [ln for ln in lines if ln["id"] == pid]
        assert [ln["sampling"]["index"] for ln in group] == [0, 1, 2]
        assert len({ln["sampling"]["seed"] for ln in group}) == 3  # each candidate its own seed
    for ln in lines[3:6]:  # image answers: a PNG next to the JSONL, named relative to it
        assert ln["output"] == "image" and ln["meta"] == {"truth": {"x": 1}}
        img = ln["candidate"]["content"][0]
        assert img["type"] == "image" and not Path(img["path"]).is_absolute()
        assert Image.open(out.parent / img["path"]).size == (res, res)
        shown = ln["messages"][0]["content"][0]["path"]  # the prompt's photo, re-pointed from the new place
        assert (out.parent / shown).resolve() == (tmp_path / "in.png").resolve()
    for ln in lines[6:]:  # speech answers in the reference's voice, the reference kept aside
        assert ln["output"] == "audio" and ln["voice"] == "atlas"
        assert ln["reference"]["content"][0]["transcript"] == "hello world"
        part = ln["candidate"]["content"][0]
        assert part["type"] == "audio" and part["voice"] == "atlas"
        assert (out.parent / part["path"]).stat().st_size > 44  # a WAV with samples
    assert len({ln["answer_ids"][0] for ln in lines[6:]} | {tuple(ln["answer_ids"]) for ln in lines[:3]}) > 1
    # rescored (no new samples) by the candidate's index; pairs and best answers as the sampled codes
    (tmp_path / "by_index.py").write_text("def score(rec):\n    return rec['sampling']['index']\n")
    assert cli(["sample", "--model", str(model_dir), "--input", str(prompts), "--n", "3", "--out", str(out),
                "--reward", f"{tmp_path / 'by_index.py'}:score", "--pairs", str(tmp_path / "pairs.jsonl"),
                "--best", str(tmp_path / "best.jsonl"), "--answers-as", "codes", "--no-progress"]) == 0
    pairs = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [(p["id"], p["score_chosen"], p["score_rejected"]) for p in pairs] == [(i, 2, 0) for i in "tis"]
    drawn = pairs[1]["chosen"][0]["content"][0]
    lo = omni.vocab.range_of("image")[0]
    assert drawn["type"] == "image_codes" and [c + lo for c in drawn["codes"]] == lines[5]["answer_ids"][:64]
    spoken = pairs[2]["rejected"][0]["content"][0]
    assert spoken["type"] == "audio_codes" and spoken["voice"] == "atlas"
    best = [json.loads(x) for x in (tmp_path / "best.jsonl").read_text().splitlines()]
    assert [b["messages"][-1]["role"] for b in best] == ["assistant"] * 3
    # both files are what tokenize reads: the pairs as preference pairs, the best answers as messages
    assert cli(["tokenize", "--input", str(tmp_path / "pairs.jsonl"), "--model", str(model_dir), "--out",
                str(tmp_path / "pair_shards"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "pair_shards" / "train" / "manifest.json").read_text())["pairs"] is True
    assert cli(["tokenize", "--input", str(tmp_path / "best.jsonl"), "--model", str(model_dir), "--out",
                str(tmp_path / "best_shards"), "--no-progress"]) == 0
    # --with-reference: s's reference (index -1, so scored -1 here) joins its ranking and is the worst
    capsys.readouterr()
    assert cli(["sample", "--model", str(model_dir), "--input", str(prompts), "--n", "3", "--out", str(out),
                "--reward", f"{tmp_path / 'by_index.py'}:score", "--pairs", str(tmp_path / "pairs_ref.jsonl"),
                "--with-reference", "--no-progress"]) != 0  # it is encoded, so its file must exist
    assert "sample 's': its reference answer cannot be encoded" in capsys.readouterr().err
    sr = omni.codecs["audio"].sample_rate
    sf.write(tmp_path / "ref.wav", 0.3 * np.sin(np.arange(sr) * 2 * np.pi * 220 / sr), sr)
    assert cli(["sample", "--model", str(model_dir), "--input", str(prompts), "--n", "3", "--out", str(out),
                "--reward", f"{tmp_path / 'by_index.py'}:score", "--pairs", str(tmp_path / "pairs_ref.jsonl"),
                "--with-reference", "--answers-as", "codes", "--no-progress"]) == 0
    pairs = [json.loads(x) for x in (tmp_path / "pairs_ref.jsonl").read_text().splitlines()]
    assert [(p["id"], p["score_chosen"], p["score_rejected"]) for p in pairs] == [("t", 2, 0), ("i", 2, 0),
                                                                                 ("s", 2, -1), ("s", 1, 0)]
    # the reference as the model would write it: the codec's codes of ref.wav (its round trip judged,
    # written under samples_media as c-1.wav), so the pair holds codes on both sides
    ref_codes = pairs[2]["rejected"][0]["content"][0]
    encoded = omni.processor.to_code_messages([{"role": "assistant", "content": [
        {"type": "audio", "path": "ref.wav", "voice": "atlas", "transcript": "hello world"}]}], tmp_path)
    want = encoded[0]["content"][0]
    assert ref_codes["type"] == "audio_codes" and ref_codes["voice"] == "atlas"
    assert ref_codes["transcript"] == "hello world" and ref_codes["codes"] == [list(f) for f in want["codes"]]
    assert (out.parent / "samples_media" / "s" / "c-1.wav").stat().st_size > 44
    capsys.readouterr()
    assert cli(["sample", "--model", str(model_dir), "--input", str(prompts), "--n", "3", "--out", str(out),
                "--reward", f"{tmp_path / 'by_index.py'}:score", "--with-reference", "--no-progress"]) != 0
    assert "--with-reference ranks the reference answers for --pairs and --best" in capsys.readouterr().err


def test_resume_skips_done_prompts_and_redoes_partial_ones(tiny, tmp_path, monkeypatch):
    omni, _ = tiny
    prompts = _text_prompts(tmp_path)
    out = tmp_path / "samples.jsonl"
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3)
    calls = []
    import omniloom.infer.sample_file as sf

    real = sf.sample_candidates
    monkeypatch.setattr(sf, "sample_candidates", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    rep = run_sampling(omni, prompts, out, 2, params, progress=False)
    assert rep.sampled == 2 and len(calls) == 2
    first = out.read_bytes()
    rep = run_sampling(omni, prompts, out, 2, params, progress=False)
    assert rep.skipped == 2 and rep.sampled == 0 and len(calls) == 2 and out.read_bytes() == first
    # a kill: prompt b has only one of its lines, and a half-written line trails
    lines = first.decode().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])
    rep = run_sampling(omni, prompts, out, 2, params, progress=False)
    assert rep.skipped == 1 and rep.redone == 1 and len(calls) == 3
    again = read_samples(out)
    before = [json.loads(x) for x in lines]
    assert [ln["id"] for ln in again] == ["a", "a", "b", "b"]
    assert out.read_text().startswith("".join(lines[:2]))  # prompt a untouched
    # prompt b drawn again identically: its seeds come from the run seed and its id
    assert [(ln["sampling"]["seed"], ln["answer_ids"]) for ln in again[2:]] == \
        [(ln["sampling"]["seed"], ln["answer_ids"]) for ln in before[2:]]
    with pytest.raises(ValueError, match="--n 2"):
        run_sampling(omni, prompts, out, 3, params, progress=False)


def test_callable_file_module_and_command_rewards_score(tiny, tmp_path, monkeypatch):
    omni, _ = tiny
    prompts = _text_prompts(tmp_path)
    (tmp_path / "myreward.py").write_text(
        "from pathlib import Path\n"
        "def n_ids(rec):\n"
        "    for m in rec['messages']:\n"
        "        for p in m['content'] if isinstance(m['content'], list) else []:\n"
        "            assert 'path' not in p or Path(p['path']).is_file(), p  # media paths arrive absolute\n"
        "    return len(rec['answer_ids']) + rec['meta'].get('key', 0)\n")
    (tmp_path / "judge.py").write_text("import json, sys\nr = json.loads(sys.stdin.readline())\n"
                                       "print('judging...')\nprint(len(r['answer_ids']) + r['meta'].get('key', 0))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=1)
    out = tmp_path / "s.jsonl"
    run_sampling(omni, prompts, out, 2, params, progress=False)  # no reward yet
    assert all("score" not in ln for ln in read_samples(out))
    expect = None
    for spec in (f"{tmp_path / 'myreward.py'}:n_ids", "myreward:n_ids", f"cmd:{sys.executable} judge.py"):
        monkeypatch.chdir(tmp_path)
        rep = run_sampling(omni, prompts, out, 2, params, reward=load_reward(spec), progress=False)
        assert rep.rescored == 4 and rep.sampled == 0
        lines = read_samples(out)
        got = [ln["score"] for ln in lines]
        assert got == [len(ln["answer_ids"]) + (1 if ln["id"] == "a" else 0) for ln in lines]
        assert all(ln["reward"] == spec for ln in lines)
        expect = expect or got
        assert got == expect
    bad = load_reward(f"cmd:{sys.executable} -c 'import sys; sys.exit(3)'")
    with pytest.raises(ValueError, match="exit 3"):
        bad({"id": "x"})
    register_reward("words", lambda: (lambda rec: "many"))
    with pytest.raises(ValueError, match="not a number"):
        load_reward("words")({"id": "x"})
    with pytest.raises(ValueError, match="unknown reward"):
        load_reward("nosuchreward")


def _line(pid, index, score, tmp):
    return {"id": pid, "messages": [{"role": "user", "content": [{"type": "image", "path": "in.png"}]}],
            "candidate": {"role": "assistant", "content": [{"type": "image", "path": f"m/{pid}/c{index}.png"}]},
            "sampling": {"index": index, "n": 5}, "score": score}


def test_pairs_and_best_follow_the_documented_rule(tmp_path):
    lines = [_line("p", i, s, tmp_path) for i, s in enumerate([0.0, 1.0, 0.5, 1.0, 0.0])]
    lines += [_line("q", i, 1.0, tmp_path) for i in range(5)]  # all alike: no pair
    pairs = make_pairs(lines)
    # ranked p: c1 (1), c3 (1), c2 (0.5), c0 (0), c4 (0): best vs worst, second vs second worst
    assert [(c["sampling"]["index"], r["sampling"]["index"]) for c, r in pairs] == [(1, 4), (3, 0)]
    assert [(c["sampling"]["index"], r["sampling"]["index"]) for c, r in make_pairs(lines, margin=0.6)] == [(1, 4), (3, 0)]
    assert len(make_pairs(lines, max_pairs=1)) == 1 and make_pairs(lines, margin=1.0) == []
    samples_dir = tmp_path / "run"
    k = write_pairs(tmp_path / "out" / "pairs.jsonl", pairs, samples_dir)
    rows = [json.loads(x) for x in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert k == 2 and set(rows[0]) >= {"prompt", "chosen", "rejected"}
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["chosen"][0]["role"] == "assistant"
    assert rows[0]["chosen"][0]["content"][0]["path"] == "../run/m/p/c1.png"  # relative to pairs.jsonl
    assert rows[0]["prompt"][0]["content"][0]["path"] == "../run/in.png"
    best = best_lines(lines)
    assert [(b["id"], b["sampling"]["index"]) for b in best] == [("p", 1), ("q", 0)]
    write_best(samples_dir / "best.jsonl", best_lines(lines, min_score=1.0), samples_dir)
    rows = [json.loads(x) for x in (samples_dir / "best.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"][0]["path"] for r in rows] == ["m/p/c1.png", "m/q/c0.png"]
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    with pytest.raises(ValueError, match="no score"):
        make_pairs([{k: v for k, v in lines[0].items() if k != "score"}])


def test_reference_answers_join_the_ranking(tmp_path):
    class Judge:  # scores a reference (index -1) by its path, so the test knows what it gets
        spec = "judge"

        def __call__(self, rec):
            return 1.0 if rec["candidate"]["content"][0]["path"].endswith("good.png") else 0.0

    def ref(name):
        return {"role": "assistant", "content": [{"type": "image", "path": f"data/{name}.png"}]}

    lines = [{**_line("p", i, 0.0, tmp_path), "reference": ref("good")} for i in range(3)]  # all wrong
    lines += [{**_line("q", i, s, tmp_path), "reference": ref("good")} for i, s in enumerate([1.0, 0.0])]
    lines += [{**_line("r", 0, 0.0, tmp_path), "reference": ref("bad")}]  # a reference the judge rejects
    lines += [_line("s", 0, 0.0, tmp_path)]  # no reference
    refs = reference_lines(lines, Judge(), tmp_path)
    assert [(r["id"], r["score"], r["sampling"]["index"]) for r in refs] == [("p", 1.0, -1), ("q", 1.0, -1),
                                                                            ("r", 0.0, -1)]
    assert make_pairs(lines) == [(lines[3], lines[4])]  # without references, p (all wrong) gives nothing
    pairs = make_pairs(lines + refs)
    got = [(c["id"], c["sampling"]["index"], r["sampling"]["index"]) for c, r in pairs]
    # p: the reference against the worst (ties: the highest index); q: the reference outranks c0 on
    # the tie, so it takes c1 and c0 is left unpaired; r, s: no gap
    assert got == [("p", -1, 2), ("q", -1, 1)]
    assert code_message(None, refs[0]) is refs[0]["candidate"]  # written as given, to be encoded
    write_pairs(tmp_path / "pairs.jsonl", pairs, tmp_path, lambda ln: code_message(None, ln))
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert rows[0]["chosen"][0]["content"][0]["path"] == "data/good.png" and rows[0]["score_chosen"] == 1.0
    assert [(b["id"], b["sampling"]["index"]) for b in best_lines(lines + refs, min_score=1.0)] == [("p", -1),
                                                                                                   ("q", -1)]
    # a reference coded to the very ids a candidate sampled is no preference, whatever the scores say
    same = [{**_line("u", 0, 0.0, tmp_path), "answer_ids": [5, 6, 7]},
            {**_line("u", -1, 1.0, tmp_path), "answer_ids": [5, 6, 7]}]
    assert make_pairs(same) == [] and make_pairs([same[0], {**same[1], "answer_ids": [5, 6, 8]}]) != []


def test_judged_references_are_kept_for_the_next_call(tmp_path):
    calls = []

    class Judge:
        def __init__(self, spec):
            self.spec = spec

        def __call__(self, rec):
            calls.append(rec["id"])
            return 1.0 if rec["candidate"]["content"][0]["path"].endswith("good.png") else 0.0

    def ref(name):
        return {"role": "assistant", "content": [{"type": "image", "path": f"data/{name}.png"}]}

    lines = [{**_line("p", 0, 0.0, tmp_path), "reference": ref("good")},
             {**_line("q", 0, 0.0, tmp_path), "reference": ref("good")},
             {**_line("r", 0, 0.0, tmp_path), "reference": ref("bad")}]
    cache = tmp_path / "samples.references.jsonl"
    first = reference_lines(lines, Judge("a"), tmp_path, cache=cache)
    assert calls == ["p", "q", "r"] and len(cache.read_text().splitlines()) == 3
    calls.clear()
    again = reference_lines(lines, Judge("a"), tmp_path, cache=cache)
    assert calls == [] and again == first  # all taken back, the same lines
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "good.png").write_bytes(b"new")  # p's and q's reference file changed
    assert [r["score"] for r in reference_lines(lines, Judge("a"), tmp_path, cache=cache)] == [1.0, 1.0, 0.0]
    assert calls == ["p", "q"]
    assert len(cache.read_text().splitlines()) == 3  # the stale lines are gone
    calls.clear()
    reference_lines(lines, Judge("b"), tmp_path, cache=cache)  # another reward judges them all again
    assert calls == ["p", "q", "r"]
    calls.clear()
    moved = [{**lines[0], "meta": {"truth": "other"}}] + lines[1:]  # p's metadata (what a judge reads) changed
    reference_lines(moved, Judge("b"), tmp_path, cache=cache)
    assert calls == ["p"]
    calls.clear()
    reference_lines(moved[:1], Judge("b"), tmp_path, cache=cache)
    assert calls == [] and len(cache.read_text().splitlines()) == 1  # only this call's references stay


def test_prompt_errors_name_the_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"nope": 1}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2"):
        read_prompts(bad)
    bad.write_text('{"id": 1, "messages": [{"role": "user", "content": "hi"}]}\n'
                   '{"id": 1, "messages": [{"role": "user", "content": "ho"}]}\n')
    with pytest.raises(ValueError, match="already used on line 1"):
        read_prompts(bad)
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}], "output": "video"}\n')
    with pytest.raises(ValueError, match="output must be"):
        read_prompts(bad)


def test_world_reward_judges_like_eval(tmp_path):
    from omniloom.eval.world_reward import world_reward
    from omniloom.infer.sample_file import absolute_paths
    from omniloom.world.generate import generate

    path = generate(tmp_path / "w", "test", 4, seed=5, tasks=["draw", "math"], workers=1, progress=False)
    prompts = read_prompts(path)
    assert sorted((p.meta["task"], p.output) for p in prompts) == [("draw", "image")] * 2 + [("math", "text")] * 2
    judged = []
    for p in prompts:
        rec = {"id": p.id, "messages": p.messages, "meta": p.meta}
        right = world_reward({**rec, "candidate": p.reference})
        other = [q for q in prompts if q.output == p.output and q is not p][0]
        wrong = world_reward({**rec, "candidate": other.reference})
        blank = world_reward({**rec, "candidate": {"role": "assistant", "content": ""}})
        judged.append((p.meta["task"], right, wrong, blank))
    assert all(r == 1.0 and b == 0.0 for _, r, _, b in judged), judged
    assert any(w == 0.0 for _, _, w, _ in judged), judged
    assert absolute_paths([prompts[0].reference], tmp_path)[0] == prompts[0].reference  # already absolute
    with pytest.raises(ValueError, match="task"):
        world_reward({"id": "x", "meta": {}, "candidate": {"role": "assistant", "content": "ten"}})
