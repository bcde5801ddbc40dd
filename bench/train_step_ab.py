"""The trainer's step on real fine-tuning batches: as phase 2 of the reference model ran it vs now.

"phase 2" is the step the reference model trained with until step 2,000: the compiled decoder
computing logits for every position (B, T, V), the cross-entropy taken outside the compiled graph
on the loss positions, and foreach AdamW. "now" is ``omniloom.train.step.TrainStep`` as it is:
the output head run on the loss positions only (``logits_index``), the cross-entropy compiled
with the decoder (``TokenLosses``) and fused AdamW. Both start from the same weights, take the
same packed batches (with their real loss masks and document masks) and alternate step by step in
one process, so load on the shared machine hits both alike. The losses they print should agree.

    python bench/train_step_ab.py --data data/world3/shards/train --micro-batch 8 --reps 3 \
        --json docs/bench/train_step_ab.json

``--against sdpa`` compares instead the step as it is with the same step taking PyTorch's SDPA for
attention rather than the blocked causal attention the decoder uses on CPU
(``omniloom.model.llama.blocked_causal_attention``; ``bench/attention_cpu.py`` times it alone).

Last line: ``speedup=<baseline s per step / now s per step>``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
import torch.nn.functional as F

from omniloom.config import preset
from omniloom.data.loader import PackedLoader
from omniloom.data.shards import ShardSet
from omniloom.model import Transformer, llama
from omniloom.train.step import TrainStep, build_optimizer
from omniloom.utils.fileio import atomic_write_json


class Phase2Step(TrainStep):
    """The step as the reference model's phase 2 ran it (see the module docstring)."""

    def __init__(self, model, train_cfg):
        opt = build_optimizer(model, train_cfg, "cpu")
        for g in opt.param_groups:
            g["fused"], g["foreach"] = None, True
        super().__init__(model, train_cfg, optimizer=opt)
        self.full_forward = torch.compile(model) if train_cfg.compile else model

    def _token_losses(self, mb):
        with self._autocast():
            logits = self.full_forward(mb["ids"], positions=mb.get("positions"), doc_ids=mb.get("doc_ids"))
        mask = mb["loss_mask"].bool()
        targets = mb["targets"][mask]
        return F.cross_entropy(logits[mask].float(), targets, reduction="none"), targets


class SdpaStep(TrainStep):
    """The step as it is, with SDPA attention throughout (no blocked causal attention)."""

    def __call__(self, micro_batches):
        saved, llama.BLOCKED_ATTENTION_MIN = llama.BLOCKED_ATTENTION_MIN, 1 << 62
        try:
            return super().__call__(micro_batches)
        finally:
            llama.BLOCKED_ATTENTION_MIN = saved


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/world/shards/train", help="token shard directory (or several, comma-separated)")
    p.add_argument("--preset", default="world")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per step")
    p.add_argument("--reps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--no-compile", action="store_true", help="run both eager")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--against", choices=["phase2", "sdpa"], default="phase2",
                   help="the baseline: phase 2's step (default), or today's step with SDPA attention")
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = ShardSet.open(args.data, verify=False)
    except (ValueError, OSError) as e:
        p.error(f"--data: {e} (make shards with `omniloom tokenize`, or see examples/train_reference.sh)")
    cfg = preset(args.preset)
    cfg.model.vocab_size = data.manifest["vocab_size"]
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, args.seq_len)
    tc = copy.deepcopy(cfg.train)
    tc.compile = not args.no_compile
    tc.warmup_steps = 10
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    base = "phase 2" if args.against == "phase2" else "sdpa attn"
    variants = {base: (Phase2Step if args.against == "phase2" else SdpaStep)(copy.deepcopy(model), tc),
                "now": TrainStep(copy.deepcopy(model), tc)}
    loader = PackedLoader(data, seq_len=args.seq_len, batch_size=args.micro_batch, seed=0)
    batches = [loader.next_batch() for _ in range(args.reps + 2)]
    loss_share = float(sum(mb["loss_mask"].float().mean() for b in batches for mb in b) / len(batches))
    for name, step in variants.items():  # compile and warm up on two batches
        t = time.perf_counter()
        step(batches[0])
        step(batches[1])
        print(f"warm-up {name}: {time.perf_counter() - t:.1f} s", flush=True)
    secs: dict[str, list[float]] = {n: [] for n in variants}
    losses: dict[str, list[float]] = {n: [] for n in variants}
    for r in range(args.reps):
        for name, step in variants.items():
            t = time.perf_counter()
            out = step(batches[r + 2])
            secs[name].append(time.perf_counter() - t)
            losses[name].append(out["loss"])
    tokens = args.micro_batch * args.seq_len
    print(f"\n{args.preset} preset, {args.micro_batch}x{args.seq_len} tokens per step, {loss_share:.0%} of them in "
          f"the loss, {args.reps} alternating steps each, {torch.get_num_threads()} threads, "
          f"{'compiled' if tc.compile else 'eager'}")
    print(f"{'step':10s} {'s/step':>8s} {'tokens/s':>9s}  losses")
    for name in variants:
        mean = sum(secs[name]) / len(secs[name])
        print(f"{name:10s} {mean:8.2f} {tokens / mean:9.0f}  {' '.join(f'{x:.4f}' for x in losses[name])}")
    speedup = sum(secs[base]) / sum(secs["now"])
    if args.json:
        atomic_write_json(args.json, {"data": args.data, "preset": args.preset, "seq_len": args.seq_len,
                                      "micro_batch": args.micro_batch, "loss_share": loss_share,
                                      "baseline": base, "compiled": tc.compile, "threads": torch.get_num_threads(),
                                      "seconds": secs, "losses": losses, "speedup": speedup,
                                      "torch": torch.__version__})
    print(f"speedup={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
