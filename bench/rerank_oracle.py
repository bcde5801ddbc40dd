"""How well does the model judge its own drawings? Candidate images scored several ways, against the judge.

For each test prompt of a drawing task (``draw`` or ``edit``, world test split, seed 1234), ``N``
candidate images are drawn in one batch (candidate 0 greedy, the others sampled at ``--temperature``,
guidance ``--cfg-scale``). The world's judge reads every candidate, which gives the *oracle*: the
share of prompts for which at least one candidate is right, an upper bound for any reranker. Each
scorer then picks one candidate per prompt, and its accuracy is reported beside greedy and oracle:

* ``caption``: the model's log-likelihood of the request's description as the image's caption
  (what ``image_candidates`` uses; ``draw`` only, an edit has no description of its result);
* ``cond``: the model's log-likelihood of the image codes given the prompt;
* ``pmi``: the same minus their log-likelihood given the unconditional (null) prompt;
* ``mbr``: consensus (minimum Bayes risk with code agreement): the candidate whose image codes agree
  most, position by position, with the other candidates'.

    python bench/rerank_oracle.py --task draw --candidates 8 --json docs/bench/rerank_oracle_draw.json

Last line: ``greedy=<..> oracle=<..> <scorer>=<..> ...``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="bundled model name or model directory (default: world)")
    p.add_argument("--task", default="draw", choices=["draw", "edit"])
    p.add_argument("--n", type=int, default=50, help="test prompts (default 50)")
    p.add_argument("--candidates", type=int, default=8, help="candidates per prompt (default 8)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of candidates 1.. (default 1)")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="classifier-free guidance (default 2)")
    p.add_argument("--data", default="data/world-eval", help="where test samples are generated and cached")
    p.add_argument("--json", default=None, metavar="OUT", help="write the summary and per-prompt rows as JSON")
    args = p.parse_args(argv)
    if args.candidates < 2 or args.n < 1:
        p.error("--candidates must be >= 2 and --n >= 1")

    from omniloom.eval.runner import ensure_split, load_samples
    from omniloom.eval.scoring import Answer, score
    from omniloom.infer.engine import Request
    from omniloom.infer.generate import OmniModel, _image_event, resolve_model_dir
    from omniloom.infer.grammar import SpanGrammar
    from omniloom.infer.rerank import caption_logprobs, drawing_description
    from omniloom.infer.sampling import SamplingParams
    from omniloom.tokens import build_prompt, null_condition

    omni = OmniModel.load(resolve_model_dir(args.model))
    vocab, model = omni.vocab, omni.model
    path = ensure_split(args.data, "test", args.task, max(args.n, 50), 1234)
    samples = load_samples(path, args.n)
    lo, L, close = vocab.range_of("image")[0], vocab.image_tokens, vocab.special("/image")
    uncond = null_condition(vocab) + build_prompt([], vocab, omni.tok, "image", None, add_bos=False)

    @torch.inference_mode()
    def image_logprob(prefix: list[int], spans: list[list[int]]) -> list[float]:
        ids = torch.tensor([prefix + s for s in spans])
        lp = torch.log_softmax(model(ids[:, :-1]).float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        return lp[:, len(prefix) - 1:].sum(1).tolist()

    rows, t0 = [], time.time()
    for i, s in enumerate(samples):
        prompt = omni.processor.prompt_ids(s["messages"][:-1], "image", None, base_dir=path.parent)
        reqs = [Request(prompt, SamplingParams(max_new_tokens=L + 1, temperature=0.0 if k == 0 else args.temperature,
                                               seed=1000 * i + k, stop_ids=(close,)),
                        SpanGrammar(vocab, model.cfg.vocab_size, outputs=("image",), prefix=prompt),
                        uncond_prompt=uncond, cfg_scale=args.cfg_scale) for k in range(args.candidates)]
        spans = [o[:L] for o in omni.engine.generate(reqs)]
        ok = [score(args.task, s["truth"], Answer(image=_image_event(omni, [t - lo for t in sp]).image))[0]
              for sp in spans]
        cond = image_logprob(prompt, spans)
        scores = {"cond": cond, "pmi": list(np.subtract(cond, image_logprob(uncond, spans)))}
        codes = np.array(spans)  # (N, L): consensus, the candidate agreeing most with the others code by code
        agree = (codes[:, None, :] == codes[None, :, :]).mean(-1)
        scores["mbr"] = list((agree.sum(1) - 1.0) / (len(spans) - 1))
        if args.task == "draw":
            scores["caption"] = caption_logprobs(omni, [[t - lo for t in sp] for sp in spans],
                                                 drawing_description(s["truth"]["prompt"]))
        rows.append({"ok": ok, **scores})
        print(f"{i + 1}/{len(samples)} greedy {ok[0]:.0f} any {max(ok):.0f} "
              + " ".join(f"{k} {ok[int(np.argmax(v))]:.0f}" for k, v in scores.items())
              + f" ({time.time() - t0:.0f} s)", flush=True)

    ok = np.array([r["ok"] for r in rows])
    summary = {"task": args.task, "n": len(rows), "candidates": args.candidates, "temperature": args.temperature,
               "cfg_scale": args.cfg_scale, "greedy": float(ok[:, 0].mean()), "oracle": float(ok.max(1).mean())}
    for k in [k for k in ("caption", "cond", "pmi", "mbr") if k in rows[0]]:
        summary[k] = float(np.mean([r["ok"][int(np.argmax(r[k]))] for r in rows]))
    print(json.dumps(summary))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"summary": summary, "rows": rows}))
        tmp.replace(out)
        print(f"wrote {out}")
    print(" ".join(f"{k}={summary[k]:.2f}" for k in ("greedy", "oracle", "caption", "cond", "pmi", "mbr") if k in summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
