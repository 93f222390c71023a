#!/usr/bin/env bash
# The whole test suite: what the README names and what CI runs (.ci/run).
# Everything runs in the release profile so that one build serves every stage.
set -euo pipefail
cd "$(dirname "$0")/.."

# Services and tools the suite needs are started or installed here. So far the suite
# needs nothing beyond the Rust toolchain: the store is an embedded SQLite file.

# Load and durability tests open many sockets and files.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== build (release, all targets)"
cargo build --release --workspace --all-targets --locked

echo "== tests"
cargo test --release --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
