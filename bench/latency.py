"""Speech-to-speech latency and decode speed of a model, batch 1, on this machine.

For each spoken question of the world (``spoken_math`` and ``spoken_vqa`` test samples, eSpeak in
varied user voices), the clock starts when the question's last sample is available and stops when
the first 80 ms of answer audio are decoded and ready to play: audio encoding of the question,
prefill, sampling up to the first two audio frames, and the streaming decoder's first chunk.
Also reported: time to the first streamed event (with a forced spoken answer this is usually the
first audio chunk itself, since the voice tag is forced and text ids stream as transcript), and decode tokens/s of our engine against
``transformers`` ``generate()`` on the same weights exported to Hugging Face Llama (greedy, same
prompt, same number of new tokens, alternating runs).

    python bench/latency.py --model runs/world --n 50 --json out/latency.json
    python bench/latency.py --model world --int8 --compile   # as `omniloom serve --int8 --compile`
    python bench/latency.py --model /tmp/tiny --n 10          # any model directory

Last line: ``ttfa_p50_ms=<..> decode_ratio=<ours/transformers tokens per s>`` for the setup asked for
(``--int8``, ``--compile``); with either, the fp32 eager engine is measured beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def time_to_first_audio(omni, sample: dict, base_dir: Path) -> tuple[float, float]:
    """(seconds to the first 80 ms of answer audio, seconds to the first event generate() streams)."""
    from omniloom.infer.generate import AudioChunk, generate
    from omniloom.infer.sampling import SamplingParams

    messages = sample["messages"][:-1]
    voice = sample["truth"].get("voice")
    t0 = time.perf_counter()
    first_event = None
    chunk_samples = 0
    events = generate(omni, messages, output_modality="audio", outputs=("audio",), voice=voice,
                      sampling=SamplingParams(max_new_tokens=64, temperature=0.0), base_dir=base_dir)
    for ev in events:
        if first_event is None:
            first_event = time.perf_counter() - t0
        if isinstance(ev, AudioChunk):
            chunk_samples += len(ev.pcm)
            if chunk_samples >= 0.08 * ev.sample_rate:
                ttfa = time.perf_counter() - t0
                events.close()
                return ttfa, first_event
    return float("nan"), first_event if first_event is not None else float("nan")


def decode_speed(engines: dict, omni, n_new: int, reps: int) -> tuple[dict[str, float], float]:
    """({engine name: tokens/s}, transformers tokens/s): greedy, same weights, same prompt, batch 1.

    The peer is the float model exported to Hugging Face Llama and loaded the way transformers loads
    it by default (fp32, eager); runs alternate so that load on the machine hits all alike.
    """
    from transformers import LlamaForCausalLM

    from omniloom.infer.engine import Request
    from omniloom.infer.sampling import SamplingParams
    from omniloom.model.hf import export_hf

    prompt = [omni.vocab.bos_id] + omni.tok.encode("what is two plus three?") + [omni.vocab.special("assistant")]
    with tempfile.TemporaryDirectory() as d:
        export_hf(omni.model, omni.model.cfg, d, drop_image_pos=True)  # a text prompt: no image span to miss
        peer = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    params = SamplingParams(max_new_tokens=n_new, temperature=0.0)
    ids = torch.tensor([prompt])
    for eng in engines.values():  # warm-up (and compilation)
        eng.generate([Request(prompt, params)])
    secs = dict.fromkeys(engines, 0.0)
    peer_s = 0.0
    for _ in range(reps):
        for name, eng in engines.items():
            t = time.perf_counter()
            out = eng.generate([Request(prompt, params)])[0]
            secs[name] += time.perf_counter() - t
            assert len(out) == n_new
        t = time.perf_counter()
        with torch.inference_mode():
            peer.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
        peer_s += time.perf_counter() - t
    return {k: n_new * reps / v for k, v in secs.items()}, n_new * reps / peer_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory, training run or bundled name")
    ap.add_argument("--n", type=int, default=50, help="spoken questions (default 50)")
    ap.add_argument("--data", default="data/world-eval", help="where the test questions are generated")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--int8", action="store_true", help="int8 weight-only decoder (as `omniloom serve --int8`)")
    ap.add_argument("--compile", action="store_true", help="compiled decode step (as `omniloom serve --compile`)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from omniloom.eval.runner import ensure_split, load_samples
    from omniloom.infer.generate import OmniModel

    omni = OmniModel.load(args.model, int8=args.int8, compile=args.compile)
    setup = ("int8" if args.int8 else "fp32") + (", compiled" if args.compile else ", eager")
    ref = OmniModel.load(args.model) if (args.int8 or args.compile) else omni
    if "audio" not in omni.codecs:
        raise SystemExit(f"{args.model}: the model has no audio codec, so it cannot answer in speech")
    samples = []
    for task in ("spoken_math", "spoken_vqa"):
        path = ensure_split(args.data, "test", task, (args.n + 1) // 2, args.seed)
        samples += [(s, path.parent) for s in load_samples(path)]
    samples = samples[: args.n]
    time_to_first_audio(omni, *samples[0])  # warm-up (allocators, codec caches)
    ttfa, ttft = [], []
    for s, base in samples:
        a, t = time_to_first_audio(omni, s, base)
        ttfa.append(a * 1000)
        ttft.append(t * 1000)
    ok = [x for x in ttfa if x == x]
    engines = {setup: omni.engine}
    if ref is not omni:
        engines["fp32, eager"] = ref.engine
    speeds, peer = decode_speed(engines, ref, args.decode_tokens, args.reps)
    ours = speeds[setup]
    res = {"model": str(args.model), "n": len(samples), "answered_with_audio": len(ok),
           "ttfa_ms": {"p50": percentile(ok, 50), "p90": percentile(ok, 90)},
           "first_event_ms": {"p50": percentile(ttft, 50), "p90": percentile(ttft, 90)},
           "setup": setup,
           "decode_tokens_per_s": {"omniloom": ours, "transformers": peer, "ratio": ours / peer,
                                   "omniloom_by_setup": speeds},
           "threads": torch.get_num_threads()}
    print(f"{'metric':<40} {'p50':>9} {'p90':>9}")
    print(f"{'first 80 ms of answer audio (ms)':<40} {res['ttfa_ms']['p50']:>9.1f} {res['ttfa_ms']['p90']:>9.1f}")
    print(f"{'first streamed event (ms)':<40} {res['first_event_ms']['p50']:>9.1f} "
          f"{res['first_event_ms']['p90']:>9.1f}")
    print(f"answered with audio: {len(ok)}/{len(samples)}")
    for name, v in speeds.items():
        print(f"decode tokens/s: omniloom ({name}) {v:.0f} = {v / peer:.2f}x transformers generate() (fp32) {peer:.0f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"ttfa_p50_ms={res['ttfa_ms']['p50']:.1f} decode_ratio={ours / peer:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
