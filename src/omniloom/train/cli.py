"""Train a model on token shards, on one process or many.

    omniloom train --preset debug data.train=data/chats/train data.val=data/chats/val \\
        train.out_dir=runs/debug
    torchrun --nproc-per-node 8 -m omniloom.cli train --preset 150m data.train=... train.out_dir=...

Settings come from the preset, then --config YAML, then dotted key=value overrides. A run resumes
from the newest good checkpoint in train.out_dir/ckpt unless --resume never.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="debug", help="debug | world | 150m | 1b (default: debug)")
    p.add_argument("--config", default=None, metavar="YAML", help="YAML file applied over the preset")
    p.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                   help="auto: newest good checkpoint in out_dir (default); never: start over; or a checkpoint dir")
    p.add_argument("--parallel", default="fsdp", choices=["fsdp", "replicate"],
                   help="multi-process strategy: FSDP2 sharding (default) or replicated weights + all-reduce")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop after this step without changing the LR schedule (resume later)")
    p.add_argument("--stop-after-minutes", type=float, default=None, metavar="MIN",
                   help="stop (checkpoint and eval written) after the first step that ends MIN minutes after "
                        "training began, without changing the LR schedule; the same command resumes")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.lr=1e-3 model.n_layers=4")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .loop import train

    cfg = load_config(args.preset, args.config, args.overrides)
    try:
        train(cfg, resume=args.resume, parallel=args.parallel, stop_after=args.stop_after,
              stop_after_s=None if args.stop_after_minutes is None else args.stop_after_minutes * 60)
        import torch.distributed as dist

        if dist.is_initialized():  # every rank done (rank 0 writes last) before any tears its group down;
            dist.barrier()  # a rank leaving early aborted once at exit in gloo's teardown
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
