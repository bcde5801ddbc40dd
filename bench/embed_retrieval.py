"""Cross-modal retrieval on held-out world pairs: image <-> caption and audio <-> transcript.

The pairs are read from tokenized shards with :func:`omniloom.tokens.pairs.find_pairs` (a user's
image or speech and the text answer after it), the first ``--n`` of each kind. Recall@1 and @5 in
both directions over the ``--n`` candidates of that kind; a retrieved item counts as a hit when its
text equals the query's text (the world repeats short answers: "yes", "how many shapes are there?"),
so duplicates are not misses. Ties are broken at random (seeded).

Rows:

- ``chance``: random scores.
- ``bag of ids (cosine)``: TF-IDF count vectors over the ids, media codes against text ids. The two
  id ranges are disjoint, so every cosine is 0: without learning, no bag of ids matches across
  modalities (this row equals chance, and says so).
- ``ridge: <features> -> bag of words``: a learned linear map, fit on the ``--train`` pairs, from
  the media's TF-IDF bag of codes (images also: one-hot codes by raster slot) to the text's TF-IDF bag
  of text ids (ridge regression in its dual form; lambda picked on the ``--val`` pairs); scores are
  cosines between the predicted and the true text bags. A fair non-learned-features baseline.
- one row per ``--model``: the decoder's mean-pooled final hidden states of each side run
  stand-alone (:mod:`omniloom.infer.embed`, as ``/v1/embeddings`` does), cosine scores.

    python bench/embed_retrieval.py --test /work/scratch/embed/shards_test/train \
        --train /work/scratch/embed/shards_train/train --val /work/scratch/embed/shards_val/train \
        --model shipped=world --model contrastive=/work/scratch/embed/run/ckpt/latest \
        --n 500 --json docs/bench/embed_retrieval.json
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

KS = (1, 5)
LAMBDAS = (1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0)


def read_pairs(path: str, kinds: tuple[str, ...], n: int | None) -> tuple[dict[str, list], object]:
    """The first ``n`` pairs of each kind in the shard set at ``path`` (one per document), and its vocab."""
    from omniloom.data.shards import ShardSet
    from omniloom.tokens.pairs import find_pairs
    from omniloom.tokens.vocab import Vocab

    data = ShardSet.open(path)
    vocab = Vocab.load(data.vocab_path())
    out: dict[str, list] = {k: [] for k in kinds}
    for d in range(data.num_docs):
        for p in find_pairs(data.doc(d)[0], vocab):
            if p.kind in out and (n is None or len(out[p.kind]) < n):
                out[p.kind].append(p)
        if n is not None and all(len(v) >= n for v in out.values()):
            break
    return out, vocab


def recalls(sim: np.ndarray, keys: list, rng: np.random.Generator) -> dict[str, float]:
    """sim (n, n): media i vs text j. Recall@k both ways; a hit is any candidate with the query's text."""
    code = {t: i for i, t in enumerate(dict.fromkeys(keys))}
    k = np.array([code[t] for t in keys])
    same = k[:, None] == k[None, :]  # (n, n): pair i's text == pair j's text
    s = sim + rng.uniform(0, 1e-9, sim.shape)  # random tie-breaking
    out = {}
    for name, m in (("media->text", s), ("text->media", s.T)):
        order = np.argsort(-m, axis=1)  # (n, n) candidates, best first
        hits = np.take_along_axis(same, order, axis=1)
        for kk in KS:
            out[f"{name} R@{kk}"] = float(hits[:, :kk].any(axis=1).mean())
    return out


