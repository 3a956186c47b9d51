#!/usr/bin/env bash
# A swarm of N real peer-node processes on one bootstrap-server, on
# loopback, measured:
#   formation  seconds from the first start until every node has >= 8
#              connected peers (min(8, N-1)); goal <= 5 s at 100 nodes
#   fetches    node 1 holds N-1 distinct 1 MiB pieces (pinned); node k
#              fetches piece k through its API, so every fetch must find the
#              one holder; success count, and p50 / max seconds per fetch
#              (10 at a time)
#   idle RSS   every node's VmRSS once formed, before the fetches: median, max
#   bootstrap  the server's CPU seconds over the run and its peak RSS
# One JSON line per figure on stdout (and in FILE with --results), a summary
# on stderr.
#
#   scripts/scale.sh [N] [--results FILE] [--keep] [--dht]
#     N          nodes (default 100, 2 to 500)
#     --keep     keep the temp dir (logs, data dirs) at exit
#     --dht      the server and every node run a DHT node (a private DHT
#                joined through the server); the fetches start once node 1
#                has announced every piece (4 a second: about N/4 s)
#   SCALE_FORM_TIMEOUT=120  seconds the swarm may take to form
#   SCALE_FETCH_TIMEOUT=30  each fetch's timeout (the API's `timeout`)
#
# Needs bash, python3, coreutils and the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

