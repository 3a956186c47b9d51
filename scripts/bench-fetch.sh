#!/usr/bin/env bash
# Benchmark: two nodes as separate processes on loopback. Node A holds
# distinct 1 MiB pieces (stored through its API); node B fetches them
# through its own API, verified and stored: 1 GiB in bulk, then 500 single
# pieces one at a time over one kept-alive connection.
#
#   scripts/bench-fetch.sh [BULK_PIECES=1024] [SINGLES=500] [CONCURRENCY=16]
#
# Data dirs go under $BENCH_DIR (default: a temp dir under $TMPDIR); point
# it at /dev/shm to take the disk out of the measurement.
#
# WARM_GIB=N first writes and deletes N GiB under $BENCH_DIR. On a VM that
# hands freed memory back to its host, the first touch of a page costs a
# host fault (about 2.7 ms per MiB measured on the reference machine kind),
# and the nodes' new files and buffers would pay it; warming makes the run
# measure the program instead. docs/BENCHMARKS.md gives figures both ways.
set -euo pipefail
cd "$(dirname "$0")/.."
bulk=${1:-1024}
singles=${2:-500}
conc=${3:-16}
cargo build --quiet --release -p bench
cargo build --quiet --release -p peer-node
base=${BENCH_DIR:-${TMPDIR:-/tmp}}
work=$(mktemp -d "$base/p2p-bench.XXXXXX")
chmod 700 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
if [ "${WARM_GIB:-0}" -gt 0 ]; then
  dd if=/dev/zero of="$work/warm" bs=1M count=$((WARM_GIB * 1024)) status=none
  rm -f "$work/warm"
fi
start_node() { # name, extra args...
  local name=$1; shift
  mkdir -m 700 "$work/$name"
  NO_COLOR=1 RUST_LOG=info ./target/release/peer-node --listen 127.0.0.1:0 --api 127.0.0.1:0 \
    --data-dir "$work/$name/data" --max-store 8GiB "$@" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 1 200); do [ -s "$work/$name/data/api-addr" ] && return 0; sleep 0.05; done
  echo "node $name did not start:"; cat "$work/$name.log"; exit 1
}
start_node a
# B learns of A through A's listen address (A as its bootstrap).
a_listen=$(grep -o 'listen=[^ ]*' "$work/a.log" | head -1 | cut -d= -f2 || true)
start_node b --bootstrap "${a_listen:?cannot read the listen address of node a from its log}"
./target/release/p2p-bench \
  "$(cat "$work/a/data/api-addr")" "$(cat "$work/a/data/api-token")" \
  "$(cat "$work/b/data/api-addr")" "$(cat "$work/b/data/api-token")" \
  "$bulk" "$singles" "$conc"
