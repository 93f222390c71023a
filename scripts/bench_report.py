#!/usr/bin/env python3
"""Renders target/bench/results.jsonl (from scripts/bench.sh) into docs/:
the results table between the markers of docs/benchmarks.md, and docs/bench-latency.svg.

Standard library only, so it runs wherever the bench does.
"""

import json
import os
import platform
import subprocess
import sys
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SVG = os.path.join(ROOT, "docs", "bench-latency.svg")
START, END = "<!-- results:start -->", "<!-- results:end -->"

# name -> (bar text, check(result) -> bool)
BARS = {
    "connect": ("<= 4 KiB server RSS per connection; >= 8,000 connections/s",
                lambda r: r["rss_per_connection_bytes"] <= 4096 and r["connects_per_sec"] >= 8000 and r["failed"] == 0),
    "fanout-20": ("0 lost; p99 <= 30 ms", lambda r: r["lost"] == 0 and r["latency"]["p99_us"] <= 30_000),
    "fanout-200": ("0 lost; p99 <= 60 ms", lambda r: r["lost"] == 0 and r["latency"]["p99_us"] <= 60_000),
    "fanout-max": (">= 750,000 deliveries/s, 0 lost", lambda r: r["lost"] == 0 and r["deliveries_per_sec"] >= 750_000),
    "echo": (">= 60,000 round trips/s; p99 <= 6 ms", lambda r: r["pings_per_sec"] >= 60_000 and r["rtt"]["p99_us"] <= 6_000),
    "durable": (">= 30,000 acked messages/s", lambda r: r["acked_per_sec"] >= 30_000 and r["errors"] == 0),
    "rooms": ("a room of 5,000: <= 200 frames and <= 64 KiB sent per join, largest frame <= 32 KiB",
              lambda r: r["big"]["frames_per_join"] <= 200 and r["big"]["bytes_per_join"] <= 65536
              and r["big"]["largest_frame_bytes"] <= 32768),
    "baseline-connect": ("the yardstick: Switchboard's connect aims at >= 85% of it", lambda r: True),
    "baseline-fanout-max": ("the yardstick: Switchboard's fan-out aims at >= 85% of it", lambda r: True),
}


def ratio(results, ours, theirs, key):
    """Switchboard's figure as a share of the broadcaster's, from the same run."""
    a = next((r for r in results if r["name"] == ours), None)
    b = next((r for r in results if r["name"] == theirs), None)
    if not a or not b or not b.get(key):
        return None
    return a[key] / b[key]


def ms(us):
    return f"{us / 1000:.1f}"


def figures(r):
    name = r["name"]
    if r["scenario"] == "connect":
        return (f"{r['opened']:,} opened, {r['failed']} failed; {r['connects_per_sec']:,.0f} connections/s; "
                f"RSS {r['rss_before_bytes'] / 2**20:.1f} -> {r['rss_after_bytes'] / 2**20:.1f} MiB, "
                f"**{r['rss_per_connection_bytes'] / 1024:.2f} KiB per connection**")
    if r["scenario"] == "fanout":
        lat = r["latency"]
        return (f"{r['sent']:,} sent, {r['delivered']:,} of {r['expected']:,} delivered, **{r['lost']} lost**; "
                f"**{r['deliveries_per_sec']:,.0f} deliveries/s**; latency p50 {ms(lat['p50_us'])} / p90 {ms(lat['p90_us'])} / "
                f"**p99 {ms(lat['p99_us'])}** / max {ms(lat['max_us'])} ms")
    if name == "echo":
        rtt = r["rtt"]
        return (f"**{r['pings_per_sec']:,.0f} round trips/s**; RTT p50 {ms(rtt['p50_us'])} / p90 {ms(rtt['p90_us'])} / "
                f"**p99 {ms(rtt['p99_us'])}** / max {ms(rtt['max_us'])} ms; {r['timeouts']} timeouts")
    if name == "rooms":
        def phase(p):
            rss = p.get("rss_per_connection_bytes")
            rss = f", RSS {rss / 1024:.1f} KiB per connection" if rss is not None else ""
            return (f"{p['connections']:,} connections in {p['rooms']:,} room(s): {p['setup_secs']:.2f} s "
                    f"({p['joins_per_sec']:,.0f} joins/s); **{p['frames_per_join']:.1f} frames, "
                    f"{p['bytes_per_join'] / 1024:.1f} KiB per join**; largest frame {p['largest_frame_bytes'] / 1024:.1f} KiB{rss}")
        return f"big: {phase(r['big'])}; small: {phase(r['small'])}"
    if name == "durable":
        lat = r["ack_latency"]
        return (f"{r['acked']:,} of {r['sent']:,} acked, **{r['acked_per_sec']:,.0f} acked messages/s**; "
                f"ack latency p50 {ms(lat['p50_us'])} / p99 {ms(lat['p99_us'])} ms; {r['errors']} errors")
    return json.dumps(r)


