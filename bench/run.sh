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

health=http://127.0.0.1:8080/healthz

# shellcheck source=bench/processes.sh
. bench/processes.sh
if [ "${BENCH_AUTH:-dev}" = "jwt" ]; then
  secret=$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=')
  export PEROXO_AUTH__MODE=jwt PEROXO_AUTH__JWT_SECRET="$secret" PEROXO_BENCH_JWT_SECRET="$secret"
fi

# Starts a server on a fresh database for run $run and waits until it answers /healthz.
start_server() {
  if curl -fsS "$health" >/dev/null 2>&1; then
    echo "something already answers $health; stop it first" >&2
    exit 1
  fi
  start server env PEROXO_STORAGE__SQLITE_PATH="$work/bench-$run.db" \
    PEROXO_STORAGE__LSM_PATH="$work/bench-$run.lsm" \
    "$PEROXO_BIN" serve --config bench/config.toml
  wait_for server curl -fsS "$health"
}

status=0
for run in $(seq 1 "$runs"); do
  start_server
  measure "$work/run-$run.json" "run $run of $runs" "$@"
  stop_processes
done

bench/medians.sh "peroxo bench $*" "$work"/run-*.json
exit "$status"
