#!/usr/bin/env python3
"""Renders target/bench/socketio.jsonl (from scripts/bench-socketio.sh) as a Markdown
table: Switchboard's Socket.IO endpoint beside the Node socket.io server, with
Switchboard's native protocol for reference. With --doc, writes it between the markers
of the section "Socket.IO: Switchboard beside Node socket.io" of docs/benchmarks.md
(the section, with its markers, is appended if it is not there yet).

Standard library only, so it runs wherever the bench does.
"""

import argparse
import json
import os
import platform
import subprocess
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
HEADING = "## Socket.IO: Switchboard beside Node socket.io"
START, END = "<!-- socketio:start -->", "<!-- socketio:end -->"
NODE_DIR = os.path.join(ROOT, "crates", "bench", "node")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def run(*cmd, cwd=ROOT):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd).stdout.strip()
    except OSError:
        return ""


def socketio_version():
    try:
        with open(os.path.join(NODE_DIR, "node_modules", "socket.io", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return "4.x"


def machine(server_commit=None):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // (1024 * 1024)
    except OSError:
        pass
    if server_commit:
        built = f"Switchboard built from commit {server_commit}"
    else:
        commit = run("git", "rev-parse", "--short", "HEAD") or "unknown"
        dirty = " with uncommitted changes" if run("git", "status", "--porcelain", "--untracked-files=no") else ""
        built = f"work tree at commit {commit}{dirty}"
    return (f"nproc {cores}, {cpu_model()}, {mem} GiB, {platform.system()} {platform.release()}; "
            f"Node {run('node', '--version') or 'unknown'}, socket.io {socketio_version()}; "
            f"bench and server on the same machine over loopback; {built}; {date.today().isoformat()}")


def ms(us):
    return f"{us / 1000:.1f}"


def find(results, server, name):
    return next((r for r in results if r["server"] == server and r["name"] == name), None)


def cell(r, show):
    if r is None:
        return "not run"
    if "run_failed" in r:
        return f"**run failed** ({r['run_failed']}; see target/bench/socketio-bench-*.err and socketio-server-*.log)"
    try:
        return show(r)
    except (KeyError, TypeError, ZeroDivisionError):
        return "n/a"


def rss(r):
    return f"**{r['rss_per_connection_bytes'] / 1024:.1f} KiB** ({r['rss_before_bytes'] / 2**20:.0f} -> {r['rss_after_bytes'] / 2**20:.0f} MiB)"


def connects(r):
    text = f"**{r['connects_per_sec']:,.0f}**"
    if r["failed"] or r["dropped"]:
        text += f" ({r['failed']} failed, {r['dropped']} dropped)"
    return text


def connect_time(r):
    lat = r["connect_latency"]
    return f"{ms(lat['p50_us'])} / {ms(lat['p99_us'])}"


def latency(r):
    lat = r["latency"]
    return f"{ms(lat['p50_us'])} / **{ms(lat['p99_us'])}** / {ms(lat['max_us'])}"


def loss(r):
    text = f"**{r['lost']:,}** of {r['expected']:,} ({r['loss_ratio'] * 100:.2f}%)"
    extra = []
    if r.get("errors"):
        extra.append(f"{r['errors']} errors")
    if r.get("dropped"):
        extra.append(f"{r['dropped']} dropped")
    if r.get("acks") is not None and r["acks"] != r["sent"]:
        extra.append(f"{r['acks']:,} of {r['sent']:,} acked")
    return text + (f"; {', '.join(extra)}" if extra else "")


def deliveries(r):
    return f"**{r['deliveries_per_sec']:,.0f}**"


ROWS = [
    ("connect", "server RSS per idle connection", rss),
    ("connect", "connections/s", connects),
    ("connect", "connect time p50 / p99 (ms)", connect_time),
    ("fanout-20", "1,000 subscribers x 20 msg/s: latency p50 / p99 / max (ms)", latency),
    ("fanout-20", "1,000 subscribers x 20 msg/s: lost", loss),
    ("fanout-200", "1,000 subscribers x 200 msg/s: latency p50 / p99 / max (ms)", latency),
    ("fanout-200", "1,000 subscribers x 200 msg/s: lost", loss),
    ("fanout-max", "peak deliveries/s (1,000 subscribers, --max)", deliveries),
    ("fanout-max", "at the peak: latency p50 / p99 / max (ms)", latency),
    ("fanout-max", "at the peak: lost", loss),
]


def table(results, command, server_commit=None):
    conns = next((r.get("connections") for r in results if r["name"] == "connect" and "connections" in r), None)
    lines = [
        f"Command: `{command}`",
        "",
        f"Run: {machine(server_commit)}.",
        "",
        f"| figure | Switchboard, Socket.IO | Node socket.io {socketio_version()} | Switchboard, native protocol (reference) |",
        "|---|---|---|---|",
    ]
    for name, label, show in ROWS:
        if name == "connect" and conns:
            label = f"{label} ({conns:,} connections)"
        cells = [cell(find(results, s, name), show) for s in ("switchboard", "node")]
        native = find(results, "switchboard-native", name)
        cells.append(cell(native, show) if native else "")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    sb, node = find(results, "switchboard", "fanout-max"), find(results, "node", "fanout-max")
    if sb and node and node.get("deliveries_per_sec") and sb.get("deliveries_per_sec"):
        lines.append(f"| peak deliveries/s, Switchboard / Node | **{sb['deliveries_per_sec'] / node['deliveries_per_sec']:.1f}x** | | |")
    sb, node = find(results, "switchboard", "connect"), find(results, "node", "connect")
    if sb and node and sb.get("rss_per_connection_bytes") and node.get("rss_per_connection_bytes"):
        lines.append(f"| RSS per connection, Node / Switchboard | **{node['rss_per_connection_bytes'] / sb['rss_per_connection_bytes']:.1f}x** | | |")
    lines += ["", "Each run, against a freshly started server (`--url` and `--jwt-secret` added by the script):", ""]
    for r in results:
        lines.append(f"- {r['server']}, {r['name']}: `switchboard-bench {r['args']}`")
    return "\n".join(lines)


def write_doc(body):
    with open(DOC) as f:
        doc = f.read()
    block = f"{START}\n{body}\n{END}"
    if START in doc and END in doc:
        before, rest = doc.split(START, 1)
        _, after = rest.split(END, 1)
        doc = f"{before}{block}{after}"
    else:
        doc = f"{doc.rstrip()}\n\n{HEADING}\n\n{block}\n"
    with open(DOC, "w") as f:
        f.write(doc)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="?", default=os.path.join(ROOT, "target", "bench", "socketio.jsonl"))
    parser.add_argument("--command", default="scripts/bench-socketio.sh", help="the command to print")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    parser.add_argument("--server-commit", help="the commit the Switchboard binary was built from")
    args = parser.parse_args()
    with open(args.results) as f:
        results = [json.loads(line) for line in f if line.strip()]
    body = table(results, args.command.strip(), args.server_commit)
    if args.doc:
        write_doc(body)
    print(body)


if __name__ == "__main__":
    main()
