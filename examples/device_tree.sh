#!/usr/bin/env bash
# What a call of the `device` tool sends, and how to make it fit. The tool copies the session's
# checkout to the lent GPU machine: the tracked files and the untracked files git does not ignore,
# plus the ignored paths the call names in `carry`, at most 64 MiB in all. This repository's tracked
# files are ~79 MiB (the bundled models), so a device call runs from a slimmed working tree: the
# tracked files a run does not need are deleted from the working tree (git keeps them: nothing is
# lost) and brought back after the call.
#
#   bash examples/device_tree.sh size [CARRY...]       bytes that would travel, with these carried
#                                                       paths (relative to the repository's root,
#                                                       as in `carry`); exit 1 when over 64 MiB
#   bash examples/device_tree.sh slim [KEEP...]        keep only the tracked files under KEEP (paths
#                                                       or folders; '!GLOB' leaves out what matches,
#                                                       whatever else keeps it) in the working tree;
#                                                       refuses a tree with changes (commit or stash);
#                                                       warns of a KEEP that matches nothing
#   bash examples/device_tree.sh restore               bring back the tracked files a slim deleted
#                                                       (edits made since stay)
#   bash examples/device_tree.sh stage DIR [CARRY...]  copy what would travel into DIR (new or
#                                                       empty): the device's tree, for a dry run here
#
# Used by examples/device_train.sh and examples/device_graft.sh, whose headers give the KEEP lists.
set -euo pipefail
LIMIT=$((64 * 1024 * 1024))
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
HERE=$PWD
cd "$(dirname "$SELF")/.."  # the repository this script belongs to; CARRY paths are relative to it

travelling() {  # NUL-separated: the files of the working tree that travel
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    if [ -f "$f" ]; then printf "%s\0" "$f"; fi
  done
}

size() {
  local tree carried=0 p b
  tree=$(travelling | xargs -0 -r stat -c %s | awk '{s += $1} END {print s + 0}')
  for p in "$@"; do
    [ -e "$p" ] || { echo "carry: $p does not exist (paths are relative to $PWD)" >&2; return 1; }
    b=$(find "$p" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
    carried=$((carried + b))
  done
  local all=$((tree + carried))
  awk -v t="$tree" -v c="$carried" -v a="$all" -v l="$LIMIT" 'BEGIN {
    printf "working tree %.1f MiB + carried %.1f MiB = %.1f MiB of %.0f MiB (%s)\n",
      t / 1048576, c / 1048576, a / 1048576, l / 1048576, a <= l ? "fits" : "OVER: slim the tree or carry less" }'
  [ "$all" -le "$LIMIT" ]
}

case "${1:-}" in
  size) shift; size "$@" ;;
  slim)
    shift
    # only deletions (an earlier slim) may be pending: anything else would be lost by the checkout
    # (the status is read whole first: `grep -q` on a pipe would stop git early, and pipefail
    # would then read that as "no changes")
    changes=$(git status --porcelain --untracked-files=all | grep -v '^ D ' || true)
    if [ -n "$changes" ]; then
      echo "the working tree has changes or untracked files; commit or stash them first:" >&2
      echo "$changes" >&2
      exit 1
    fi
    git ls-files -z --deleted | xargs -0 -r git checkout --
    declare -A used=()
    n=0
    while IFS= read -r -d '' f; do
      keep=false
      # this script stays, for the next slim and the restore; .gitignore files stay, or what they
      # ignore (data/, runs/) would travel
      case "$f" in examples/device_tree.sh | .gitignore | */.gitignore) continue ;; esac
      for k in "$@"; do
        case "$k" in
          !*) g=${k#!}; g=${g%/}; case "$f" in $g | $g/*) keep=false; used[$k]=1; break ;; esac ;;  # glob: left out
          *) case "$f" in "${k%/}" | "${k%/}"/*) keep=true; used[$k]=1 ;; esac ;;
        esac
      done
      $keep || { rm -f "$f"; n=$((n + 1)); }
    done < <(git ls-files -z)
    for k in "$@"; do [ -n "${used[$k]:-}" ] || echo "warning: $k matches no tracked file" >&2; done
    echo "slimmed: $n tracked files left out of the working tree (bash examples/device_tree.sh restore)"
    size || true
    ;;
  restore)  # only what a slim deleted: edits made meanwhile stay
    git ls-files -z --deleted | xargs -0 -r git checkout --
    echo "restored: $(git ls-files | wc -l) tracked files"
    ;;
  stage)
    dst=${2:?usage: stage DIR [CARRY...]}
    shift 2
    case "$dst" in /*) ;; *) dst=$HERE/$dst ;; esac
    if [ -e "$dst" ] && [ -n "$(ls -A "$dst")" ]; then echo "stage: $dst is not empty" >&2; exit 1; fi
    mkdir -p "$dst"
    travelling | xargs -0 -r cp --parents -t "$dst"
    for p in "$@"; do cp -r --parents "$p" "$dst"; done
    size "$@" || true
    echo "staged into $dst"
    ;;
  *) sed -n '2,22p' "$SELF" | sed 's/^# \{0,1\}//'; [ "${1:-}" = -h ] || [ "${1:-}" = --help ] ;;
esac
