#!/usr/bin/env bash
# Screenshot of a node's status page: builds the release binaries, starts a
# bootstrap-server and three peer-nodes on loopback in a private temp dir,
# shares a file on node1 (`p2p-cli put`), fetches it through node3
# (`p2p-cli get`), then opens node1's status page (http://API/) in headless
# Chromium and saves a PNG. Everything it started is stopped and the temp
# dir removed on the way out, whatever happens.
#
#   scripts/status-screenshot.sh [OUT.png]     (default: status.png)
#
# Needs bash, curl, coreutils, the Rust toolchain and Chromium (Debian's
# `chromium` package; installed with apt-get when missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

case ${1:-} in
  -h | --help)
    sed -n '2,12s/^# \{0,1\}//p' "$0"
    exit 0
    ;;
esac
out=${1:-status.png}
case $out in
  /*) ;;
  *) out="$PWD/$out" ;;
esac
n=3

fail() {
  echo "status-screenshot: $*" >&2
  exit 1
}

find_chromium() {
  local name
  for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}
chromium=$(find_chromium) || {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "status-screenshot: installing chromium..." >&2
    apt-get install -y chromium >&2 || { apt-get update >&2 && apt-get install -y chromium >&2; }
    chromium=$(find_chromium) || fail "chromium is still missing after apt-get install"
  else
    fail "chromium not found: install it (apt-get install chromium, as root)"
  fi
}
command -v curl >/dev/null || fail "curl not found: install it (apt-get install curl)"

echo "status-screenshot: building release binaries..." >&2
cargo build --release -p bootstrap-server -p peer-node -p p2p-cli
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
bin=${target_dir:-target}/release

work=""
pids=()

# now_ms, alive, stop_all, log_field, start_bootstrap.
# shellcheck source=scripts/lib/swarm.sh
source scripts/lib/swarm.sh

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_all
  [ -z "$work" ] || rm -rf -- "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Private temp dir: it holds the nodes' API tokens.
umask 077
work=$(mktemp -d -t p2p-status.XXXXXX)

export NO_COLOR=1
server=""
start_bootstrap "$work/bootstrap.log" --data-dir "$work/bootstrap"

for k in $(seq 1 "$n"); do
  "$bin/peer-node" --listen 127.0.0.1:0 --api 127.0.0.1:0 \
    --data-dir "$work/node$k" --bootstrap "$server" 2>"$work/node$k.log" &
  pids+=($!)
done
deadline=$(($(now_ms) + 15000))
for k in $(seq 1 "$n"); do
  while [ ! -s "$work/node$k/api-addr" ]; do
    alive "${pids[k]}" || { tail -n 5 "$work/node$k.log" >&2; fail "node$k exited at start-up"; }
    (($(now_ms) < deadline)) || fail "node$k did not start in 15 s"
    sleep 0.05
  done
done
api1=$(head -n 1 "$work/node1/api-addr")

# Until every node is connected to the other two.
cli() { "$bin/p2p-cli" --data-dir "$work/node$1" "${@:2}"; }
deadline=$(($(now_ms) + 30000))
for k in $(seq 1 "$n"); do
  while (($(cli "$k" --json peers | grep -c '"state":"connected"' || true) < n - 1)); do
    (($(now_ms) < deadline)) || fail "node$k did not connect to the others in 30 s"
    sleep 0.2
  done
done
echo "status-screenshot: $n nodes connected through $server" >&2

# A file shared on node1 and fetched through node3, as a user would.
head -c $(((3 << 20) + 4321)) /dev/urandom >"$work/holiday.bin"
manifest=$(cli 1 put "$work/holiday.bin") || fail "p2p-cli put on node1 failed"
cli "$n" get "$manifest" -o "$work/fetched.bin" || fail "p2p-cli get on node$n failed"
cmp -s "$work/holiday.bin" "$work/fetched.bin" || fail "the fetched file differs"
echo "status-screenshot: shared $manifest on node1, fetched it through node$n" >&2

# Headless Chromium, with a profile of its own that is thrown away.
profile="$work/chromium-profile"
mkdir -p "$profile"
shot="$work/status.png"
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1280,1024 --screenshot="$shot" \
  "http://$api1/" >"$work/chromium.log" 2>&1 || {
  tail -n 20 "$work/chromium.log" >&2
  fail "chromium failed"
}
[ -s "$shot" ] || { tail -n 20 "$work/chromium.log" >&2; fail "chromium wrote no screenshot"; }
install -m 0644 -- "$shot" "$out"
echo "status-screenshot: node1's status page (http://$api1/) saved to $out"
