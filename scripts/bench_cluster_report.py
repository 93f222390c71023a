#!/usr/bin/env python3
"""Renders target/bench/cluster.jsonl and the readings beside it (from
scripts/bench-cluster.sh) as a Markdown table: the same fan-out through three nodes of
a cluster and on a single node, with what Redis and each node did for it. With --doc,
writes it between the markers of the section "Cluster: fan-out through three nodes"
of docs/benchmarks.md (the section, with its markers, is appended if it is not there
yet).

Readings: for each run, snapshots/RUN/LABEL.t (the time), LABEL.redis (INFO
commandstats) and LABEL.<node> (the node's switchboard_* metrics), at the labels
start and end (around the bench), idle-start and publish-start (the idle window, as
long as the run, everyone joined, nothing published), publish-end (everything
arrived). Redis commands are counted without INFO, which is the script's own.

Standard library only, so it runs wherever the bench does.
"""

import argparse
import json
import os
import platform
import re
import subprocess
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
HEADING = "## Cluster: fan-out through three nodes"
START, END = "<!-- cluster:start -->", "<!-- cluster:end -->"
BUSY = ["node-1", "node-2", "node-3"]
IDLE = "node-4"
# The script's own reads.
NOT_COUNTED = {"info"}


def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine(loadavg=None):
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // (1024 * 1024)
    except OSError:
        pass
    commit = run("git", "rev-parse", "--short", "HEAD") or "unknown"
    # The doc this report writes into does not count.
    dirty = " with uncommitted changes" if run("git", "status", "--porcelain", "--untracked-files=no",
                                                "--", ".", ":!docs") else ""
    redis = re.search(r"v=(\S+)", run("redis-server", "--version"))
    pg = run("psql", "-w", "-X", "-Atc", "show server_version",
             os.environ.get("PG", "postgres://postgres@127.0.0.1:5432") + "/postgres")
    return (f"nproc {run('nproc') or '?'}, {cpu_model()}, {mem} GiB, {platform.system()} {platform.release()}; "
            f"Redis {redis.group(1) if redis else '?'}, PostgreSQL {pg.split()[0] if pg else '?'}; "
            f"nodes, Redis, PostgreSQL and the bench on the same machine over loopback"
            f"{f' (load average {loadavg} before the run)' if loadavg else ''}; "
            f"work tree at commit {commit}{dirty}; {date.today().isoformat()}")


# --- readings --------------------------------------------------------------------------

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def redis_calls(text):
    """cmdstat_<name>:calls=N,... -> {name: N}, without the script's own commands."""
    calls = {}
    for m in re.finditer(r"^cmdstat_([^:]+):calls=(\d+)", text or "", re.M):
        if m.group(1) not in NOT_COUNTED:
            calls[m.group(1)] = int(m.group(2))
    return calls


def metrics(text):
    """Prometheus text -> {name: value summed over labels}."""
    out = {}
    for line in (text or "").splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                pass
    return out


class Readings:
    def __init__(self, root, run_name):
        self.dir = os.path.join(root, run_name)

    def time(self, label):
        t = read(os.path.join(self.dir, f"{label}.t"))
        return float(t) if t else None

    def redis(self, label):
        text = read(os.path.join(self.dir, f"{label}.redis"))
        return redis_calls(text) if text else None

    def node(self, label, node):
        text = read(os.path.join(self.dir, f"{label}.{node}"))
        return metrics(text) if text is not None else None

    def span(self, a, b):
        ta, tb = self.time(a), self.time(b)
        return tb - ta if ta is not None and tb is not None else None

    def redis_delta(self, a, b):
        ra, rb = self.redis(a), self.redis(b)
        if ra is None or rb is None:
            return None
        return {k: rb.get(k, 0) - ra.get(k, 0) for k in set(ra) | set(rb) if rb.get(k, 0) != ra.get(k, 0)}

    def node_delta(self, a, b, node, metric):
        na, nb = self.node(a, node), self.node(b, node)
        if na is None or nb is None:
            return None
        return nb.get(metric, 0) - na.get(metric, 0)


def redis_cost(r, readings):
    """Redis commands in the publishing window and in the idle window scaled to its
    length: {all, publish, idle_all, idle_publish, pub, idle, pub_secs, idle_secs}."""
    pub = readings.redis_delta("publish-start", "publish-end")
    idle = readings.redis_delta("idle-start", "publish-start")
    pub_secs = readings.span("publish-start", "publish-end")
    idle_secs = readings.span("idle-start", "publish-start")
    if pub is None or idle is None or not pub_secs or not idle_secs:
        return None
    scale = pub_secs / idle_secs
    return {
        "all": sum(pub.values()),
        "publish": pub.get("publish", 0),
        "idle_all": sum(idle.values()) * scale,
        "idle_publish": idle.get("publish", 0) * scale,
        "pub": pub,
        "idle": idle,
        "pub_secs": pub_secs,
        "idle_secs": idle_secs,
    }