def latencies(results):
    rows = []
    for r in results:
        lat = r.get("latency") or r.get("rtt") or r.get("ack_latency")
        if lat:
            rows.append((r["name"], lat))
    return rows


def svg(results):
    """Grouped bars of p50/p90/p99/max per scenario (log scale), and a throughput panel."""
    rows = latencies(results)
    w, h = 860, 520
    left, top, plot_w, plot_h = 70, 50, 480, 380
    keys = [("p50_us", "#4c78a8", "p50"), ("p90_us", "#72b7b2", "p90"),
            ("p99_us", "#f58518", "p99"), ("max_us", "#e45756", "max")]
    import math
    lo, hi = math.log10(0.1), math.log10(1000.0)  # ms

    def y(us):
        v = max(us / 1000.0, 0.1)
        return top + plot_h - (math.log10(v) - lo) / (hi - lo) * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="24" font-size="15" font-weight="bold">End-to-end latency by scenario (ms, log scale)</text>']
    for ms_tick in (0.1, 1, 10, 100, 1000):
        ty = y(ms_tick * 1000)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{ty + 4:.1f}" text-anchor="end">{ms_tick:g}</text>')
    group = plot_w / max(len(rows), 1)
    bar = group * 0.8 / len(keys)
    for i, (name, lat) in enumerate(rows):
        gx = left + i * group + group * 0.1
        for j, (k, color, _) in enumerate(keys):
            by = y(lat[k])
            out.append(f'<rect x="{gx + j * bar:.1f}" y="{by:.1f}" width="{bar - 1:.1f}" height="{top + plot_h - by:.1f}" fill="{color}"/>')
        out.append(f'<text x="{gx + group * 0.4:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{name}</text>')
    for j, (_, color, label) in enumerate(keys):
        out.append(f'<rect x="{left + j * 70}" y="{h - 40}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{left + j * 70 + 16}" y="{h - 30}">{label}</text>')
    # Throughput panel.
    px, pw = 610, 220
    out.append(f'<text x="{px}" y="24" font-size="15" font-weight="bold">Throughput (per second)</text>')
    tp = []
    for r in results:
        for key in ("deliveries_per_sec", "pings_per_sec", "acked_per_sec", "connects_per_sec"):
            if key in r:
                tp.append((r["name"], r[key], key.replace("_per_sec", "")))
    top_v = max((v for _, v, _ in tp), default=1)
    for i, (name, v, unit) in enumerate(tp):
        by = top + i * 60
        bw = max(v / top_v * pw, 2)
        out.append(f'<text x="{px}" y="{by + 12}">{name}: {v:,.0f} {unit}</text>')
        out.append(f'<rect x="{px}" y="{by + 18}" width="{bw:.1f}" height="16" fill="#4c78a8"/>')
    out.append("</svg>")
    return "\n".join(out)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // (1024 * 1024)
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem} GiB, {platform.system()} {platform.release()}; "
            f"bench and server on the same machine over loopback; commit {commit or 'unknown'}; {date.today().isoformat()}")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "bench", "results.jsonl")
    with open(path) as f:
        results = [json.loads(line) for line in f if line.strip()]
    lines = [f"Run: {machine()}.", "", "| scenario | command | result | bar | met |", "|---|---|---|---|---|"]
    for r in results:
        bar, check = BARS.get(r["name"], ("", lambda _: True))
        lines.append(f"| {r['name']} | `switchboard-bench {r['args']}` | {figures(r)} | {bar} | {'yes' if check(r) else '**no**'} |")
    for ours, theirs, key, what in (("connect", "baseline-connect", "connects_per_sec", "connections/s"),
                                    ("fanout-max", "baseline-fanout-max", "deliveries_per_sec", "deliveries/s")):
        share = ratio(results, ours, theirs, key)
        if share is not None:
            lines.append(f"| {ours} vs {theirs} | | Switchboard at **{share:.0%}** of the minimal broadcaster's {what} | >= 85% | {'yes' if share >= 0.85 else '**no**'} |")
    table = "\n".join(lines)
    with open(DOC) as f:
        doc = f.read()
    if START in doc and END in doc:
        before, rest = doc.split(START, 1)
        _, after = rest.split(END, 1)
        doc = f"{before}{START}\n{table}\n{END}{after}"
        with open(DOC, "w") as f:
            f.write(doc)
    with open(SVG, "w") as f:
        f.write(svg(results))
    print(table)


if __name__ == "__main__":
    main()
