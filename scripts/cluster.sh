#!/usr/bin/env bash
# A Switchboard cluster on this machine, to try cluster mode: a private Redis, a
# PostgreSQL database on the local server, three nodes and HAProxy in front of them
# with deploy/haproxy.cfg (docs/cluster.md).
#
#   scripts/cluster.sh up       start what is not running, wait until HAProxy answers
#   scripts/cluster.sh status   each node's /health and /ready, HAProxy's view
#   scripts/cluster.sh down     stop what `up` started and drop the database
#
# State (pids, logs, the shared secrets, the nodes' data dirs) lives in .cluster/ at the
# repository root. Needs redis-server, psql, haproxy and curl (scripts/services.sh
# installs them) and a PostgreSQL server that lets the user in without a password.
#
# Environment (defaults in brackets):
#   SB_CLUSTER_DIR         state directory [.cluster]
#   SB_CLUSTER_PORT        HAProxy, for clients [8080]
#   SB_CLUSTER_STATS_PORT  HAProxy's stats page, /health and /ready [8404]
#   SB_CLUSTER_NODE_PORTS  the three nodes ["8081 8082 8083"]
#   SB_CLUSTER_REDIS_PORT  the private Redis [6380]
#   SB_CLUSTER_PG          PostgreSQL server URL, no database [postgres://postgres@127.0.0.1:5432]
#   SB_CLUSTER_DB          database name [switchboard_cluster]
#   SB_CLUSTER_BIN         the switchboard binary [target/release/switchboard, built if missing]
#   SB_CLUSTER_WAIT_SECS   how long `up` waits for the cluster [60]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SB_CLUSTER_DIR:-$root/.cluster}
port=${SB_CLUSTER_PORT:-8080}
stats_port=${SB_CLUSTER_STATS_PORT:-8404}
read -r -a node_ports <<<"${SB_CLUSTER_NODE_PORTS:-8081 8082 8083}"
redis_port=${SB_CLUSTER_REDIS_PORT:-6380}
pg=${SB_CLUSTER_PG:-postgres://postgres@127.0.0.1:5432}
db=${SB_CLUSTER_DB:-switchboard_cluster}
bin=${SB_CLUSTER_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/switchboard}
wait_secs=${SB_CLUSTER_WAIT_SECS:-60}
nodes=(1 2 3)

die() {
  echo "cluster: $*" >&2
  exit 1
}

[ "${#node_ports[@]}" -eq 3 ] || die "SB_CLUSTER_NODE_PORTS must list three ports"
# The name goes into SQL unquoted.
[[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || die "SB_CLUSTER_DB must be lower-case letters, digits and _"

# --- processes -----------------------------------------------------------------------

# The pid recorded in $dir/$1.pid, if that process still runs and is the program we
# started ($2, matched against its command line): a pid reused by something else is
# not ours to stop.
running_pid() {
  local file=$dir/$1.pid pid cmdline
  [ -s "$file" ] || return 1
  pid=$(<"$file")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  { cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline"); } 2>/dev/null || return 1
  [[ "$cmdline" == *"$2"* ]] || return 1
  # An exited process nobody reaped yet (a zombie) runs no more.
  ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null || return 1
  echo "$pid"
}

# True while process $1 exists and is not a zombie.
alive() {
  [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

# Sends SIGTERM to $1 (pid file name) if it runs as $2; prints the pid it signalled.
terminate() {
  local pid
  pid=$(running_pid "$1" "$2") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  echo "$pid"
}

# Waits up to $3 seconds for process $2 (signalled as $1) to exit, then SIGKILLs it.
reap() {
  local name=$1 pid=$2 grace=$3
  if [ -n "$pid" ]; then
    for _ in $(seq 1 $((grace * 10))); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      echo "$name: killed (pid $pid, still running after ${grace}s)"
    else
      echo "$name: stopped (pid $pid)"
    fi
  fi
  rm -f "$dir/$name.pid"
}

# Runs "$@" in its own session (so a Ctrl-C in this terminal does not reach it),
# output to $dir/$name.log, without the lock's descriptor, and records its pid.
spawn() {
  local name=$1
  shift
  setsid "$@" </dev/null >"$dir/$name.log" 2>&1 9>&- &
  echo $! >"$dir/$name.pid"
}

# The HTTP status of a GET, or 000 when nothing answers.
http_code() {
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# --- pieces --------------------------------------------------------------------------

need_tools() {
  local missing=()
  for tool in redis-server psql haproxy curl setsid; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ "${#missing[@]}" -eq 0 ] || die "missing: ${missing[*]} (scripts/services.sh installs them)"
}

# A random hex secret in $dir/$1, made once: tokens minted against it stay valid
# across `down` and `up`.
secret() {
  local file=$dir/$1
  if [ ! -s "$file" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file")
  fi
  cat "$file"
}

psql_admin() {
  PGCONNECT_TIMEOUT=5 psql -w -X -q -v ON_ERROR_STOP=1 "$pg/postgres" "$@"
}

up_redis() {
  if pid=$(running_pid redis "redis-server"); then
    echo "redis: running on 127.0.0.1:$redis_port (pid $pid)"
    return
  fi
  # Daemonized, Redis writes its own pid file; nothing is kept on disk.
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
    </dev/null >/dev/null 9>&-
  for _ in $(seq 1 50); do
    if running_pid redis "redis-server" >/dev/null &&
      timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$redis_port" 2>/dev/null; then
      echo "redis: started on 127.0.0.1:$redis_port (pid $(<"$dir/redis.pid"))"
      return
    fi
    sleep 0.1
  done
  tail -5 "$dir/redis.log" >&2 || true
  die "redis did not start on 127.0.0.1:$redis_port"
}

up_database() {
  local exists
  exists=$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'") ||
    die "cannot reach PostgreSQL at $pg (set SB_CLUSTER_PG)"
  if [ -z "$exists" ]; then
    psql_admin -c "CREATE DATABASE $db"
    echo "postgresql: database $db created"
  else
    echo "postgresql: database $db exists"
  fi
}

up_binary() {
  if [ ! -x "$bin" ]; then
    echo "building $bin"
    (cd "$root" && cargo build --release -p switchboard --bin switchboard)
  fi
  [ -x "$bin" ] || die "no binary at $bin"
}

up_node() {
  local i=$1 node_port=${node_ports[$(($1 - 1))]} pid
  if pid=$(running_pid "node-$i" "$bin serve"); then
    echo "node-$i: running on 127.0.0.1:$node_port (pid $pid)"
    return
  fi
  mkdir -p "$dir/node-$i"
  # The same JWT secret, API key and file-link key on every node: a token, a server
  # API call or a signed link works whichever node the balancer picks.
  spawn "node-$i" env \
    SWITCHBOARD_LISTEN="127.0.0.1:$node_port" \
    SWITCHBOARD_DATA_DIR="$dir/node-$i" \
    SWITCHBOARD_NODE_ID="node-$i" \
    SWITCHBOARD_JWT_SECRET="$jwt_secret" \
    SWITCHBOARD_API_KEY="$api_key" \
    SWITCHBOARD_FILES_URL_SECRET="$url_secret" \
    SWITCHBOARD_REDIS_URL="redis://127.0.0.1:$redis_port/0" \
    SWITCHBOARD_DATABASE_URL="$pg/$db" \
    NO_COLOR=1 \
    "$bin" serve
  echo "node-$i: started on 127.0.0.1:$node_port (pid $(<"$dir/node-$i.pid"))"
}

up_haproxy() {
  local pid
  if pid=$(running_pid haproxy "haproxy"); then
    echo "haproxy: running on 127.0.0.1:$port (pid $pid)"
    return
  fi
  # deploy/haproxy.cfg itself, its addresses from the environment.
  local vars=(
    SB_LISTEN="127.0.0.1:$port"
    SB_STATS_BIND="127.0.0.1:$stats_port"
    SB_NODE1="127.0.0.1:${node_ports[0]}"
    SB_NODE2="127.0.0.1:${node_ports[1]}"
    SB_NODE3="127.0.0.1:${node_ports[2]}"
    SB_HAPROXY_SOCKET="$dir/haproxy.sock"
    SB_HAPROXY_LOG=stdout
    SB_HAPROXY_LOG_FORMAT=raw
    SB_NO_CHROOT=1
  )
  env "${vars[@]}" haproxy -c -q -f "$root/deploy/haproxy.cfg" || die "deploy/haproxy.cfg is invalid"
  # In the foreground (no "daemon"), logging to stdout, into haproxy.log.
  spawn haproxy env "${vars[@]}" haproxy -f "$root/deploy/haproxy.cfg"
  echo "haproxy: started on 127.0.0.1:$port, stats on 127.0.0.1:$stats_port (pid $(<"$dir/haproxy.pid"))"
}

# The nodes HAProxy reports UP, from its stats as CSV (field 18 is the status).
haproxy_up_count() {
  curl -s -m 2 "http://127.0.0.1:$stats_port/stats;csv" 2>/dev/null |
    awk -F, '$1 == "switchboard" && $2 ~ /^node/ && $18 == "UP" { n++ } END { print n + 0 }'
}

# Every process still there, /ready through HAProxy, every node ready and UP in HAProxy.
wait_ready() {
  local deadline=$((SECONDS + wait_secs)) i
  while :; do
    for i in "${nodes[@]}"; do
      if ! running_pid "node-$i" "$bin serve" >/dev/null; then
        tail -5 "$dir/node-$i.log" >&2 || true
        die "node-$i exited (log: $dir/node-$i.log); scripts/cluster.sh down cleans up"
      fi
    done
    running_pid haproxy "haproxy" >/dev/null || {
      tail -5 "$dir/haproxy.log" >&2 || true
      die "haproxy exited (log: $dir/haproxy.log)"
    }
    local all=1
    [ "$(http_code "http://127.0.0.1:$port/ready")" = 200 ] || all=0
    for i in "${nodes[@]}"; do
      [ "$(http_code "http://127.0.0.1:${node_ports[$((i - 1))]}/ready")" = 200 ] || all=0
    done
    [ "$(haproxy_up_count)" = 3 ] || all=0
    [ "$all" = 1 ] && return
    [ "$SECONDS" -lt "$deadline" ] || die "not ready after ${wait_secs}s (logs in $dir)"
    sleep 0.2
  done
}

cluster_up() {
  need_tools
  mkdir -p "$dir"
  local was_up=1 i
  running_pid redis "redis-server" >/dev/null || was_up=0
  running_pid haproxy "haproxy" >/dev/null || was_up=0
  for i in "${nodes[@]}"; do
    running_pid "node-$i" "$bin serve" >/dev/null || was_up=0
  done
  if [ "$was_up" = 1 ]; then
    echo "cluster: already up"
    cluster_status
    return
  fi
  up_binary
  jwt_secret=$(secret jwt-secret)
  api_key=$(secret api-key)
  url_secret=$(secret files-url-secret)
  up_redis
  up_database
  for i in "${nodes[@]}"; do up_node "$i"; done
  up_haproxy
  wait_ready
  cat <<EOF

cluster: up, 3 nodes behind HAProxy on 127.0.0.1:$port

  A token (the secret is in $dir/jwt-secret):
    TOKEN=\$(SWITCHBOARD_JWT_SECRET=\$(cat $dir/jwt-secret) $bin token --sub alice --username Alice)
  Connect through the balancer:
    npx -y wscat -c "ws://127.0.0.1:$port/ws?token=\$TOKEN&room=general"
  Server API (the key is in $dir/api-key):
    curl -H "X-API-Key: \$(cat $dir/api-key)" http://127.0.0.1:$port/admin/stats
  HAProxy's stats page:   http://127.0.0.1:$stats_port/stats
  Nodes:                  scripts/cluster.sh status
  Stop, drop the database: scripts/cluster.sh down
EOF
}

cluster_down() {
  # The nodes first, all at once: each drains as in a real stop (its clients get 1012
  # through the balancer), bounded by drain_timeout_secs (10 s). Then the balancer,
  # then Redis.
  local i pids=()
  for i in "${nodes[@]}"; do pids+=("$(terminate "node-$i" "$bin serve")"); done
  for i in "${nodes[@]}"; do reap "node-$i" "${pids[$((i - 1))]}" 15; done
  reap haproxy "$(terminate haproxy haproxy)" 5
  reap redis "$(terminate redis redis-server)" 5
  rm -f "$dir/haproxy.sock"
  if psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null; then
    echo "postgresql: database $db dropped"
  else
    echo "postgresql: could not drop database $db at $pg" >&2
  fi
  # The nodes' data dirs belong with the database; secrets and logs stay.
  for i in "${nodes[@]}"; do rm -rf "$dir/node-$i"; done
  echo "cluster: down"
}

cluster_status() {
  local ok=0 i pid node_port health ready conns
  if pid=$(running_pid redis "redis-server"); then
    echo "redis    127.0.0.1:$redis_port  pid $pid"
  else
    echo "redis    127.0.0.1:$redis_port  not running"
    ok=1
  fi
  for i in "${nodes[@]}"; do
    node_port=${node_ports[$((i - 1))]}
    pid=$(running_pid "node-$i" "$bin serve") || pid=-
    health=$(http_code "http://127.0.0.1:$node_port/health")
    ready=$(http_code "http://127.0.0.1:$node_port/ready")
    conns=$(curl -s -m 2 "http://127.0.0.1:$node_port/health" 2>/dev/null |
      grep -o '"connections":[0-9]*' | cut -d: -f2 || true)
    echo "node-$i   127.0.0.1:$node_port  pid $pid  health $health  ready $ready  connections ${conns:--}"
    [ "$ready" = 200 ] || ok=1
  done
  if pid=$(running_pid haproxy "haproxy"); then
    echo "haproxy  127.0.0.1:$port  pid $pid  ready $(http_code "http://127.0.0.1:$stats_port/ready")  nodes up $(haproxy_up_count)/3  stats http://127.0.0.1:$stats_port/stats"
  else
    echo "haproxy  127.0.0.1:$port  not running"
    ok=1
  fi
  return "$ok"
}

main() {
  case "${1:-}" in
    up | down | status) ;;
    *)
      echo "usage: scripts/cluster.sh up|down|status" >&2
      exit 2
      ;;
  esac
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # One cluster.sh at a time per state directory.
  exec 9>"$dir/lock"
  flock -w 120 9 || die "another scripts/cluster.sh holds $dir/lock"
  case "$1" in
    up) cluster_up ;;
    down) cluster_down ;;
    status) cluster_status ;;
  esac
}

main "$@"
