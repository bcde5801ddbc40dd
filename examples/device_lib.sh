# Shared by examples/device_train.sh and examples/device_graft.sh, which source it from the
# repository root: wheels for the device image, the call's log, and training until a time budget.

# device_wheels DIR WHEEL...: wheels for the device image's Python 3.12 (keep one version of each:
# two stop pip there)
device_wheels() {
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir" "$@"
}

# from here on, everything printed also goes to $OUT/device.log, which is whole when the script
# ends, after a failure too (the device tool returns $OUT as the command leaves it)
device_log() {
  mkdir -p "$OUT" "$WORK"
  exec > >(tee "$OUT/device.log") 2>&1
  TEE_PID=$!
  trap 'exec >&- 2>&-; wait "$TEE_PID" 2>/dev/null || true' EXIT
}

stamp() { echo "[$(( $(date +%s) - START )) s] $*"; }

# train_budget COMPILE: sets TRAIN_MIN to what BUDGET leaves for training after RESERVE (the last
# checkpoint and the export); fails when under 30 s are left
train_budget() {
  local s=$(( START + BUDGET - RESERVE - $(date +%s) ))
  [ "$s" -ge 30 ] || { stamp "only $s s left for training: lower N or raise BUDGET"; return 1; }
  stamp "training for up to $s s (train.compile=$1)"
  TRAIN_MIN=$(awk "BEGIN {print $s / 60}")
}

# train_or_fall_back: runs the script's own `train COMPILE`. Never run on a GPU yet, so a failure
# must not lose the call: a run that fails after a checkpoint exports that checkpoint; one that
# fails before any (a torch.compile problem on the device's torch, say) spends the rest of the
# budget training uncompiled
train_or_fall_back() {
  if ! train "$COMPILE"; then
    if [ -f "$WORK/run/ckpt/latest" ]; then
      stamp "training failed after a checkpoint; exporting $(cat "$WORK/run/ckpt/latest")"
    elif [ "$COMPILE" != false ]; then
      stamp "training failed before its first checkpoint; once more without torch.compile"
      train false
    else
      exit 1
    fi
  fi
  stamp "trained"
}
