#!/usr/bin/env bash
# Runs one `peroxo bench` scenario several times, each against a freshly started release server
# with an empty database, and prints the median of every figure.
#
#   bench/run.sh dm --users 1000 --rate 5000 --duration 30s
#   bench/run.sh idle --connections 19000 --source-ips 4
#   BENCH_AUTH=jwt bench/run.sh connect --total 20000 --concurrency 64 --source-ips 8
#
# Environment:
#   RUNS=3           how many runs (the medians are over these runs)
#   BENCH_AUTH=jwt   run the server in jwt mode with a fresh secret, and mint tokens with it
#   PEROXO_BIN=path  use this peroxo binary instead of building target/release/peroxo
#   KEEP=1           keep the temporary directory (server logs, each run's JSON report)
#
# Each run starts `peroxo serve --config bench/config.toml` (127.0.0.1:8080) on a new SQLite
# file in a temporary directory, waits for /healthz, runs the scenario with --json, and stops
# the server with SIGTERM. A fresh server per run keeps the runs independent: memory the
# allocator kept from an earlier run would hide the cost of idle sessions, and a database
# grown by earlier runs would slow later ones. Exits non-zero when a run fails (for dm: when
# its delivery check fails).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 64
fi
runs=${RUNS:-3}
health=http://127.0.0.1:8080/healthz

if [ -z "${PEROXO_BIN:-}" ]; then
  echo "== cargo build --release" >&2
  cargo build --release >&2
  PEROXO_BIN=target/release/peroxo
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/peroxo-bench.XXXXXX")
if [ "${BENCH_AUTH:-dev}" = "jwt" ]; then
  secret=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
  export PEROXO_AUTH__MODE=jwt PEROXO_AUTH__JWT_SECRET="$secret" PEROXO_BENCH_JWT_SECRET="$secret"
fi

server=""
stop_server() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server" || true
  fi
  server=""
}
cleanup() {
  stop_server
  if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "== kept $work" >&2; fi
}
trap cleanup EXIT

# Starts a server on a fresh database for run $1 and waits until it answers /healthz.
start_server() {
  if curl -fsS "$health" >/dev/null 2>&1; then
    echo "something already answers $health; stop it first" >&2
    exit 1
  fi
  PEROXO_STORAGE__SQLITE_PATH="$work/bench-$1.db" \
    "$PEROXO_BIN" serve --config bench/config.toml >"$work/server-$1.log" 2>&1 &
  server=$!
  for _ in $(seq 1 150); do
    if curl -fsS "$health" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$server" 2>/dev/null; then
      echo "the server exited; its log:" >&2
      cat "$work/server-$1.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "the server did not answer $health within 30 s" >&2
  exit 1
}

status=0
for i in $(seq 1 "$runs"); do
  start_server "$i"
  echo "== run $i of $runs: peroxo bench $*" >&2
  if ! "$PEROXO_BIN" bench "$@" --json >"$work/run-$i.json"; then
    echo "   run $i failed" >&2
    status=1
  fi
  stop_server
done

# The median of every number across the runs, by its path in the report, with each run's
# value so that the spread is visible. A count missing from a run's report (a tally such as
# errors by code only lists what happened) is 0 in that run.
echo "== medians of $runs runs: peroxo bench $*"
jq -rs '
  . as $runs
  | [$runs[] | [paths(numbers)]] | add
  | reduce .[] as $p ([]; if any(.[]; . == $p) then . else . + [$p] end)
  | .[]
  | . as $path
  | [$runs[] | getpath($path) // 0] as $values
  | ($values | sort | .[(length - 1) / 2 | floor]) as $median
  | "\($path | map(tostring) | join("."))\t\($median)\t(runs: \($values | map(tostring) | join(", ")))"
' "$work"/run-*.json | column -t -s $'\t'
jq -rs '"passed: " + (map(if has("passed") then .passed | tostring else "n/a" end) | join(", "))' \
  "$work"/run-*.json
exit "$status"
