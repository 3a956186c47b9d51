#!/usr/bin/env bash
# Real hosts with their own addresses: one bootstrap host and 6 node hosts,
# each a network namespace, joined by a bridge in a namespace of its own
# (IPv4 10.77.0.0/24 and IPv6 fd77::/64, both private to these namespaces:
# no traffic leaves them). Then, with the release binaries:
#
#   1. a file put on h1 is fetched on every other host (over IPv4 and IPv6);
#   2. a fetch from two holders survives one holder's link cut mid-way;
#   3. the bootstrap host killed: the swarm keeps exchanging, and a new
#      host joins through a peer's address;
#   4. of two holders, one capped to a tenth of the other's upload rate:
#      at least 70 % of the file's bytes come from the fast one;
#   5. a connect flood from 40 source addresses at the bootstrap server and
#      at a node: each keeps within its per-IP and global limits, and still
#      answers.
#
#   scripts/netns-swarm.sh [--no-build]
#
# Needs root (CAP_NET_ADMIN) and iproute2; exits 0 with a message when it
# cannot create namespaces. Every namespace and process is removed at exit,
# on success or failure. Run by .ci/run when the machine allows it.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'netns-swarm: %s\n' "$*" >&2; }
fail() {
  say "FAILED: $*"
  exit 1
}

prefix=p2pns$$
hosts=(boot h1 h2 h3 h4 h5 h6)
declare -A v4 v6
v4[boot]=10.77.0.1 v6[boot]=fd77::1
for i in 1 2 3 4 5 6; do v4[h$i]=10.77.0.1$i v6[h$i]=fd77::1$i; done
flood_hosts=40

if ! command -v ip >/dev/null || ! ip netns add "${prefix}-probe" 2>/dev/null; then
  say "skipped: this machine cannot create network namespaces (needs root with CAP_NET_ADMIN and iproute2)"
  exit 0
fi
ip netns del "${prefix}-probe"

if [ "${1:-}" != --no-build ]; then
  say "building release binaries..."
  cargo build --release --quiet -p peer-node -p bootstrap-server -p p2p-cli
fi
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
  grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4) || true
bin=$(cd "${target_dir:-target}/release" && pwd)

work="" pids=()
# now_ms, alive, stop_all, log_field.
# shellcheck source=scripts/lib/swarm.sh
source scripts/lib/swarm.sh

