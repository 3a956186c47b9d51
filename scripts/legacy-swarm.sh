#!/usr/bin/env bash
# Runs our bootstrap-server with three raw legacy clients (the
# `legacy_client` example of crates/bootstrap-server, which behaves like a
# client of the original C design: no HELLO, a PEERS naming itself every
# 1-2 s, silent on the connections it accepts, a connect to every entry it
# is sent) and checks that the server introduces them to each other:
#   * each client is connected to the other two within CONNECT_SECS (10);
#   * every process is still alive after RUN_SECS (60), and no connection
#     between them was lost.
# Exits 0 on success, 1 with a message and the logs' tails on failure; every
# process it started is stopped on the way out, whatever happens.
#
# Environment: LEGACY_SWARM_PORT (default 0: any free port), CONNECT_SECS,
# RUN_SECS, CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
PORT="${LEGACY_SWARM_PORT:-0}"
CONNECT_SECS="${CONNECT_SECS:-10}"
RUN_SECS="${RUN_SECS:-60}"
CLIENTS=(a b c)
WORK="$(mktemp -d)"
PIDS=()
declare -A PID_OF PORT_OF

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
  local f
  for f in "$WORK"/*.log; do
    echo "--- last lines of $(basename "$f")"
    tail -n 15 "$f"
  done
}

fail() {
  echo "legacy-swarm: FAILED: $*" >&2
  show_logs >&2
  exit 1
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

alive() { kill -0 "$1" 2>/dev/null; }

# Whether $1 and $2 (client names) have a connection: either dialled the other.
connected() {
  grep -qxF "dialled [::1]:${PORT_OF[$2]}" "$WORK/$1.log" ||
    grep -qxF "dialled [::1]:${PORT_OF[$1]}" "$WORK/$2.log"
}

all_connected() {
  connected a b && connected a c && connected b c
}

check_alive() {
  alive "$SERVER_PID" || fail "the bootstrap server died"
  local name
  for name in "${CLIENTS[@]}"; do
    alive "${PID_OF[$name]}" || fail "legacy client $name died: $(grep '^died:' "$WORK/$name.log" || echo 'no reason printed')"
  done
}

echo "legacy-swarm: building release binaries"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" \
  -p bootstrap-server --bin bootstrap-server --example legacy_client ||
  fail "the build failed"

RUST_LOG=info "$TARGET/bootstrap-server" --listen "[::1]:$PORT" 2>"$WORK/server.log" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
ADDR=""
for _ in $(seq 100); do
  ADDR="$(grep -o 'listen=\[::1\]:[0-9]*' "$WORK/server.log" | head -n 1 | cut -d= -f2 || true)"
  [[ -n "$ADDR" ]] && break
  alive "$SERVER_PID" || fail "the bootstrap server did not start"
  sleep 0.1
done
[[ -n "$ADDR" ]] || fail "the bootstrap server did not report its address within 10 s"
echo "legacy-swarm: bootstrap-server listening on $ADDR"

START_MS="$(now_ms)"
for name in "${CLIENTS[@]}"; do
  "$TARGET/examples/legacy_client" "$ADDR" >"$WORK/$name.log" 2>&1 &
  PID_OF[$name]=$!
  PIDS+=("$!")
done
for name in "${CLIENTS[@]}"; do
  for _ in $(seq 100); do
    PORT_OF[$name]="$(sed -n 's/^listening \[::1\]:\([0-9]*\)$/\1/p' "$WORK/$name.log" | head -n 1)"
    [[ -n "${PORT_OF[$name]}" ]] && break
    check_alive
    sleep 0.1
  done
  [[ -n "${PORT_OF[$name]}" ]] || fail "legacy client $name did not start listening"
  echo "legacy-swarm: legacy client $name listening on [::1]:${PORT_OF[$name]}"
done

until all_connected; do
  check_alive
  (( $(now_ms) - START_MS <= CONNECT_SECS * 1000 )) ||
    fail "the legacy clients were not all connected within ${CONNECT_SECS} s"
  sleep 0.1
done
CONNECTED_MS=$(( $(now_ms) - START_MS ))
for name in "${CLIENTS[@]}"; do
  others=()
  for other in "${CLIENTS[@]}"; do
    [[ "$other" != "$name" ]] && connected "$name" "$other" && others+=("$other")
  done
  echo "legacy-swarm: $name is connected to ${others[*]}"
done
echo "legacy-swarm: all connected after $(( CONNECTED_MS / 1000 )).$(( CONNECTED_MS % 1000 / 100 )) s"

while (( $(now_ms) - START_MS < RUN_SECS * 1000 )); do
  check_alive
  sleep 1
done
check_alive
for name in "${CLIENTS[@]}"; do
  if grep -q '^lost ' "$WORK/$name.log"; then
    fail "legacy client $name lost a connection: $(grep '^lost ' "$WORK/$name.log" | head -n 1)"
  fi
done
verified="$(grep -c 'legacy client verified' "$WORK/server.log" || true)"
echo "legacy-swarm: after ${RUN_SECS} s all 4 processes are alive, no connection lost; the server verified ${verified} legacy clients"
echo "legacy-swarm: OK"