n=100 keep=0 results="" dht=0
while (($#)); do
  case $1 in
    --keep) keep=1 ;;
    --dht) dht=1 ;;
    --results) results=${2:?--results needs a file}; shift ;;
    -h | --help) sed -n '2,25s/^# \{0,1\}//p' "$0" >&2; exit 0 ;;
    *[!0-9]* | '') echo "scale: unknown argument '$1'" >&2; exit 2 ;;
    *) n=$((10#$1)) ;;
  esac
  shift
done
((n >= 2 && n <= 500)) || { echo "scale: N must be between 2 and 500 (got $n)" >&2; exit 2; }
want=$((n - 1 < 8 ? n - 1 : 8))
form_timeout=${SCALE_FORM_TIMEOUT:-120}
fetch_timeout=${SCALE_FETCH_TIMEOUT:-30}
for tool in cargo python3; do
  command -v "$tool" >/dev/null || { echo "scale: '$tool' not found" >&2; exit 2; }
done
# Each node holds a few dozen descriptors; N of them need room.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "scale: building release binaries..." >&2
cargo build --release --quiet -p bootstrap-server -p peer-node
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
bin=${target_dir:-target}/release

work="" pids=() cleaned=0
# now_ms, alive, stop_all, log_field, start_bootstrap, start_swarm.
# shellcheck source=scripts/lib/swarm.sh
source scripts/lib/swarm.sh
fail() {
  echo "scale: $*" >&2
  exit 1
}
cleanup() {
  ((cleaned)) && return
  cleaned=1
  trap '' INT TERM
  stop_all
  if [ -n "$work" ]; then
    if ((keep)); then echo "scale: kept $work" >&2; else rm -rf -- "$work"; fi
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/p2p-scale.XXXXXX")
export NO_COLOR=1
start_ms=$(now_ms)
server=""
start_swarm "$work" "$n" "$dht"
server_pid=${pids[0]}
printf '%s\n' "${pids[@]:1}" >"$work/node-pids"
echo "scale: bootstrap-server on $server, $n nodes started in $work" >&2

python3 - "$work" "$n" "$want" "$start_ms" "$form_timeout" "$fetch_timeout" "$server_pid" "$dht" <<'PY' | tee "${results:-/dev/null}"
import concurrent.futures, hashlib, json, os, re, statistics, sys, time, urllib.request

work, n, want, start_ms, form_timeout, fetch_timeout, server_pid, dht = sys.argv[1:]
n, want, form_timeout, fetch_timeout = int(n), int(want), int(form_timeout), int(fetch_timeout)
dht = dht == "1"
start = int(start_ms) / 1000
pids = [int(p) for p in open(f"{work}/node-pids").read().split()]
tick = os.sysconf("SC_CLK_TCK")

def say(msg):
    print(f"scale: {msg}", file=sys.stderr, flush=True)

def emit(**fields):
    print(json.dumps(dict(fields, dht=dht)), flush=True)

def node_api(k):
    d = f"{work}/node{k}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            addr = open(f"{d}/api-addr").read().split()[0]
            token = open(f"{d}/api-token").read().split()[0]
            return addr, token
        except (OSError, IndexError):
            time.sleep(0.05)
    sys.exit(f"scale: node{k} did not start in 30 s (log: {work}/node{k}.log)")

apis = {k: node_api(k) for k in range(1, n + 1)}

def call(k, method, path, body=None, timeout=5):
    addr, token = apis[k]
    req = urllib.request.Request(f"http://{addr}{path}", data=body, method=method,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()

def connected(k):
    try:
        peers = json.loads(call(k, "GET", "/api/v1/peers"))
    except Exception:
        return -1
    rows = peers if isinstance(peers, list) else peers.get("peers", [])
    return sum(1 for p in rows if p.get("state") == "connected")

def rss_kib(pid, key="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0

def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick

# Formation.
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    while True:
        counts = list(pool.map(connected, range(1, n + 1)))
        ready = sum(1 for c in counts if c >= want)
        elapsed = time.time() - start
        if ready == n:
            break
        if elapsed > form_timeout:
            emit(figure="formation", nodes=n, want=want, formed=False, ready=ready, secs=round(elapsed, 2))
            sys.exit(f"scale: only {ready} of {n} nodes had >= {want} peers after {form_timeout} s")
        time.sleep(0.1)
formed = time.time() - start
emit(figure="formation", nodes=n, want=want, formed=True, secs=round(formed, 2),
     peers_median=statistics.median(counts), peers_max=max(counts))
say(f"formed in {formed:.2f} s: every one of {n} nodes has >= {want} connected peers "
    f"(median {statistics.median(counts)}, max {max(counts)})")

# Idle memory, once formed.
time.sleep(2)
rss = [rss_kib(p) / 1024 for p in pids]
emit(figure="idle_rss", nodes=n, median_mib=round(statistics.median(rss), 1), max_mib=round(max(rss), 1))
say(f"idle RSS per node: median {statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB")

# One holder, N-1 fetchers, each for its own piece.
pieces = {}
for k in range(2, n + 1):
    body = hashlib.sha256(f"scale piece {k} {start}".encode()).digest() * (1 << 15)
    answer = json.loads(call(1, "POST", "/api/v1/pieces", body, timeout=30))
    pieces[k] = (answer.get("id") or answer.get("sha256"), hashlib.sha256(body).hexdigest())

def metric(k, name):
    text = call(k, "GET", "/metrics").decode()
    m = re.search(rf"^p2p_{name} (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0

if dht:
    # Node 1 announces its pinned pieces at the DHT announce rate.
    t0 = time.time()
    deadline = t0 + (n - 1) / 4 + 60
    while metric(1, "dht_announces_total") < n - 1:
        if time.time() > deadline:
            sys.exit(f"scale: node 1 announced only {metric(1, 'dht_announces_total')} of {n - 1} pieces")
        time.sleep(0.5)
    emit(figure="dht_announced", nodes=n, pieces=n - 1, secs=round(time.time() - t0, 1))
    say(f"node 1 announced its {n - 1} pieces on the DHT in {time.time() - t0:.1f} s")

def fetch(k):
    want_id, digest = pieces[k]
    t0 = time.time()
    try:
        got = call(k, "GET", f"/api/v1/pieces/{want_id}?timeout={fetch_timeout}", timeout=fetch_timeout + 5)
        ok = hashlib.sha256(got).hexdigest() == digest
        err = None if ok else "wrong bytes"
    except urllib.error.HTTPError as e:
        ok, err = False, f"{e.code} {e.read().decode(errors='replace')[:200]}"
    except Exception as e:
        ok, err = False, str(e)
    return k, ok, time.time() - t0, err

with concurrent.futures.ThreadPoolExecutor(10) as pool:
    done = list(pool.map(fetch, range(2, n + 1)))
if dht:
    lookups = sum(metric(k, "dht_lookups_total") for k in range(2, n + 1))
    dials = sum(metric(k, "dht_dials_total") for k in range(2, n + 1))
    emit(figure="dht_lookups", nodes=n, lookups=lookups, dials=dials)
    say(f"DHT: {lookups} lookups, {dials} dials to addresses they returned")
oks = [d for d in done if d[1]]
times = sorted(d[2] for d in oks)
emit(figure="fetches", nodes=n, fetches=len(done), succeeded=len(oks),
     p50_secs=round(statistics.median(times), 3) if times else None,
     max_secs=round(max(times), 3) if times else None)
say(f"fetches of a piece only node 1 holds: {len(oks)} of {len(done)} succeeded"
    + (f", p50 {statistics.median(times):.2f} s, max {max(times):.2f} s" if times else ""))
for k, ok, secs, err in done:
    if not ok:
        say(f"  node{k}: {err}")

srv = int(server_pid)
emit(figure="bootstrap", nodes=n, cpu_secs=round(cpu_s(srv), 2),
     peak_rss_mib=round(rss_kib(srv, "VmHWM") / 1024, 1), wall_secs=round(time.time() - start, 1))
say(f"bootstrap-server: {cpu_s(srv):.2f} CPU-s over {time.time() - start:.0f} s, peak RSS {rss_kib(srv, 'VmHWM') / 1024:.1f} MiB")
if len(oks) != len(done):
    sys.exit(1)
PY
