#!/usr/bin/env python3
"""Summarises scripts/bench.sh's CSV: a markdown table of medians with verve/tokio ratios on
stdout, and an SVG plot of requests/s and server CPU per request (no dependencies)."""
import csv
import statistics
import sys
from collections import defaultdict


def load(path):
    rows = defaultdict(list)
    with open(path) as f:
        for r in csv.DictReader(f):
            rows[(r["scenario"], r["server"])].append(r)
    return rows


def med(rows, key):
    return statistics.median(float(r[key]) for r in rows)


def cpu(rows):
    return statistics.median(float(r["user_us_per_req"]) + float(r["sys_us_per_req"]) for r in rows)


def main(csv_path, svg_path):
    rows = load(csv_path)
    scenarios = list(dict.fromkeys(s for s, _ in rows))
    print("| scenario | server | requests/s | p50 ms | p99 ms | CPU µs/req user | sys | total | runs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in scenarios:
        for server in ("verve", "tokio"):
            rs = rows.get((s, server))
            if not rs:
                continue
            p99 = med(rs, "p99_ms")
            print(f"| {s} | {server} | {med(rs, 'requests_per_sec'):,.0f} | {med(rs, 'p50_ms'):.3f} | "
                  f"{p99:.3f} | {med(rs, 'user_us_per_req'):.2f} | {med(rs, 'sys_us_per_req'):.2f} | "
                  f"{cpu(rs):.2f} | {len(rs)} |".replace("| 0.000 |", "| n/a |"))
    print()
    # The machine's speed drifts between rounds, so runs of one round (back to back) are
    # compared with each other, and the median of those per-round ratios is reported.
    print("| comparison | requests/s ratio | CPU per request ratio | per-round CPU ratios |")
    print("|---|---|---|---|")
    comparisons = [(f"verve/tokio {s}", (s, "verve"), (s, "tokio")) for s in scenarios]
    comparisons += [("verve random ids / same id, c64", ("c64", "verve"), ("c64-same-id", "verve")),
                    ("verve io_uring / epoll, c64", ("c64", "verve"), ("c64-epoll", "verve")),
                    ("verve with redis / standalone, c64", ("c64-redis", "verve"), ("c64", "verve")),
                    ("verve with redis / standalone, pipeline16", ("pipeline16-redis", "verve"),
                     ("pipeline16", "verve"))]
    for name, a, b in comparisons:
        ra, rb = rows.get(a), rows.get(b)
        if not ra or not rb:
            continue
        pairs = list(zip(ra, rb))
        rps = statistics.median(float(x["requests_per_sec"]) / float(y["requests_per_sec"]) for x, y in pairs)
        cpus = [cpu([x]) / cpu([y]) for x, y in pairs]
        print(f"| {name} | {rps:.2f} | {statistics.median(cpus):.2f} | {', '.join(f'{c:.2f}' for c in cpus)} |")
    write_svg(rows, scenarios, svg_path)


def write_svg(rows, scenarios, path):
    bars = [(s, server, rows[(s, server)]) for s in scenarios for server in ("verve", "tokio") if (s, server) in rows]
    colors = {"verve": "#2b6cb0", "tokio": "#c05621"}
    panels = [("requests/s (median)", lambda rs: med(rs, "requests_per_sec")),
              ("server CPU µs per request (median, user+sys)", cpu)]
    width, panel_h, left, top = 900, 260, 60, 30
    bar_w = (width - left - 20) / max(len(bars), 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * panel_h + 80}" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>']
    for p, (title, value) in enumerate(panels):
        y0 = top + p * (panel_h + 30)
        vals = [value(rs) for _, _, rs in bars]
        vmax = max(vals) if vals else 1
        out.append(f'<text x="{left}" y="{y0 - 8}" font-size="13">{title}</text>')
        out.append(f'<line x1="{left}" y1="{y0 + panel_h - 40}" x2="{width - 20}" y2="{y0 + panel_h - 40}" stroke="#999"/>')
        for i, ((s, server, _), v) in enumerate(zip(bars, vals)):
            h = (panel_h - 60) * v / vmax
            x = left + i * bar_w
            y = y0 + panel_h - 40 - h
            out.append(f'<rect x="{x + 2:.1f}" y="{y:.1f}" width="{bar_w - 4:.1f}" height="{h:.1f}" fill="{colors[server]}"/>')
            label = f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">{label}</text>')
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y0 + panel_h - 26}" text-anchor="middle">{s}</text>')
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y0 + panel_h - 13}" text-anchor="middle" fill="{colors[server]}">{server}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
