#!/usr/bin/env bash
# The model of content discovery at up to 10,000 nodes (crates/scale-model):
# builds it in release, replays the real 100- and 300-node runs of
# docs/SCALE.md, then runs every cell of N x holders x {PEX, PEX+DHT}, and
# draws docs/scale-model.png (success rate and messages per fetch against N).
#
#   scripts/scale-model.sh [--results FILE] [--no-chart] [MODEL ARGS...]
#     --results FILE  JSON lines (default target/scale-model/results.jsonl)
#     --no-chart      do not draw docs/scale-model.png
#     MODEL ARGS      passed to p2p-scale-model, e.g. --seed 2 --fetches 400
#                     --nodes 100,1000 --dht bep5 (see p2p-scale-model --help)
#
# The Markdown tables go to stdout, progress to stderr. The chart needs
# matplotlib (installed with pip if missing; skipped if that fails).
# Needs bash, python3 and the Rust toolchain. Nothing touches the network:
# the model runs in one process, over an in-memory transport.
set -euo pipefail
cd "$(dirname "$0")/.."

results="" chart=1 model_args=()
while (($#)); do
  case $1 in
    --results) results=${2:?--results needs a file}; shift ;;
    --no-chart) chart=0 ;;
    -h | --help) sed -n '2,17s/^# \{0,1\}//p' "$0" >&2; exit 0 ;;
    *) model_args+=("$1") ;;
  esac
  shift
done
command -v cargo >/dev/null || { echo "scale-model: 'cargo' not found" >&2; exit 2; }

echo "scale-model: building (release)..." >&2
cargo build --release --quiet -p scale-model
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
target_dir=${target_dir:-target}
results=${results:-$target_dir/scale-model/results.jsonl}
mkdir -p "$(dirname "$results")"

start=$(date +%s)
"$target_dir/release/p2p-scale-model" --out "$results" "${model_args[@]}"
echo "scale-model: ran in $(($(date +%s) - start)) s; results in $results" >&2

((chart)) || exit 0
if python3 -c 'import matplotlib' 2>/dev/null ||
  { echo "scale-model: installing matplotlib..." >&2 && python3 -m pip install --quiet matplotlib >&2 && python3 -c 'import matplotlib'; }; then
  python3 scripts/scale_model_plot.py "$results" docs/scale-model.png
  echo "scale-model: chart in docs/scale-model.png" >&2
else
  echo "scale-model: chart skipped (matplotlib is not installed and pip could not install it)" >&2
fi
