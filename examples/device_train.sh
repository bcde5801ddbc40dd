#!/usr/bin/env bash
# Train the reference world model on a lent GPU machine in ONE call of the `device` tool, which
# allows 10 minutes a command and 15 minutes of device time a session, on a bare machine that can
# reach no network. It generates fresh world data there (all cores), tokenizes it with the shipped
# vocabulary, trains on from the shipped weights (or from scratch) until a time budget is spent,
# exports bf16 weights and splits them into parts small enough to come back (16 MiB a file).
#
# Before the call, here (once per clone): wheels for the packages the device image lacks, ~12 MB,
# kept out of git:
#   echo /.whl/ >> .git/info/exclude && bash examples/device_train.sh --wheels
# The tracked files are ~83 MB (the bundled models), over the 64 MiB a call carries, so the call
# runs from a slimmed working tree (examples/device_tree.sh: the languages' deltas left out; git
# keeps them), 61 MiB with the wheels:
#   bash examples/device_tree.sh slim src examples pyproject.toml '!src/omniloom/assets/models/world-*'
#   bash examples/device_tree.sh size .whl
# The call (device tool `run`): command "bash examples/device_train.sh", carry [".whl"],
#   timeout_s 600. Sizes are environment variables: N (samples, default 120000), STEPS (LR
#   schedule, default 4000), BUDGET (seconds for the whole script, default 560: training gets what
#   data, tokens and a 45 s reserve for the last eval, checkpoint and export leave), BATCH
#   (sequences of 1024 tokens per step, default 64), LR (default 5e-4), INIT (default world, the
#   shipped weights; "" = from scratch), RESTATE (default spoken_math,edit: see world generate
#   --restate; with edit, the collected model's generation.json sets describe_edits). Each stage prints its finishing time, to size N next time.
# After it, here: bash examples/device_tree.sh restore
#   bash examples/device_train.sh --collect FILES_AT runs/device-model
#   (joins the parts, adds the shipped vocabulary, tokenizer, codecs and generation defaults, and
#   loads the result once), then: omniloom eval --model runs/device-model --n 50
#
# Dry run on a CPU (what can be checked without a GPU), in a copy of what the call sends
# (bash examples/device_tree.sh stage /tmp/dt .whl, from the slimmed tree; then cd /tmp/dt): N=200 VAL_FRACTION=0.2 STEPS=4 BATCH=2 BUDGET=100 COMPILE=false
#   OUT=/tmp/device-out bash examples/device_train.sh
set -euo pipefail
HERE=$PWD
abs() { case "$1" in /*) echo "$1" ;; *) echo "$HERE/$1" ;; esac; }
cd "$(dirname "$0")/.."
source examples/device_lib.sh
MODEL=src/omniloom/assets/models/world
WHEELS=(espeakng-loader==0.2.4 soundfile==0.14.0 soxr==1.1.0 vector-quantize-pytorch==1.32.0 einx==0.4.3
        torch-einops-utils loguru frozendict cffi pycparser)

if [ "${1:-}" = "--wheels" ]; then  # here: the device image's Python is 3.12 and lacks these
  rm -rf .whl && mkdir -p .whl
  device_wheels .whl "${WHEELS[@]}"
  du -sh .whl
  exit 0
fi

if [ "${1:-}" = "--collect" ]; then  # here: FILES_AT (the run's returned files) -> a model directory
  src=$(abs "${2:?usage: --collect FILES_AT OUT_DIR}") dst=$(abs "${3:?usage: --collect FILES_AT OUT_DIR}")
  ls "$src"/model.safetensors.part-* >/dev/null || { echo "no model.safetensors.part-* in $src" >&2; exit 1; }
  mkdir -p "$dst"
  cat "$src"/model.safetensors.part-* > "$dst/model.safetensors.tmp" && mv "$dst/model.safetensors.tmp" "$dst/model.safetensors"
  cp "$src/config.json" "$dst/"
  for f in vocab.json tokenizer.json codecs.json generation.json; do cp "$MODEL/$f" "$dst/"; done
  [ -f "$src/generation.json" ] && cp "$src/generation.json" "$dst/"  # the run's own (describe_edits)
  for d in "$MODEL"/*/; do [ -d "$d" ] && cp -r "$d" "$dst/"; done  # codec folders, if it has its own
  for f in metrics.jsonl device.log loss.png; do [ -f "$src/$f" ] && cp "$src/$f" "$dst/"; done
  python3 -c "import sys; from omniloom.infer.generate import OmniModel; OmniModel.load(sys.argv[1]); print('loads:', sys.argv[1])" "$dst"
  exit 0
fi

START=$(date +%s)
OUT=$(abs "${OUT:-/tmp/device-out}")
WORK=$(abs "${WORK:-/tmp/omni-device}")
PY=${PY:-python3}
N=${N:-120000}
STEPS=${STEPS:-4000}
BUDGET=${BUDGET:-560}
RESERVE=${RESERVE:-45}
BATCH=${BATCH:-64}
LR=${LR:-5e-4}
INIT=${INIT-world}
COMPILE=${COMPILE:-true}
WORKERS=${WORKERS:-$(nproc)}
device_log

if ! "$PY" -c "import espeakng_loader, soundfile, soxr, vector_quantize_pytorch" 2>/dev/null \
    && ls .whl/*.whl >/dev/null 2>&1; then  # only where the packages are missing (the device image)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
OMNI=("$PY" -m omniloom.cli)
stamp "python $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'), $WORKERS workers"

# 1. data: the default mixture; spoken arithmetic restates the question before its answer (phases
# 6-9) and edits describe the edited scene before drawing it (phase 10), unless RESTATE says otherwise
RESTATE=${RESTATE:-spoken_math,edit}
[ -f "$WORK/data/train.jsonl" ] || "${OMNI[@]}" world generate --out "$WORK/data" --split train --n "$N" \
  --seed "${SEED:-11}" --restate "$RESTATE" --workers "$WORKERS" --quiet
stamp "generated $N samples"
# 2. tokens, with the shipped model's tokenizer and vocabulary (so its weights fit)
[ -f "$WORK/shards/train/manifest.json" ] || "${OMNI[@]}" tokenize --input "$WORK/data/train.jsonl" \
  --tokenizer "$MODEL/tokenizer.json" --vocab "$MODEL/vocab.json" --codec image-world --codec audio-world \
  --cfg-drop 0.1 --out "$WORK/shards" --val-fraction "${VAL_FRACTION:-0.01}" --workers "$WORKERS"
stamp "tokenized"
# 3. train until the budget is spent (a checkpoint and an eval are written when it is)
train() {  # $1: train.compile
  train_budget "$1" || return 1
  "${OMNI[@]}" train --preset world --stop-after-minutes "$TRAIN_MIN" ${INIT:+train.init_from="$INIT"} \
    data.train="$WORK/shards/train" data.val="$WORK/shards/val" train.out_dir="$WORK/run" \
    train.steps="$STEPS" train.batch_size="$BATCH" train.micro_batch_size="$BATCH" train.lr="$LR" \
    train.warmup_steps="${WARMUP:-100}" train.eval_every="${EVAL_EVERY:-500}" train.eval_batches=8 \
    train.ckpt_every="${CKPT_EVERY:-500}" train.log_every=50 train.compile="$1" train.progress=false
}
train_or_fall_back
# 4. bf16 weights, in parts that come back (at most 8 files of 16 MiB)
last=$(cat "$WORK/run/ckpt/latest")
"${OMNI[@]}" export --checkpoint "$WORK/run/ckpt/$last" --format omniloom --dtype bfloat16 --out "$WORK/model"
split -b 15m -d "$WORK/model/model.safetensors" "$OUT/model.safetensors.part-"
cp "$WORK/model/config.json" "$WORK/run/metrics.jsonl" "$OUT/"
# the shipped decoding defaults, and describe_edits when the model learnt to describe its edits
"$PY" -c "import json, sys; g = json.load(open(sys.argv[1])); g.update({'describe_edits': True} if 'edit' in sys.argv[2].split(',') else {}); json.dump(g, open(sys.argv[3], 'w'))" \
  "$MODEL/generation.json" "$RESTATE" "$OUT/generation.json"
[ -f "$WORK/run/loss.png" ] && cp "$WORK/run/loss.png" "$OUT/"
stamp "exported $last: $(ls "$OUT" | tr '\n' ' ')"
