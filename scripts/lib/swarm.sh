# shellcheck shell=bash
# Process helpers for the scripts that run a local swarm of real processes
# (demo-swarm.sh, scale.sh, status-screenshot.sh, bench.sh). Sourced, never
# run.
#
# The caller keeps every PID it starts in the array `pids`, sets `bin` to
# the directory of the release binaries, and defines `fail MESSAGE` (print
# it, exit non-zero).

# Milliseconds on the wall clock.
now_ms() {
  if [ -n "${EPOCHREALTIME:-}" ]; then
    local t=${EPOCHREALTIME/[.,]/}
    echo $((t / 1000))
  else
    echo $(($(date +%s%N) / 1000000))
  fi
}

# Whether a process we started is still running (not exited, not a zombie).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

# Stops every process in `pids`: TERM, then KILL what is still running after
# 8 s (nodes close their connections within a 5 s grace, then save peers).
stop_all() {
  local pid deadline
  ((${#pids[@]})) || return 0
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$(($(now_ms) + 8000))
  for pid in "${pids[@]}"; do
    while alive "$pid" && (($(now_ms) < deadline)); do sleep 0.05; done
    if alive "$pid"; then
      echo "${0##*/}: process $pid did not stop in time: killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}

# The value of `KEY=` in the first line of LOG that has it (colours off:
# export NO_COLOR=1).
log_field() {
  { grep -o "$2=[^ ]*" "$1" 2>/dev/null || true; } | head -n 1 | cut -d= -f2-
}

# start_bootstrap LOG [FLAG...]: starts bootstrap-server on 127.0.0.1:0 with
# its stderr in LOG, and sets `server` to the address it listens on.
start_bootstrap() {
  local log=$1 pid deadline
  shift
  "$bin/bootstrap-server" --listen 127.0.0.1:0 "$@" 2>"$log" &
  pid=$!
  pids+=("$pid")
  server=""
  deadline=$(($(now_ms) + 10000))
  while [ -z "$server" ]; do
    alive "$pid" || { cat "$log" >&2; fail "bootstrap-server exited"; }
    (($(now_ms) < deadline)) || fail "bootstrap-server did not start in 10 s (log: $log)"
    server=$(log_field "$log" listen)
    [ -n "$server" ] || sleep 0.05
  done
}

# start_swarm WORK N DHT: start_bootstrap (log and data dir under WORK; with
# --dht when DHT is 1), then N peer-nodes on 127.0.0.1:0 joined through it,
# node k with its data dir WORK/nodek and its stderr in WORK/nodek.log. With
# DHT=1 every node runs a DHT node too and joins the private DHT through the
# server's (each on UDP at its TCP port's number).
start_swarm() {
  local work=$1 n=$2 dht=$3 k server_dht=() node_dht=()
  ((dht)) && server_dht=(--dht)
  start_bootstrap "$work/bootstrap.log" --data-dir "$work/bootstrap" "${server_dht[@]}"
  ((dht)) && node_dht=(--dht --dht-bootstrap "$server")
  for k in $(seq 1 "$n"); do
    "$bin/peer-node" --listen 127.0.0.1:0 --api 127.0.0.1:0 --data-dir "$work/node$k" \
      --bootstrap "$server" "${node_dht[@]}" 2>"$work/node$k.log" &
    pids+=($!)
  done
}
