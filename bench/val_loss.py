"""Validation loss of several models or checkpoints on the same batches of one shard set.

Each model (a bundled name, a model directory, a checkpoint or a training run) is loaded with its
own config, checked against the shards' vocabulary (as `train.init_from` checks it), and scored on
the first ``--batches`` validation batches exactly as the training loop scores them, eager and with
the training step's autocast. Use it to compare a fine-tune with where it started, or checkpoints
of one run, on one footing (the loop's own eval of a compiled model can differ in the third
decimal).

    python bench/val_loss.py --data data/world4/shards/val world runs/world-p4/ckpt/step_0000300 \
        --json docs/bench/val_loss_p4.json
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="bundled model names, model directories, checkpoints or runs")
    p.add_argument("--data", required=True, help="a validation shard set (its vocab.json must be the models')")
    p.add_argument("--batches", type=int, default=4, help="validation batches (of the model's batch size)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.batches < 1:
        raise SystemExit("--batches must be positive")
    from omniloom.config import config_from_dict
    from omniloom.data.shards import ShardSet
    from omniloom.infer.generate import resolve_model_dir
    from omniloom.model.llama import Transformer
    from omniloom.model.lora import apply_lora_from_config
    from omniloom.tokens.vocab import Vocab
    from omniloom.train.loop import _val_batch, init_weights, validation_loss
    from omniloom.train.step import TrainStep
    from omniloom.utils.fileio import atomic_write_json, read_json

    torch.set_num_threads(a.threads)
    val = ShardSet.open(a.data)
    vocab = Vocab.load(val.vocab_path())
    rows = []
    for name in a.models:
        d = resolve_model_dir(name)
        cfg = config_from_dict(read_json(d / "config.json", "model config"))
        cfg.train.compile = False
        model = Transformer(cfg.model)
        if cfg.train.lora_rank:  # its own adapters, as its trainer built them: gated ones cannot be folded in
            apply_lora_from_config(model, cfg.train, vocab)
        init_weights(model, str(d), cfg, val.vocab_path())
        step = TrainStep(model, cfg.train, vocab=vocab, device=torch.device("cpu"))
        cfg.train.eval_batches = a.batches
        vb, vm = _val_batch(val, cfg, 1)
        t = time.perf_counter()
        loss, n = validation_loss(step, val, cfg, vb, vm)
        rows.append({"model": name, "dir": str(d), "val_loss": round(float(loss), 4), "batches": n,
                     "sequences_per_batch": vb, "seconds": round(time.perf_counter() - t, 1)})
        print(f"{name:50s} {loss:.4f}", flush=True)
    if a.json:
        atomic_write_json(a.json, {"data": a.data, "rows": rows, "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
