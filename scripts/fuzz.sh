#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ in turn (or the ones named) for MINUTES
# each, default 10:
#
#   scripts/fuzz.sh [MINUTES] [TARGET...]
#
# Installs cargo-fuzz if it is missing, builds the targets, then runs each
# with `-max_total_time`, `-rss_limit_mb=2048`, a per-input timeout, and its
# corpus: new inputs go to fuzz/corpus-run/TARGET (not committed), seeded from
# the committed fuzz/corpus/TARGET. One summary line per target (runs,
# coverage, crashes); a crashing input is left under fuzz/artifacts/TARGET/
# (minimise it with `cargo fuzz tmin TARGET FILE`), the full log under
# fuzz/logs/. Exits non-zero if any target crashed.
#
# libFuzzer needs `-Zsanitizer`, a nightly-only compiler flag; on a stable
# toolchain RUSTC_BOOTSTRAP=1 lets the compiler accept it. Do the same by
# hand: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET` in fuzz/.
set -euo pipefail

minutes=${1:-10}
if ! [[ $minutes =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/fuzz.sh [MINUTES] [TARGET...] (MINUTES a whole number, at least 1)" >&2
    exit 2
fi
shift || true

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

echo "building the fuzz targets" >&2
cargo fuzz build -O

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# The targets that run a server in the process keep state on purpose (a
# runtime, registries, peer tables) that the leak checker would flag.
network_targets=" node_connection bootstrap_connection api_input "

mkdir -p logs
crashed=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus-run/$target" "corpus/$target" "artifacts/$target"
    before=$(find "artifacts/$target" -type f | sort)
    extra=()
    if [[ $network_targets == *" $target "* ]]; then
        extra+=(-detect_leaks=0)
    fi
    log="logs/$target.log"
    echo "fuzzing $target for $minutes min (log: fuzz/$log)" >&2
    status=0
    cargo fuzz run -O "$target" "corpus-run/$target" "corpus/$target" -- \
        -max_total_time=$((minutes * 60)) -rss_limit_mb=2048 -timeout=60 \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
    after=$(find "artifacts/$target" -type f | sort)
    new=$(comm -13 <(echo "$before") <(echo "$after") | grep -c . || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [[ -z $runs ]]; then
        runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    fi
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    if [[ $status -ne 0 || $new -gt 0 ]]; then
        crashed=1
        [[ $new -gt 0 ]] || new="exit $status"
    fi
    line=$(printf '%-22s runs %10s  cov %6s  ft %6s  crashes %s' \
        "$target" "${runs:-?}" "${cov:-?}" "${ft:-?}" "$new")
    summary+=("$line")
    echo "$line"
done

echo >&2
echo "summary ($minutes min per target):" >&2
printf '%s\n' "${summary[@]}" >&2
if [[ $crashed -ne 0 ]]; then
    echo "a target crashed: see fuzz/artifacts/ and fuzz/logs/" >&2
    exit 1
fi
