"""Decode speed of one model in llama.cpp (its GGUF export) beside omniloom's engine, batch 1, greedy.

The model directory is exported with ``omniloom export --format gguf`` (each ``--gguf-type``), then
every case decodes the same chat prompt for the same number of new tokens, greedy over the whole
vocabulary (argmax, no stop token): omniloom's :class:`~omniloom.infer.engine.Engine` (fp32, and
int8 with ``--int8``) and llama.cpp through llama-cpp-python. Each case runs in a fresh process,
the cases alternate over ``--rounds``, and the table gives medians: prefill (first token) ms,
decode tokens/s after it, the ratio to omniloom fp32 (taken within each round, as the machine's
load drifts between rounds), and how many greedy tokens agree with
omniloom fp32's (position by position, and the run before the first difference).

    python bench/gguf_decode.py --model world --json out/gguf_decode_world.json
    python bench/gguf_decode.py --model /tmp/smol --gguf-type f16,q8_0 --new-tokens 64

Needs llama-cpp-python (not an omniloom dependency; see docs/export.md, "GGUF", for a build
that works on AMX machines); without it only omniloom's cases run and the script says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "what is two plus three?"


def _prompt_ids(model: str, text: str) -> list[int]:
    from omniloom.infer.generate import OmniModel
    from omniloom.tokens import build_prompt

    omni = OmniModel.load(model)
    return build_prompt([{"role": "user", "content": [{"type": "text", "text": text}]}], omni.vocab, omni.tok)


def _omniloom_case(model: str, prompt: list[int], n_new: int, int8: bool) -> dict:
    from omniloom.infer.engine import Request
    from omniloom.infer.generate import OmniModel
    from omniloom.infer.sampling import SamplingParams

    omni = OmniModel.load(model, int8=int8)
    params = SamplingParams(max_new_tokens=n_new, temperature=0.0)
    omni.engine.generate([Request(prompt, params)])  # warm-up: the same shapes (KV cache length) as the timed run
    t0 = time.perf_counter()
    out, first = [], 0.0
    for _, tok in omni.engine.stream([Request(prompt, params)]):
        if not out:
            first = time.perf_counter()
        out.append(tok)
    end = time.perf_counter()
    return {"tokens": out, "prefill_ms": (first - t0) * 1e3, "decode_tok_s": (len(out) - 1) / (end - first)}


def _llama_case(gguf: str, prompt: list[int], n_new: int, threads: int) -> dict:
    import numpy as np
    from llama_cpp import Llama, llama_get_logits_ith

    llm = Llama(gguf, n_ctx=len(prompt) + n_new + 8, n_threads=threads, n_threads_batch=threads, verbose=False)
    n_vocab = llm.n_vocab()

    def argmax_last() -> int:  # the last evaluated position's logits (llama-cpp-python keeps no copy)
        return int(np.argmax(np.ctypeslib.as_array(llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

    try:
        llm.eval(prompt)  # warm-up: the same prompt and a few decode steps
        for _ in range(4):
            llm.eval([argmax_last()])
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        out = [argmax_last()]
        first = time.perf_counter()
        while len(out) < n_new:
            llm.eval([out[-1]])
            out.append(argmax_last())
        end = time.perf_counter()
    finally:
        llm.close()
    return {"tokens": out, "prefill_ms": (first - t0) * 1e3, "decode_tok_s": (len(out) - 1) / (end - first)}


def _worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["engine"] == "omniloom":
        return _omniloom_case(spec["model"], spec["prompt"], spec["n_new"], spec["int8"])
    return _llama_case(spec["gguf"], spec["prompt"], spec["n_new"], spec["threads"])


def _run(spec: dict) -> dict:
    """One case in a fresh process (its result is the last stdout line, JSON)."""
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"case {spec['name']} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    """(positions where a and b agree, length of the common prefix)."""
    same = sum(x == y for x, y in zip(a, b))
    prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same, prefix


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="world", help="model directory or bundled name (default world)")
    ap.add_argument("--gguf-type", default="f32,f16,q8_0", help="comma-separated GGUF types to export and run")
    ap.add_argument("--prompt", default=PROMPT, help="the user turn of the chat prompt")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="also omniloom's int8 weight-only engine (serve --int8)")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    from omniloom.cli import main as omniloom_main
    from omniloom.utils.model_dir import resolve_model_dir

    model = str(resolve_model_dir(args.model))
    prompt = _prompt_ids(model, args.prompt)
    base = {"model": model, "prompt": prompt, "n_new": args.new_tokens, "threads": args.threads}
    cases = [{**base, "name": "omniloom fp32", "engine": "omniloom", "int8": False}]
    if args.int8:
        cases.append({**base, "name": "omniloom int8", "engine": "omniloom", "int8": True})
    try:
        import llama_cpp  # noqa: F401

        have_llama = True
    except ImportError:
        have_llama = False
        print("llama-cpp-python is not installed: only omniloom's engine runs")
    tmp = tempfile.TemporaryDirectory(prefix="gguf_decode")
    if have_llama:
        for t in args.gguf_type.split(","):
            out = Path(tmp.name) / f"model.{t}.gguf"
            if omniloom_main(["export", "--checkpoint", model, "--format", "gguf", "--gguf-type", t,
                              "--out", str(out)]) != 0:
                raise SystemExit(f"export of {model} to GGUF {t} failed")
            cases.append({**base, "name": f"llama.cpp {t}", "engine": "llama.cpp", "gguf": str(out),
                          "mb": out.stat().st_size / 1e6})
    runs: dict[str, list[dict]] = {c["name"]: [] for c in cases}
    for r in range(args.rounds):
        for c in cases:
            runs[c["name"]].append(_run(c))
            print(f"round {r + 1}/{args.rounds} {c['name']}: {runs[c['name']][-1]['decode_tok_s']:.1f} tok/s",
                  flush=True)
    tmp.cleanup()

    ref_tokens = runs["omniloom fp32"][0]["tokens"]
    rows = []
    for c in cases:
        rs = runs[c["name"]]
        speed = statistics.median(x["decode_tok_s"] for x in rs)
        same, prefix = _agreement(rs[0]["tokens"], ref_tokens)
        # the machine's load drifts between rounds: the ratio is taken within each round, then the median
        ratio = statistics.median(x["decode_tok_s"] / y["decode_tok_s"] for x, y in zip(rs, runs["omniloom fp32"]))
        rows.append({"case": c["name"], "prefill_ms": statistics.median(x["prefill_ms"] for x in rs),
                     "decode_tok_s": speed, "ratio_to_omniloom_fp32": ratio,
                     "decode_tok_s_rounds": [round(x["decode_tok_s"], 1) for x in rs],
                     "tokens_agree": same, "agree_prefix": prefix, "n_new": args.new_tokens,
                     "deterministic": all(x["tokens"] == rs[0]["tokens"] for x in rs),
                     **({"gguf_mb": round(c["mb"], 1)} if "mb" in c else {}), "tokens": rs[0]["tokens"]})
    print(f"\n{model}: prompt {len(prompt)} ids, {args.new_tokens} new tokens, greedy, {args.threads} threads, "
          f"medians of {args.rounds} rounds")
    print(f"{'case':<18}{'prefill ms':>11}{'decode tok/s':>14}{'ratio':>7}{'agree':>9}{'prefix':>8}")
    for r in rows:
        print(f"{r['case']:<18}{r['prefill_ms']:>11.1f}{r['decode_tok_s']:>14.1f}{r['ratio_to_omniloom_fp32']:>7.2f}"
              f"{r['tokens_agree']:>5}/{r['n_new']:<3}{r['agree_prefix']:>8}")
    if args.json:
        from omniloom.utils.fileio import atomic_write_json

        atomic_write_json(args.json, {"model": model, "prompt_ids": len(prompt), "new_tokens": args.new_tokens,
                                      "threads": args.threads, "rounds": args.rounds, "llama_cpp": have_llama,
                                      "command": " ".join(["python", "bench/gguf_decode.py", *(argv or sys.argv[1:])]),
                                      "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
