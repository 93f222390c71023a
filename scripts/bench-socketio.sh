#!/usr/bin/env bash
# Socket.IO: Switchboard's /socket.io/ endpoint beside the Node socket.io 4.x server
# of crates/bench/node/ (docs/benchmarks.md, "Socket.IO: Switchboard beside Node
# socket.io"). Both are driven by switchboard-bench --proto socketio (Engine.IO v4 +
# Socket.IO v5, WebSocket transport only) in the same run, scenario by scenario, each
# run against a freshly started server:
#
#   - connect: 10,000 idle connections held 3 s: server RSS per connection, connects/s
#     (and Switchboard's native protocol, for reference)
#   - fanout: 1,000 subscribers in one room, 1 publisher at 20 and at 200 msg/s for
#     10 s: p50/p99 end-to-end latency and loss
#   - fanout --max: the peak deliveries/s (a window of 16 un-echoed messages)
#
# Prints a Markdown table; with --doc it also writes it into docs/benchmarks.md
# (scripts/bench_socketio_report.py). Builds nothing but the Node server's packages
# (npm ci): run `cargo build --release -p switchboard -p switchboard-bench` first.
# Loopback only; every run is bounded by a timeout.
#
# Usage: scripts/bench-socketio.sh [--quick] [--doc]
#   --quick   2,000 connections and 3 s of fan-out instead of 10,000 and 10 s
#   --doc     replace (or append) the section of docs/benchmarks.md
# Environment: SWITCHBOARD_BIN (default target/release/switchboard), SWITCHBOARD_COMMIT
# (the commit SWITCHBOARD_BIN was built from, for the report; default: the work tree's
# HEAD), BENCH_PORT (default 18796).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
doc=false
for arg in "$@"; do
  case $arg in
    --quick) quick=true ;;
    --doc) doc=true ;;
    *) echo "usage: scripts/bench-socketio.sh [--quick] [--doc]" >&2; exit 2 ;;
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
command -v node >/dev/null 2>&1 || { echo "node (>= 18) is required" >&2; exit 2; }
command -v npm >/dev/null 2>&1 || { echo "npm is required" >&2; exit 2; }
(cd crates/bench/node && npm ci --no-audit --no-fund --loglevel=error) >&2

ulimit -n "$(ulimit -Hn)"

out=target/bench
mkdir -p "$out"
results="$out/socketio.jsonl"
: >"$results"
secret=bench-secret
port=${BENCH_PORT:-18796}
# Each bench run may take at most this long (setup, run, grace, close).
run_timeout=300

. scripts/bench-lib.sh

server_pid=
data_dir=

start_switchboard() {
  data_dir=$(mktemp -d)
  SWITCHBOARD_JWT_SECRET=$secret SWITCHBOARD_RATE_LIMIT_PER_SEC=0 SWITCHBOARD_LOG=warn \
    "$server_bin" serve --listen "127.0.0.1:$port" --data-dir "$data_dir" >"$1" 2>&1 &
  server_pid=$!
  wait_for_port "$port"
}

start_node() {
  SWITCHBOARD_JWT_SECRET=$secret node crates/bench/node/server.mjs "127.0.0.1:$port" >"$1" 2>&1 &
  server_pid=$!
  wait_for_port "$port"
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  if [ -n "$data_dir" ]; then rm -rf "$data_dir"; fi
  data_dir=
}

# run SERVER NAME SCENARIO [ARGS...]: a fresh server (switchboard, switchboard-native or
# node), one bench run against it, its JSON line tagged and appended to the results.
# A run that fails or times out is recorded as failed and the others go on.
run() {
  local server=$1 name=$2
  shift 2
  local log="$out/socketio-server-$server-$name.log"
  local url args=("$@")
  case $server in
    switchboard-native)
      start_switchboard "$log"
      url="ws://127.0.0.1:$port/ws"
      ;;
    switchboard)
      start_switchboard "$log"
      url="ws://127.0.0.1:$port/socket.io/"
      args+=(--proto socketio)
      ;;
    node)
      start_node "$log"
      url="ws://127.0.0.1:$port/socket.io/"
      args+=(--proto socketio)
      ;;
  esac
  [ "$1" = connect ] && args+=(--server-pid "$server_pid")
  echo "== $server $name: switchboard-bench ${args[*]}" >&2
  local line status=0 errlog="$out/socketio-bench-$server-$name.err"
  line=$(timeout "$run_timeout" "$bench_bin" "${args[@]}" --url "$url" --jwt-secret "$secret" --json -q \
    2>"$errlog") || status=$?
  stop_server
  if [ "$status" != 0 ]; then
    echo "   failed (status $status): $(tail -n 3 "$errlog")" >&2
  fi
  local shown="${args[*]}"
  shown=${shown% --server-pid *}
  python3 - "$server" "$name" "$shown" "$status" "$line" <<'PY' | tee -a "$results"
import json, sys
server, name, args, status, line = sys.argv[1:6]
try:
    r = json.loads(line) if status == "0" else {}
except ValueError:
    r = {}
if not r:
    r = {"run_failed": "timed out" if status == "124" else f"exit status {status}"}
r.update({"server": server, "name": name, "args": args})
print(json.dumps(r))
PY
}

if $quick; then conns=2000; d=3; else conns=10000; d=10; fi

run switchboard-native connect connect -n "$conns" --hold 3
for server in switchboard node; do run "$server" connect connect -n "$conns" --hold 3; done
for server in switchboard node; do run "$server" fanout-20 fanout -n 1000 -p 1 --rate 20 -d "$d"; done
for server in switchboard node; do run "$server" fanout-200 fanout -n 1000 -p 1 --rate 200 -d "$d"; done
for server in switchboard node; do run "$server" fanout-max fanout -n 1000 -p 1 --max -d "$d"; done

command="scripts/bench-socketio.sh $*"
[ -n "${SWITCHBOARD_BIN:-}" ] && command="SWITCHBOARD_BIN=$SWITCHBOARD_BIN $command"
[ -n "${SWITCHBOARD_COMMIT:-}" ] && command="SWITCHBOARD_COMMIT=$SWITCHBOARD_COMMIT $command"
report_args=("$results" --command "$command")
[ -n "${SWITCHBOARD_COMMIT:-}" ] && report_args+=(--server-commit "$SWITCHBOARD_COMMIT")
$doc && report_args+=(--doc)
python3 scripts/bench_socketio_report.py "${report_args[@]}"
