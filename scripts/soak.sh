#!/usr/bin/env bash
# Soak: a swarm of N peer-nodes (default 30) and one bootstrap server on
# loopback for MINUTES (default 30), with churn: files are put on random
# nodes and fetched by others with p2p-cli, nodes leave (SIGTERM), are
# killed (SIGKILL) and come back on their data dirs. Every 10 s it samples
# each node's RSS, open file descriptors and warning lines; at the end it
# prints the fetch success, the errors, and the memory/fd trend, writes the
# samples as CSV and draws a PNG (matplotlib, if it can be installed).
#
#   scripts/soak.sh [MINUTES] [N]
#   SOAK_OUT=DIR   where the CSV, the PNG and the event log go (default
#                  target/soak); SOAK_SEED=N the churn's seed (default 1)
#
# Not run by CI. Needs bash, coreutils, python3 and the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-30}
n=${2:-30}
case "$minutes$n" in *[!0-9]*) echo "soak: MINUTES and N are whole numbers" >&2; exit 2 ;; esac
((n >= 3)) || { echo "soak: N must be at least 3" >&2; exit 2; }
out=${SOAK_OUT:-target/soak}
seed=${SOAK_SEED:-1}
mkdir -p "$out"
csv="$out/samples.csv"
events="$out/events.log"

say() { printf 'soak: %s\n' "$*" >&2; }
fail() {
  say "FAILED: $*"
  exit 1
}

say "building release binaries..."
cargo build --release --quiet -p peer-node -p bootstrap-server -p p2p-cli
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
bin=${target_dir:-target}/release

work="" pids=()
# now_ms, alive, stop_all, log_field, start_bootstrap.
# shellcheck source=scripts/lib/swarm.sh
source scripts/lib/swarm.sh