# --- cells -----------------------------------------------------------------------------

def ms(us):
    return f"{us / 1000:.1f}"


def num(x):
    return f"{x:,.0f}"


def per(x, sent):
    return f"{x / sent:.2f}"


class Run:
    def __init__(self, r, snapshots):
        self.r = r
        self.readings = Readings(snapshots, f"{r['kind']}-{r['name']}")
        self.failed = "run_failed" in r
        self.redis = redis_cost(r, self.readings) if r["kind"] == "cluster" and not self.failed else None


def cell(run, show):
    if run is None:
        return "not run"
    if run.failed:
        return f"**run failed** ({run.r['run_failed']}; see target/bench/cluster-bench-*.err)"
    try:
        return show(run)
    except (KeyError, TypeError, ZeroDivisionError):
        return "n/a"


def cluster_only(show):
    def wrapped(run):
        return show(run) if run.r["kind"] == "cluster" else "(no Redis)"
    return wrapped


def sent(run):
    r = run.r
    return f"{num(r['sent'])} ({r['sent_per_sec']:,.0f}/s)"


def lost(run):
    r = run.r
    text = f"**{num(r['lost'])}** of {num(r['expected'])} ({r['loss_ratio'] * 100:.2f}%)"
    extra = [f"{r[k]:,} {k}" for k in ("duplicates", "errors", "dropped") if r.get(k)]
    return text + (f"; {', '.join(extra)}" if extra else "")


def deliveries(run):
    return f"**{num(run.r['deliveries_per_sec'])}**"


def latency(run):
    lat = run.r["latency"]
    return f"{ms(lat['p50_us'])} / **{ms(lat['p99_us'])}** / {ms(lat['max_us'])}"


def commands(run):
    c, n = run.redis, run.r["sent"]
    return f"{per(c['all'], n)} / {per(c['idle_all'], n)} / **{per(c['all'] - c['idle_all'], n)}**"


def heartbeats(run):
    c = run.redis
    return f"{num(c['pub'].get('evalsha', 0))} / {num(c['idle'].get('evalsha', 0))}"


def heartbeat_round(run):
    """The Redis commands from the start of the wait for a heartbeat round to its end."""
    d = run.readings.redis_delta("heartbeat-start", "idle-start")
    secs = run.readings.span("heartbeat-start", "idle-start")
    if d is None:
        return "not measured"
    return f"{num(sum(d.values()))} ({num(d.get('evalsha', 0))} EVALSHA; waited {secs:.1f} s)"


def publishes(run):
    c, n = run.redis, run.r["sent"]
    return f"{per(c['publish'], n)} / **{per(c['publish'] - c['idle_publish'], n)}**"


def received(run):
    n = run.r["sent"]
    got = [run.readings.node_delta("publish-start", "publish-end", node, "switchboard_broker_received_total")
           for node in BUSY]
    return " / ".join(f"{num(g)} ({g / n:.2f})" for g in got)


def idle_received(run):
    got = run.readings.node_delta("start", "end", IDLE, "switchboard_broker_received_total")
    return f"**{num(got)}**"


def gap_fills(run):
    nodes = BUSY + [IDLE] if run.r["kind"] == "cluster" else ["single"]
    got = [run.readings.node_delta("start", "end", node, "switchboard_gap_filled_total") for node in nodes]
    return " / ".join(num(g) for g in got)


ROWS = [
    ("sent (per second of publishing)", sent),
    ("lost (5 s grace)", lost),
    ("deliveries/s", deliveries),
    ("latency p50 / p99 / max (ms)", latency),
    ("Redis commands per message: raw / idle window / **net**", cluster_only(commands)),
    ("PUBLISH per message: raw / **net**", cluster_only(publishes)),
    ("presence script calls (EVALSHA: heartbeats) in the publishing / idle window", cluster_only(heartbeats)),
    ("a presence heartbeat round before the windows: Redis commands", cluster_only(heartbeat_round)),
    ("room events received from Redis, nodes 1 / 2 / 3 (per message)", cluster_only(received)),
    ("idle node 4: room events received over the whole run", cluster_only(idle_received)),
    ("gap fills (each node, whole run)", gap_fills),
]

PACES = [("100", "100 msg/s"), ("1000", "1,000 msg/s"), ("max", "--max")]
LABELS = dict(PACES)


def find(runs, kind, name):
    return next((r for r in runs if r.r["kind"] == kind and r.r["name"] == name), None)


def ratio_row(runs):
    cells = []
    for name, _ in PACES:
        c, s = find(runs, "cluster", name), find(runs, "single", name)
        try:
            dps = c.r["deliveries_per_sec"] / s.r["deliveries_per_sec"]
            p99 = c.r["latency"]["p99_us"] / s.r["latency"]["p99_us"]
            cells.append(f"deliveries/s **{dps:.2f}x**, p99 **{p99:.2f}x**")
        except (AttributeError, KeyError, TypeError, ZeroDivisionError):
            cells.append("n/a")
        cells.append("")
    return f"| three nodes / one node | {' | '.join(cells)} |"


