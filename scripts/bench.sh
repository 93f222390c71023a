#!/usr/bin/env bash
# The standard benchmark set (docs/benchmarks.md): builds release, starts a fresh
# server per scenario (fresh data dir, default config, rate limit lifted), runs each
# scenario of switchboard-bench, writes target/bench/results.jsonl, then renders the
# table and the plot into docs/ (scripts/bench_report.py). The connect and fan-out
# peaks are run against the minimal broadcaster too (crates/bench/examples/
# broadcaster.rs), right after Switchboard's, so the two compare within one run.
#
# Loopback only; every scenario is bounded in time. Usage: scripts/bench.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[ "${1:-}" = "--quick" ] && quick=true

cargo build --release -p switchboard -p switchboard-bench --bins --examples
ulimit -n "$(ulimit -Hn)"

out=target/bench
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"
secret=bench-secret
port=18780
url="ws://127.0.0.1:$port/ws"

. scripts/bench-lib.sh

run() {
  local name=$1
  shift
  local data
  data=$(mktemp -d)
  SWITCHBOARD_JWT_SECRET=$secret SWITCHBOARD_RATE_LIMIT_PER_SEC=0 SWITCHBOARD_LOG=warn \
    target/release/switchboard serve --listen "127.0.0.1:$port" --data-dir "$data" \
    >"$out/server-$name.log" 2>&1 &
  local server=$!
  wait_for_port "$port"
  echo "== $name: switchboard-bench $*" >&2
  record "$results" "$server" "$url" "$secret" "{\"name\": \"$name\"}" "$@"
  kill -TERM "$server"
  wait "$server" || true
  rm -rf "$data"
}

# The same scenario against the minimal broadcaster (no auth, no store, no limits).
run_baseline() {
  local name=$1
  shift
  target/release/examples/broadcaster "127.0.0.1:$port" >"$out/server-$name.log" 2>&1 &
  local server=$!
  wait_for_port "$port"
  echo "== $name: switchboard-bench $* (minimal broadcaster)" >&2
  record "$results" "$server" "$url" "$secret" "{\"name\": \"$name\"}" "$@"
  kill "$server"
  wait "$server" 2>/dev/null || true
}

if $quick; then d=3; conns=2000; big=1000; rooms=200; else d=10; conns=15000; big=5000; rooms=1000; fi
run connect connect -n "$conns" --hold 3
run_baseline baseline-connect connect -n "$conns" --hold 3
run fanout-20 fanout -n 1000 -p 1 --rate 20 -d "$d"
run fanout-200 fanout -n 1000 -p 1 --rate 200 -d "$d"
run fanout-max fanout -n 1000 -p 1 --max -d "$d"
run_baseline baseline-fanout-max fanout -n 1000 -p 1 --max -d "$d"
run echo echo -n 100 -d "$d"
run durable durable -p 10 -d "$d"
run rooms rooms --big "$big" --rooms "$rooms" --size 5

python3 scripts/bench_report.py "$results"
