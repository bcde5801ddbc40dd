"""Sample K answers per prompt, score them with a reward, write preference pairs and best answers.

    omniloom world generate --out data/pref --split train --n 50 --tasks draw --seed 7
    omniloom sample --model world --input data/pref/train.jsonl --n 8 --out runs/pref/samples.jsonl \\
        --reward world --pairs runs/pref/pairs.jsonl --best runs/pref/best.jsonl

Prompts: one {"messages": [...]} a line (media paths relative to the file), optional "id", "output"
(text|audio|image), "voice" and any metadata the reward reads; a line whose messages end with an
assistant turn (a data set line) keeps it as the reference and answers in its modality. Each
output line is one candidate: the prompt, the candidate as an assistant message (media written
under <out stem>_media/), its sampling (seed, temperature, top_p, index, latency), its ids and,
with --reward, its score. A rerun skips prompts already sampled and redoes partly sampled ones.

Rewards (--reward): "world" (the shapes world's judges, read from each line's task and truth),
module:function, path/file.py:function, or cmd:COMMAND (the line as JSON on stdin, the score
printed last). --pairs writes TRL-format preference pairs (best against worst, then second best
against second worst, ... while the gap exceeds --pair-margin); --best writes the best candidate
of each prompt as a messages JSONL for `omniloom tokenize` (rejection-sampling fine-tuning).
--with-reference ranks each prompt's reference answer (a data set line's assistant turn, judged by
the same reward, as the model would write it: encoded by the codecs and decoded back) among its
candidates, so the truth can be the chosen answer against the model's own mistakes. The judged
references are kept in <out stem>.references.jsonl, and a rerun takes them back unjudged while the
reference, the reward and the model stay the same. See docs/preference.md.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="world", help="bundled model name, model directory or training run")
    p.add_argument("--input", required=True, help="prompts JSONL")
    p.add_argument("--out", required=True, help="samples JSONL (appended to; a rerun resumes)")
    p.add_argument("--n", type=int, default=8, help="candidates per prompt (default %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 off; default %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling (0 off; default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0,
                   help="run seed: each candidate's seed derives from it and the prompt's id (default %(default)s)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance for image answers (default: the model's generation.json, else 1)")
    p.add_argument("--batch", type=int, default=None,
                   help="candidates per engine batch (default: all --n of a prompt in one batch)")
    p.add_argument("--reward", default=None, metavar="SPEC",
                   help="score candidates: world, module:function, file.py:function or cmd:COMMAND")
    p.add_argument("--reward-timeout", type=float, default=60.0, help="seconds a cmd: reward may take per candidate")
    p.add_argument("--pairs", default=None, metavar="OUT", help="write preference pairs (TRL prompt/chosen/rejected)")
    p.add_argument("--pair-margin", type=float, default=0.0,
                   help="a pair needs the chosen to score more than this above the rejected (default %(default)s)")
    p.add_argument("--max-pairs-per-prompt", type=int, default=None, help="at most this many pairs per prompt")
    p.add_argument("--best", default=None, metavar="OUT",
                   help="write each prompt's best candidate as a messages JSONL (for omniloom tokenize)")
    p.add_argument("--best-min-score", type=float, default=None,
                   help="--best keeps a prompt only when its best candidate scores at least this")
    p.add_argument("--with-reference", action="store_true",
                   help="judge each prompt's reference answer (the input's assistant turn, through the codecs' "
                        "round trip; kept in <out stem>.references.jsonl for reruns) too and rank it among its "
                        "candidates for --pairs and --best, so a prompt whose candidates are all wrong still gives a "
                        "pair: the reference against the worst candidate")
    p.add_argument("--answers-as", default="media", choices=["media", "codes"],
                   help="how --pairs and --best write each answer: media files by path (default; a reader encodes "
                        "them again) or code parts holding exactly the ids the model sampled")
    p.add_argument("--int8", action="store_true", help="int8 weight-only quantization of the decoder")
    p.add_argument("--no-progress", action="store_true")


def _summary(lines: list[dict]) -> list[str]:
    """Mean score, oracle best-of-K and candidate 0's mean, per world task when the lines carry one."""
    groups: dict[str, dict[str, list[float]]] = {}
    for ln in lines:
        if "score" not in ln:
            continue
        key = str((ln.get("meta") or {}).get("task") or ln.get("output") or "free")
        groups.setdefault(key, {}).setdefault(ln["id"], [0.0] * ln["sampling"]["n"])[ln["sampling"]["index"]] = \
            float(ln["score"])
    out = []
    for key, by in sorted(groups.items()):
        scores = list(by.values())
        mean = sum(sum(s) / len(s) for s in scores) / len(scores)
        first = sum(s[0] for s in scores) / len(scores)
        best = sum(max(s) for s in scores) / len(scores)
        out.append(f"  {key}: {len(scores)} prompts, mean score {mean:.3f}, candidate 0 {first:.3f}, "
                   f"oracle best-of-{len(scores[0])} {best:.3f}")
    return out


def run(args: argparse.Namespace) -> int:
    from ..infer.generate import OmniModel
    from ..infer.rewards import load_reward, register_reward
    from ..infer.sample_file import (best_lines, code_message, make_pairs, media_dir_for, read_samples, reference_lines,
                                     references_path_for, run_sampling, write_best, write_pairs)
    from ..infer.sampling import SamplingParams
    from .world_reward import world_reward

    register_reward("world", lambda: world_reward)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if (args.pairs or args.best) and not args.reward:
        raise ValueError("--pairs and --best rank candidates by score: give --reward")
    if args.with_reference and not (args.pairs or args.best):
        raise ValueError("--with-reference ranks the reference answers for --pairs and --best: give one of them")
    if args.temperature == 0 and args.n > 1:
        raise ValueError("--temperature 0 is greedy: all --n candidates would be the same answer")
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed).validate()
    reward = load_reward(args.reward, args.reward_timeout) if args.reward else None
    omni = OmniModel.load(args.model, int8=args.int8)
    rep = run_sampling(omni, args.input, args.out, args.n, sampling, args.cfg_scale, args.batch, reward,
                       progress=not args.no_progress)
    print(f"{rep.prompts} prompts: {rep.sampled} sampled ({rep.redone} redone), {rep.skipped} already done; "
          f"{rep.rescored} lines scored afterwards; {rep.seconds:.0f} s -> {args.out}")
    lines = read_samples(args.out)
    for row in _summary(lines):
        print(row)
    samples_dir = Path(args.out).parent.resolve()
    answer = functools.partial(code_message, omni) if args.answers_as == "codes" else None
    if args.with_reference:
        refs = reference_lines(lines, reward, samples_dir, omni, media_dir_for(Path(args.out).resolve()),
                               progress=not args.no_progress, cache=references_path_for(Path(args.out).resolve()))
        if not refs:
            raise ValueError(f"--with-reference: no sample of {args.out} has a reference answer (prompts whose last "
                             "message is the assistant's)")
        right = sum(float(r["score"]) for r in refs) / len(refs)
        print(f"{len(refs)} reference answers judged: mean score {right:.3f}")
        lines = lines + refs
    if args.pairs:
        k = write_pairs(args.pairs, make_pairs(lines, args.pair_margin, args.max_pairs_per_prompt), samples_dir,
                        answer)
        print(f"wrote {k} preference pairs to {args.pairs}")
    if args.best:
        k = write_best(args.best, best_lines(lines, args.best_min_score), samples_dir, answer)
        print(f"wrote {k} best answers to {args.best}")
    return 0
