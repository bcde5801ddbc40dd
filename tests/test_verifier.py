"""The learned verifier: it learns a separable signal (a shuffled-label control does not), it is saved
and refused on another model, and best-of-N decoding (chat, serve) returns its top-scored candidate."""

import json
import random
from pathlib import Path

import pytest
import torch

from omniloom.cli import main as cli
from omniloom.infer.best_of import Verifier, generate_best_of
from omniloom.infer.candidates import sample_candidates
from omniloom.infer.generate import Done, TextDelta
from omniloom.infer.sampling import SamplingParams
from omniloom.model.verifier import VerifierHead, load_verifier, save_verifier, weights_sha256
from omniloom.train.verifier import judged_features, train_verifier


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from omniloom.serve.tiny import build_tiny_model, save_model

    omni = build_tiny_model()
    return omni, save_model(omni, tmp_path_factory.mktemp("tiny") / "model")


def _judged_lines(omni, prompts=48, k=4, seed=0) -> list[dict]:
    """Text answers of random ids; the good half carry the word ' red' where the bad carry ' blue'."""
    rng = random.Random(seed)
    good_id, bad_id = omni.tok.encode(" red")[0], omni.tok.encode(" blue")[0]
    lines = []
    for p in range(prompts):
        msgs = [{"role": "user", "content": f"question {p}: what color is the star?"}]
        for i in range(k):
            good = i % 2 == 0
            ids = [rng.randrange(50, 250) for _ in range(rng.randrange(3, 8))] + [good_id if good else bad_id] + \
                [rng.randrange(50, 250) for _ in range(3)] + [omni.vocab.end_id]
            lines.append({"id": f"p{p}", "messages": msgs, "output": "text", "voice": None, "answer_ids": ids,
                          "sampling": {"index": i, "n": k}, "score": 1.0 if good else 0.0})
    return lines


@pytest.fixture(scope="module")
def judged(tiny):
    omni, _ = tiny
    lines = _judged_lines(omni)
    return lines, judged_features(omni, lines, Path("."))


@pytest.mark.parametrize("objective", ["pairwise", "pointwise"])
def test_verifier_learns_a_separable_signal_and_the_shuffled_control_does_not(tiny, judged, objective):
    omni, _ = tiny
    lines, data = judged
    _, real = train_verifier(omni, lines, Path("."), objective=objective, data=data)
    _, control = train_verifier(omni, lines, Path("."), objective=objective, shuffle_labels=True, data=data)
    held = real["heldout"]
    assert held["prompts"] == 12 and held["pairs"] == 12 * 4  # prompts held out whole: 2 good x 2 bad each
    assert held["pairwise_accuracy"] >= 0.95 and held["auc"] >= 0.95
    assert held["verifier_pick"] == held["oracle_pick"] == 1.0
    assert control["heldout"]["pairwise_accuracy"] <= 0.75 and control["heldout"]["auc"] <= 0.75
    assert real["train"]["prompts"] + held["prompts"] == len({ln["id"] for ln in lines})


def test_verifier_is_saved_loaded_and_refused_on_another_model(tiny, judged, tmp_path):
    from omniloom.serve.tiny import build_tiny_model, save_model

    omni, model_dir = tiny
    lines, data = judged
    head, report = train_verifier(omni, lines, Path("."), data=data)
    save_verifier(tmp_path / "v", head, {"model": str(model_dir), "model_sha256": weights_sha256(model_dir), **report})
    loaded, meta = load_verifier(tmp_path / "v", model_dir)
    assert meta["heldout"]["pairwise_accuracy"] == report["heldout"]["pairwise_accuracy"]
    with torch.no_grad():
        assert torch.allclose(loaded(data.feats), head(data.feats))
    other = save_model(build_tiny_model(seed=1), tmp_path / "other")
    with pytest.raises(ValueError, match="trained on another model"):
        load_verifier(tmp_path / "v", other)
    with pytest.raises(ValueError, match="not a verifier directory"):
        load_verifier(tmp_path)


def _random_verifier(omni, feats_from, seed=0) -> Verifier:
    torch.manual_seed(seed)
    head = VerifierHead(omni.model.cfg.dim)
    head.set_standardization(feats_from)
    return Verifier(head.eval(), {})


def test_best_of_returns_the_top_scored_candidate(tiny, judged):
    omni, _ = tiny
    verifier = _random_verifier(omni, judged[1].feats)
    msgs = [{"role": "user", "content": "what color is the star?"}]
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, seed=11)
    events = list(generate_best_of(omni, verifier, msgs, 4, "text", None, sampling=sampling))
    done = events[-1]
    assert isinstance(done, Done) and done.best_of["n"] == 4 and len(done.best_of["scores"]) == 4
    # the same seed draws the same candidates: score them here and compare the pick
    prompt, cands, _ = sample_candidates(omni, msgs, 4, "text", sampling=sampling)
    scores = verifier.score(omni, prompt, cands)
    assert [round(s, 4) for s in scores] == done.best_of["scores"]
    assert len(set(c.text for c in cands)) > 1
    best = max(range(4), key=lambda i: scores[i])
    assert done.best_of["chosen"] == best
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == cands[best].text
    assert done.best_of["seconds"] >= done.best_of["sample_s"] > 0
    with pytest.raises(ValueError, match="temperature"):
        list(generate_best_of(omni, verifier, msgs, 2, sampling=SamplingParams(temperature=0.0)))


def test_verifier_cli_train_eval_and_chat_best_of(tiny, tmp_path, capsys):
    omni, model_dir = tiny
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(ln) + "\n" for ln in _judged_lines(omni, prompts=16)))
    vdir = tmp_path / "verifier"
    assert cli(["verifier", "train", "--model", str(model_dir), "--samples", str(samples), "--out", str(vdir),
                "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "heldout" in out and "pair acc" in out
    meta = json.loads((vdir / "verifier.json").read_text())
    assert meta["format"] == "omniloom-verifier" and meta["heldout"]["prompts"] == 4
    assert cli(["verifier", "eval", "--verifier", str(vdir), "--samples", str(samples), "--json",
                str(tmp_path / "e.json"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["samples"]["prompts"] == 16
    assert cli(["chat", "--model", str(model_dir), "--best-of", "3", "--verifier", str(vdir), "--max-new-tokens",
                "6", "--out-dir", str(tmp_path / "chat"), "hello"]) == 0
    assert "best of 3 by the verifier" in capsys.readouterr().err
    assert cli(["chat", "--model", str(model_dir), "--best-of", "3", "hello"]) == 2
    assert "needs a verifier" in capsys.readouterr().err


def test_serve_best_of_extension(tiny, judged):
    import httpx2 as httpx

    from omniloom.serve import ServeSettings, create_app
    from omniloom.serve.testing import serve_in_thread

    omni, _ = tiny
    verifier = _random_verifier(omni, judged[1].feats)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "seed": 5}
    with serve_in_thread(create_app(omni, ServeSettings(model_id="tiny"), verifier)) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "best_of": 3}, timeout=60)
        assert r.status_code == 200, r.text
        info = r.json()["best_of"]
        assert info["n"] == 3 and info["chosen"] == max(range(3), key=lambda i: info["scores"][i])
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
        plain = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
        assert "best_of" not in plain
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "best_of": 2, "temperature": 0}, timeout=60)
        assert r.status_code == 400 and "temperature" in r.text
    with serve_in_thread(create_app(omni, ServeSettings(model_id="tiny"))) as url:
        r = httpx.post(f"{url}/v1/chat/completions", json={**body, "best_of": 2}, timeout=60)
        assert r.status_code == 400 and "--verifier" in r.text
