"""Kept knowledge of a grafted model: general questions the base answers, and perplexity on real
English text, for one or more model directories side by side (the pristine graft is the base: its
logits over the base's ids equal the base's, tested in tests/test_graft.py).

    python bench/kept_knowledge.py --model runs/smol-graft --model runs/smol-world \\
        --json docs/bench/kept_knowledge.json

Questions: bench/data/general_questions.jsonl ({"q": ..., "a": [accepted answers]}), answered
greedily through each model's chat format; an answer counts when it contains an accepted answer
(case-insensitive, whole words). ``--write-correct FILE`` keeps the questions the first model
answers right (how the shipped set was made from a longer candidate list).

Perplexity: the Python Language Reference's topic texts that ship with CPython
(``pydoc_data.topics``, PSF license), sorted by topic name, the first ``--ppl-tokens`` tokens in
windows of ``--window``; no chat format, plain text. Reported twice: with the model's whole
softmax (what it predicts, appended rows included) and with the softmax over the base's text ids
only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
QUESTIONS = HERE / "data" / "general_questions.jsonl"


def correct(answer: str, accepted: list[str]) -> bool:
    text = answer.lower()
    return any(re.search(r"(?<![a-z0-9])" + re.escape(a.lower()) + r"(?![a-z0-9])", text) for a in accepted)


def ask(omni, question: str, max_new_tokens: int) -> str:
    from omniloom.infer.generate import TextDelta, generate
    from omniloom.infer.sampling import SamplingParams

    out = []
    for ev in generate(omni, [{"role": "user", "content": question}], output_modality="text", outputs=("text",),
                       sampling=SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)):
        if isinstance(ev, TextDelta):
            out.append(ev.text)
    return "".join(out)


def reference_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


@torch.no_grad()
def perplexity(omni, ids: list[int], window: int) -> tuple[float, float]:
    """(ppl with the whole softmax, ppl with the softmax over the text ids only)."""
    T = omni.vocab.text_size
    nll_all = nll_text = 0.0
    n = 0
    for s in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[s:s + window + 1]])
        if chunk.shape[1] < 2:
            break
        logits = omni.model(chunk[:, :-1])[0].float()  # (L, V)
        tgt = chunk[0, 1:]
        nll_all += float(-torch.log_softmax(logits, -1).gather(1, tgt[:, None]).sum())
        nll_text += float(-torch.log_softmax(logits[:, :T], -1).gather(1, tgt[:, None]).sum())
        n += tgt.numel()
    return math.exp(nll_all / n), math.exp(nll_text / n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="model directory or run (repeat)")
    p.add_argument("--questions", default=str(QUESTIONS))
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--ppl-tokens", type=int, default=16384)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--write-correct", default=None, metavar="FILE",
                   help="write the questions the first model answers correctly to FILE")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    from omniloom.infer.generate import OmniModel

    qs = [json.loads(x) for x in Path(args.questions).read_text().splitlines() if x.strip()]
    text = reference_text()
    rows = []
    for i, m in enumerate(args.model):
        omni = OmniModel.load(m)
        t0 = time.time()
        answers = [ask(omni, q["q"], args.max_new_tokens) for q in qs]
        ok = [correct(a, q["a"]) for a, q in zip(answers, qs)]
        t_qa = time.time() - t0
        ids = omni.tok.encode(text)[:args.ppl_tokens + 1]
        t0 = time.time()
        ppl_all, ppl_text = perplexity(omni, ids, args.window)
        rows.append({"model": str(m), "questions": len(qs), "correct": sum(ok), "accuracy": sum(ok) / len(qs),
                     "ppl_full_softmax": ppl_all, "ppl_text_softmax": ppl_text, "ppl_tokens": len(ids) - 1,
                     "qa_seconds": round(t_qa, 1), "ppl_seconds": round(time.time() - t0, 1),
                     "answers": [{"q": q["q"], "answer": a, "correct": c} for q, a, c in zip(qs, answers, ok)]})
        print(f"{m}: {sum(ok)}/{len(qs)} correct, ppl {ppl_all:.3f} (text softmax {ppl_text:.3f})",
              file=sys.stderr, flush=True)
        if i == 0 and args.write_correct:
            keep = [q for q, c in zip(qs, ok) if c]
            Path(args.write_correct).parent.mkdir(parents=True, exist_ok=True)
            Path(args.write_correct).write_text("".join(json.dumps(q) + "\n" for q in keep))
            print(f"wrote {len(keep)} questions to {args.write_correct}", file=sys.stderr)
    first = rows[0]
    print("\n| model | questions right | vs first | perplexity (full softmax) | vs first | perplexity (text softmax) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['correct']}/{r['questions']} | {r['correct'] / max(first['correct'], 1):.3f} | "
              f"{r['ppl_full_softmax']:.3f} | {r['ppl_full_softmax'] / first['ppl_full_softmax']:.3f} | "
              f"{r['ppl_text_softmax']:.3f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "source": "pydoc_data.topics",
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
