#!/usr/bin/env bash
# Demo swarm on loopback: one bootstrap-server and N peer-nodes (default 5),
# each in its own data dir under a private temp dir. Waits until every node
# has at least min(4, N-1) connected peers, printing who is connected; then
# shares a random 5 MiB file on node1 (`p2p-cli put`) and fetches it through
# nodeN (`p2p-cli get`), checking the bytes with sha256sum; then keeps
# showing the table until Ctrl-C / SIGTERM, when it stops everything it
# started and removes the temp dir.
#
#   scripts/demo-swarm.sh [N] [--once] [--keep] [--dht]
#     --once   (or DEMO_ONCE=1) exit 0 once the file has been fetched
#     --keep   (or DEMO_KEEP=1) keep the temp dir (logs, data dirs) at exit
#     --dht    (or DEMO_DHT=1) every node and the bootstrap server run a DHT
#              node: a private DHT joined through the bootstrap server
#   DEMO_TIMEOUT=60  seconds the swarm may take to form (exit 1 after that)
#   DEMO_REFRESH=5   seconds between tables once formed
#
# Needs only bash, curl, coreutils and the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,14s/^# \{0,1\}//p' "$0" >&2
  exit "$1"
}

n=5
once=${DEMO_ONCE:-0}
keep=${DEMO_KEEP:-0}
dht=${DEMO_DHT:-0}
form_timeout=${DEMO_TIMEOUT:-60}
refresh=${DEMO_REFRESH:-5}
for arg in "$@"; do
  case $arg in
    --once) once=1 ;;
    --keep) keep=1 ;;
    --dht) dht=1 ;;
    -h | --help) usage 0 ;;
    *[!0-9]* | '') echo "demo-swarm: unknown argument '$arg'" >&2 && usage 2 ;;
    *) n=$((10#$arg)) ;;
  esac
done
if ((n < 2 || n > 500)); then
  echo "demo-swarm: N must be between 2 and 500 (got $n)" >&2
  exit 2
fi
want=$((n - 1 < 4 ? n - 1 : 4))
for tool in curl cargo; do
  command -v "$tool" >/dev/null || {
    echo "demo-swarm: '$tool' not found: install it (curl: apt-get install curl; cargo: https://rustup.rs)" >&2
    exit 2
  }
done

echo "demo-swarm: building release binaries..." >&2
cargo build --release -p bootstrap-server -p peer-node -p p2p-cli
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
bin=${target_dir:-target}/release

work=""
pids=()
sleeper=""

# now_ms, alive, stop_all, log_field, start_bootstrap, start_swarm.
# shellcheck source=scripts/lib/swarm.sh
source scripts/lib/swarm.sh

cleaned=0
cleanup() {
  ((cleaned)) && return
  cleaned=1
  trap '' INT TERM
  [ -z "$sleeper" ] || kill "$sleeper" 2>/dev/null || true
  stop_all
  if [ -z "$work" ]; then
    :
  elif ((keep)); then
    echo "demo-swarm: kept $work (logs: $work/*.log)" >&2
  else
    rm -rf -- "$work"
  fi
}
trap cleanup EXIT
trap 'echo >&2; echo "demo-swarm: stopping..." >&2; exit 130' INT
trap 'echo "demo-swarm: stopping..." >&2; exit 143' TERM

fail() {
  echo "demo-swarm: $*" >&2
  exit 1
}

# Private temp dir: it holds the nodes' API tokens.
umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-demo.XXXXXX")
chmod 700 "$work"

# How many times $2 occurs in $1.
count() {
  local rest=${1//"$2"/}
  echo $(((${#1} - ${#rest}) / ${#2}))
}

export NO_COLOR=1
start_ms=$(now_ms)
server=""
start_swarm "$work" "$n" "$dht"
node_pid() { echo "${pids[$1]}"; }

# Each node is ready once it has written api-addr; its token goes into a
# header file (not curl's command line, which other users can read).
declare -a listen api
deadline=$(($(now_ms) + 15000))
for k in $(seq 1 "$n"); do
  while [ ! -s "$work/node$k/api-addr" ]; do
    alive "$(node_pid "$k")" || { tail -n 5 "$work/node$k.log" >&2; fail "node$k exited at start-up"; }
    (($(now_ms) < deadline)) || fail "node$k did not start in 15 s (log: $work/node$k.log)"
    sleep 0.05
  done
  api[k]=$(head -n 1 "$work/node$k/api-addr")
  listen[k]=$(log_field "$work/node$k.log" listen)
  printf 'Authorization: Bearer %s\n' "$(head -n 1 "$work/node$k/api-token")" >"$work/node$k.auth"
done
echo "demo-swarm: bootstrap-server on $server, $n nodes started in $work" >&2

declare -a peers known
# Fills peers[k] (connected) and known[k] (every table entry) from the API.
poll() {
  local k body
  for k in $(seq 1 "$n"); do
    if ! alive "$(node_pid "$k")"; then
      peers[k]=-1 known[k]=-1
      continue
    fi
    body=$(curl -sS --fail --max-time 2 -H "@$work/node$k.auth" \
      "http://${api[k]}/api/v1/peers" 2>/dev/null) || body=""
    peers[k]=$(count "$body" '"state":"connected"')
    known[k]=$(count "$body" '"addr":')
  done
}

ready_count() {
  local k c=0
  for k in $(seq 1 "$n"); do ((peers[k] >= want)) && c=$((c + 1)); done
  echo "$c"
}

secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

table() {
  local k bar
  printf '\n[%5s s] %d/%d nodes have >= %d peers\n' "$(secs $(($(now_ms) - start_ms)))" \
    "$(ready_count)" "$n" "$want"
  printf '  %-7s %-21s %5s %5s\n' node listen peers known
  for k in $(seq 1 "$n"); do
    if ((peers[k] < 0)); then
      printf '  %-7s %-21s %s\n' "node$k" "${listen[k]}" "EXITED (log: $work/node$k.log)"
      continue
    fi
    bar=$(printf '%*s' "${peers[k]}" '' | tr ' ' '#')
    printf '  %-7s %-21s %5d %5d %s\n' "node$k" "${listen[k]}" "${peers[k]}" "${known[k]}" "$bar"
  done
}

# Formation: show the table whenever the counts change (at most once a second).
form_deadline=$((start_ms + form_timeout * 1000))
last_shown="" last_ms=0
while :; do
  poll
  state="${peers[*]}"
  for k in $(seq 1 "$n"); do
    ((peers[k] >= 0)) || { table; tail -n 5 "$work/node$k.log" >&2; fail "node$k exited"; }
  done
  if (($(ready_count) == n)); then
    formed_ms=$(($(now_ms) - start_ms))
    table
    echo
    echo "swarm formed in $(secs "$formed_ms") s ($n nodes, each with >= $want connected peers)"
    break
  fi
  if (($(now_ms) >= form_deadline)); then
    table
    shown=0
    for k in $(seq 1 "$n"); do
      ((peers[k] < want && shown < 3)) || continue
      echo "--- node$k.log (last lines)" >&2
      tail -n 5 "$work/node$k.log" >&2
      shown=$((shown + 1))
    done
    ((keep)) || echo "demo-swarm: run with --keep to keep every log" >&2
    fail "the swarm did not form within $form_timeout s"
  fi
  if [ "$state" != "$last_shown" ] && (($(now_ms) - last_ms >= 1000)); then
    table
    last_shown=$state last_ms=$(now_ms)
  fi
  sleep 0.2
done

# The main job: share a file on one node, fetch it through another, with
# the command-line tool as a user would.
share_and_fetch() {
  local file="$work/shared.bin" got="$work/fetched.bin" manifest sha want_sha t0
  head -c $(((5 << 20) + 12345)) /dev/urandom >"$file"
  want_sha=$(sha256sum <"$file" | cut -d' ' -f1)
  echo "+ p2p-cli --data-dir node1 put shared.bin"
  manifest=$("$bin/p2p-cli" --data-dir "$work/node1" put "$file") || fail "p2p-cli put on node1 failed"
  echo "shared a 5 MiB file on node1; its manifest: $manifest"
  local explain=()
  if ((dht)); then
    # node1 announces its new file on the DHT within a second or two.
    local until=$(($(now_ms) + 30000)) announced=0
    while ((!announced && $(now_ms) < until)); do
      curl -sS --max-time 2 -H "@$work/node1.auth" "http://${api[1]}/metrics" 2>/dev/null |
        grep -Eq '^p2p_dht_announces_total [1-9]' && announced=1 || sleep 0.2
    done
    ((announced)) || fail "node1 did not announce its file on the DHT within 30 s"
    echo "node1 announced the file on the DHT"
    explain=(--explain)
  fi
  t0=$(now_ms)
  echo "+ p2p-cli --data-dir node$n get $manifest -o fetched.bin${explain[*]:+ ${explain[*]}}"
  "$bin/p2p-cli" --data-dir "$work/node$n" get "$manifest" -o "$got" "${explain[@]}" || fail "p2p-cli get on node$n failed"
  sha=$(sha256sum <"$got" | cut -d' ' -f1)
  [ "$sha" = "$want_sha" ] || fail "node$n wrote a file that hashes to $sha, not $want_sha"
  echo "fetched it through node$n in $(($(now_ms) - t0)) ms: sha256 $sha matches"
}
share_and_fetch

if ((once)); then
  exit 0
fi
echo "demo-swarm: running; the table refreshes every $refresh s. Ctrl-C stops everything." >&2
while :; do
  # `sleep & wait` so that a signal runs its trap at once.
  sleep "$refresh" &
  sleeper=$!
  wait "$sleeper" || true
  sleeper=""
  poll
  table
done
