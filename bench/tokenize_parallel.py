"""Tokenize the same world sample three ways: one process, a local pool, Ray Data tasks.

    python bench/tokenize_parallel.py --n 600 --workers 2 --json docs/bench/tokenize_parallel.json

Generates ``--n`` world documents with images and speech (draw, caption, asr, spoken_vqa), then
runs ``tokenize_files`` with the shipped codecs in this process (``--workers 1``), in a local pool
of ``--workers`` processes, and as Ray Data tasks on a local Ray (``ray="auto"``; skipped when Ray
is not installed), all with the same ``--unit-docs``. Prints documents/s for each (start-up
included: spawning workers, loading codecs, starting Ray) and checks that the three wrote the same
shards (sha256 in the manifests).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=600, help="world documents (default 600)")
    p.add_argument("--workers", type=int, default=2, help="pool processes and Ray actors (default 2)")
    p.add_argument("--unit-docs", type=int, default=100, help="documents per work unit (default 100)")
    p.add_argument("--json", default="bench_tokenize_parallel.json")
    a = p.parse_args()

    from omniloom.codecs import load_codec
    from omniloom.data.tokenize import tokenize_files
    from omniloom.utils.model_dir import resolve_model_dir
    from omniloom.world.generate import generate

    tmp = Path(tempfile.mkdtemp())
    jsonl = generate(tmp / "w", "train", a.n, seed=11, mixture="draw=1,caption=1,asr=1,spoken_vqa=1", progress=False)
    model = resolve_model_dir("world")
    codecs = {"image": load_codec("image-world"), "audio": load_codec("audio-world")}
    names = {"image": "image-world", "audio": "audio-world"}
    from omniloom.tokens.vocab import Vocab

    vocab = Vocab.load(model / "vocab.json")
    ways = [("one process", {"workers": 1}), (f"local pool, {a.workers} processes", {"workers": a.workers})]
    try:
        import ray  # noqa: F401

        ways.append((f"Ray Data, local, {a.workers} actors", {"workers": a.workers, "ray": "auto"}))
    except ImportError:
        print("ray is not installed: the Ray row is skipped", file=sys.stderr)
    rows, manifests = [], []
    for name, kw in ways:
        out = tmp / name.split(",")[0].replace(" ", "_")
        t = time.perf_counter()
        tokenize_files([jsonl], model / "tokenizer.json", out, codecs=codecs, codec_names=names, vocab=vocab,
                       val_fraction=0.05, unit_docs=a.unit_docs, progress=False, **kw)
        s = time.perf_counter() - t
        manifests.append([json.loads((out / k / "manifest.json").read_text())["shards"] for k in ("train", "val")])
        rows.append({"how": name, "seconds": round(s, 2), "docs_per_s": round(a.n / s, 1)})
    same = all(m == manifests[0] for m in manifests)
    base = rows[0]["docs_per_s"]
    print(f"\n{a.n} world documents (images and speech), --unit-docs {a.unit_docs}\n")
    print("| how | seconds | documents/s | vs one process |\n|---|---|---|---|")
    for r in rows:
        r["ratio"] = round(r["docs_per_s"] / base, 2)
        print(f"| {r['how']} | {r['seconds']} | {r['docs_per_s']} | {r['ratio']}x |")
    print(f"\nsame shards (sha256) in every run: {same}")
    Path(a.json).write_text(json.dumps({"n": a.n, "unit_docs": a.unit_docs, "workers": a.workers, "rows": rows,
                                        "identical_shards": same}, indent=1) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
