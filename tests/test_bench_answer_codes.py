"""bench/answer_codes.py: the shared-codes and round-trip figures of docs/preference.md, on answers
whose codes are known (the truth's own codes, and another scene's)."""

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("answer_codes", ROOT / "bench" / "answer_codes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_answer_codes_counts_the_truths_codes(tmp_path, capsys):
    from omniloom.infer.generate import OmniModel
    from omniloom.infer.sample_file import read_prompts
    from omniloom.utils.media import load_image
    from omniloom.world.generate import generate

    path = generate(tmp_path / "w", "test", 2, seed=5, tasks=["draw"], workers=1, progress=False)
    prompts = read_prompts(path)
    omni = OmniModel.load("world")
    codec, lo = omni.codecs["image"], omni.vocab.range_of("image")[0]

    def truth_codes(p):
        return codec.encode(load_image(p.reference["content"][0]["path"], codec.resolution)[None])[0]

    a, b = truth_codes(prompts[0]), truth_codes(prompts[1])
    assert not torch.equal(a, b)
    lines = [  # prompt 0 answered with its own truth's codes (right), then with prompt 1's (wrong)
        {"id": prompts[0].id, "messages": prompts[0].messages, "reference": prompts[0].reference, "output": "image",
         "sampling": {"index": i, "n": 2}, "answer_ids": (codes + lo).tolist(), "meta": prompts[0].meta,
         "score": score} for i, (codes, score) in enumerate(((a, 1.0), (b, 0.0)))]
    samples = tmp_path / "s" / "samples.jsonl"
    samples.parent.mkdir()
    samples.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    assert _bench().main(["--samples", str(samples), "--json", str(tmp_path / "out.json")]) == 0
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["shared_codes_right"] == 1.0 and got["n_right"] == 1
    assert got["shared_codes_wrong"] == (a == b).float().mean().item() < 1.0 and got["n_wrong"] == 1
    assert got["round_trip_right"] == 1.0  # this truth survives the codec (0.98 of them do)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("round_trip=1.000 shared_right=1.0")
