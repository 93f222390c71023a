#!/usr/bin/env bash
# The services and tools the cluster tests need, made present on a fresh Debian machine
# (run as root, apt reachable), and left alone when they are there already:
#
#   redis       answers on 127.0.0.1:6379 (a throwaway redis-server started if not)
#   postgresql  answers on 127.0.0.1:5432, trust auth for user postgres, database `test`
#   haproxy     the binary (tests run their own instances with their own configs)
#   nginx       the binary (the same; the system service is never left running)
#
# One line per service. Quick when all is there: no apt, no restart. A server that
# already answers is never reconfigured or restarted. Run it (`scripts/services.sh`)
# or source it; either way it changes nothing in the caller's shell.

services_main() (
  set -euo pipefail
  export DEBIAN_FRONTEND=noninteractive

  have() { command -v "$1" >/dev/null 2>&1; }

  updated=0
  apt_install() {
    if [ "$updated" -eq 0 ]; then
      apt-get update -qq
      updated=1
    fi
    # Services installed here must not start on their own (nginx would take port 80):
    # Debian's invoke-rc.d asks policy-rc.d, and 101 means "not now". An existing
    # policy-rc.d is the machine's and stays as it is.
    local policy=/usr/sbin/policy-rc.d ours=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy"
      chmod +x "$policy"
      ours=1
    fi
    # apt's chatter (debconf notes) is shown only when the install fails.
    local rc=0 log
    log=$(mktemp)
    apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1 || rc=$?
    if [ "$ours" -eq 1 ]; then rm -f "$policy"; fi
    if [ "$rc" -ne 0 ]; then cat "$log" >&2; fi
    rm -f "$log"
    return "$rc"
  }

  # True when something on host:port answers within a second (bash's /dev/tcp: no
  # client tools needed).
  port_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
  }

  redis_pong() {
    timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6379 && printf "PING\r\n" >&3 && head -c 5 <&3' \
      2>/dev/null | grep -q '+PONG'
  }

  wait_for() {
    local what=$1
    shift
    for _ in $(seq 1 50); do
      if "$@"; then return 0; fi
      sleep 0.2
    done
    echo "$what did not come up" >&2
    return 1
  }

  # --- Redis ---------------------------------------------------------------------
  if redis_pong; then
    echo "redis: answering on 127.0.0.1:6379 (left as it is)"
  else
    if ! have redis-server; then apt_install redis-server; fi
    # The package may have started its own service: it answers now, or we start one.
    if ! redis_pong; then
      redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' --appendonly no \
        --logfile /tmp/switchboard-test-redis.log >/dev/null
    fi
    wait_for "redis on 127.0.0.1:6379" redis_pong
    echo "redis: started on 127.0.0.1:6379 (no persistence)"
  fi

  # --- PostgreSQL ----------------------------------------------------------------
  psql_as_postgres() {
    PGCONNECT_TIMEOUT=3 psql -w -X -q -h 127.0.0.1 -p 5432 -U postgres "$@"
  }
  # shellcheck disable=SC2317 # called through wait_for
  pg_ready() { psql_as_postgres -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; }

  pg_state="answering on 127.0.0.1:5432 (left as it is)"
  if ! port_open 127.0.0.1 5432; then
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
    fi
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -1)
    if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" { found = 1 } END { exit !found }'; then
      pg_createcluster "$version" main --port 5432 >/dev/null
    fi
    # A server we start is ours to configure: trust for postgres over loopback (the
    # first matching pg_hba line wins, so ours go first).
    hba=/etc/postgresql/$version/main/pg_hba.conf
    if ! grep -q '^# switchboard tests' "$hba"; then
      {
        echo '# switchboard tests: trust for postgres over loopback'
        echo 'host all postgres 127.0.0.1/32 trust'
        echo 'host all postgres ::1/128 trust'
        cat "$hba"
      } >"$hba.new"
      chown postgres:postgres "$hba.new"
      mv "$hba.new" "$hba"
    fi
    if pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online" { found = 1 } END { exit !found }'; then
      pg_ctlcluster "$version" main reload
    else
      pg_ctlcluster "$version" main start
    fi
    wait_for "postgresql on 127.0.0.1:5432" port_open 127.0.0.1 5432
    pg_state="started on 127.0.0.1:5432 (cluster $version/main)"
  fi
  if ! have psql; then apt_install postgresql-client; fi
  if ! wait_for "trust auth for postgres on 127.0.0.1:5432" pg_ready; then
    echo "postgresql: 127.0.0.1:5432 answers but refuses user postgres without a password" >&2
    exit 1
  fi
  if [ -z "$(psql_as_postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'")" ]; then
    psql_as_postgres -d postgres -c 'CREATE DATABASE test'
    pg_state="$pg_state, database test created"
  fi
  echo "postgresql: $pg_state"

  # --- HAProxy and nginx (binaries only) -----------------------------------------
  missing=()
  have haproxy || missing+=(haproxy)
  have nginx || missing+=(nginx)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
    # Where policy-rc.d was the machine's own and let them start, stop the system
    # services: tests run their own instances on their own ports.
    for svc in "${missing[@]}"; do
      if [ -e "/run/$svc.pid" ]; then service "$svc" stop >/dev/null 2>&1 || true; fi
    done
  fi
  echo "haproxy: $(haproxy -v | head -1)"
  echo "nginx: $(nginx -v 2>&1)"
)

services_main "$@"
