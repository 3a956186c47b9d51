#!/usr/bin/env bash
# Whole-system benchmark on loopback, every program a separate process with
# its data dir on disk (`--fsync batch`), all under one private temp dir:
#
#   transfer  one file of SIZE MiB of random bytes, one seeder (`p2p-cli put`)
#             to one leecher (`p2p-cli get`): the get's wall time, CPU seconds
#             per GiB and peak memory of each node, the output sha256-checked
#   libtorrent  the same file between two libtorrent processes (with
#             --with-libtorrent), and the ratio ours / libtorrent per run
#   transfer on tmpfs  the transfer with both data dirs and the output on
#             /dev/shm, right after touching that much memory (skipped
#             without a tmpfs there with room for 4 file sizes)
#   fan-in    4 seeders at --max-upload-rate 50MiB, one leecher, a SIZE/4 file
#             fetched once every seeder's limiter has spent its initial burst;
#             the speed-up over the same with one such seeder
#   fan-out   one seeder, 8 leechers fetching the SIZE/4 file at once: the
#             aggregate rate and the seeder's upload in file sizes
#   latency   1,000 single 1 MiB pieces fetched one at a time through a node's
#             API over one kept-alive connection: p50 / p99
#
#   scripts/bench.sh [--with-libtorrent] [--runs N] [--size-mib M] [--results FILE] [--no-docs]
#     --with-libtorrent  install python3-libtorrent (apt-get, as root) and compare
#     --runs N           runs of every measurement (default 3, at least 1)
#     --size-mib M       size of the transfer file (default 1024, at least 16)
#     --results FILE     JSON lines (default target/bench/results-DATE.jsonl)
#     --no-docs          do not update docs/BENCHMARKS.md and docs/bench.png
#
# Each run of each measurement is one JSON line in the results file; each
# figure then gets a summary line (median, min, max over the runs). The
# Markdown table goes to stdout and, between the `bench.sh begin/end`
# markers, into docs/BENCHMARKS.md; the chart into docs/bench.png (needs
# matplotlib, installed with pip if missing; skipped if that fails).
# Progress goes to stderr. One benchmark at a time per machine (a lock).
# Needs bash, curl, flock, coreutils, python3 and the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  sed -n '2,30s/^# \{0,1\}//p' "$0" >&2
  exit "$1"
}

with_lt=0 runs=3 size_mib=1024 results="" docs=1
argv=("$@")
while (($#)); do
  case $1 in
    --with-libtorrent) with_lt=1 ;;
    --runs) runs=${2:?--runs needs a number}; shift ;;
    --size-mib) size_mib=${2:?--size-mib needs a number}; shift ;;
    --results) results=${2:?--results needs a file}; shift ;;
    --no-docs) docs=0 ;;
    -h | --help) usage 0 ;;
    *) echo "bench: unknown argument '$1'" >&2 && usage 2 ;;
  esac
  shift
