"""Report of scripts/bench.sh: summaries, the Markdown table, the docs, the chart.

    bench_report.py RESULTS --command CMD --machine TEXT [--docs MD] [--chart PNG]

Reads the per-run JSON lines of RESULTS, appends one summary line per
figure (median, min, max over the runs), prints the Markdown table on
stdout, replaces the part of MD between the `bench.sh begin` and
`bench.sh end` markers with it, and draws PNG (needs matplotlib).
"""

import argparse
import datetime
import json
import re
import statistics
import sys

BEGIN = "<!-- bench.sh begin -->"
END = "<!-- bench.sh end -->"


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows, figure, key, **match):
    """The metric `key` of every run of `figure` whose fields equal `match`, by run."""
    return {
        r["run"]: r[key]
        for r in rows
        if r.get("figure") == figure and all(r.get(k) == v for k, v in match.items()) and key in r
    }


def ratio(a, b):
    return {run: a[run] / b[run] for run in a if run in b and b[run]}


def figures(rows):
    """(id, label, unit, {run: value}) of every figure there are runs for."""
    mib = next((r["mib"] for r in rows if r.get("figure") == "transfer"), "?")
    small = next((r["mib"] for r in rows if r.get("figure") == "fan_in"), "?")
    lt = next((r.get("version", "") for r in rows if r.get("figure") == "libtorrent"), "")
    lt_name = f"libtorrent {lt}".strip()
    out = []

    def add(fid, label, unit, values):
        if values:
            out.append((fid, label, unit, values))

    ours = series(rows, "transfer", "mib_s")
    theirs = series(rows, "libtorrent", "mib_s")
    add("transfer_mib_s", f"transfer {mib} MiB, 1 seeder → 1 leecher: ours (`p2p-cli get`)", "MiB/s", ours)
    add("libtorrent_mib_s", f"transfer {mib} MiB: {lt_name} (TCP, 1 MiB pieces)", "MiB/s", theirs)
    add("transfer_tmpfs_mib_s", f"transfer {mib} MiB, data dirs and output on tmpfs, warm memory: ours", "MiB/s",
        series(rows, "transfer_tmpfs", "mib_s"))
    add("ours_over_libtorrent", "ours / libtorrent (same run)", "×", ratio(ours, theirs))
    one = series(rows, "fan_in", "mib_s", seeders=1)
    four = series(rows, "fan_in", "mib_s", seeders=4)
    add("fan_in_1_mib_s", f"fan-in {small} MiB: 1 seeder at 50 MiB/s", "MiB/s", one)
    add("fan_in_4_mib_s", f"fan-in {small} MiB: 4 seeders at 50 MiB/s each", "MiB/s", four)
    add("fan_in_speedup", "fan-in speed-up, 4 seeders over 1", "×", ratio(four, one))
    add("fan_out_mib_s", f"fan-out {small} MiB, 1 seeder → 8 leechers at once: aggregate", "MiB/s",
        series(rows, "fan_out", "aggregate_mib_s"))
    add("fan_out_seeder_upload", "fan-out: the seeder's upload", "× file", series(rows, "fan_out", "seeder_upload_files"))
    add("latency_p50_ms", "single 1 MiB piece through the API, 1,000 one at a time: p50", "ms",
        series(rows, "latency", "p50_ms"))
    add("latency_p99_ms", "single 1 MiB piece: p99", "ms", series(rows, "latency", "p99_ms"))
    for fig, who in (("transfer", "ours"), ("libtorrent", "libtorrent"), ("transfer_tmpfs", "ours on tmpfs")):
        for side in ("seeder", "leecher"):
            add(f"{fig}_{side}_cpu_s_per_gib", f"CPU per GiB moved, {who}, {side}", "CPU-s/GiB",
                series(rows, fig, f"{side}_cpu_s_per_gib"))
    for fig, who in (("transfer", "ours"), ("libtorrent", "libtorrent")):
        for side in ("seeder", "leecher"):
            add(f"{fig}_{side}_vmhwm_mib", f"peak RSS (VmHWM) during the transfer, {who}, {side}", "MiB",
                series(rows, fig, f"{side}_vmhwm_mib"))
            add(f"{fig}_{side}_rss_anon_mib", f"RssAnon after the transfer, {who}, {side}", "MiB",
                series(rows, fig, f"{side}_rss_anon_mib"))
    return out


