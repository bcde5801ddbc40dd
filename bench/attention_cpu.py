"""Causal attention on CPU, forward + backward: PyTorch's SDPA against omniloom's blocked attention.

``omniloom.model.llama.blocked_causal_attention`` is what the decoder runs when it trains (or
scores whole sequences) on a CPU from 256 positions on (plain causal up to 1,024, packed documents
at any length): query blocks of about 256 positions, each against only the keys it can see, with
the query heads that share a key/value head folded into one query matrix. SDPA's CPU flash kernel
computes the masked half of a causal mask too. The table times the function itself at every
shape, including the one where the decoder keeps SDPA (long plain causal).

Both run on the same tensors (bf16, as training computes under autocast), alternating rep by rep
so machine noise hits both; the outputs are checked to agree. Shapes: the reference model's heads
(6 query heads, 2 key/value heads, head dim 64) at the throughput benchmark's shape (512 x 8,
causal), the trainer's shape (1024 x 16 with packed documents), and a few others.

    python bench/attention_cpu.py --json docs/bench/attention_cpu.json   # and a chart, attention_cpu.png

Last line: ``speedup=<SDPA time / blocked time>`` at the throughput benchmark's shape (512 x 8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from omniloom.model.llama import blocked_causal_attention, doc_causal_mask

# (name, batch, seq_len, packed documents)
SHAPES = [("throughput bench", 8, 512, False), ("trainer", 16, 1024, True), ("debug bench", 16, 256, False),
          ("long", 4, 2048, False), ("long packed", 4, 2048, True), ("packed 512", 8, 512, True)]


def doc_ids(B: int, T: int, seed: int) -> torch.Tensor:
    """Packed documents of 40-400 tokens, as world samples are."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        t, d = 0, 0
        while t < T:
            n = int(torch.randint(40, 400, (1,), generator=g))
            out[b, t:t + n] = d
            t, d = t + n, d + 1
    return out


def sdpa(q, k, v, mask):
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def fwd_bwd(fn, q, k, v, mask, grad) -> float:
    t = time.perf_counter()
    out = fn(q, k, v, mask)
    torch.autograd.grad(out, (q, k, v), grad)
    return time.perf_counter() - t


def plot(rows: list[dict], path: str) -> None:
    """Milliseconds per forward + backward, SDPA beside blocked, one pair of bars per shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["sdpa_ms"] for r in rows], 0.4, label="SDPA (PyTorch CPU flash kernel)")
    ax.bar([x + 0.2 for x in xs], [r["blocked_ms"] for r in rows], 0.4, label="blocked causal (omniloom)")
    for x, r in zip(xs, rows):
        ax.annotate(f"{r['speedup']:.2f}x", (x + 0.2, r["blocked_ms"]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [f"{r['shape']}\n{r['seq_len']}x{r['batch']}{' docs' if r['docs'] else ''}" for r in rows],
                  fontsize=7)
    ax.set_ylabel("ms, forward + backward")
    ax.set_title("Causal attention on CPU, bf16 (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", default="6,2,64", help="query heads, key/value heads, head dim (default: the world preset)")
    ap.add_argument("--reps", type=int, default=5, help="timed alternating repetitions per shape")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", default="", help="write the results here (and a chart beside it, .png)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    H, G, D = (int(x) for x in args.heads.split(","))
    impls = {"sdpa": sdpa, "blocked": blocked_causal_attention}
    rows = []
    print(f"# {torch.get_num_threads()} threads, bf16, heads {H}/{G}, head dim {D}, forward + backward, "
          f"median of {args.reps}", flush=True)
    hdr = f"{'shape':<17} {'T x B':>9} {'docs':>5} {'sdpa ms':>9} {'blocked ms':>11} {'speedup':>8} {'max diff':>9}"
    print(hdr)
    print("-" * len(hdr))
    for name, B, T, docs in SHAPES:
        g = torch.Generator().manual_seed(T + B)
        q = (0.5 * torch.randn(B, H, T, D, generator=g)).bfloat16().requires_grad_()
        k = (0.5 * torch.randn(B, G, T, D, generator=g)).bfloat16().requires_grad_()
        v = torch.randn(B, G, T, D, generator=g).bfloat16().requires_grad_()
        grad = torch.randn(B, H, T, D, generator=g).bfloat16()
        mask = doc_causal_mask(doc_ids(B, T, T)) if docs else None
        with torch.no_grad():
            diff = (sdpa(q, k, v, mask).float() - blocked_causal_attention(q, k, v, mask).float()).abs().max().item()
        times: dict[str, list[float]] = {k_: [] for k_ in impls}
        for fn in impls.values():  # warm-up
            fwd_bwd(fn, q, k, v, mask, grad)
        for _ in range(args.reps):
            for key, fn in impls.items():
                times[key].append(fwd_bwd(fn, q, k, v, mask, grad))
        med = {key: sorted(ts)[len(ts) // 2] for key, ts in times.items()}
        row = dict(shape=name, batch=B, seq_len=T, docs=docs, sdpa_ms=med["sdpa"] * 1e3,
                   blocked_ms=med["blocked"] * 1e3, speedup=med["sdpa"] / med["blocked"], max_abs_diff=diff)
        rows.append(row)
        print(f"{name:<17} {f'{T}x{B}':>9} {'yes' if docs else 'no':>5} {row['sdpa_ms']:>9.1f} "
              f"{row['blocked_ms']:>11.1f} {row['speedup']:>8.2f} {diff:>9.4f}", flush=True)
    if args.json:
        out = {"threads": torch.get_num_threads(), "heads": [H, G, D], "reps": args.reps, "rows": rows,
               "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, args.json)
        plot(rows, os.path.splitext(args.json)[0] + ".png")
    print(f"speedup={rows[0]['speedup']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
