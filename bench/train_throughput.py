"""Training throughput: omniloom's decoder vs ``transformers.LlamaForCausalLM``, and MFU.

Both models get the identical shape (preset, vocab_size), batch, sequence length, optimizer
(AdamW via ``omniloom.train.step.TrainStep``), dtype policy (bf16 autocast where the CPU has it,
fp32 master weights) and the same loss code: only the module computing logits differs.
Measurements alternate (ours, peer, ours, peer, ...) so machine noise hits both.

FLOPs per optimizer step (the usual "model FLOPs", no recomputation counted):

    6 * N * tokens                     N = non-embedding params + the output projection (V*d)
  + 6 * 2 * n_layers * T * d * tokens  attention scores + weighted sum (QK^T and PV), causal
                                       masking ignored (counted dense), forward + backward = 3x fwd

MFU = achieved FLOP/s / peak, where peak is measured on this machine: a large square matmul in the
dtype training computes in (bf16 with AMX/AVX512-BF16, else fp32), best of a few sizes; it is
re-measured after every repetition and the median is used (the CPU is shared, so load varies).
tokens/s is wall-clock; the table also gives process CPU seconds per step as a load-robust check.

    python bench/train_throughput.py --json bench_out.json
    python bench/train_throughput.py --presets world --steps 4 --reps 3

Last line: ``ratio=<ours/peer tokens per s> mfu=<ours achieved / peak>`` for the world preset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Callable

import torch
import torch.nn as nn

from omniloom.config import TrainConfig, preset
from omniloom.model import Transformer

# per preset: (seq_len, micro-batch) -- 4096 tokens per step for both
SHAPES = {"debug": (256, 16), "world": (512, 8)}


def make_step(model: nn.Module, train_cfg: TrainConfig) -> Callable:
    """The training step the trainer uses (falls back to a minimal one if train/step.py is absent)."""
    try:
        from omniloom.train.step import TrainStep
    except ImportError:  # pragma: no cover - only before the training module existed
        TrainStep = None
    if TrainStep is not None:
        return TrainStep(model, train_cfg, device="cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, foreach=True)

    def step(mbs):
        opt.zero_grad(set_to_none=True)
        for mb in mbs:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(mb["ids"], positions=mb["positions"])
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), mb["targets"].flatten())
            loss.backward()
        opt.step()
        return {"loss": float(loss)}

    return step


class HFWrapper(nn.Module):
    """``transformers.LlamaForCausalLM`` behind the ``(ids, positions, doc_ids) -> logits`` interface."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, ids, positions=None, doc_ids=None, logits_index=None):
        if doc_ids is not None:
            raise ValueError("the transformers peer runs one document per row (no doc_ids)")
        if logits_index is None:
            return self.hf(input_ids=ids, position_ids=positions, use_cache=False).logits
        # the same restriction of the output projection to the loss positions as ours
        h = self.hf.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        return self.hf.lm_head(h.flatten(0, 1).index_select(0, logits_index))


def build_peer(cfg_model) -> nn.Module:
    import transformers

    from omniloom.model.hf import hf_config

    d = hf_config(cfg_model)
    cls = transformers.Qwen3ForCausalLM if cfg_model.qk_norm else transformers.LlamaForCausalLM
    conf_cls = transformers.Qwen3Config if cfg_model.qk_norm else transformers.LlamaConfig
    conf = conf_cls(**{k: v for k, v in d.items() if k not in ("architectures", "model_type", "torch_dtype")})
    conf._attn_implementation = "sdpa"
    return HFWrapper(cls(conf))


def flops_per_step(cfg_model, tokens: int, seq_len: int) -> float:
    n = cfg_model.num_params(include_embedding=False) + cfg_model.vocab_size * cfg_model.dim
    attn = 6 * 2 * cfg_model.n_layers * seq_len * cfg_model.dim
    return (6 * n + attn) * tokens


def measure_peak(dtype: torch.dtype, sizes=(2048, 3072, 4096), reps: int = 4) -> float:
    """Best FLOP/s of a square matmul in ``dtype`` on this machine."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def cpu_description() -> str:
    """The CPU's model name and the matrix extensions that set its bf16 peak (MFU is relative to it:
    the same step scored 0.26 on an Intel CPU with AMX and about 0.5 on an AMD one without)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    ext = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f in flags]
    return f"{name}; {', '.join(ext) or 'no AMX/AVX-512'}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def make_batch(vocab: int, B: int, T: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T + 1), generator=g)
    return {
        "ids": ids[:, :-1].contiguous(),
        "targets": ids[:, 1:].contiguous(),
        "loss_mask": torch.ones(B, T, dtype=torch.bool),
        "positions": torch.arange(T).expand(B, T).contiguous(),
    }


