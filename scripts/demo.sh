#!/usr/bin/env bash
# Library demo (until the node ships): makes a sample file (or uses $1),
# stores it as verified 1 MiB pieces, prints its manifest, reassembles it
# from a reopened store and checks the bytes with sha256sum.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
input=${1:-}
if [ -z "$input" ]; then
  input="$work/sample.bin"
  head -c $((5 * 1024 * 1024 + 12345)) /dev/urandom >"$input"
fi
cargo run --quiet --release -p piece-store --example share_file -- "$input" "$work/store" "$work/out.bin"
a=$(sha256sum <"$input" | cut -d' ' -f1)
b=$(sha256sum <"$work/out.bin" | cut -d' ' -f1)
echo "sha256 in : $a"
echo "sha256 out: $b"
[ "$a" = "$b" ] && echo "OK: the reassembled file is identical"
