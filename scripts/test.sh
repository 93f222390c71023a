#!/usr/bin/env bash
# The whole test suite: what the README names and what CI runs (.ci/run).
# Everything runs in the release profile so that one build serves every stage.
set -euo pipefail
cd "$(dirname "$0")/.."

# Services and tools the suite needs are started or installed here: the default store
# is an embedded SQLite file, so the Rust toolchain does most (the cluster's Redis,
# PostgreSQL and balancers come from scripts/services.sh below); the key-pair tests use the
# openssl CLI, the HTTP fuzzing uses Python (schemathesis, installed by its script).
need() { command -v "$1" >/dev/null 2>&1; }
if ! need openssl || ! need curl || ! need python3; then
  apt-get update -qq && apt-get install -y -qq openssl curl python3 python3-pip >/dev/null
fi

# The files test loads a shared image in a real browser: headless Chromium (Debian's
# package), installed here when missing.
if ! need chromium; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
SWITCHBOARD_CHROMIUM=$(command -v chromium)
export SWITCHBOARD_CHROMIUM

# The Socket.IO tests drive the official socket.io-client from npm (pinned by
# crates/server/tests/node/package-lock.json), with the machine's Node.js.
if ! need node || ! need npm; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
(cd crates/server/tests/node && npm ci --no-audit --no-fund --loglevel=error)

# The cluster, store and deploy tests use a real Redis, PostgreSQL (trust, database
# `test`), HAProxy and nginx: started or installed here when missing.
scripts/services.sh

# Load and durability tests open many sockets and files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== build (release, all targets)"
cargo build --release --workspace --all-targets --locked

echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace --locked -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$log"

echo "== official Engine.IO and Socket.IO protocol suites (against examples/socketio_conformance.rs)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SWITCHBOARD_LISTEN=127.0.0.1:$port target/release/examples/socketio_conformance &
conformance=$!
suites_ok=0
SUITE_URL=http://127.0.0.1:$port scripts/socketio-suites.sh || suites_ok=$?
kill "$conformance" 2>/dev/null || true
wait "$conformance" 2>/dev/null || true
if [ "$suites_ok" -ne 0 ]; then
  echo "the official protocol suites failed" >&2
  exit 1
fi

echo "== HTTP API fuzzing (schemathesis against /openapi.json)"
scripts/fuzz-http.sh

echo "== protocol decoder fuzzing (libFuzzer via cargo-fuzz, ${FUZZ_SECS:-60} s per target)"
scripts/fuzz-decoders.sh

# One closing line for the whole suite: the Rust tests plus the fuzzing run above.
passed=$(grep -oE 'test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
echo "summary: $passed passed, 0 failed"
