#!/usr/bin/env python3
"""Draws the model's results (the JSON lines of `p2p-scale-model --out`):
success rate and messages per fetch (median) against the
swarm size N on a log axis, PEX alone dashed and PEX + DHT solid, one
colour per holder count.

    scripts/scale_model_plot.py RESULTS.jsonl OUT.png
"""

import json
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    results, out = sys.argv[1:]
    cells = []
    with open(results) as f:
        for line in f:
            row = json.loads(line)
            if row.get("figure") == "cell":
                cells.append(row)
    if not cells:
        sys.exit(f"scale_model_plot: no cells in {results}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = ["#3b75af", "#ef8636", "#519e3e", "#c53a32", "#7f7f7f"]
    holders = sorted({c["holders"] for c in cells})
    for i, h in enumerate(holders):
        for mode, style, name in [("pex", "--", "PEX"), ("pex+dht", "-", "PEX+DHT")]:
            rows = sorted((c for c in cells if c["holders"] == h and c["mode"] == mode), key=lambda c: c["nodes"])
            if not rows:
                continue
            xs = [c["nodes"] for c in rows]
            color = colors[i % len(colors)]
            label = f"{name}, {h} holder{'s' if h > 1 else ''}"
            marker = "o" if mode == "pex+dht" else "s"
            left.plot(xs, [100 * c["success_rate"] for c in rows], style, marker=marker, color=color, label=label)
            right.plot(xs, [c["msgs_median"] for c in rows], style, marker=marker, color=color, label=label)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("nodes (N)")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("fetches that found a holder (%)")
    left.set_ylim(-3, 103)
    left.set_title("success within the 10 s deadline", fontsize=10)
    right.set_ylabel("messages per fetch")
    right.set_title("messages per fetch (median; p99 in the table)", fontsize=10)
    left.legend(fontsize=7, loc="lower left")
    fetches = cells[0]["fetches"]
    fig.suptitle(f"Model of content discovery (crates/scale-model), {fetches} fetches per point; "
                 "DHT modelled with the mainline crate's parameters", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    main()
