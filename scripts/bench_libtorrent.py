"""libtorrent side of scripts/bench.sh: the same file between two processes.

    bench_libtorrent.py make FILE TORRENT      v1 torrent, 1 MiB pieces
    bench_libtorrent.py seed TORRENT DIR READY seed FILE (in DIR) until killed;
                                               READY gets the port once seeding
    bench_libtorrent.py leech TORRENT DIR PORT fetch from 127.0.0.1:PORT into DIR;
                                               prints one JSON line and exits

TCP only; DHT, LSD, UPnP, NAT-PMP and uTP are off, so the two processes
meet only through add_peer. The leecher is timed from add_torrent until it
is seeding (every piece checked by libtorrent); its CPU time is the
process's user + system time over the same span.
"""

import json
import os
import sys
import threading
import time

import libtorrent as lt

PIECE_BYTES = 1 << 20
# Generous: a stuck transfer fails the benchmark instead of hanging it.
DEADLINE_SECS = 900


def settings():
    return {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_tcp": True,
        "enable_outgoing_tcp": True,
        "alert_mask": lt.alert.category_t.error_notification,
    }


def make(path, torrent):
    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs, PIECE_BYTES, flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(t, os.path.dirname(os.path.abspath(path)))
    with open(torrent, "wb") as f:
        f.write(lt.bencode(t.generate()))


def params(torrent, save_path):
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(torrent)
    p.save_path = save_path
    return p


def wait_seeding(handle, deadline):
    while not handle.status().is_seeding:
        if time.monotonic() > deadline:
            st = handle.status()
            raise SystemExit(f"libtorrent: not seeding in time: {st.state} {st.progress:.3f} {st.errc.message()}")
        time.sleep(0.005)


def seed(torrent, save_path, ready):
    ses = lt.session(settings())
    handle = ses.add_torrent(params(torrent, save_path))
    wait_seeding(handle, time.monotonic() + DEADLINE_SECS)
    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{ses.listen_port()}\n")
    os.rename(tmp, ready)
    while True:
        time.sleep(3600)


def status_kib(*keys):
    """Fields of /proc/self/status, in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in keys:
                out[name] = int(value.split()[0])
    return out


def leech(torrent, save_path, port):
    ses = lt.session(settings())
    p = params(torrent, save_path)
    cpu0 = os.times()
    t0 = time.monotonic()
    handle = ses.add_torrent(p)
    handle.connect_peer(("127.0.0.1", int(port)))
    wait_seeding(handle, t0 + DEADLINE_SECS)
    secs = time.monotonic() - t0
    cpu1 = os.times()
    total = handle.status().total_wanted
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    memory = status_kib("RssAnon", "VmHWM")
    print(
        json.dumps(
            {
                "secs": round(secs, 4),
                "bytes": total,
                "cpu_secs": round(cpu, 3),
                "rss_anon_kib": memory["RssAnon"],
                "vmhwm_kib": memory["VmHWM"],
                "version": lt.__version__,
            }
        )
    )
    sys.stdout.flush()
    # The figures are out; the session is torn down in order so its disk
    # threads finish writing the file before the caller checks it (leaving
    # at once once gave a file that did not hash right). A teardown that
    # hangs is cut short.
    threading.Timer(60, lambda: os._exit(0)).start()
    ses.remove_torrent(handle)
    del handle
    del ses
    os._exit(0)


def main(argv):
    if len(argv) == 3 and argv[0] == "make":
        make(argv[1], argv[2])
    elif len(argv) == 4 and argv[0] == "seed":
        seed(argv[1], argv[2], argv[3])
    elif len(argv) == 4 and argv[0] == "leech":
        leech(argv[1], argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
