#!/usr/bin/env bash
# The whole loom on the bundled shapes world, on a CPU, in a few minutes:
# world data -> text tokenizer -> token shards (through the shipped codecs) -> a tiny trained model
# -> Hugging Face export -> a question through `omniloom chat` -> the OpenAI-compatible server.
#
#   bash examples/quickstart.sh                 # defaults below
#   N=2000 STEPS=400 OUT=runs/qs bash examples/quickstart.sh
#   SERVE=0 bash examples/quickstart.sh         # stop before starting the server
set -euo pipefail
OUT=${OUT:-runs/quickstart}
N=${N:-400}
STEPS=${STEPS:-60}
SERVE=${SERVE:-1}
PORT=${PORT:-8000}

codecs=()
tasks=math
seq=128
for c in image-world audio-world; do
  if python -c "import sys; from omniloom.codecs import available_codecs; sys.exit(0 if '$c' in available_codecs() else 1)"; then
    codecs+=(--codec "$c")
  fi
done
if [ ${#codecs[@]} -eq 4 ]; then  # both codecs (two words each)
  tasks=caption,vqa,draw,edit,video,math,asr,tts,spoken_vqa,spoken_math,spoken_draw
  seq=512
else
  echo "quickstart: the world codecs are not both shipped; using the text-only task (math)" >&2
fi

echo "== 1/6 generate $N world samples ($tasks)"
omniloom world generate --out "$OUT/world" --split train --n "$N" --seed 0 --tasks "$tasks"
echo "== 2/6 train the text tokenizer"
omniloom tokenizer train --corpus "$OUT/world/train.jsonl" --vocab-size 512 --out "$OUT/tok" --no-progress
echo "== 3/6 tokenize through the codecs"
omniloom tokenize --input "$OUT/world/train.jsonl" --tokenizer "$OUT/tok/tokenizer.json" "${codecs[@]}" \
  --out "$OUT/shards" --val-fraction 0.05 --no-progress
echo "== 4/6 train a tiny model ($STEPS steps of the debug preset)"
omniloom train --preset debug --resume never data.train="$OUT/shards/train" data.val="$OUT/shards/val" \
  train.out_dir="$OUT/run" model.vocab_size=0 data.seq_len="$seq" model.max_seq_len=1024 train.steps="$STEPS" \
  train.warmup_steps=10 train.eval_every="$STEPS" train.ckpt_every="$STEPS" train.log_every=10
ckpt="$OUT/run/ckpt/$(cat "$OUT/run/ckpt/latest")"
echo "== 5/6 export to Hugging Face Llama and ask a question"
omniloom export --checkpoint "$ckpt" --format hf --out "$OUT/hf"
omniloom chat --model "$OUT/run" --max-new-tokens 16 "what is two plus three?"
echo "the loss curve: $OUT/run/loss.png; the checkpoint (a model directory): $ckpt"
if [ "$SERVE" = 1 ] && omniloom serve --help >/dev/null 2>&1; then
  echo "== 6/6 serve it: http://127.0.0.1:$PORT/ (OpenAI API at /v1), Ctrl-C to stop"
  exec omniloom serve --model "$OUT/run" --port "$PORT"
fi