cleanup() {
  local status=$? ns
  trap '' INT TERM
  stop_all
  for ns in $(ip netns list | awk '{print $1}' | grep "^${prefix}-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  [ -z "$work" ] || rm -rf -- "$work"
  ((status == 0)) || say "logs were in the removed temp dir; rerun with NETNS_KEEP=1 to keep them"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
umask 077
work=$(mktemp -d -t p2p-netns.XXXXXX)
if [ "${NETNS_KEEP:-0}" = 1 ]; then
  keep=$work
  work=""
  say "keeping logs in $keep"
fi
dir=${keep:-$work}
export NO_COLOR=1 RUST_LOG=${RUST_LOG:-info}

in_ns() { # in_ns HOST COMMAND...: runs COMMAND on HOST
  local host=$1
  shift
  ip netns exec "${prefix}-$host" "$@"
}

# --- the network ---------------------------------------------------------
ip netns add "${prefix}-sw"
in_ns sw ip link add br0 type bridge
in_ns sw ip link set br0 up
in_ns sw ip link set lo up
attach() { # attach NS IFNAME: a veth from namespace NS into the bridge
  local ns=$1 ifname=$2 n=$3
  ip link add "${prefix}a$n" type veth peer name "${prefix}b$n"
  ip link set "${prefix}a$n" netns "${prefix}-sw"
  ip link set "${prefix}b$n" netns "${prefix}-$ns"
  in_ns sw ip link set "${prefix}a$n" master br0 up
  in_ns "$ns" ip link set "${prefix}b$n" name "$ifname"
  in_ns "$ns" ip link set "$ifname" up
}
n=0
for h in "${hosts[@]}"; do
  n=$((n + 1))
  ip netns add "${prefix}-$h"
  in_ns "$h" ip link set lo up
  attach "$h" eth0 "$n"
  in_ns "$h" ip addr add "${v4[$h]}/24" dev eth0
  in_ns "$h" ip -6 addr add "${v6[$h]}/64" dev eth0 nodad
done
# The flood host: many source addresses on one interface.
ip netns add "${prefix}-flood"
in_ns flood ip link set lo up
attach flood eth0 99
for i in $(seq 1 "$flood_hosts"); do
  in_ns flood ip addr add "10.77.0.$((100 + i))/24" dev eth0
done
reachable() { # reachable HOST ADDR: a connect from HOST to ADDR is answered (refused)
  in_ns "$1" python3 -c '
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.settimeout(3)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    sys.exit(0)
except OSError:
    sys.exit(1)
' "$2"
}
reachable h1 "${v4[boot]}" || fail "the bridge does not carry IPv4"
reachable h1 "${v6[boot]}" || fail "the bridge does not carry IPv6"
say "network up: ${#hosts[@]} hosts on a bridge, IPv4 and IPv6, plus a flood host with $flood_hosts addresses"

# --- the programs ----------------------------------------------------------
declare -A pid_of
start_boot() {
  # Not through in_ns: a backgrounded function is a subshell, and $! would
  # be the subshell's PID, not the program's.
  ip netns exec "${prefix}-boot" "$bin/bootstrap-server" --listen "[::]:7000" \
    --data-dir "$dir/boot" 2>>"$dir/boot.log" &
  pid_of[boot]=$!
  pids+=("$!")
}
start_node() { # start_node HOST BOOTSTRAP [FLAG...]
  local h=$1 boot=$2
  shift 2
  [ -d "$dir/$h" ] || mkdir -m 700 "$dir/$h"
  rm -f "$dir/$h/api-addr"
  ip netns exec "${prefix}-$h" "$bin/peer-node" --listen "[::]:7001" --api 127.0.0.1:7070 \
    --data-dir "$dir/$h" --bootstrap "$boot" "$@" 2>>"$dir/$h.log" &
  pid_of[$h]=$!
  pids+=("$!")
}
cli() { # cli HOST ARGS...: p2p-cli on HOST's node
  local h=$1
  shift
  in_ns "$h" "$bin/p2p-cli" --data-dir "$dir/$h" "$@"
}
wait_until() { # wait_until SECONDS WHAT COMMAND...
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$(($(now_ms) + secs * 1000))
  until "$@" >/dev/null 2>&1; do
    (($(now_ms) < deadline)) || fail "$what (after ${secs} s)"
    sleep 0.2
  done
}
fetched() { # fetched HOST: piece bytes HOST's node has fetched so far
  cli "$1" --json stats 2>/dev/null | grep -o '"piece_bytes_fetched_total":[0-9]*' | cut -d: -f2
}
fetched_since() { # fetched_since HOST BEFORE BYTES: HOST fetched BYTES more
  local now
  now=$(fetched "$1")
  ((${now:-0} - $2 >= $3))
}
connected() { # connected HOST N: HOST has at least N connected peers
  [ "$(cli "$1" --json peers 2>/dev/null | grep -c '"state":"connected"')" -ge "$2" ]
}

start_boot
# Half the nodes bootstrap over IPv4, half over IPv6.
for i in 1 2 3 4 5; do
  if ((i % 2)); then start_node "h$i" "${v4[boot]}:7000"; else start_node "h$i" "[${v6[boot]}]:7000"; fi
done
for i in 1 2 3 4 5; do
  wait_until 30 "h$i did not start" test -s "$dir/h$i/api-addr"
done
for i in 1 2 3 4 5; do
  wait_until 60 "h$i did not find 4 peers" connected "h$i" 4
done
say "swarm formed: 5 nodes, each connected to the other 4"

# --- 1. a file put on h1 is fetched on every other host ---------------------
head -c $(((24 << 20) + 777)) /dev/urandom >"$dir/file1"
want=$(sha256sum <"$dir/file1" | cut -d' ' -f1)
m1=$(cli h1 put "$dir/file1" 2>/dev/null)
for i in 2 3 4 5; do
  cli "h$i" get "$m1" -o "$dir/out1.h$i" 2>/dev/null || fail "h$i could not fetch the file"
  [ "$(sha256sum <"$dir/out1.h$i" | cut -d' ' -f1)" = "$want" ] || fail "h$i wrote other bytes"
done
say "1. a file put on h1 was fetched on h2..h5, byte for byte"

# --- 2. a holder's link cut mid-fetch -------------------------------------
# h2 and h3 hold the file; each serves at most 20 MiB/s, so h4's fetch of a
# fresh file takes a few seconds; h2's link goes down meanwhile.
for h in h2 h3; do
  kill -TERM "${pid_of[$h]}"
  wait "${pid_of[$h]}" 2>/dev/null || true
  start_node "$h" "${v4[boot]}:7000" --max-upload-rate 20MiB
done
head -c $((96 << 20)) /dev/urandom >"$dir/file2"
want2=$(sha256sum <"$dir/file2" | cut -d' ' -f1)
wait_until 30 "h2 did not restart" test -s "$dir/h2/api-addr"
m2=$(cli h2 put "$dir/file2" 2>/dev/null)
wait_until 30 "h3 did not restart" test -s "$dir/h3/api-addr"
wait_until 60 "h3 did not reconnect" connected h3 3
cli h3 get "$m2" -o "$dir/out2.h3" 2>/dev/null || fail "h3 could not fetch the second file"
wait_until 60 "h4 did not see h2 and h3" connected h4 4
before=$(fetched h4)
cli h4 get "$m2" -o "$dir/out2.h4" --json >"$dir/job2.json" 2>/dev/null &
getter=$!
# Cut the link once a quarter of the file has arrived.
wait_until 60 "h4's fetch did not start" fetched_since h4 "$before" $((24 << 20))
in_ns h2 ip link set eth0 down
wait "$getter" || fail "h4's fetch did not complete after h2's link was cut"
[ "$(sha256sum <"$dir/out2.h4" | cut -d' ' -f1)" = "$want2" ] || fail "h4 wrote other bytes"
in_ns h2 ip link set eth0 up
say "2. h4's fetch from h2 and h3 completed from h3 after h2's link was cut mid-way"

# --- 3. the bootstrap host killed ---------------------------------------
kill -KILL "${pid_of[boot]}"
wait "${pid_of[boot]}" 2>/dev/null || true
head -c $((8 << 20)) /dev/urandom >"$dir/file3"
want3=$(sha256sum <"$dir/file3" | cut -d' ' -f1)
m3=$(cli h5 put "$dir/file3" 2>/dev/null)
cli h1 get "$m3" -o "$dir/out3.h1" 2>/dev/null || fail "the swarm stopped exchanging without its bootstrap host"
[ "$(sha256sum <"$dir/out3.h1" | cut -d' ' -f1)" = "$want3" ] || fail "h1 wrote other bytes"
# A new host joins through a peer's address (h1, over IPv6).
start_node h6 "[${v6[h1]}]:7001"
wait_until 30 "h6 did not start" test -s "$dir/h6/api-addr"
wait_until 60 "h6 did not join through h1" connected h6 3
cli h6 get "$m3" -o "$dir/out3.h6" 2>/dev/null || fail "h6 could not fetch through the swarm"
[ "$(sha256sum <"$dir/out3.h6" | cut -d' ' -f1)" = "$want3" ] || fail "h6 wrote other bytes"
say "3. with the bootstrap host dead the swarm kept exchanging, and h6 joined through h1"

# --- 4. a slow holder and a fast one --------------------------------------
for pair in "h1 50MiB" "h5 5MiB"; do
  read -r h rate <<<"$pair"
  kill -TERM "${pid_of[$h]}"
  wait "${pid_of[$h]}" 2>/dev/null || true
  start_node "$h" "[${v6[h2]}]:7001" --max-upload-rate "$rate"
  wait_until 30 "$h did not restart" test -s "$dir/$h/api-addr"
done
# Large enough that the rates, not the first burst of each holder's token
# bucket, decide the shares.
head -c $((160 << 20)) /dev/urandom >"$dir/file4"
m4=$(cli h1 put "$dir/file4" 2>/dev/null)
cli h5 get "$m4" -o "$dir/out4.h5" 2>/dev/null || fail "h5 could not fetch the fourth file"
wait_until 60 "h6 did not see h1 and h5" bash -c "[ \"\$(ip netns exec ${prefix}-h6 $bin/p2p-cli --data-dir $dir/h6 --json peers 2>/dev/null | grep -c '\"state\":\"connected\"')\" -ge 4 ]"
cli h6 get "$m4" -o "$dir/out4.h6" --json >"$dir/job4.json" 2>/dev/null || fail "h6 could not fetch the fourth file"
share=$(python3 - "$dir/job4.json" "${v4[h1]}" "${v6[h1]}" <<'EOF'
import json, sys
job = json.loads(open(sys.argv[1]).read().splitlines()[-1])
rows = job.get("explain") or []
total = sum(r["bytes"] for r in rows) or 1
fast = sum(r["bytes"] for r in rows
           if r["peer"].startswith(sys.argv[2] + ":") or r["peer"].startswith("[" + sys.argv[3] + "]:"))
print(int(100 * fast / total))
EOF
)
((share >= 70)) || fail "only $share % of the bytes came from the fast holder"
say "4. with one holder at a tenth of the other's rate, $share % of the bytes came from the fast one"

# --- 5. a connect flood from many addresses --------------------------------
start_boot
wait_until 30 "the bootstrap server did not restart" in_ns boot bash -c "ss -ltn | grep -q ':7000 '"
ip netns exec "${prefix}-flood" python3 - "$flood_hosts" "${v4[boot]}" "${v4[h3]}" <<'EOF' &
import socket, sys, time
n, targets = int(sys.argv[1]), [(sys.argv[2], 7000), (sys.argv[3], 7001)]
held = []
for i in range(1, n + 1):
    src = f"10.77.0.{100 + i}"
    for host, port in targets:
        for _ in range(12):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.bind((src, 0))
                s.connect((host, port))
                held.append(s)
            except OSError:
                s.close()
time.sleep(6)
EOF
flooder=$!
# The flood holds its connections for 6 s: count once it has opened them.
wait_until 30 "the flood did not reach h3" bash -c "[ \"\$(ip netns exec ${prefix}-h3 ss -tnH state established '( sport = :7001 )' | grep -c '10\.77\.0\.1[0-9][0-9]')\" -ge 8 ]"
total_node=$(in_ns h3 ss -tnH state established '( sport = :7001 )' | wc -l)
per_ip_boot=$(in_ns boot ss -tnH state established '( sport = :7000 )' | awk '{print $4}' | sed 's/:[0-9]*$//' | sort | uniq -c | sort -rn | head -n 1 | awk '{print $1}')
per_ip_node=$(in_ns h3 ss -tnH state established '( sport = :7001 )' | awk '{print $4}' | grep '10\.77\.0\.1[0-9][0-9]' | sed 's/:[0-9]*$//' | sort | uniq -c | sort -rn | head -n 1 | awk '{print $1}')
wait "$flooder" || true
say "5. busiest flood address held ${per_ip_boot:-0} connections at the bootstrap server (limit 8), ${per_ip_node:-0} at h3 (limit 4)"
((${per_ip_boot:-0} <= 8)) || fail "the bootstrap server let one address hold ${per_ip_boot} connections"
((${per_ip_node:-0} <= 4)) || fail "h3 let one address hold ${per_ip_node} connections"
((total_node <= 64)) || fail "h3 held $total_node connections, over its global limit of 64"
say "   h3 held $total_node connections in all (its global limit: 64)"
cli h2 get "$m1" -o "$dir/out1.again" 2>/dev/null || fail "h2 could not fetch after the flood"
say "OK: every case held"
