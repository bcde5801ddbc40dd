"""Rehearsal data for a grafted model: the base's own answers to general prompts, as message JSONL.

Mixed into the media data (10-20% of documents), it keeps the adapters from unlearning the base's
answer style while they learn the new modalities (docs/graft.md, "Kept knowledge"). The answers are
the base's (self-distilled: greedy, from the untrained graft, whose text logits are the base's), so
no outside text is needed. Prompts are made from templates x topics and never equal a question of
the kept-knowledge benchmark (bench/data/general_questions*.jsonl), which must stay held out.

    python examples/rehearsal_data.py --model data/smol-graft --out data/rehearsal/train.jsonl --n 600
    omniloom tokenize --input data/rehearsal/train.jsonl --tokenizer data/smol-graft/tokenizer.json \\
        --vocab data/smol-graft/vocab.json --out data/rehearsal/shards
    omniloom train ... data.train=data/smolworld/shards/train,data/rehearsal/shards/train

Only answers the base ends itself are kept (a cut one would teach ending mid-sentence); the prompts
whose answers hit --max-new-tokens go to OUT.cut.txt. Resumable: prompts already in --out or in
OUT.cut.txt are skipped.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# short-answer prompts: the base is verbose, and only answers it ends itself are kept (of the first
# prompts asked as "Tell me an interesting fact about X.", none ended within 192 tokens)
TEMPLATES = ("Tell me one interesting fact about {t}, in one sentence.", "Explain {t} in one short sentence.",
             "Write one short sentence about {t}.", "In a few words, why do people care about {t}?",
             "Describe {t} to a child in two short sentences.", "Give me two quick facts about {t}.")
TOPICS = ("volcanoes", "honeybees", "the violin", "glaciers", "bread", "photosynthesis", "the internet",
          "elephants", "the ocean tides", "rainbows", "bicycles", "coffee", "the human brain", "snow", "chess",
          "trains", "the printing press", "octopuses", "electricity", "deserts", "libraries", "clouds",
          "magnets", "dinosaurs", "the moon landing", "vaccines", "recycling", "owls", "earthquakes",
          "the alphabet", "windmills", "rice", "the telescope", "penguins", "forests", "batteries", "bridges",
          "dolphins", "the calendar", "soap", "maps", "lighthouses", "tea", "spiders", "comets", "cheese",
          "the piano", "rivers", "airplanes", "sharks", "compasses", "mushrooms", "wind", "clocks", "the heart",
          "coral reefs", "paper", "wolves", "lightning", "gardens", "satellites", "salt", "the camera",
          "frogs", "mountains", "computers", "kangaroos", "sand", "the wheel", "whales", "the sun",
          "apples", "castles", "rain", "mathematics", "music", "the skeleton", "ants", "islands", "glass")


def prompts(n: int) -> list[str]:
    held_out = set()
    for f in (ROOT / "bench" / "data").glob("general_questions*.jsonl"):
        held_out |= {json.loads(x)["q"].strip().lower() for x in f.read_text().splitlines() if x.strip()}
    out = [t.format(t=topic) for topic in TOPICS for t in TEMPLATES]
    out = [p for p in out if p.strip().lower() not in held_out]
    if n > len(out):
        raise ValueError(f"--n {n}: only {len(out)} distinct prompts (templates x topics)")
    random.Random(0).shuffle(out)  # any first n spread over topics and templates (fixed order)
    return out[:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the untrained graft (its text answers are the base's)")
    p.add_argument("--out", required=True, help="message JSONL to write (appended; resumable)")
    p.add_argument("--n", type=int, default=600, help="prompts to answer (default 600)")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--keep-cut", action="store_true", help="keep answers cut at --max-new-tokens too")
    args = p.parse_args(argv)
    from tqdm import tqdm

    from omniloom.infer.generate import Done, OmniModel, TextDelta, generate
    from omniloom.infer.sampling import SamplingParams

    todo = prompts(args.n)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            if line.strip():
                done.add(json.loads(line)["messages"][0]["content"])
    omni = OmniModel.load(args.model)
    skipped = out.with_suffix(".cut.txt")  # prompts whose answers hit the cap: not asked again
    if skipped.is_file():
        done |= set(skipped.read_text().splitlines())
    with open(out, "a") as f, open(skipped, "a") as cut:
        for q in tqdm([q for q in todo if q not in done], desc="rehearsal", unit="answer"):
            parts, finish = [], "length"
            for ev in generate(omni, [{"role": "user", "content": q}], output_modality="text", outputs=("text",),
                               sampling=SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)):
                if isinstance(ev, TextDelta):
                    parts.append(ev.text)
                elif isinstance(ev, Done):
                    finish = ev.finish_reason
            text = "".join(parts).strip()
            # only answers the base ended itself: a cut one would teach the model to end mid-sentence
            if text and (finish == "stop" or args.keep_cut):
                # one whole line per answer: a stop mid-run loses at most the one being written
                f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                                 {"role": "assistant", "content": text}]}) + "\n")
                f.flush()
            else:
                cut.write(q + "\n")
                cut.flush()
    lines = sum(1 for x in out.read_text().splitlines() if x.strip())
    print(f"{out}: {lines} rehearsal conversations", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
