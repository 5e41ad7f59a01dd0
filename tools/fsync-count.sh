#!/usr/bin/env bash
# Counts the fsync-family system calls the daemon makes per acknowledged append,
# with strace, for sequential and for concurrent writers.
#
#   tools/fsync-count.sh [APPENDS] [CONCURRENCY]     (defaults: 200 and 32)
#
# Needs strace (Debian: apt-get install strace) and a release build
# (cargo build --release). Prints, per phase: acknowledged appends, fsync calls,
# fsyncs per acknowledged append, and sync_file_range calls (none expected: the log fdatasyncs its segments).
set -euo pipefail
cd "$(dirname "$0")/.."
appends=${1:-200}
concurrency=${2:-32}
command -v strace >/dev/null || { echo "strace is missing: apt-get install -y strace" >&2; exit 1; }
bin=target/release/cairn
[ -x "$bin" ] || cargo build --release --quiet

work=$(mktemp -d)
stop() { # SIGTERM the daemon itself (strace's child); strace then exits too.
  pkill -TERM -P "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT
strace -f -qq -e trace=fsync,fdatasync,sync_file_range -o "$work/trace" \
  "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
daemon=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
server=$(sed -n 's/^cairn listening on //p' "$work/out")
export CAIRN_SERVER=$server

manifest() { # name replicas
  sed -e "s/name: prod-eu/name: $1/" -e "s/replicas: 5/replicas: $2/" docs/examples/prod-eu.yaml
}
count() { grep -c "$1(" "$work/trace" || true; }

for writer in $(seq "$concurrency"); do manifest "c$writer" 1 | "$bin" apply -f - >/dev/null; done

phase() { # label, then a command that performs $appends acknowledged appends
  local label=$1; shift
  local f0 s0; f0=$(( $(count fsync) + $(count fdatasync) )); s0=$(count sync_file_range)
  "$@"
  local f1 s1; f1=$(( $(count fsync) + $(count fdatasync) )); s1=$(count sync_file_range)
  awk -v l="$label" -v a="$appends" -v f=$((f1 - f0)) -v s=$((s1 - s0)) \
    'BEGIN { printf "%-28s appends=%d fsyncs=%d fsyncs/append=%.3f sync_file_range=%d\n", l, a, f, f / a, s }'
}

sequential() {
  for i in $(seq "$appends"); do manifest c1 $((i % 2 + 2)) | "$bin" apply -f - >/dev/null; done
}
concurrent() {
  local per=$((appends / concurrency)) pids=()
  for writer in $(seq "$concurrency"); do
    ( for i in $(seq "$per"); do manifest "c$writer" $((i % 2 + 2)) | "$bin" apply -f - >/dev/null; done ) &
    pids+=($!)
  done
  wait "${pids[@]}"
}
phase "1 writer, sequential" sequential
appends=$(( (appends / concurrency) * concurrency ))
phase "$concurrency writers, concurrent" concurrent
