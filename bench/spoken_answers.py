"""Spoken answers to text questions about an image: do they say what the text answer says?

    python bench/spoken_answers.py --model world --n 50 --json docs/bench/spoken_answers_world.json

For n held-out vqa items of the shapes world (test split, seed 1234: an image and a text question),
the model answers three ways, greedily: in text; spoken directly (``speak_via_text=False``: the
answer opens an audio span right away); and spoken via text (``speak_via_text=True``: the text
answer first, then the model's own ``speak`` prompt). Each spoken answer is heard by the world's
closed-set speech judge (pocketsphinx, independent of the model) over the short-answer space plus
the text answer, and counted as agreeing with the text answer, and as right (the truth). The time
to the first audio chunk is reported too (speech-to-speech latency is what a voice user feels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--voice", default=None, help="default: the model's first voice")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--json", default="bench_spoken_answers.json")
    a = p.parse_args()

    import torch

    from omniloom.infer.generate import AudioChunk, OmniModel, TextDelta, generate, resolve_model_dir
    from omniloom.infer.sampling import SamplingParams
    from omniloom.world.generate import generate as world_generate
    from omniloom.world.judges import _sj
    from omniloom.world.scene import normalize_text
    from omniloom.world.speech_judge import SHORT_ANSWERS

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    directory = resolve_model_dir(a.model)
    omni = OmniModel.load(directory)
    voice = a.voice or next(v for v in omni.vocab.voices if not v.startswith("voice:"))
    rate = omni.codecs["audio"].sample_rate
    judge = _sj()

    def spoken(msgs: list, via: bool) -> tuple[np.ndarray, float]:
        t0, first, pcm = time.perf_counter(), None, []
        for ev in generate(omni, msgs, output_modality="audio", outputs=("audio",), voice=voice, speak_via_text=via,
                           sampling=SamplingParams(max_new_tokens=a.max_new_tokens, temperature=0.0)):
            if isinstance(ev, AudioChunk):
                first = first if first is not None else time.perf_counter() - t0
                pcm.append(ev.pcm)
        return (np.concatenate(pcm) if pcm else np.zeros(rate // 10, np.float32)), (first or float("nan"))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = world_generate(tmp, "test", a.n, seed=1234, tasks=["vqa"], workers=1, progress=False)
        items = [json.loads(x) for x in Path(path).read_text().splitlines()]
        from tqdm import tqdm

        for it in tqdm(items, desc="vqa items", unit="item"):
            msgs = [m for m in it["messages"] if m["role"] != "assistant"]
            for m in msgs:  # media paths are relative to the data folder
                if isinstance(m["content"], list):
                    for part in m["content"]:
                        if part.get("type") == "image" and not os.path.isabs(part.get("path", "/")):
                            part["path"] = str(Path(tmp) / part["path"])
            text = "".join(ev.text for ev in generate(omni, msgs, outputs=("text",), sampling=SamplingParams(
                max_new_tokens=a.max_new_tokens, temperature=0.0)) if isinstance(ev, TextDelta))
            text, truth = normalize_text(text), normalize_text(it["truth"]["answer"])
            cands = list(dict.fromkeys(list(SHORT_ANSWERS) + [text, truth]))
            row = {"truth": truth, "text": text}
            for mode, via in (("direct", False), ("via_text", True)):
                wav, first = spoken(msgs, via)
                heard, _ = judge.pick(wav.astype(np.float32), [c for c in cands if c])
                row[mode] = {"heard": heard, "first_audio_s": first}
            rows.append(row)

    def share(f) -> float:
        return float(np.mean([f(r) for r in rows]))

    table = {"text": {"right": share(lambda r: r["text"] == r["truth"])}}
    for mode in ("direct", "via_text"):
        table[mode] = {"right": share(lambda r: r[mode]["heard"] == r["truth"]),
                       "agrees_with_text": share(lambda r: r[mode]["heard"] == r["text"]),
                       "first_audio_ms_median": 1000 * float(np.nanmedian([r[mode]["first_audio_s"] for r in rows]))}
    print(f"\n{len(rows)} vqa items, {directory}, voice {voice}")
    print(f"{'answer':10s} {'right':>6s} {'agrees w/ text':>15s} {'first audio (median)':>21s}")
    print(f"{'text':10s} {table['text']['right']:6.2f}")
    for mode in ("direct", "via_text"):
        t = table[mode]
        print(f"{mode:10s} {t['right']:6.2f} {t['agrees_with_text']:15.2f} {t['first_audio_ms_median']:18.0f} ms")
    out = {"model": str(directory), "command": " ".join(sys.argv), "n": len(rows), "table": table, "rows": rows}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    tmp_json = Path(a.json).with_suffix(".tmp")
    tmp_json.write_text(json.dumps(out, indent=1) + "\n")
    tmp_json.replace(a.json)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