done
if ! [[ $runs =~ ^[0-9]{1,4}$ ]] || ((10#$runs < 1)); then
  echo "bench: --runs must be a whole number from 1 to 9999" >&2
  exit 2
fi
if ! [[ $size_mib =~ ^[0-9]{1,7}$ ]] || ((10#$size_mib < 16)); then
  echo "bench: --size-mib must be a whole number >= 16" >&2
  exit 2
fi
runs=$((10#$runs)) size_mib=$((10#$size_mib))
small_mib=$((size_mib / 4))
command_line="scripts/bench.sh${argv[*]:+ ${argv[*]}}"
for tool in curl flock cargo python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "bench: '$tool' not found" >&2; exit 2; }
done

say() { printf 'bench: %s\n' "$*" >&2; }
fail() {
  say "FAILED: $*"
  if [ -n "${work:-}" ] && [ -s "$work/cli.log" ]; then
    say "last lines of p2p-cli's stderr:"
    tail -n 5 "$work/cli.log" >&2
  fi
  exit 1
}

# One benchmark at a time: two would measure each other.
lock_file=${TMPDIR:-/tmp}/p2p-bench.lock
exec 9>>"$lock_file"
flock -n 9 || { say "another benchmark is running (lock $lock_file held); wait for it"; exit 1; }

work="" pids=() cleaned=0
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
# now_ms, alive, stop_all, log_field, start_bootstrap.
# shellcheck source=scripts/lib/swarm.sh
source scripts/lib/swarm.sh
cleanup() {
  ((cleaned)) && return
  cleaned=1
  trap '' INT TERM
  stop_all
  [ -z "$work" ] || rm -rf -- "$work"
  [ -z "${shm:-}" ] || rm -rf -- "$shm"
  rm -f -- "$lock_file"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

say "building release binaries..."
cargo build --release --quiet -p peer-node -p bootstrap-server -p p2p-cli -p bench
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
bin=${target_dir:-target}/release
results=${results:-${target_dir:-target}/bench/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl}
mkdir -p "$(dirname "$results")"
: >"$results"

lt_python=""
if ((with_lt)); then
  for py in /usr/bin/python3 python3; do
    "$py" -c 'import libtorrent' 2>/dev/null && { lt_python=$py; break; }
  done
  if [ -z "$lt_python" ] && [ "$(id -u)" = 0 ]; then
    say "installing python3-libtorrent..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-libtorrent >&2 ||
      say "apt-get install python3-libtorrent failed"
    for py in /usr/bin/python3 python3; do
      "$py" -c 'import libtorrent' 2>/dev/null && { lt_python=$py; break; }
    done
  fi
  [ -n "$lt_python" ] || say "libtorrent: skipped (python3-libtorrent is not installed and could not be: run as root)"
else
  say "libtorrent: skipped (give --with-libtorrent to compare)"
fi

umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-bench.XXXXXX")
chmod 700 "$work"
data_root=$work
# tmpfs for transfer_tmpfs, if /dev/shm is one with room for the seeder's
# store, the output and the warming file (4 file sizes).
shm=""
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] &&
  (($(df --output=avail -k /dev/shm | tail -n 1) > 4 * (size_mib << 10))); then
  shm=$(mktemp -d /dev/shm/p2p-bench.XXXXXX)
else
  say "transfer on tmpfs: skipped (/dev/shm is not a tmpfs with room for 4 × $size_mib MiB)"
fi
export NO_COLOR=1 RUST_LOG=${RUST_LOG:-info}
clk_tck=$(getconf CLK_TCK)
gib=$((1 << 30))

# --- measuring a process -----------------------------------------------------
# user + system time in clock ticks.
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat")
  stat=${stat##*) }
  read -r -a f <<<"$stat"
  echo $((f[11] + f[12]))
}
# A /proc/PID/status field in KiB (VmHWM, RssAnon).
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# Resets VmHWM, so the peak is the measurement's own.
reset_peak() { echo 5 >"/proc/$1/clear_refs"; }
# $1 / $2 with 3 decimals.
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
kib_to_mib() { div "$1" 1024; }
# One JSON line, with the 1-minute load average and the number of compilers
# running when it was measured: other work on the machine (a build) is noise.
record() {
  local load rustc
  load=$(cut -d' ' -f1 /proc/loadavg)
  rustc=$(pgrep -c -x rustc || true)
  echo "${1%\}},\"load1\":$load,\"rustc_running\":${rustc:-0}}" >>"$results"
}

# --- a swarm -----------------------------------------------------------------
declare -A node_pid node_dir node_api node_listen
swarm_names=()
server=""

start_server() {
  start_bootstrap "$work/bootstrap.log"
}

# start_node NAME [peer-node flags...]
start_node() {
  local name=$1 deadline
  shift
  node_dir[$name]=$data_root/$name
  "$bin/peer-node" --listen 127.0.0.1:0 --api 127.0.0.1:0 --data-dir "${node_dir[$name]}" \
    --bootstrap "$server" --fsync batch --max-store 64GiB "$@" 2>"$work/$name.log" &
  pids+=($!)
  node_pid[$name]=$!
  swarm_names+=("$name")
  deadline=$(($(now_us) + 15000000))
  while [ ! -s "${node_dir[$name]}/api-addr" ]; do
    alive "${node_pid[$name]}" || { tail -n 5 "$work/$name.log" >&2; fail "$name exited at start-up"; }
    (($(now_us) < deadline)) || fail "$name did not start in 15 s"
    sleep 0.02
  done
  node_api[$name]=$(head -n 1 "${node_dir[$name]}/api-addr")
  node_listen[$name]=$(log_field "$work/$name.log" listen)
  printf 'Authorization: Bearer %s\n' "$(head -n 1 "${node_dir[$name]}/api-token")" >"$work/$name.auth"
}

# wait_connected NAME PEER...: until NAME has a live connection to every PEER.
wait_connected() {
  local name=$1 deadline peer body missing
  shift
  deadline=$(($(now_us) + 30000000))
  while :; do
    body=$(curl -sS --fail --max-time 2 -H "@$work/$name.auth" "http://${node_api[$name]}/api/v1/peers") || body=""
    missing=""
    for peer in "$@"; do
      grep -q "\"addr\":\"${node_listen[$peer]}\"[^}]*\"state\":\"connected\"" <<<"$body" || missing+=" $peer"
    done
    [ -z "$missing" ] && return 0
    (($(now_us) < deadline)) || fail "$name did not connect to$missing in 30 s"
    sleep 0.05
  done
}

stat_value() { # NAME COUNTER
  curl -sS --fail --max-time 5 -H "@$work/$1.auth" "http://${node_api[$1]}/api/v1/stats" |
    grep -o "\"$2\":[0-9]*" | cut -d: -f2
}

# Node logs' warnings and errors are kept (outside the swarm's dirs) for the report.
keep_log_problems() { # LABEL
  local name
  for name in "${swarm_names[@]}"; do
    grep -E ' (WARN|ERROR) ' "$work/$name.log" | sed "s/^/$1 $name: /" >>"$work/problems.log" || true
  done
}

stop_swarm() { # LABEL
  keep_log_problems "$1"
  stop_all
  local name
  for name in "${swarm_names[@]}"; do rm -rf -- "${node_dir[$name]}" "$work/$name.log" "$work/$name.auth"; done
  rm -f -- "$work/bootstrap.log" "$work"/out*.bin "$data_root"/out*.bin
  swarm_names=()
}

put() { # NAME FILE -> manifest
  "$bin/p2p-cli" --data-dir "${node_dir[$1]}" put "$2" 2>>"$work/cli.log" || fail "p2p-cli put on $1 failed"
}

check_sha() { # FILE WANT
  local got
  got=$(sha256sum <"$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || fail "$1 hashes to $got, not $2"
}

# --- the files ---------------------------------------------------------------
say "making random files of $size_mib and $small_mib MiB..."
mkdir "$work/src"
head -c $((size_mib << 20)) /dev/urandom >"$work/src/big.bin"
head -c $((small_mib << 20)) /dev/urandom >"$work/src/small.bin"
for i in 1 2 3 4; do head -c $((64 << 20)) /dev/urandom >"$work/src/warm$i.bin"; done
big_sha=$(sha256sum <"$work/src/big.bin" | cut -d' ' -f1)
small_sha=$(sha256sum <"$work/src/small.bin" | cut -d' ' -f1)
big_bytes=$((size_mib << 20)) small_bytes=$((small_mib << 20))
if [ -n "$lt_python" ]; then
  "$lt_python" scripts/bench_libtorrent.py make "$work/src/big.bin" "$work/big.torrent"
fi

# --- the measurements --------------------------------------------------------
transfer() { # RUN [FIGURE]
  local run=$1 figure=${2:-transfer} manifest t0 t1 secs s0 l0 s1 l1 out="$data_root/out.bin" put_t0 put_secs
  start_server
  start_node seeder
  put_t0=$(now_us)
  manifest=$(put seeder "$work/src/big.bin")
  put_secs=$(div $(($(now_us) - put_t0)) 1000000)
  start_node leecher
  wait_connected leecher seeder
  reset_peak "${node_pid[seeder]}"
  reset_peak "${node_pid[leecher]}"
  s0=$(cpu_ticks "${node_pid[seeder]}") l0=$(cpu_ticks "${node_pid[leecher]}")
  t0=$(now_us)
  "$bin/p2p-cli" --data-dir "${node_dir[leecher]}" get "$manifest" -o "$out" 2>>"$work/cli.log" ||
    fail "p2p-cli get on the leecher failed (exit $?)"
  t1=$(now_us)
  s1=$(cpu_ticks "${node_pid[seeder]}") l1=$(cpu_ticks "${node_pid[leecher]}")
  secs=$(div $((t1 - t0)) 1000000)
  local s_hwm s_anon l_hwm l_anon served
  s_hwm=$(status_kib "${node_pid[seeder]}" VmHWM) s_anon=$(status_kib "${node_pid[seeder]}" RssAnon)
  l_hwm=$(status_kib "${node_pid[leecher]}" VmHWM) l_anon=$(status_kib "${node_pid[leecher]}" RssAnon)
  served=$(stat_value seeder piece_bytes_served_total)
  check_sha "$out" "$big_sha"
  record "$(printf '{"figure":"%s","run":%d,"mib":%d,"secs":%s,"mib_s":%s,"put_secs":%s,"seeder_cpu_s_per_gib":%s,"leecher_cpu_s_per_gib":%s,"seeder_vmhwm_mib":%s,"leecher_vmhwm_mib":%s,"seeder_rss_anon_mib":%s,"leecher_rss_anon_mib":%s,"seeder_served_bytes":%s,"sha256_ok":true}' \
    "$figure" "$run" "$size_mib" "$secs" "$(div "$size_mib" "$secs")" "$put_secs" \
    "$(div "$(div $((s1 - s0)) "$clk_tck")" "$(div "$big_bytes" "$gib")")" \
    "$(div "$(div $((l1 - l0)) "$clk_tck")" "$(div "$big_bytes" "$gib")")" \
    "$(kib_to_mib "$s_hwm")" "$(kib_to_mib "$l_hwm")" "$(kib_to_mib "$s_anon")" "$(kib_to_mib "$l_anon")" "${served:-0}")"
  say "  $figure: $size_mib MiB in $secs s = $(div "$size_mib" "$secs") MiB/s (put took $put_secs s)"
  stop_swarm "transfer run $run"
}

libtorrent() { # RUN
  local run=$1 seed_pid s0 s1 line ready="$work/lt-ready" out="$work/lt-leech"
  mkdir "$out"
  "$lt_python" scripts/bench_libtorrent.py seed "$work/big.torrent" "$work/src" "$ready" 2>"$work/lt-seed.log" &
  pids+=($!)
  seed_pid=$!
  local deadline=$(($(now_us) + 120000000))
  while [ ! -s "$ready" ]; do
    alive "$seed_pid" || { cat "$work/lt-seed.log" >&2; fail "the libtorrent seeder exited"; }
    (($(now_us) < deadline)) || fail "the libtorrent seeder was not seeding in 120 s"
    sleep 0.05
  done
  reset_peak "$seed_pid"
  s0=$(cpu_ticks "$seed_pid")
  line=$("$lt_python" scripts/bench_libtorrent.py leech "$work/big.torrent" "$out" "$(head -n 1 "$ready")") ||
    fail "the libtorrent leecher failed"
  s1=$(cpu_ticks "$seed_pid")
  local s_hwm s_anon secs
  s_hwm=$(status_kib "$seed_pid" VmHWM) s_anon=$(status_kib "$seed_pid" RssAnon)
  check_sha "$out/big.bin" "$big_sha"
  secs=$(grep -o '"secs": [0-9.]*' <<<"$line" | cut -d' ' -f2)
  local l_cpu l_anon l_hwm version
  l_cpu=$(grep -o '"cpu_secs": [0-9.]*' <<<"$line" | cut -d' ' -f2)
  l_anon=$(grep -o '"rss_anon_kib": [0-9]*' <<<"$line" | cut -d' ' -f2)
  l_hwm=$(grep -o '"vmhwm_kib": [0-9]*' <<<"$line" | cut -d' ' -f2)
  version=$(grep -o '"version": "[^"]*"' <<<"$line" | cut -d'"' -f4)
  record "$(printf '{"figure":"libtorrent","run":%d,"mib":%d,"version":"%s","secs":%s,"mib_s":%s,"seeder_cpu_s_per_gib":%s,"leecher_cpu_s_per_gib":%s,"seeder_vmhwm_mib":%s,"leecher_vmhwm_mib":%s,"seeder_rss_anon_mib":%s,"leecher_rss_anon_mib":%s,"sha256_ok":true}' \
    "$run" "$size_mib" "$version" "$secs" "$(div "$size_mib" "$secs")" \
    "$(div "$(div $((s1 - s0)) "$clk_tck")" "$(div "$big_bytes" "$gib")")" \
    "$(div "$l_cpu" "$(div "$big_bytes" "$gib")")" \
    "$(kib_to_mib "$s_hwm")" "$(kib_to_mib "$l_hwm")" "$(kib_to_mib "$s_anon")" "$(kib_to_mib "$l_anon")")"
  say "  libtorrent: $size_mib MiB in $secs s = $(div "$size_mib" "$secs") MiB/s"
  stop_all
  rm -rf -- "$out" "$ready" "$work/lt-seed.log"
}

fan_in() { # RUN SEEDERS
  local run=$1 k=$2 i manifest seeders=() t0 secs out="$work/out.bin"
  start_server
  local warm=() gets=()
  for i in $(seq 1 "$k"); do
    start_node "seeder$i" --max-upload-rate 50MiB
    manifest=$(put "seeder$i" "$work/src/small.bin")
    warm+=("$(put "seeder$i" "$work/src/warm$i.bin")")
    seeders+=("seeder$i")
  done
  start_node leecher
  wait_connected leecher "${seeders[@]}"
  # Each seeder's limiter starts with a second's worth of tokens: the
  # leecher first drains them (seeder i alone holds warm file i, more than
  # its burst), so the timed fetch sees the caps, not the bursts.
  for i in $(seq 1 "$k"); do
    "$bin/p2p-cli" --data-dir "${node_dir[leecher]}" get "${warm[i - 1]}" -o "$work/out-warm$i.bin" 2>>"$work/cli.log" &
    gets+=($!)
  done
  for i in "${gets[@]}"; do wait "$i" || fail "a warm-up get failed (fan-in, $k seeders)"; done
  t0=$(now_us)
  "$bin/p2p-cli" --data-dir "${node_dir[leecher]}" get "$manifest" -o "$out" 2>>"$work/cli.log" ||
    fail "p2p-cli get on the leecher failed (fan-in, $k seeders)"
  secs=$(div $(($(now_us) - t0)) 1000000)
  check_sha "$out" "$small_sha"
  record "$(printf '{"figure":"fan_in","run":%d,"seeders":%d,"mib":%d,"upload_limit_mib_s":50,"secs":%s,"mib_s":%s,"sha256_ok":true}' \
    "$run" "$k" "$small_mib" "$secs" "$(div "$small_mib" "$secs")")"
  say "  fan-in, $k seeder(s) at 50 MiB/s: $small_mib MiB in $secs s = $(div "$small_mib" "$secs") MiB/s"
  stop_swarm "fan-in ($k) run $run"
}

fan_out() { # RUN
  local run=$1 leechers=8 i manifest names=() gets=() t0 t1 secs out0 out1 rc=0
  start_server
  start_node seeder
  manifest=$(put seeder "$work/src/small.bin")
  for i in $(seq 1 $leechers); do
    start_node "leecher$i"
    names+=("leecher$i")
  done
  for i in "${names[@]}"; do wait_connected "$i" seeder; done
  out0=$(stat_value seeder piece_bytes_served_total)
  t0=$(now_us)
  for i in $(seq 1 $leechers); do
    "$bin/p2p-cli" --data-dir "${node_dir[leecher$i]}" get "$manifest" -o "$work/out$i.bin" 2>>"$work/cli.log" &
    gets+=($!)
  done
  for i in "${gets[@]}"; do wait "$i" || rc=$?; done
  t1=$(now_us)
  ((rc == 0)) || fail "a p2p-cli get failed in the fan-out (exit $rc)"
  out1=$(stat_value seeder piece_bytes_served_total)
  for i in $(seq 1 $leechers); do check_sha "$work/out$i.bin" "$small_sha"; done
  secs=$(div $((t1 - t0)) 1000000)
  record "$(printf '{"figure":"fan_out","run":%d,"leechers":%d,"mib":%d,"secs":%s,"aggregate_mib_s":%s,"seeder_upload_files":%s,"sha256_ok":true}' \
    "$run" "$leechers" "$small_mib" "$secs" "$(div $((small_mib * leechers)) "$secs")" "$(div $((out1 - out0)) "$small_bytes")")"
  say "  fan-out, $leechers leechers: $((small_mib * leechers)) MiB in $secs s = $(div $((small_mib * leechers)) "$secs") MiB/s; seeder sent $(div $((out1 - out0)) "$small_bytes") x the file"
  stop_swarm "fan-out run $run"
}

# The transfer again with both nodes' data dirs and the output on tmpfs,
# right after touching as much memory as the run needs: the machine's own
# bound without a disk and without fresh pages (this VM hands freed memory
# back to its host, so a page touched for the first time in a while costs
# about 2 ms per MiB).
transfer_tmpfs() { # RUN
  [ -n "$shm" ] || return 0
  head -c $((3 * big_bytes)) /dev/zero >"$shm/warm" 2>/dev/null || true
  rm -f -- "$shm/warm"
  data_root=$shm
  transfer "$1" transfer_tmpfs
  data_root=$work
}

latency() { # RUN
  local run=$1 line
  start_server
  start_node a
  start_node b
  wait_connected b a
  line=$("$bin/p2p-bench" --json "${node_api[a]}" "$(head -n 1 "${node_dir[a]}/api-token")" \
    "${node_api[b]}" "$(head -n 1 "${node_dir[b]}/api-token")" 0 1000 2>>"$work/cli.log" | grep '"bench":"single"') ||
    fail "p2p-bench failed"
  record "{\"figure\":\"latency\",\"run\":$run,${line#\{}"
  say "  latency: $(grep -o '"p50_ms":[0-9.]*' <<<"$line") $(grep -o '"p99_ms":[0-9.]*' <<<"$line")"
  stop_swarm "latency run $run"
}

started=$(now_us)
for run in $(seq 1 "$runs"); do
  say "run $run of $runs"
  transfer "$run"
  [ -z "$lt_python" ] || libtorrent "$run"
  transfer_tmpfs "$run"
  fan_in "$run" 1
  fan_in "$run" 4
  fan_out "$run"
  latency "$run"
done
say "measured in $(div $(($(now_us) - started)) 60000000) min; results: $results"
if [ -s "$work/problems.log" ]; then
  say "warnings and errors in the nodes' logs ($(wc -l <"$work/problems.log") lines; first 20):"
  head -n 20 "$work/problems.log" >&2
  cp "$work/problems.log" "${results%.jsonl}.problems.log"
fi

# --- the report --------------------------------------------------------------
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
machine="$(nproc) cores, ${cpu_model:-unknown CPU}, $(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
report=(python3 scripts/bench_report.py "$results" --command "$command_line" --machine "$machine")
if ((docs)); then
  report+=(--docs docs/BENCHMARKS.md)
  if python3 -c 'import matplotlib' 2>/dev/null ||
    { say "installing matplotlib..." && python3 -m pip install --quiet matplotlib >&2 && python3 -c 'import matplotlib'; }; then
    report+=(--chart docs/bench.png)
  else
    say "chart: skipped (matplotlib is not installed and pip could not install it)"
  fi
fi
"${report[@]}"
