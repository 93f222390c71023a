#!/usr/bin/env bash
# The cluster benchmark (docs/benchmarks.md, "Cluster: fan-out through three nodes"):
# a fan-out through three nodes of one cluster, beside the same fan-out on a single
# node, in the same run.
#
#   - the cluster: a private Redis (no persistence, so that its INFO commandstats
#     counts only this bench), a fresh PostgreSQL database, three nodes that take the
#     connections and a fourth node of the same cluster that nobody connects to
#   - the single node: SQLite in its own data directory, no Redis
#   - on each, switchboard-bench fanout: 1,000 subscribers and 3 publishers in a fresh
#     room, at 100 and at 1,000 msg/s in total for 10 s, then --max for the peak. In
#     the cluster the connections are spread over the three nodes round robin (each
#     node has a third of the subscribers and one publisher).
#
# Each run stops once everyone has joined (fanout --phase-command): after a short
# settle (in the cluster: and the next presence heartbeat round, counted apart) it
# measures an idle window as long as the run (no publishing, the same connections),
# then publishes. Redis's INFO commandstats and each node's /metrics are read at the
# edges of both windows, so the Redis commands per message can be given raw and net
# of what the idle cluster does anyway (node reports; heartbeats, if one still falls
# in a window).
#
# Prints a Markdown table; with --doc it also writes it into docs/benchmarks.md
# (scripts/bench_cluster_report.py). Builds nothing: run `cargo build --release -p
# switchboard -p switchboard-bench` first. Loopback only; every step is bounded by a
# timeout; the nodes, Redis and the database are removed on exit, whatever happens.
#
# Usage: scripts/bench-cluster.sh [--quick] [--doc]
#   --quick   3 s of publishing per run instead of 10 s
#   --doc     replace (or append) the section of docs/benchmarks.md
# Environment: SWITCHBOARD_BIN (default target/release/switchboard), PG (the PostgreSQL
# server, no database; default postgres://postgres@127.0.0.1:5432).
#
# Internal: the bench calls `scripts/bench-cluster.sh --phase KIND RUN MOMENT` back at
# the edges of each run (see phase below).
set -euo pipefail
cd "$(dirname "$0")/.."

secret=bench-secret
out=target/bench
# Where the readings at each edge go: $snaps/RUN/LABEL.{t,redis,<node>}.
snaps=${SB_BENCH_SNAPS:-$out/cluster-snapshots}

# snapshot KIND RUN LABEL: the time, Redis's command counts (cluster only) and the
# Switchboard counters of each node of KIND.
snapshot() {
  local kind=$1 dir=$snaps/$2 label=$3 name port
  mkdir -p "$dir"
  date +%s.%N >"$dir/$label.t"
  if [ "$kind" = cluster ]; then
    timeout 5 redis-cli -p "$SB_BENCH_REDIS_PORT" INFO commandstats >"$dir/$label.redis" || true
  fi
  for node in $SB_BENCH_NODES; do
    [ "${node%%=*}" = "$kind" ] || continue
    name=${node#*=}
    port=${name#*:}
    name=${name%%:*}
    { curl -s -m 5 "http://127.0.0.1:$port/metrics" || true; } | grep '^switchboard_' >"$dir/$label.$name" || true
  done
}

# evalsha_calls: the presence script's calls so far (a heartbeat round is ~64 per node).
evalsha_calls() {
  timeout 5 redis-cli -p "$SB_BENCH_REDIS_PORT" INFO commandstats |
    tr -d '\r' | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p'
}

# after_heartbeat: returns once a presence heartbeat round of the nodes has come and
# gone (the presence script's calls grew, then stayed put for a second), at most 45 s.
# Nodes re-assert their connections in Redis once per ping period (30 s), all at once,
# as they were started together: a round right before the windows leaves both clear
# of the next one, so that they count what messages cost, and the round itself is
# counted apart.
after_heartbeat() {
  local deadline=$((SECONDS + 45)) last now seen=false still=0
  last=$(evalsha_calls)
  while [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
    now=$(evalsha_calls)
    if [ "$now" != "$last" ]; then
      seen=true
      still=0
      last=$now
    elif $seen; then
      still=$((still + 1))
      [ "$still" -lt 5 ] || return 0
    fi
  done
  echo "no presence heartbeat seen in 45 s" >&2
}

# phase KIND RUN MOMENT: what the bench runs once everyone has joined (settle, in the
# cluster wait for a heartbeat round, then the idle window) and once everything has
# arrived.
if [ "${1:-}" = --phase ]; then
  [ $# = 4 ] || { echo "usage: $0 --phase KIND RUN MOMENT" >&2; exit 2; }
  case $4 in
    joined)
      sleep "$SB_BENCH_SETTLE"
      if [ "$2" = cluster ]; then
        snapshot "$2" "$3" heartbeat-start
        after_heartbeat
      fi
      snapshot "$2" "$3" idle-start
      sleep "$SB_BENCH_IDLE"
      snapshot "$2" "$3" publish-start
      ;;
    settled) snapshot "$2" "$3" publish-end ;;
    *) echo "unknown moment $4" >&2; exit 2 ;;
  esac
  exit 0
fi

quick=false
doc=false
for arg in "$@"; do
  case $arg in
    --quick) quick=true ;;
    --doc) doc=true ;;
    *) echo "usage: scripts/bench-cluster.sh [--quick] [--doc]" >&2; exit 2 ;;
  esac
