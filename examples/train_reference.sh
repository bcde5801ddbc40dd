#!/usr/bin/env bash
# Train the reference world model (the `world` preset) on the shapes world with the shipped codecs,
# then evaluate it. Resumable: rerun the same command after an interruption; every stage that is
# already complete is skipped and training resumes from its newest checkpoint.
#
#   bash examples/train_reference.sh    # the shipped model: STEPS=850, then rerun with STEPS=1100 (99 min, 2-core CPU)
#   N=200000 STEPS=20000 BATCH=32 WARMUP=500 bash examples/train_reference.sh   # a longer run
#   NPROC=8 N=200000 STEPS=20000 BATCH=128 bash examples/train_reference.sh      # torchrun on 8 GPUs
#
# Ship a run: omniloom export --checkpoint RUN/ckpt/step_N --format omniloom --dtype bfloat16 \
#                 --out src/omniloom/assets/models/world
set -euo pipefail
DATA=${DATA:-data/world}
RUN=${RUN:-runs/world}
N=${N:-40000}
STEPS=${STEPS:-1100}
BATCH=${BATCH:-16}
WARMUP=${WARMUP:-40}
WORKERS=${WORKERS:-$(nproc)}
NPROC=${NPROC:-1}

[ -f "$DATA/train.jsonl" ] || omniloom world generate --out "$DATA" --split train --n "$N" --seed 1 --workers "$WORKERS"
[ -f "$DATA/tok/tokenizer.json" ] || omniloom tokenizer train --corpus "$DATA/train.jsonl" --vocab-size 512 --out "$DATA/tok"
[ -f "$DATA/shards/train/manifest.json" ] || omniloom tokenize --input "$DATA/train.jsonl" \
  --tokenizer "$DATA/tok/tokenizer.json" --codec image-world --codec audio-world --out "$DATA/shards" --val-fraction 0.01
args=(--preset world data.train="$DATA/shards/train" data.val="$DATA/shards/val" train.out_dir="$RUN" train.steps="$STEPS"
      train.batch_size="$BATCH" train.warmup_steps="$WARMUP" train.eval_every=200 train.ckpt_every=50 train.eval_batches=4)
if [ "$NPROC" -gt 1 ]; then
  torchrun --standalone --nproc-per-node "$NPROC" -m omniloom.cli train "${args[@]}"
else
  omniloom train "${args[@]}"
fi
omniloom eval --model "$RUN" --n 50 --json "$RUN/eval.json"
