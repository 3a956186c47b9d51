#!/usr/bin/env bash
# Serving a stored piece: read + write (the node's way) against sendfile(2),
# on loopback, from the page cache of DIR's filesystem (default: a temp dir
# under $TMPDIR or /tmp; give /dev/shm for tmpfs). Prints each round as a
# JSON line, then the medians of wall rate and sender CPU per GiB.
#
#   scripts/bench-serve-path.sh [DIR] [PIECES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
parent=${1:-${TMPDIR:-/tmp}}
pieces=${2:-512}
rounds=${3:-10}
cargo build --release --quiet -p bench
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
dir=$(mktemp -d "$parent/p2p-serve-path.XXXXXX")
trap 'rm -rf -- "$dir"' EXIT
"${target_dir:-target}/release/p2p-serve-path" "$dir" "$pieces" "$rounds" | tee "$dir/results.jsonl"
python3 - "$dir/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for way in ("read_write", "sendfile"):
    r = [x for x in rows if x["way"] == way]
    rate = statistics.median(x["mib_s"] for x in r)
    cpu = statistics.median(x["sender_cpu_s_per_gib"] for x in r)
    print(f"{way}: median {rate:.0f} MiB/s, sender {cpu:.3f} CPU-s/GiB over {len(r)} rounds")
PY
