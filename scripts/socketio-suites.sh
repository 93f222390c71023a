#!/usr/bin/env bash
# Runs the official Engine.IO v4 and Socket.IO v5 protocol test suites (vendored,
# unmodified, in scripts/socketio-suites/; see its README.md) against a server that is
# already listening.
#
#   SUITE_URL=http://localhost:3000 scripts/socketio-suites.sh            # both suites
#   scripts/socketio-suites.sh socket.io                                  # one suite
#
# Environment:
#   SUITE_URL           base URL of the server under test (default http://localhost:3000).
#                       The engine.io suite requests <URL>/engine.io/ (a raw Engine.IO echo
#                       server), the socket.io suite <URL>/socket.io/.
#   ENGINEIO_SUITE_URL  overrides SUITE_URL for the engine.io suite only.
#   SOCKETIO_SUITE_URL  overrides SUITE_URL for the socket.io suite only.
#   SUITE_TIMEOUT       seconds allowed for each suite's mocha run (default 120).
#   SUITE_WAIT          seconds to wait for the server to answer before running (default 10).
#   MOCHA_ARGS          extra mocha arguments, e.g. MOCHA_ARGS='--grep heartbeat'.
#   SUITE_BROWSER_EVENTS=0  ws emits events as upstream's Node.js setup does (and loses
#                       messages that arrive in one TCP read; see socketio-suites/harness.cjs).
#   SUITE_RACY_RETRIES  attempts beyond the first for the one self-racing test, "forcefully
#                       close(s) the session" over HTTP long-polling (default 2; 0 = none).
#
# The suites hard-code `const URL = "http://localhost:3000";`. The only change made to
# the tests is at run time: that line is rewritten (sed) into test-suite.run.js, a
# gitignored copy next to the original, which mocha runs. mocha also loads
# socketio-suites/harness.cjs (browser-like WebSocket event delivery; retries for one
# self-racing test; both explained there). npm dependencies are installed with `npm ci`
# from the upstream lock files into each suite's node_modules (gitignored).
# Exits non-zero if any test fails, the server is unreachable, or a run times out.
set -euo pipefail
cd "$(dirname "$0")/socketio-suites"

default_url=${SUITE_URL:-http://localhost:3000}
suite_timeout=${SUITE_TIMEOUT:-120}
wait_secs=${SUITE_WAIT:-10}

if [ "$#" -gt 0 ]; then suites=("$@"); else suites=(engine.io socket.io); fi

command -v node >/dev/null 2>&1 || { echo "socketio-suites: node (>= 16) is required" >&2; exit 2; }
command -v npm >/dev/null 2>&1 || { echo "socketio-suites: npm is required" >&2; exit 2; }

url_for() {
  local url
  case "$1" in
    engine.io) url=${ENGINEIO_SUITE_URL:-$default_url} ;;
    socket.io) url=${SOCKETIO_SUITE_URL:-$default_url} ;;
    *) echo "socketio-suites: unknown suite '$1' (engine.io or socket.io)" >&2; exit 2 ;;
  esac
  printf '%s' "${url%/}"
}

# A TCP connection is enough: the suites themselves judge what the server answers (and a
# bare http.Server with only Engine.IO attached never answers a path outside its own).
wait_for_server() {
  local url=$1
  timeout $((wait_secs + 5)) node -e '
    const net = require("node:net");
    const u = new URL(process.argv[1]);
    const port = Number(u.port || (u.protocol === "https:" ? 443 : 80));
    const deadline = Date.now() + Number(process.argv[2]) * 1000;
    const attempt = () => {
      const s = net.connect({ host: u.hostname, port }, () => { s.destroy(); process.exit(0); });
      s.on("error", (e) => {
        if (Date.now() > deadline) { console.error(`socketio-suites: no server at ${u.host}: ${e.code ?? e.message}`); process.exit(1); }
        setTimeout(attempt, 250);
      });
    };
    attempt();' "$url" "$wait_secs"
}

failed=()
for suite in "${suites[@]}"; do
  url=$(url_for "$suite")
  [ -d "$suite" ] || { echo "socketio-suites: no directory for suite '$suite'" >&2; exit 2; }
  echo "== $suite protocol suite against $url"

  # Install once; reinstall when the lock file changed since the last install.
  if [ ! -f "$suite/node_modules/.package-lock.json" ] || [ "$suite/package-lock.json" -nt "$suite/node_modules/.package-lock.json" ]; then
    (cd "$suite" && timeout 300 npm ci --no-audit --no-fund --loglevel=error)
  fi

  # The one run-time change: the hard-coded server URL. Refuse if upstream changed it.
  n=$(grep -c '^const URL = "http://localhost:3000";$' "$suite/test-suite.js" || true)
  if [ "$n" != 1 ]; then
    echo "socketio-suites: $suite/test-suite.js no longer has the expected URL line; update the sed" >&2
    exit 2
  fi
  escaped=$(printf '%s' "$url" | sed -e 's/[\\&|"]/\\&/g')
  sed -e "s|^const URL = \"http://localhost:3000\";\$|const URL = \"$escaped\";|" \
    "$suite/test-suite.js" > "$suite/test-suite.run.js"

  wait_for_server "$url"

  # --exit: a test that leaves a socket open must not keep mocha alive; timeout bounds
  # a server that never answers (mocha's own per-test timeouts are 2 s, 5 s for heartbeat).
  # ../harness.cjs: WebSocket events one per task as in a browser, and retries for the
  # one self-racing test; see that file. It changes no test.
  rc=0
  (cd "$suite" && timeout --kill-after=10 "$suite_timeout" \
    node_modules/.bin/mocha --exit --reporter spec --require ../harness.cjs ${MOCHA_ARGS:-} test-suite.run.js) || rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "socketio-suites: $suite suite timed out after ${suite_timeout}s" >&2
  fi
  [ "$rc" = 0 ] || failed+=("$suite")
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "socketio-suites: FAILED: ${failed[*]}"
  exit 1
fi
echo "socketio-suites: all suites passed (${suites[*]})"
