"""Deterministic speech synthesis in a big process: through the eSpeak server vs forking the process.

Every utterance of the shapes world is spoken by an eSpeak that has never spoken before (eSpeak
keeps state between utterances). The world generator used to fork itself per utterance; it now
asks a small server process (`omniloom/world/espeak_server.py`), which forks itself instead. Both
paths stay in the code (the fork is the fallback), so this script runs them alternately in one
process, round by round, on the same sampled questions and voices, after importing torch and
loading both shipped codecs so that the process is as big as a generator or evaluator worker. It
checks the two give the same samples.

    python bench/speech_synth.py --rounds 5 --n 40 --json docs/bench/speech_synth.json

Last line: ``speedup=<fork ms per utterance / server ms per utterance>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of each path")
    p.add_argument("--n", type=int, default=40, help="utterances per round and path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the figures here")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.n < 1:
        raise SystemExit("--rounds and --n must be positive")
    import torch

    from omniloom.codecs import load_codec
    from omniloom.utils.fileio import atomic_write_json
    from omniloom.world import speech

    torch.set_num_threads(1)
    codecs = [load_codec("image-world"), load_codec("audio-world")]  # kept loaded, as in a worker
    eng = speech._get_engine()
    if eng.client is None:
        raise SystemExit("no eSpeak server on this machine (no os.fork): nothing to compare")
    rng = np.random.default_rng(a.seed)
    words = ["red", "green", "blue", "circle", "square", "triangle", "star", "above", "left of", "two", "seven"]
    jobs = [(speech.sample_user_voice(rng), " ".join(rng.choice(words, size=int(rng.integers(2, 8)))))
            for _ in range(a.n)]

    def via_server(v, text):  # noqa: ANN001, ANN202
        return eng.client.speak(v.espeak_name(), eng._params(v), text)

    def via_fork(v, text):  # noqa: ANN001, ANN202
        status, pcm = eng.local.speak_forked(v.espeak_name(), eng._params(v), text)
        assert status == 0, pcm
        return pcm

    times: dict[str, list[float]] = {"fork": [], "server": []}
    audio_s = sum(len(via_server(v, t)) / 2 for v, t in jobs) / eng.rate
    same = all(via_server(v, t) == via_fork(v, t) for v, t in jobs[:5])
    for _ in range(a.rounds):
        for name, fn in (("fork", via_fork), ("server", via_server)):
            t0 = time.perf_counter()
            for v, t in jobs:
                fn(v, t)
            times[name].append((time.perf_counter() - t0) / a.n * 1000)
    import resource

    res = {"rounds": a.rounds, "utterances_per_round": a.n, "audio_s_per_round": round(audio_s, 2),
           "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "codec_params_loaded": sum(q.numel() for c in codecs for q in c.parameters()),
           "identical_samples": same, "cpus": os.cpu_count(), "torch": torch.__version__}
    for name, ts in times.items():
        res[f"{name}_ms_per_utterance_median"] = round(statistics.median(ts), 2)
        res[f"{name}_ms_per_utterance_rounds"] = [round(t, 2) for t in ts]
    res["speedup"] = round(res["fork_ms_per_utterance_median"] / res["server_ms_per_utterance_median"], 2)
    print(f"{'path':8s} {'ms/utterance (median of rounds)':>32s}  rounds")
    for name in times:
        print(f"{name:8s} {res[f'{name}_ms_per_utterance_median']:32.2f}  {res[f'{name}_ms_per_utterance_rounds']}")
    print(f"same samples on both paths: {same}; process RSS {res['process_max_rss_mb']} MB")
    if a.json:
        atomic_write_json(a.json, res)
    print(f"speedup={res['speedup']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