def tfidf(rows: list[list[int]], dim: int, idf: np.ndarray | None = None):
    """Sparse L2-normalised TF-IDF (n, dim) of id lists; idf from these rows unless given."""
    import scipy.sparse as sp

    data, ind, ptr = [], [], [0]
    for r in rows:
        u, c = np.unique(np.asarray(r, dtype=np.int64), return_counts=True)
        ind.extend(u.tolist())
        data.extend(c.tolist())
        ptr.append(len(ind))
    x = sp.csr_matrix((np.asarray(data, np.float64), ind, ptr), shape=(len(rows), dim))
    if idf is None:
        df = np.asarray((x > 0).sum(axis=0)).ravel()
        idf = np.log((1 + len(rows)) / (1 + df)) + 1.0
    x = x.multiply(idf[None, :]).tocsr()
    norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()).clip(1e-12)
    return sp.csr_matrix(x.multiply(1.0 / norm[:, None])), idf


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def ridge_scores(feat, train, val, test, rng) -> tuple[np.ndarray, float]:
    """Fit media features -> text TF-IDF on ``train`` (dual ridge), lambda by mean R@1 on ``val``;
    returns the test score matrix (cosine of predicted and true text bags) and the lambda."""
    xtr, idf_x = tfidf([feat(p) for p in train], feat.dim)
    ytr, idf_y = tfidf([list(p.text) for p in train], feat.text_dim)
    K = (xtr @ xtr.T).toarray()
    Yd = ytr.toarray()

    def scores(pairs, lam, alpha=None):
        x, _ = tfidf([feat(p) for p in pairs], feat.dim, idf_x)
        y, _ = tfidf([list(p.text) for p in pairs], feat.text_dim, idf_y)
        a = np.linalg.solve(K + lam * np.eye(K.shape[0]), Yd) if alpha is None else alpha
        pred = (x @ xtr.T).toarray() @ a  # (n, text_dim)
        return unit(pred) @ unit(y.toarray()).T, a

    best = None
    for lam in LAMBDAS:
        s, a = scores(val, lam)
        r = recalls(s, [p.text for p in val], rng)
        score = (r["media->text R@1"] + r["text->media R@1"]) / 2
        if best is None or score > best[0]:
            best = (score, lam, a)
    return scores(test, best[1], best[2])[0], best[1]


class Features:
    """A media feature map (ids -> feature ids) with its dimension and the text dimension."""

    def __init__(self, fn, dim: int, text_dim: int):
        self.fn, self.dim, self.text_dim = fn, dim, text_dim

    def __call__(self, p) -> list[int]:
        return self.fn(p)


def _layout(vocab) -> list:
    """The id ranges and span tokens an embedding uses (other ranges, e.g. a new modality, may differ)."""
    return [vocab.range_of(m) for m in ("text", "image", "audio")] + \
        [vocab.special(s) for s in ("image", "/image", "audio", "/audio", "voice:none")]


