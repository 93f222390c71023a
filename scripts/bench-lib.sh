# Shared by bench.sh and bench-compare.sh (sourced): wait for a server, run one
# scenario of switchboard-bench and append its JSON line, tagged, to a results file.

# wait_for_port PORT: until something accepts on 127.0.0.1:PORT (at most 10 s).
wait_for_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# record RESULTS SERVER_PID URL SECRET TAGS_JSON SCENARIO [ARGS...]: runs the scenario
# (connect also reads the server's RSS), merges TAGS_JSON and the arguments into its
# JSON line, appends it to RESULTS and echoes it.
record() {
  local results=$1 pid=$2 url=$3 secret=$4 tags=$5
  shift 5
  local extra=()
  [ "$1" = connect ] && extra=(--server-pid "$pid")
  target/release/switchboard-bench "$@" "${extra[@]}" --url "$url" --jwt-secret "$secret" --json -q \
    | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r.update(json.loads(sys.argv[1])); r["args"]=sys.argv[2]; print(json.dumps(r))' "$tags" "$*" \
    | tee -a "$results"
}