done

server_bin=${SWITCHBOARD_BIN:-target/release/switchboard}
bench_bin=target/release/switchboard-bench
for bin in "$server_bin" "$bench_bin"; do
  if [ ! -x "$bin" ]; then
    echo "$bin is missing: run cargo build --release -p switchboard -p switchboard-bench" >&2
    exit 2
  fi
done
for tool in redis-server redis-cli psql curl python3 timeout; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is required (scripts/services.sh installs the services)" >&2; exit 2; }
done
pg=${PG:-postgres://postgres@127.0.0.1:5432}

ulimit -n "$(ulimit -Hn)"

# Anything else running shows here, and in the report.
loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$out"
results="$out/cluster.jsonl"
: >"$results"
rm -rf "$snaps"
work=$(mktemp -d)
db="switchboard_bench_$$"
prefix="bench$$:"
# Each bench run may take at most this long (setup, settle, idle window, run, grace).
run_timeout=300
# How long a node or Redis may take to come up.
start_timeout=60
if $quick; then d=3; settle=1; else d=10; settle=2; fi

pids=()
bench_pid=
db_created=false
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  # timeout passes the signal on to the bench.
  if [ -n "$bench_pid" ]; then
    kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if $db_created; then
    PGCONNECT_TIMEOUT=5 timeout 30 psql -w -X -q "$pg/postgres" \
      -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 ||
      echo "could not drop database $db at $pg" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Six free loopback ports: Redis, four nodes, the single node.
read -r redis_port p1 p2 p3 p4 single_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')

# wait_ready PORT NAME LOG: until the node answers /ready with 200.
wait_ready() {
  local deadline=$((SECONDS + start_timeout))
  until [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/ready" 2>/dev/null)" = 200 ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 5 "$3" >&2 || true
      echo "$2 not ready on port $1 after ${start_timeout}s (log: $3)" >&2
      exit 1
    fi
    sleep 0.2
  done
}

# start_node NAME PORT [ENV...]: a node with the bench's settings (the rate limit lifted,
# as for the other benches), its own data directory and log.
start_node() {
  local name=$1 port=$2 log=$out/cluster-$1.log
  shift 2
  mkdir -p "$work/$name"
  env SWITCHBOARD_LISTEN="127.0.0.1:$port" SWITCHBOARD_DATA_DIR="$work/$name" \
    SWITCHBOARD_NODE_ID="$name" SWITCHBOARD_JWT_SECRET="$secret" \
    SWITCHBOARD_RATE_LIMIT_PER_SEC=0 SWITCHBOARD_LOG=warn NO_COLOR=1 "$@" \
    "$server_bin" serve </dev/null >"$log" 2>&1 &
  pids+=($!)
  wait_ready "$port" "$name" "$log"
}

echo "== redis on 127.0.0.1:$redis_port, database $db" >&2
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --dir "$work" </dev/null >"$out/cluster-redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  timeout 1 redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break
  sleep 0.1
done
timeout 2 redis-cli -p "$redis_port" PING >/dev/null || { echo "redis did not start" >&2; exit 1; }
PGCONNECT_TIMEOUT=5 timeout 30 psql -w -X -q -v ON_ERROR_STOP=1 "$pg/postgres" -c "CREATE DATABASE $db"
db_created=true

cluster_env=(
  SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$redis_port"
  SWITCHBOARD_DATABASE_URL="$pg/$db"
  SWITCHBOARD_REDIS_PREFIX="$prefix"
)
# One after the other, each once ready: the first runs the database's migrations.
echo "== cluster: node-1..node-3 on $p1 $p2 $p3, idle node-4 on $p4; single node on $single_port" >&2
start_node node-1 "$p1" "${cluster_env[@]}"
start_node node-2 "$p2" "${cluster_env[@]}"
start_node node-3 "$p3" "${cluster_env[@]}"
start_node node-4 "$p4" "${cluster_env[@]}"
start_node single "$single_port"

# Read by the --phase calls, which the bench runs.
export SB_BENCH_SNAPS=$snaps SB_BENCH_REDIS_PORT=$redis_port SB_BENCH_SETTLE=$settle SB_BENCH_IDLE=$d
export SB_BENCH_NODES="cluster=node-1:$p1 cluster=node-2:$p2 cluster=node-3:$p3 cluster=node-4:$p4 single=single:$single_port"
cluster_urls="ws://127.0.0.1:$p1/ws,ws://127.0.0.1:$p2/ws,ws://127.0.0.1:$p3/ws"
single_url="ws://127.0.0.1:$single_port/ws"

# cpu_ticks: the CPU time (clock ticks) used so far by every process the script started.
cpu_ticks() {
  local pid total=0 stat fields
  for pid in "${pids[@]}"; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    read -r -a fields <<<"$stat"
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

# quiesce: waits (at most 60 s) until the nodes hold no connection and the nodes and
# Redis together use under 5% of a core over a second. The nodes' work after a run
# (1,003 disconnects: presence, subscriptions) would otherwise fall into the next one.
quiesce() {
  local started=$SECONDS before after node port conns busy
  while [ $((SECONDS - started)) -lt 60 ]; do
    busy=0
    for node in $SB_BENCH_NODES; do
      port=${node##*:}
      conns=$(curl -s -m 2 "http://127.0.0.1:$port/health" | grep -o '"connections":[0-9]*' | cut -d: -f2) || true
      [ "${conns:-1}" = 0 ] || busy=1
    done
    before=$(cpu_ticks)
    sleep 1
    after=$(cpu_ticks)
    [ $((after - before)) -lt $(($(getconf CLK_TCK) / 20)) ] || busy=1
    if [ "$busy" = 0 ]; then
      echo "   quiet after $((SECONDS - started)) s" >&2
      return
    fi
  done
  echo "   still busy after 60 s; going on" >&2
}

# run KIND NAME [FANOUT ARGS...]: one fanout run against the cluster or the single node,
# its JSON line tagged and appended to the results. A run that fails or times out is
# recorded as failed and the others go on.
run() {
  local kind=$1 name=$2
  shift 2
  local url=$cluster_urls line status=0 errlog="$out/cluster-bench-$kind-$name.err"
  [ "$kind" = single ] && url=$single_url
  quiesce
  echo "== $kind $name: switchboard-bench fanout $*" >&2
  snapshot "$kind" "$kind-$name" start
  # In the background, so that a signal to this script is handled at once (bash runs
  # a trap only once the foreground command is done).
  timeout "$run_timeout" "$bench_bin" fanout "$@" --url "$url" --jwt-secret "$secret" \
    --phase-command "scripts/bench-cluster.sh --phase $kind $kind-$name" --json -q \
    >"$work/line" 2>"$errlog" &
  bench_pid=$!
  wait "$bench_pid" || status=$?
  bench_pid=
  line=$(cat "$work/line")
  snapshot "$kind" "$kind-$name" end
  if [ "$status" != 0 ]; then
    echo "   failed (status $status): $(tail -n 3 "$errlog")" >&2
  fi
  python3 - "$kind" "$name" "fanout $*" "$status" "$line" <<'PY' | tee -a "$results"
import json, sys
kind, name, args, status, line = sys.argv[1:6]
try:
    r = json.loads(line) if status == "0" else {}
except ValueError:
    r = {}
if not r:
    r = {"run_failed": "timed out" if status == "124" else f"exit status {status}"}
r.update({"kind": kind, "name": name, "args": args})
print(json.dumps(r))
PY
}

for rate in 100 1000; do
  for kind in cluster single; do run "$kind" "$rate" -n 1000 -p 3 --rate "$rate" -d "$d"; done
done
for kind in cluster single; do run "$kind" max -n 1000 -p 3 --max -d "$d"; done

command="scripts/bench-cluster.sh $*"
report_args=("$results" --snapshots "$snaps" --command "${command% }" --loadavg "$loadavg")
$doc && report_args+=(--doc)
python3 scripts/bench_cluster_report.py "${report_args[@]}"