def breakdown(run):
    """The Redis commands of both windows, largest first."""
    c = run.redis
    if c is None:
        return None

    def top(delta):
        items = sorted(delta.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {v:,}" for k, v in items[:8]) or "none"

    return (f"publishing window {c['pub_secs']:.1f} s: {top(c['pub'])}; "
            f"idle window {c['idle_secs']:.1f} s: {top(c['idle'])}")


def reading(runs):
    """Two or three sentences that say what the table says."""
    out = []
    c, s = find(runs, "cluster", "100"), find(runs, "single", "100")
    if c and s and not c.failed and not s.failed:
        out.append(
            f"At 100 msg/s the three nodes lost {num(c.r['lost'])} of {num(c.r['expected'])} deliveries "
            f"(one node: {num(s.r['lost'])}) with a p99 of {ms(c.r['latency']['p99_us'])} ms "
            f"against {ms(s.r['latency']['p99_us'])} ms on one node.")
    c, s = find(runs, "cluster", "max"), find(runs, "single", "max")
    if c and s and not c.failed and not s.failed:
        out.append(
            f"At the peak the cluster delivered {num(c.r['deliveries_per_sec'])}/s, "
            f"{c.r['deliveries_per_sec'] / s.r['deliveries_per_sec'] * 100:.0f}% of the single node's "
            f"{num(s.r['deliveries_per_sec'])}/s, on {run('nproc') or '?'} cores that both share with "
            f"the bench (and the cluster with Redis and PostgreSQL).")
    costs = [r for r in runs if r.redis and r.r.get("sent")]
    # A heartbeat round in either window is not the messages' cost: those runs are left
    # out of the range and named.
    clear = [r for r in costs if not r.redis["pub"].get("evalsha") and not r.redis["idle"].get("evalsha")]
    if clear:
        net = [(r.redis["all"] - r.redis["idle_all"]) / r.r["sent"] for r in clear]
        pubs = [(r.redis["publish"] - r.redis["idle_publish"]) / r.r["sent"] for r in clear]
        names = ", ".join(LABELS.get(r.r["name"], r.r["name"]) for r in clear)
        out.append(
            f"Net of the idle window, a message cost {span(net)} Redis commands, {span(pubs)} of them "
            f"PUBLISH ({names}).")
    caught = [LABELS.get(r.r["name"], r.r["name"]) for r in costs if r not in clear]
    if caught:
        out.append(f"A presence heartbeat round fell in a window at {', '.join(caught)}: "
                   f"its commands per message include it.")
    if costs:
        idle = [r.readings.node_delta("start", "end", IDLE, "switchboard_broker_received_total") for r in costs]
        out.append(f"The idle node received {num(sum(i or 0 for i in idle))} room events in all.")
    return " ".join(out)


def span(values):
    lo, hi = f"{min(values):.2f}", f"{max(values):.2f}"
    return lo if lo == hi else f"{lo}-{hi}"


def table(results, snapshots, command, loadavg=None):
    runs = [Run(r, snapshots) for r in results]
    header = " | ".join(f"{label}: {who}" for _, label in PACES for who in ("3 nodes", "1 node"))
    lines = [
        f"Command: `{command}`",
        "",
        f"Run: {machine(loadavg)}.",
        "",
        f"| figure | {header} |",
        "|---|" + "---|" * (2 * len(PACES)),
    ]
    for label, show in ROWS:
        cells = [cell(find(runs, kind, name), show) for name, _ in PACES for kind in ("cluster", "single")]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines.append(ratio_row(runs))
    text = reading(runs)
    if text:
        lines += ["", text]
    lines += ["", "Redis commands counted in each window (INFO commandstats, the script's INFO excluded):", ""]
    for r in runs:
        b = breakdown(r)
        if b:
            lines.append(f"- {r.r['kind']} {r.r['name']}: {b}")
    lines += ["", "Each run (`--url`, `--jwt-secret` and `--phase-command` added by the script):", ""]
    for r in runs:
        lines.append(f"- {r.r['kind']}, {r.r['name']}: `switchboard-bench {r.r['args']}`")
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default=os.path.join(ROOT, "target", "bench", "cluster.jsonl"))
    parser.add_argument("--snapshots", default=os.path.join(ROOT, "target", "bench", "cluster-snapshots"))
    parser.add_argument("--command", default="scripts/bench-cluster.sh", help="the command to print")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/benchmarks.md")
    parser.add_argument("--loadavg", help="the machine's 1, 5 and 15 minute load averages before the run")
    args = parser.parse_args()
    with open(args.results) as f:
        results = [json.loads(line) for line in f if line.strip()]
    body = table(results, args.snapshots, args.command.strip(), args.loadavg)
    if args.doc:
        write_doc(body)
    print(body)


if __name__ == "__main__":
    main()