def model_scores(model_dir: str, pairs: list, vocab, batch: int) -> np.ndarray:
    """Cosine scores (n, n) of the model's pooled stand-alone embeddings, media i vs text j."""
    import torch

    from omniloom.infer.embed import pooled_states
    from omniloom.infer.generate import OmniModel
    from omniloom.tokens.pairs import embed_sequence

    omni = OmniModel.load(model_dir)
    if _layout(omni.vocab) != _layout(vocab):  # the ids embedded must mean the same to the model
        raise SystemExit(f"{model_dir}: its vocabulary lays out text, image or audio ids unlike the shards'")
    model = omni.model.eval()

    def embed(kind_ids: list[tuple[str, tuple[int, ...]]]) -> np.ndarray:
        out = []
        for i in range(0, len(kind_ids), batch):
            seqs = [embed_sequence(k, ids, vocab) for k, ids in kind_ids[i:i + batch]]
            with torch.inference_mode():
                out.append(pooled_states(model, [s for s, _ in seqs], [m for _, m in seqs]).numpy())
        return unit(np.concatenate(out))

    media = embed([(p.kind, p.media) for p in pairs])
    text = embed([("text", p.text) for p in pairs])
    return media @ text.T


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", required=True, help="tokenized held-out shards (world test split: caption, asr)")
    ap.add_argument("--train", required=True, help="tokenized training shards (fits the ridge baseline)")
    ap.add_argument("--val", required=True, help="tokenized validation shards (the ridge's lambda)")
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=DIR",
                    help="a model to score (bundled name, model dir, checkpoint); repeat")
    ap.add_argument("--n", type=int, default=500, help="held-out pairs per kind")
    ap.add_argument("--batch", type=int, default=64, help="sequences per forward pass")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    import torch

    from omniloom.utils.fileio import atomic_write_json

    torch.set_num_threads(a.threads)
    kinds = ("image", "audio")
    test, vocab = read_pairs(a.test, kinds, a.n)
    train, _ = read_pairs(a.train, kinds, None)
    val, _ = read_pairs(a.val, kinds, None)
    for k in kinds:
        if len(test[k]) < a.n:
            raise SystemExit(f"--test holds only {len(test[k])} {k} pairs, fewer than --n {a.n}")
    T = vocab.text_size
    i0, a0 = vocab.range_of("image")[0], vocab.range_of("audio")[0]
    feats = {
        "image": {"bag of codes": Features(lambda p: [c - i0 for c in p.media], vocab.image_codebook_size, T),
                  "codes by slot": Features(lambda p: [j * vocab.image_codebook_size + c - i0
                                                       for j, c in enumerate(p.media)],
                                            vocab.image_tokens * vocab.image_codebook_size, T)},
        "audio": {"bag of codes": Features(lambda p: [c - a0 for c in p.media],
                                           vocab.audio_codebook_size * vocab.audio_codebooks, T)},
    }
    rows = []
    for k in kinds:
        rng = np.random.default_rng(a.seed)
        pairs = test[k]
        keys = [p.text for p in pairs]
        info = {"pairs": len(pairs), "distinct_texts": len(set(keys)), "train_pairs": len(train[k])}

        def add(name: str, sim: np.ndarray, secs: float, **extra) -> None:
            r = {"kind": k, "method": name, **recalls(sim, keys, rng), "seconds": round(secs, 2), **info, **extra}
            rows.append(r)
            print(f"{k:5s}  {name:44s} " + "  ".join(f"{r[c]:>6.3f}" for c in _cols()), flush=True)

        print(f"{k}: {info}")
        print(f"{'kind':5s}  {'method':44s} " + "  ".join(f"{c.replace('media', 'm').replace('text', 't'):>6s}"
                                                        for c in _cols()).replace(' R', ''))
        add("chance", rng.uniform(size=(len(pairs), len(pairs))), 0.0)
        t0 = time.perf_counter()
        xm, _ = tfidf([[c for c in p.media] for p in pairs], vocab.size)
        xt, _ = tfidf([list(p.text) for p in pairs], vocab.size)
        add("bag of ids (cosine)", (xm @ xt.T).toarray(), time.perf_counter() - t0)
        for fname, f in feats[k].items():
            t0 = time.perf_counter()
            sim, lam = ridge_scores(f, train[k], val[k], pairs, rng)
            add(f"ridge: {fname} -> bag of words", sim, time.perf_counter() - t0, ridge_lambda=lam)
        for spec in a.model:
            label, _, path = spec.partition("=")
            if not path:
                label, path = spec, spec
            t0 = time.perf_counter()
            add(f"model {label}: mean-pooled hidden states", model_scores(path, pairs, vocab, a.batch),
                time.perf_counter() - t0, model=path)
    if a.json:
        atomic_write_json(a.json, {"bench": "embed_retrieval", "n": a.n, "seed": a.seed, "rows": rows,
                                   "command": "python bench/embed_retrieval.py " + " ".join(sys.argv[1:] if argv is None
                                                                                           else argv)})
        print(f"wrote {a.json}")
    return 0


def _cols() -> list[str]:
    return [f"{d} R@{k}" for d in ("media->text", "text->media") for k in KS]


if __name__ == "__main__":
    raise SystemExit(main())
