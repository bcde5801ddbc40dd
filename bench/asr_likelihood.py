"""Would a wider search (beam search) fix the model's speech recognition errors? The likelihood test.

For each test utterance of the ``asr`` task (world test split, seed 1234), the model transcribes
greedily, as ``omniloom eval`` does. For every wrong transcript, the model then scores two
complete answers to the same prompt: the true transcript and its own greedy one (sum of the
log-probabilities of the assistant turn, end token included). A search that finds more likely
sequences than greedy decoding can only fix an error if the true transcript is the more likely of
the two; if the model prefers its own wrong answer, the error is the model's, not the decoding's.

    python bench/asr_likelihood.py --n 100 --json docs/bench/asr_likelihood.json

Last line: ``wer=<mean per utterance, as the eval> errors=<k> truth_more_likely=<j>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="world", help="bundled model name or model directory (default: world)")
    p.add_argument("--n", type=int, default=100, help="test utterances (default 100)")
    p.add_argument("--data", default="data/world-eval", help="where test samples are generated and cached")
    p.add_argument("--json", default=None, metavar="OUT", help="write the summary and every error as JSON")
    args = p.parse_args(argv)

    from omniloom.eval.runner import LocalBackend, ensure_split, load_samples
    from omniloom.infer.generate import OmniModel
    from omniloom.infer.rerank import answer_logprobs
    from omniloom.world import judges

    path = ensure_split(args.data, "test", "asr", args.n, 1234)
    root = path.parent
    samples = load_samples(path, args.n)
    omni = OmniModel.load(args.model)
    backend = LocalBackend(omni)
    proc, model = omni.processor, omni.model

    def logprob(sample: dict, text: str) -> float:
        msgs = sample["messages"][:-1] + [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
        return answer_logprobs(model, [proc.encode_messages(msgs, base_dir=root)])[0]

    t0 = time.perf_counter()
    wers, errors = [], []
    for i, s in enumerate(samples):
        truth, hyp = s["truth"]["transcript"], backend.answer(s, root).text.strip()
        wers.append(judges.wer(truth, hyp))
        if hyp != truth:
            row = dict(index=i, truth=truth, greedy=hyp, wer=wers[-1],
                       logprob_truth=logprob(s, truth), logprob_greedy=logprob(s, hyp))
            errors.append(row)
            print(f"#{i}: truth {row['logprob_truth']:.2f} greedy {row['logprob_greedy']:.2f} | {truth!r} -> {hyp!r}",
                  flush=True)
    wer = sum(wers) / len(wers)
    better = sum(r["logprob_truth"] > r["logprob_greedy"] for r in errors)
    summary = dict(model=args.model, n=len(samples), wer=wer, errors=len(errors), truth_more_likely=better,
                   seconds=time.perf_counter() - t0,
                   command="python bench/asr_likelihood.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(summary=summary, errors=errors), indent=1) + "\n")
        print(f"wrote {args.json}")
    print(f"wer={wer:.4f} errors={len(errors)} truth_more_likely={better}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
