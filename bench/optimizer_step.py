"""AdamW step time on the CPU: ``foreach`` (the trainer's old choice) vs ``fused`` (its choice now).

Both optimizers hold the parameters of a preset (the ``world`` decoder by default: 17,216-id tied
embedding, 8 layers) with the trainer's parameter groups (weight decay on matrices only), get the
same gradients, and step alternately so that load on the shared machine hits both alike. The
first steps create the moment buffers and are not timed. Results match to fp32 rounding (checked
here: the largest parameter difference after the timed steps is printed).

    python bench/optimizer_step.py --json docs/bench/optimizer_step.json
    python bench/optimizer_step.py --preset debug --steps 20

Last line: ``fused_speedup=<foreach s / fused s>``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from omniloom.config import preset
from omniloom.model import Transformer
from omniloom.utils.fileio import atomic_write_json


def build(preset_name: str, vocab: int, fused: bool, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from omniloom.train.step import build_optimizer

    cfg = preset(preset_name)
    cfg.model.vocab_size = vocab
    torch.manual_seed(seed)
    model = Transformer(cfg.model)
    opt = build_optimizer(model, cfg.train, "cpu")
    for g in opt.param_groups:  # the same groups and hyper-parameters; only the implementation differs
        g["fused"], g["foreach"] = (True, None) if fused else (None, True)
    return model, opt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="world")
    p.add_argument("--vocab-size", type=int, default=17216, help="vocabulary (the world model's by default)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per optimizer")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    runs = {name: build(args.preset, args.vocab_size, fused, seed=0) for name, fused in (("foreach", False),
                                                                                         ("fused", True))}
    n_params = sum(q.numel() for q in runs["fused"][0].parameters())
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(q.shape, generator=g) * 1e-2 for q in runs["fused"][0].parameters()]

    def step(name: str) -> float:
        model, opt = runs[name]
        for q, gr in zip(model.parameters(), grads):
            q.grad = gr.clone()
        t = time.perf_counter()
        opt.step()
        return time.perf_counter() - t

    for name in runs:  # moment buffers, first-touch
        step(name)
        step(name)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.steps):
        for name in runs:
            times[name].append(step(name))
    with torch.no_grad():
        diff = max(float((a - b).abs().max()) for a, b in zip(runs["foreach"][0].parameters(),
                                                                runs["fused"][0].parameters()))
    med = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
    print(f"AdamW step, preset {args.preset} ({n_params:,} parameters), {torch.get_num_threads()} threads, "
          f"{args.steps} alternating steps each")
    print(f"{'implementation':15s} {'median s':>9s} {'min s':>8s}")
    for name, ts in times.items():
        print(f"{name:15s} {med[name]:9.4f} {min(ts):8.4f}")
    print(f"largest parameter difference foreach vs fused: {diff:.2e}")
    speedup = med["foreach"] / med["fused"]
    if args.json:
        atomic_write_json(args.json, {"preset": args.preset, "params": n_params, "threads": torch.get_num_threads(),
                                      "steps": args.steps, "seconds": times, "median_s": med,
                                      "max_param_diff": diff, "fused_speedup": speedup,
                                      "torch": torch.__version__})
    print(f"fused_speedup={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
