"""Fill-in-the-middle, measured small: infill exact match and left-to-right loss, FIM-trained vs not.

Two tiny models (same seed, config, steps, data) are trained on CPU from the same synthetic
scene sentences ("the red square is left of the blue circle.", world-like words), tokenized as plain
documents with ``--fim-rate 0`` and with ``--fim-rate R``. On held-out sentences both are scored on:

- **infill exact match**: one word cut out (prefix / word / suffix), the PSM prompt that
  ``POST /v1/completions`` sends with ``suffix``, greedy decoding up to ``<|end|>``; exact match of
  the stripped middle with the word;
- **left-to-right loss**: mean next-token loss over the text of the held-out documents (the
  validation split is never FIM-transformed), the FIM paper's "FIM for free" check.

    python bench/fim_infill.py --steps 800 --seed 0 --json docs/bench/fim_infill_seed0.json

``--init MODEL`` fine-tunes a trained model instead (its tokenizer, vocabulary and architecture;
``train.init_from``), and scores the model as it was too: FIM learnt by a real model, and what
it costs its left-to-right loss against a fine-tune on the same text without FIM.

    python bench/fim_infill.py --init world --steps 300 --seeds 0,1 --json docs/bench/fim_infill_world.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["square", "circle", "triangle", "star", "cross", "ring"]
RELS = ["left of", "right of", "above", "below", "next to"]


def sentence(rng: random.Random) -> str:
    c1, c2 = rng.sample(COLORS, 2)
    return f"the {c1} {rng.choice(SHAPES)} is {rng.choice(RELS)} the {c2} {rng.choice(SHAPES)}."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--eval", type=int, default=200, help="held-out sentences scored")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--fim-rate", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0, help="training seed (model init and batch order)")
    p.add_argument("--seeds", default=None, help="several training seeds, comma-separated (overrides --seed)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune this model (name or directory) instead of training a tiny one from scratch")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    p.add_argument("--corpus", choices=["sentences", "captions"], default=None,
                   help="sentences: synthetic scene relations (the default from scratch); captions: the world's "
                        "own image captions, text the world model was trained to write (the default with --init)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    import torch

    from omniloom.cli import main as cli
    from omniloom.codecs.text import TextTokenizer
    from omniloom.data.fim import psm_prompt
    from omniloom.infer.engine import Request
    from omniloom.infer.generate import OmniModel
    from omniloom.infer.sampling import SamplingParams

    torch.set_num_threads(a.threads)
    rng = random.Random(0)
    corpus = a.corpus or ("captions" if a.init else "sentences")
    if corpus == "captions":
        import numpy as np

        from omniloom.world.scene import caption, sample_scene

        nrng = np.random.default_rng(0)

        def draw(_: random.Random) -> str:
            return caption(sample_scene(nrng))
    else:
        draw = sentence
    train = [draw(rng) for _ in range(a.docs)]
    seen = set(train)
    held = [s for s in (draw(rng) for _ in range(20 * a.eval)) if s not in seen and len(s.split()) >= 4][:a.eval]
    work = Path(tempfile.mkdtemp(prefix="fim_bench_"))
    jsonl = work / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"messages": [{"role": "assistant", "content": s}]}) for s in train) + "\n")
    if a.init:
        from omniloom.infer.generate import resolve_model_dir

        init_dir = resolve_model_dir(a.init)
        tok_path, vocab_args = init_dir / "tokenizer.json", ["--vocab", str(init_dir / "vocab.json")]
        model_args = ["--preset", "world", f"train.init_from={init_dir}"]  # the init model's own shape
    else:
        tok_path = TextTokenizer.train(train, vocab_size=320, min_frequency=1).save(work / "tok")
        vocab_args = []
        model_args = ["--preset", "debug", "model.vocab_size=0", "model.dim=96", "model.n_layers=3", "model.n_heads=4",
                      "model.n_kv_heads=2", "model.ffn_dim=256"]
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else [a.seed]

    def score(omni) -> tuple[float, float]:
        """(infill exact match, left-to-right loss) on the held-out sentences."""
        v, tk = omni.vocab, omni.tok
        head = v.bos_ids + v.header_ids("assistant")
        hits, losses = 0, []
        erng = random.Random(1)
        for s in held:
            words = s.rstrip(".").split(" ")
            k = erng.randrange(1, len(words))  # a word after the first ("the", "a")
            end = "." if s.endswith(".") else ""
            pre, mid, suf = " ".join(words[:k]) + " ", words[k], (" " + " ".join(words[k + 1:]) + end).rstrip()
            suf = suf if suf.strip() else end
            prompt = head + psm_prompt(pre, suf, v, tk)
            sp = SamplingParams(max_new_tokens=8, temperature=0.0, stop_ids=(v.end_id, v.eos_id))
            got = []
            for _, t in omni.engine.stream([Request(prompt, sp)]):
                if t in sp.stop_ids:
                    break
                got.append(t)
            hits += tk.decode([t for t in got if t < v.text_size]).strip() == mid
            ids = head + tk.encode(s) + v.end_ids
            with torch.no_grad():
                logits = omni.model(torch.tensor([ids]))[0, :-1].float()
            tgt = torch.tensor(ids[1:])
            keep = slice(len(head) - 1, None)  # the text and <|end|>
            losses.append(torch.nn.functional.cross_entropy(logits[keep], tgt[keep]).item())
        return hits / len(held), sum(losses) / len(losses)

    rows = []
    if a.init:
        em, loss = score(OmniModel.load(init_dir))
        rows.append({"fim_rate": None, "seed": None, "infill_exact_match": em, "left_to_right_loss": loss,
                     "train_seconds": 0.0, "model": f"{a.init}, as shipped"})
        print(f"{a.init} as it is: infill {em:.3f}, left-to-right loss {loss:.4f}", flush=True)
    for rate in (0.0, a.fim_rate):
        out = work / f"shards{rate}"
        t0 = time.time()
        assert cli(["tokenize", "--input", str(jsonl), "--tokenizer", str(tok_path), "--out", str(out), "--mode",
                    "pretrain", "--fim-rate", str(rate), "--fim-spm-rate", "0.5", "--workers", "1",
                    "--no-progress", *vocab_args]) == 0
        tok_s = time.time() - t0
        for seed in seeds:
            run = work / f"run{rate}-{seed}"
            t0 = time.time()
            assert cli(["train", *model_args, f"data.train={out / 'train'}", f"train.out_dir={run}",
                        "data.seq_len=256", f"train.steps={a.steps}", "train.batch_size=8",
                        "train.micro_batch_size=8", "train.progress=false", "train.dtype=fp32",
                        f"train.ckpt_every={a.steps}", f"train.seed={seed}", "train.compile=false",
                        *([f"train.lr={a.lr}"] if a.lr else []),
                        *(["train.warmup_steps=20", "train.eval_every=100000"] if a.init else [])]) == 0
            train_s = time.time() - t0 + tok_s
            em, loss = score(OmniModel.load(run / "ckpt" / (run / "ckpt" / "latest").read_text().strip()))
            rows.append({"fim_rate": rate, "seed": seed, "infill_exact_match": em, "left_to_right_loss": loss,
                         "train_seconds": round(train_s, 1)})
            print(f"fim-rate {rate} seed {seed}: infill {em:.3f}, left-to-right loss {loss:.4f}", flush=True)
    print("| --fim-rate | seed | infill exact match | left-to-right loss (held out) | tokenize+train s |")
    print("|---|---|---|---|---|")
    for r in rows:
        rate = "(before)" if r["fim_rate"] is None else r["fim_rate"]
        print(f"| {rate} | {r['seed']} | {r['infill_exact_match']:.3f} | {r['left_to_right_loss']:.4f} | "
              f"{r['train_seconds']} |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"args": vars(a), "corpus": corpus, "held_out": len(held), "rows": rows},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
