#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis against its own /openapi.json: no 5xx, no
# response outside the document, no schema-valid request refused, no invalid one taken.
# Needs a release build (scripts/test.sh makes it). Installs schemathesis if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
if ! command -v schemathesis >/dev/null 2>&1 ||
   ! schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION"
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  hash -r
fi

bin=target/release/switchboard
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
data=$(mktemp -d)
log=$(mktemp)
export SWITCHBOARD_JWT_SECRET=fuzz-secret SWITCHBOARD_API_KEY=fuzz-key SWITCHBOARD_RATE_LIMIT_PER_SEC=0
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data" "$log"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.1
done
token=$("$bin" token --sub fuzzer --ttl 1h)

# /events streams forever, /ws upgrades and /socket.io/ long-polls or upgrades: none is
# a request-response route (the official Engine.IO and Socket.IO suites and the fuzz
# targets of their decoders cover /socket.io/).
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $token" -H "X-API-Key: fuzz-key" \
  --exclude-path /events --exclude-path /ws --exclude-path /socket.io/ \
  --max-examples "${FUZZ_EXAMPLES:-200}" --request-timeout 10 --generation-deterministic
