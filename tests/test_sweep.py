"""Scaling-law sweeps: the power-law fit, size syntax, per-modality losses and the `sweep` verb."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omniloom.cli import main
from omniloom.data.shards import ShardWriter
from omniloom.tokens.vocab import Vocab
from omniloom.train.scaling import bootstrap_power_law, fit_power_law
from omniloom.train.sweep import parse_count, parse_sizes, read_run, shape_for, sweep

N = np.array([3e4, 8e4, 2e5, 6e5, 1.5e6, 4e6])


# -- the fit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,n_c,l_inf", [(0.076, 8.8e13, 1.7), (0.35, 2e5, 2.0), (0.9, 1e5, 0.5)])
def test_fit_recovers_known_parameters(alpha, n_c, l_inf):
    y = (n_c / N) ** alpha + l_inf
    f = fit_power_law(N, y)
    assert f.alpha == pytest.approx(alpha, rel=0.01)
    assert f.l_inf == pytest.approx(l_inf, abs=0.02)
    assert np.log(f.x_c) == pytest.approx(np.log(n_c), rel=0.02)
    assert np.allclose(f.predict(N), y, atol=1e-3)


def test_fit_without_floor_is_a_pure_power_law():
    y = (8.8e13 / N) ** 0.076 + 1.0  # a floor the pure fit may not use
    pure = fit_power_law(N, (8.8e13 / N) ** 0.076, floor=False)
    assert pure.l_inf == 0 and pure.alpha == pytest.approx(0.076, rel=0.01)
    forced = fit_power_law(N, y, floor=False)
    assert forced.l_inf == 0 and forced.alpha < 0.076  # the floor shows up as a flatter exponent
    assert forced.rmse > fit_power_law(N, y).rmse


def test_fit_with_noise_and_bootstrap_brackets_the_truth():
    rng = np.random.default_rng(3)
    y = (3e5 / N) ** 0.3 + 2.5 + rng.normal(0, 0.004, N.size)
    r = bootstrap_power_law(N, y, n_boot=200, seed=1)
    assert r["alpha"] == pytest.approx(0.3, abs=0.05)
    assert r["l_inf"] == pytest.approx(2.5, abs=0.1)
    assert r["bootstrap_samples"] > 100
    assert 0 < r["alpha_std"] < 0.2
    assert r["alpha_p16"] <= r["alpha"] <= r["alpha_p84"]


def test_fit_refuses_too_few_points_and_reports_no_decrease():
    with pytest.raises(ValueError, match="at least 3 distinct"):
        fit_power_law([1e5, 1e6, 1e6], [3.0, 2.0, 2.1])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([0, 1e5, 1e6], [3.0, 2.0, 1.0])
    flat = fit_power_law(N, 3.0 + 1e-8 * N)  # loss rising with N: no power law
    assert flat.alpha != flat.alpha and flat.to_dict()["alpha"] is None
    assert flat.l_inf == pytest.approx(3.0 + 1e-8 * N.mean())


# -- sizes ------------------------------------------------------------------------------------


def test_size_syntax():
    assert parse_count("300k") == 3e5 and parse_count("1.5M") == 1.5e6 and parse_count("3e6") == 3e6
    assert parse_count("12x3") is None and parse_count("big") is None
    sizes = parse_sizes("1.5M,64x2,debug,50k")
    assert [s.spec for s in sizes] == ["50k", "64x2", "debug", "1.5M"]  # sorted by N
    n = [s.non_embedding_params() for s in sizes]
    assert n == sorted(n)
    assert abs(np.log(n[0] / 5e4)) < 0.3 and abs(np.log(n[-1] / 1.5e6)) < 0.3
    s = sizes[1]
    assert (s.dim, s.n_layers, s.n_heads, s.n_kv_heads) == (64, 2, 2, 1) and s.label == "d64-l2"
    assert (sizes[2].dim, sizes[2].n_layers, sizes[2].ffn_dim) == (128, 3, 352)  # the debug preset's shape
    assert shape_for(48, 1).n_heads == 3  # 48 is not a multiple of 32: heads of 16


@pytest.mark.parametrize("text,msg", [("50k,huge", "unknown size 'huge'"), ("64x2,64x2", "same shape"),
                                      ("40x2", "multiple of 16"), ("500", "at least 1k"), ("", "empty")])
def test_size_errors(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_sizes(text)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["sweep", "--sizes", "16x1,32x1", "--tokens", "1k", "--out", str(tmp_path / "s")]) == 2
    assert "at least 3 model sizes" in capsys.readouterr().err
    assert main(["sweep", "--sizes", "16x1,32x1,foo", "--tokens", "1k", "--out", str(tmp_path / "s")]) == 2
    assert "unknown size 'foo'" in capsys.readouterr().err
    assert main(["sweep", "--sizes", "16x1,32x1,48x1", "--tokens", "many", "--out", str(tmp_path / "s")]) == 2
    assert "--tokens 'many'" in capsys.readouterr().err
    assert main(["sweep", "--runs", str(tmp_path), str(tmp_path), str(tmp_path), "--out", str(tmp_path / "s")]) == 2
    assert "not a training run directory" in capsys.readouterr().err
    assert main(["sweep", "--sizes", "16x1,32x1,48x1", "--tokens", "1k", "--out", str(tmp_path / "s"),
                 "model.dim=64"]) == 2
    assert "set by --sizes" in capsys.readouterr().err


# -- end to end -------------------------------------------------------------------------------


def make_mixed_shards(root: Path, n_train: int = 160, n_val: int = 21) -> Path:
    """Documents of text, image and audio ids with learnable patterns, every target in the loss."""
    vocab = Vocab.build(text_size=60, image_codebook_size=16, image_tokens=8, audio_codebook_size=16,
                        audio_codebooks=2)
    img0, _ = vocab.range_of("image")
    aud0, _ = vocab.range_of("audio")
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        with ShardWriter(root / split, vocab, shard_tokens=4000) as w:
            for _ in range(n):
                a = int(rng.integers(0, 16))
                ids = [(a + 2 * k) % 60 for k in range(10)] + [img0 + (a + k) % 16 for k in range(8)] \
                    + [aud0 + (a + k) % 16 + 16 * (k % 2) for k in range(8)]
                w.add(ids, [1] * len(ids))
    return root


TINY = ["data.seq_len=32", "train.batch_size=4", "train.micro_batch_size=4", "train.dtype=fp32",
        "train.warmup_steps=2", "train.lr=1e-2", "train.eval_batches=100"]


@pytest.mark.slow
def test_tiny_sweep_trains_fits_plots_and_reads_back(tmp_path):
    data = make_mixed_shards(tmp_path / "data")
    out = tmp_path / "sweep"
    said: list[str] = []
    fits = sweep(out, sizes=parse_sizes("16x1,32x1,64x2"), tokens=30 * 4 * 32, data=str(data), overrides=TINY,
                 n_boot=30, progress=False, say=said.append)
    assert (out / "scaling_N.png").stat().st_size > 5000 and (out / "scaling_D.png").stat().st_size > 5000
    on_disk = json.loads((out / "fits.json").read_text())
    assert on_disk["modalities"] == ["all", "text", "image", "audio"] == fits["modalities"]
    pts = on_disk["points"]
    assert [p["label"] for p in pts] == ["d16-l1", "d32-l1", "d64-l2"]
    assert all(p["steps"] == 30 and p["tokens"] == 30 * 4 * 32 for p in pts)
    assert [p["params_non_embedding"] for p in pts] == sorted({p["params_non_embedding"] for p in pts})
    for p in pts:  # the split is a split: token-weighted modality losses give the overall loss
        mods = ["text", "image", "audio", "special"]
        total = sum(p["loss"][m] * p["loss_tokens"][m] for m in mods if m in p["loss"])
        assert total / p["loss_tokens"]["all"] == pytest.approx(p["loss"]["all"], rel=1e-9)
        # the whole validation set (21 x 26 tokens = 16 rows of 33) is what the trainer's last eval saw too
        evals = [json.loads(x) for x in (Path(p["run"]) / "metrics.jsonl").read_text().splitlines()]
        last_eval = [r["eval_loss"] for r in evals if "eval_loss" in r][-1]
        assert p["loss"]["all"] == pytest.approx(last_eval, rel=1e-4)
    assert pts[-1]["loss"]["all"] < pts[0]["loss"]["all"]  # the biggest model learned more in 30 steps
    for m in fits["modalities"]:
        f = on_disk["L_N"][m]
        assert "error" in f or f["n_points"] == 3
        assert on_disk["L_N_no_floor"][m].get("l_inf", 0) == 0
    assert set(on_disk["L_D"]) == {"d16-l1", "d32-l1", "d64-l2"}
    curve = on_disk["curves"]["d64-l2"]["text"]
    assert len(curve) >= 5 and all(d > 2 * 4 * 32 for d, _ in curve)  # after warm-up
    assert "alpha" in on_disk["L_D"]["d64-l2"]["all"]

    # the same command again reads the finished runs: nothing is retrained
    before = {p["label"]: (Path(p["run"]) / "metrics.jsonl").read_text() for p in pts}
    said.clear()
    again = sweep(out, sizes=parse_sizes("16x1,32x1,64x2"), tokens=30 * 4 * 32, data=str(data), overrides=TINY,
                  n_boot=30, progress=False, say=said.append)
    assert any("finished (30 steps), reading it" in s for s in said)
    assert {p["label"]: (Path(p["run"]) / "metrics.jsonl").read_text() for p in pts} == before
    assert [p["loss"] for p in again["points"]] == [p["loss"] for p in pts]

    # --runs reads them as finished runs, in any order
    read = sweep(tmp_path / "read", runs=[p["run"] for p in reversed(pts)], n_boot=30, progress=False,
                 say=said.append)
    assert [p["loss"] for p in read["points"]] == [p["loss"] for p in pts]

    # other settings in an existing run directory are refused, not mixed in
    with pytest.raises(ValueError, match="other settings: train.lr"):
        sweep(out, sizes=parse_sizes("16x1,32x1,64x2"), tokens=30 * 4 * 32, data=str(data),
              overrides=TINY + ["train.lr=5e-3"], progress=False, say=said.append)


@pytest.mark.slow
def test_interrupted_run_resumes_and_unfinished_runs_are_refused(tmp_path):
    from omniloom.train.loop import train
    from omniloom.train.sweep import ladder_config

    data = make_mixed_shards(tmp_path / "data", n_train=80, n_val=12)
    out = tmp_path / "sweep"
    sizes = parse_sizes("16x1,32x1,48x1")
    cfg = ladder_config(sizes[0], 20 * 4 * 32, out, overrides=TINY, data=str(data))
    train(cfg, stop_after=10, log=lambda s: None)  # a ladder killed half-way through its first run
    with pytest.raises(ValueError, match=r"not finished \(checkpoint at step 10 of 20\)"):
        read_run(out / "d16-l1")
    said: list[str] = []
    sweep(out, sizes=sizes, tokens=20 * 4 * 32, data=str(data), overrides=TINY, n_boot=10, progress=False,
          say=said.append)
    assert any("d16-l1: training" in s and "resuming at step 10" in s for s in said)
    recs = [json.loads(x) for x in (out / "d16-l1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r and r["step"] > 10][-1] == 20
    assert (out / "d16-l1" / "ckpt" / "latest").read_text() == "step_0000020"