def timed_steps(step: Callable, batch: dict, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step([batch])
    return time.perf_counter() - t


def run_preset(name: str, args, compute: torch.dtype, peaks: list[float]) -> list[dict]:
    cfg = preset(name)
    cfg.model.vocab_size = args.vocab_size
    T, B = SHAPES[name]
    if args.seq_len:
        T = args.seq_len
    if args.batch:
        B = args.batch
    cfg.model.max_seq_len = max(cfg.model.max_seq_len, T)
    torch.manual_seed(0)
    models = {"omniloom": Transformer(cfg.model), "transformers": build_peer(cfg.model)}
    compiled = {"omniloom": args.compile in ("ours", "both"), "transformers": args.compile == "both"}
    steps = {k: make_step(m, replace(cfg.train, dtype=args.dtype, compile=compiled[k], steps=10_000, warmup_steps=0))
             for k, m in models.items()}
    batch = make_batch(args.vocab_size, B, T, seed=1)
    for s in steps.values():  # warm-up (allocator, autocast caches, compile)
        timed_steps(s, batch, args.warmup)
    secs = {k: 0.0 for k in models}
    cpu = {k: 0.0 for k in models}
    for _ in range(args.reps):  # alternate so noise hits both (and the peak measurement too)
        for k in models:
            c0 = time.process_time()
            secs[k] += timed_steps(steps[k], batch, args.steps)
            cpu[k] += time.process_time() - c0
        peaks.append(measure_peak(compute, sizes=(2048, 4096), reps=2))
    peak = sorted(peaks)[len(peaks) // 2]  # median of the peaks measured during this run
    tokens = B * T * args.steps * args.reps
    rows = []
    for k, m in models.items():
        params = sum(p.numel() for p in m.parameters())
        tps = tokens / secs[k]
        achieved = flops_per_step(cfg.model, B * T, T) * args.steps * args.reps / secs[k]
        rows.append(dict(model=k, preset=name, params=params, seq_len=T, batch=B, tokens_per_s=tps,
                         tflops=achieved / 1e12, mfu=achieved / peak, peak_tflops=peak / 1e12,
                         cpu_s_per_step=cpu[k] / (args.steps * args.reps),
                         wall_s_per_step=secs[k] / (args.steps * args.reps)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="debug,world", help="comma-separated presets (default: debug,world)")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=0, help="override the per-preset sequence length")
    ap.add_argument("--batch", type=int, default=0, help="override the per-preset micro-batch")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per timed repetition")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions per model")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--compile", default="ours", choices=["none", "ours", "both"],
                    help="torch.compile (train.compile=true): only omniloom's model, as the trainer runs the world "
                         "preset, against transformers in eager mode as its users run it (default); or both; or none")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from omniloom.train.step import resolve_dtype

    compute = resolve_dtype(args.dtype, "cpu")
    peaks = [measure_peak(compute)]
    cpu = cpu_description()
    print(f"# {cpu}")
    print(f"# {torch.get_num_threads()} threads, compute dtype {str(compute).removeprefix('torch.')}, "
          f"matmul peak at start {peaks[0] / 1e12:.3f} TFLOP/s (re-measured between repetitions)", flush=True)
    rows: list[dict] = []
    for name in [p.strip() for p in args.presets.split(",") if p.strip()]:
        if name not in SHAPES:
            raise SystemExit(f"no benchmark shape for preset {name!r}; choose from {sorted(SHAPES)}")
        rows += run_preset(name, args, compute, peaks)
    peak = sorted(peaks)[len(peaks) // 2]

    hdr = (f"{'model':<13} {'preset':<7} {'params':>11} {'T x B':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} "
           f"{'cpu s/step':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model']:<13} {r['preset']:<7} {r['params']:>11,} {str(r['seq_len']) + 'x' + str(r['batch']):>9} "
              f"{r['tokens_per_s']:>10.0f} {r['tflops']:>8.3f} {r['mfu']:>6.3f} {r['cpu_s_per_step']:>10.2f}")
    summary = {}
    for name in {r["preset"] for r in rows}:
        ours = next(r for r in rows if r["preset"] == name and r["model"] == "omniloom")
        peer = next(r for r in rows if r["preset"] == name and r["model"] == "transformers")
        summary[name] = {"ratio": ours["tokens_per_s"] / peer["tokens_per_s"], "mfu": ours["mfu"],
                         "cpu_time_ratio": peer["cpu_s_per_step"] / ours["cpu_s_per_step"]}
    if args.json:
        out = {"peak_flops": peak, "peaks_measured": peaks, "threads": torch.get_num_threads(), "dtype": str(compute),
               "cpu": cpu, "compile": args.compile, "steps": args.steps, "reps": args.reps, "rows": rows, "summary": summary,
               "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, args.json)
    key = "world" if "world" in summary else next(iter(summary))
    print(f"ratio={summary[key]['ratio']:.3f} mfu={summary[key]['mfu']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