def fmt(v):
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def summarise(figs):
    return [
        {
            "summary": fid,
            "label": label,
            "unit": unit,
            "median": statistics.median(values.values()),
            "min": min(values.values()),
            "max": max(values.values()),
            "runs": len(values),
        }
        for fid, label, unit, values in figs
    ]


def table(summaries):
    lines = ["| figure | median | min–max | unit |", "|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['label']} | **{fmt(s['median'])}** | {fmt(s['min'])}–{fmt(s['max'])} | {s['unit']} |")
    return "\n".join(lines)


def update_docs(path, body):
    with open(path) as f:
        text = f.read()
    block = f"{BEGIN}\n{body}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def chart(summaries, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {s["summary"]: s for s in summaries}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})

    def bars(ax, items, unit):
        items = [(name, by[key]) for name, key in items if key in by]
        xs = range(len(items))
        med = [s["median"] for _, s in items]
        err = [[s["median"] - s["min"] for _, s in items], [s["max"] - s["median"] for _, s in items]]
        colors = ["#3b75af", "#ef8636", "#7fa7cf", "#7f7f7f", "#519e3e", "#c53a32"]
        ax.bar(xs, med, yerr=err, capsize=4, color=colors[: len(items)])
        ax.set_xticks(list(xs), [name for name, _ in items], fontsize=8)
        ax.set_ylabel(unit)
        for x, m in zip(xs, med):
            ax.annotate(fmt(m), (x, 0), ha="center", va="bottom", fontsize=9, color="white", weight="bold",
                        xytext=(0, 4), textcoords="offset points")

    bars(
        left,
        [
            ("ours\n1 → 1", "transfer_mib_s"),
            ("libtorrent\n1 → 1", "libtorrent_mib_s"),
            ("ours 1 → 1\ntmpfs, warm", "transfer_tmpfs_mib_s"),
            ("fan-in\n1 seeder (50 MiB/s)", "fan_in_1_mib_s"),
            ("fan-in\n4 seeders (50 MiB/s)", "fan_in_4_mib_s"),
            ("fan-out\n1 → 8, aggregate", "fan_out_mib_s"),
        ],
        "MiB/s",
    )
    left.set_title("throughput (median, min–max bars)", fontsize=10)
    bars(right, [("p50", "latency_p50_ms"), ("p99", "latency_p99_ms")], "ms")
    right.set_title("1 MiB piece latency", fontsize=10)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--command", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--docs")
    ap.add_argument("--chart")
    args = ap.parse_args()

    rows = [r for r in load(args.results) if "figure" in r]
    summaries = summarise(figures(rows))
    with open(args.results, "a") as f:
        for s in summaries:
            f.write(json.dumps(s) + "\n")
    runs = max((s["runs"] for s in summaries), default=0)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    tbl = table(summaries)
    print(tbl)
    busy = sum(1 for r in rows if r.get("rustc_running", 0) > 0)
    loads = [r["load1"] for r in rows if "load1" in r]
    noise = ""
    if loads:
        noise = (
            f" Other work on the machine: a compiler was running at the end of {busy} of"
            f" {len(rows)} measurements; 1-minute load {min(loads):.1f}–{max(loads):.1f}."
        )
    if args.docs:
        chart_line = "\n\n![throughput and latency](bench.png)" if args.chart else ""
        body = (
            f"Measured on {date} on {args.machine}; median of {runs} runs, min–max beside it.{noise}\n"
            f"Command: `{args.command}`\n\n{tbl}{chart_line}"
        )
        update_docs(args.docs, body)
        print(f"bench: updated {args.docs}", file=sys.stderr)
    if args.chart:
        chart(summaries, args.chart, f"scripts/bench.sh, {date}, {args.machine}")
        print(f"bench: drew {args.chart}", file=sys.stderr)


if __name__ == "__main__":
    main()