cleanup() {
  trap '' INT TERM
  stop_all
  [ -z "$work" ] || rm -rf -- "$work"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

umask 077
work=$(mktemp -d -t p2p-soak.XXXXXX)
export NO_COLOR=1 RUST_LOG=${RUST_LOG:-info}

server=""
start_bootstrap "$work/bootstrap.log" --data-dir "$work/bootstrap"

declare -a node_pid
node_pid=()
# start K: (re)starts node K on its data dir.
start() {
  local k=$1
  rm -f "$work/node$k/api-addr"
  "$bin/peer-node" --listen 127.0.0.1:0 --api 127.0.0.1:0 --data-dir "$work/node$k" \
    --bootstrap "$server" --max-store 2GiB 2>>"$work/node$k.log" &
  node_pid[k]=$!
  pids+=("$!")
}
running() { [ -n "${node_pid[$1]:-}" ] && alive "${node_pid[$1]}"; }
for k in $(seq 1 "$n"); do start "$k"; done
deadline=$(($(now_ms) + 60000))
for k in $(seq 1 "$n"); do
  while [ ! -s "$work/node$k/api-addr" ]; do
    (($(now_ms) < deadline)) || fail "node$k did not start"
    sleep 0.1
  done
done
say "$n nodes up; churning for $minutes min (seed $seed)"

# The churn's generator. Functions set globals (not `$(…)`, whose subshell
# would lose the generator's state).
x=$((seed * 2654435761 + 1))
rand() { # rand N: sets r to a number below N
  x=$(((x * 6364136223846793005 + 1442695040888963407) & 0x7fffffffffffffff))
  r=$(((x >> 16) % $1))
}
pick_running() { # sets k to a running node, or to nothing after 8 tries
  local try
  for ((try = 0; try < 8; try++)); do
    rand "$n"
    k=$((r + 1))
    if running "$k" && [ -s "$work/node$k/api-addr" ]; then
      return
    fi
  done
  k=""
}

declare -a manifests shas
manifests=() shas=()
puts=0 put_fail=0 gets=0 get_ok=0 get_unavailable=0 get_bad=0 leaves=0 kills=0 joins=0
echo "seconds,node,rss_kib,fds,warn_lines" >"$csv"
: >"$events"
sample() {
  local t=$1 k pid rss fds warns
  for k in $(seq 1 "$n"); do
    running "$k" || continue
    pid=${node_pid[k]}
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    warns=$({ grep -c ' WARN \| ERROR ' "$work/node$k.log" 2>/dev/null || true; } | head -n 1)
    echo "$t,$k,${rss:-0},$fds,${warns:-0}" >>"$csv"
  done
}

start_ms=$(now_ms)
end_ms=$((start_ms + minutes * 60000))
next_sample=$start_ms
while (($(now_ms) < end_ms)); do
  now=$(now_ms)
  if ((now >= next_sample)); then
    sample $(((now - start_ms) / 1000))
    next_sample=$((now + 10000))
  fi
  rand 100
  action=$r
  if ((action < 30)); then # put a file of 1-20 MiB
    pick_running
    [ -n "$k" ] || continue
    rand 20
    size=$(((1 + r) << 20))
    head -c "$size" /dev/urandom >"$work/put.bin"
    puts=$((puts + 1))
    if m=$("$bin/p2p-cli" --data-dir "$work/node$k" put "$work/put.bin" 2>>"$events"); then
      manifests+=("$m")
      shas+=("$(sha256sum <"$work/put.bin" | cut -d' ' -f1)")
      echo "put node$k $m $size" >>"$events"
    else
      put_fail=$((put_fail + 1))
      echo "put node$k FAILED" >>"$events"
    fi
  elif ((action < 75)); then # get a file put earlier
    ((${#manifests[@]})) || continue
    pick_running
    [ -n "$k" ] || continue
    rand ${#manifests[@]}
    i=$r
    gets=$((gets + 1))
    rm -f "$work/get.bin"
    code=0
    timeout 120 "$bin/p2p-cli" --data-dir "$work/node$k" get "${manifests[i]}" -o "$work/get.bin" \
      >/dev/null 2>>"$events" || code=$?
    if ((code == 0)); then
      if [ "$(sha256sum <"$work/get.bin" | cut -d' ' -f1)" = "${shas[i]}" ]; then
        get_ok=$((get_ok + 1))
      else
        get_bad=$((get_bad + 1))
        echo "get node$k ${manifests[i]} WRONG BYTES" >>"$events"
      fi
    elif ((code == 1 || code == 3)); then
      # Nobody up holds it (its holders left or were killed): not a fault.
      get_unavailable=$((get_unavailable + 1))
      echo "get node$k ${manifests[i]} unavailable (exit $code)" >>"$events"
    else
      get_bad=$((get_bad + 1))
      echo "get node$k ${manifests[i]} FAILED (exit $code)" >>"$events"
    fi
  elif ((action < 85)); then # a node leaves or is killed
    pick_running
    [ -n "$k" ] || continue
    rand 2
    if ((r)); then
      kill -TERM "${node_pid[k]}" 2>/dev/null || true
      leaves=$((leaves + 1))
      echo "leave node$k" >>"$events"
    else
      kill -KILL "${node_pid[k]}" 2>/dev/null || true
      kills=$((kills + 1))
      echo "kill node$k" >>"$events"
    fi
    wait "${node_pid[k]}" 2>/dev/null || true
  else # a stopped node comes back
    for k in $(seq 1 "$n"); do
      if ! running "$k"; then
        start "$k"
        joins=$((joins + 1))
        echo "join node$k" >>"$events"
        break
      fi
    done
  fi
  sleep 0.2
done
sample $((($(now_ms) - start_ms) / 1000))

python3 - "$csv" "$out/soak.png" "$minutes" <<'EOF' || say "summary or chart skipped (python3 failed)"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by_t = {}
for r in rows:
    t = int(r["seconds"])
    by_t.setdefault(t, []).append(r)
ts = sorted(by_t)
def series(key, f):
    return [f([int(r[key]) for r in by_t[t]]) for t in ts]
rss_max = series("rss_kib", max)
rss_med = series("rss_kib", lambda v: sorted(v)[len(v) // 2])
fds_max = series("fds", max)
first, last = ts[0], ts[-1]
print(f"memory: median node RSS {rss_med[0]/1024:.1f} MiB at {first} s, {rss_med[-1]/1024:.1f} MiB at {last} s; "
      f"largest {max(rss_max)/1024:.1f} MiB")
print(f"file descriptors: most in one node {fds_max[0]} at {first} s, {fds_max[-1]} at {last} s, at most {max(fds_max)}")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=False)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib is not available")
        sys.exit(0)
fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
a.plot(ts, [v / 1024 for v in rss_med], label="median node")
a.plot(ts, [v / 1024 for v in rss_max], label="largest node")
a.set_ylabel("RSS (MiB)"); a.legend(); a.grid(alpha=0.3)
b.plot(ts, fds_max, label="most open fds in one node", color="tab:red")
b.set_ylabel("open fds"); b.set_xlabel("seconds"); b.legend(); b.grid(alpha=0.3)
fig.suptitle(f"soak: {sys.argv[3]} min of churn")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
print(f"chart: {sys.argv[2]}")
EOF

warns=$(cat "$work"/node*.log | grep -c ' WARN \| ERROR ' || true)
echo "soak: $minutes min, $n nodes (seed $seed)"
echo "puts: $puts ($put_fail failed); gets: $gets: $get_ok ok, $get_unavailable unavailable (holders gone), $get_bad wrong or failed"
echo "churn: $leaves left, $kills killed, $joins joined again; warning/error log lines: $warns"
echo "samples: $csv; events: $events"
grep -h ' ERROR ' "$work"/node*.log | cut -c1-200 | sort | uniq -c | sort -rn | head -n 5 || true
((get_bad == 0)) || exit 1
