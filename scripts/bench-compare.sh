#!/usr/bin/env bash
# Before and after: runs the same scenarios against the server built at another git
# ref and at the working tree, alternately (same machine, same minutes), and prints
# the median of each figure over the rounds as a Markdown table.
#
# Usage: scripts/bench-compare.sh <git-ref> [rounds]   (default 3 rounds)
#
# The other build lives in target/compare/ (a git worktree and its own target dir), so
# the first run builds it once. Loopback only; every scenario is bounded in time. The
# fan-out peak is also run with the server pinned to one core (taskset -c 0), where
# the bench has the other core to itself: the server's own efficiency.
set -euo pipefail
cd "$(dirname "$0")/.."

ref=${1:?usage: scripts/bench-compare.sh <git-ref> [rounds]}
rounds=${2:-3}
out=target/compare
src="$out/src-$(git rev-parse --short "$ref")"
mkdir -p "$out"
if [ ! -d "$src" ]; then
  git worktree add --detach "$src" "$ref" >/dev/null
fi
CARGO_TARGET_DIR="$out/target" cargo build --release -p switchboard --manifest-path "$src/Cargo.toml"
cargo build --release -p switchboard -p switchboard-bench --bins
ulimit -n "$(ulimit -Hn)"

before="$out/target/release/switchboard"
after=target/release/switchboard
results="$out/results.jsonl"
: >"$results"
secret=bench-secret
port=18781

. scripts/bench-lib.sh

run() {
  local build=$1 binary=$2 pin=$3 name=$4
  shift 4
  local data
  data=$(mktemp -d)
  local prefix=()
  [ -n "$pin" ] && prefix=(taskset -c "$pin")
  SWITCHBOARD_JWT_SECRET=$secret SWITCHBOARD_RATE_LIMIT_PER_SEC=0 SWITCHBOARD_LOG=warn \
    "${prefix[@]}" "$binary" serve --listen "127.0.0.1:$port" --data-dir "$data" >/dev/null 2>&1 &
  local server=$!
  wait_for_port "$port"
  echo "== $build $name: switchboard-bench $*" >&2
  record "$results" "$server" "ws://127.0.0.1:$port/ws" "$secret" \
    "{\"build\": \"$build\", \"name\": \"$name\"}" "$@" >/dev/null
  kill -TERM "$server"
  wait "$server" || true
  rm -rf "$data"
}

for round in $(seq 1 "$rounds"); do
  echo "== round $round of $rounds" >&2
  for pair in "before $before" "after $after"; do
    set -- $pair
    run "$1" "$2" "" connect connect -n 15000 --hold 3
    run "$1" "$2" "" fanout-max fanout -n 1000 -p 1 --max -d 8
    run "$1" "$2" 0 fanout-max-1-core fanout -n 1000 -p 1 --max -d 8
    run "$1" "$2" "" echo echo -n 100 -d 8
    run "$1" "$2" "" durable durable -p 10 -d 8
    run "$1" "$2" "" rooms rooms --big 5000 --rooms 1000 --size 5
  done
done

python3 - "$results" "$ref" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ref = sys.argv[2]
figures = [
    ("connect", "connections/s", lambda r: r["connects_per_sec"], "{:,.0f}"),
    ("connect", "RSS per connection (KiB)", lambda r: r["rss_per_connection_bytes"] / 1024, "{:.2f}"),
    ("fanout-max", "deliveries/s", lambda r: r["deliveries_per_sec"], "{:,.0f}"),
    ("fanout-max", "p99 latency (ms)", lambda r: r["latency"]["p99_us"] / 1000, "{:.1f}"),
    ("fanout-max-1-core", "deliveries/s (server on 1 core)", lambda r: r["deliveries_per_sec"], "{:,.0f}"),
    ("echo", "round trips/s", lambda r: r["pings_per_sec"], "{:,.0f}"),
    ("echo", "p99 RTT (ms)", lambda r: r["rtt"]["p99_us"] / 1000, "{:.1f}"),
    ("durable", "acked messages/s", lambda r: r["acked_per_sec"], "{:,.0f}"),
    ("rooms", "room of 5,000: setup (s)", lambda r: r["big"]["setup_secs"], "{:.2f}"),
    ("rooms", "room of 5,000: bytes sent per join", lambda r: r["big"]["bytes_per_join"], "{:,.0f}"),
    ("rooms", "room of 5,000: largest frame (bytes)", lambda r: r["big"]["largest_frame_bytes"], "{:,.0f}"),
    ("rooms", "room of 5,000: RSS per connection (KiB)", lambda r: r["big"]["rss_per_connection_bytes"] / 1024, "{:.1f}"),
    ("rooms", "1,000 rooms of 5: joins/s", lambda r: r["small"]["joins_per_sec"], "{:,.0f}"),
    ("rooms", "1,000 rooms of 5: bytes sent per join", lambda r: r["small"]["bytes_per_join"], "{:,.0f}"),
]
print(f"| scenario | figure | before ({ref}) | after | runs |")
print("|---|---|---|---|---|")
for name, label, get, fmt in figures:
    cells = []
    for build in ("before", "after"):
        vals = [get(r) for r in rows if r["name"] == name and r["build"] == build]
        cells.append((fmt.format(statistics.median(vals)) if vals else "-", len(vals)))
    print(f"| {name} | {label} | {cells[0][0]} | {cells[1][0]} | {cells[1][1]} |")
PY
