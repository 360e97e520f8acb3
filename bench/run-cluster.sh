#!/usr/bin/env bash
# Runs one `peroxo bench` scenario several times, each against a cluster started afresh on
# PostgreSQL storage, with the users spread over its gateway nodes, and prints the median of
# every figure.
#
#   bench/run-cluster.sh dm --users 1000 --rate 2500 --duration 20s --drain 60s
#   NODES=1 bench/run-cluster.sh dm --users 1000 --rate 2500 --duration 20s --drain 60s
#
# Environment:
#   RUNS=3           how many runs (the medians are over these runs)
#   NODES=2          gateway nodes; NODES=1 runs one node alone (cluster.mode = "none") on the
#                    same PostgreSQL storage service: the single-node comparison
#   PEROXO_BIN=path  use this peroxo binary instead of building target/release/peroxo
#   KEEP=1           keep the temporary directory (logs, each run's JSON report)
#   POSTGRES=url     a PostgreSQL server where this user may create and drop databases
#                    [default: postgres://postgres@127.0.0.1:5432]
#   NATS_PORT=14222 STORE_PORT=15051 HTTP_PORT=18080   where NATS, the storage service and
#                    the nodes listen (node k on HTTP_PORT + k - 1)
#
# Each run creates a database, starts nats-server -js on a fresh store directory (when
# NODES > 1), `peroxo store` on the database, and NODES × `peroxo serve --config
# bench/config.toml` with the storage and cluster keys set from the environment
# (storage.embedded = false, cluster.mode = "nats", node ids n1, n2, …); waits for every
# node's /readyz; runs `peroxo bench --url <node 1> --url <node 2> … <scenario> --json`, which
# connects user i to node i mod NODES; then stops the nodes, the storage service and NATS
# with SIGTERM and drops the database. It also prints the median CPU seconds each process
# used during a run. Exits non-zero when a run fails (for dm: when its delivery check fails).
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=${NODES:-2}
postgres=${POSTGRES:-postgres://postgres@127.0.0.1:5432}
nats_port=${NATS_PORT:-14222}
store_port=${STORE_PORT:-15051}
http_port=${HTTP_PORT:-18080}

# shellcheck source=bench/processes.sh
. bench/processes.sh
# The current run's database.
database=""

# Writes the CPU seconds each process of the run has used so far as JSON, with the PostgreSQL
# backends serving the run's database (when PostgreSQL runs on this machine) as `postgres`.
record_cpu() {
  local i pid postgres_ticks=0
  for i in "${!pids[@]}"; do
    echo "{\"${names[$i]}\": $(cpu_ticks "${pids[$i]}")}"
  done
  for pid in $(psql -At "$postgres/postgres" \
    -c "select pid from pg_stat_activity where datname = '$database'"); do
    postgres_ticks=$((postgres_ticks + $(cpu_ticks "$pid" 2>/dev/null || echo 0)))
  done
  echo "{\"postgres\": $postgres_ticks}"
}

# Stops the run's processes and drops its database.
stop_run() {
  stop_processes
  if [ -n "$database" ]; then
    psql -q "$postgres/postgres" -c "drop database $database with (force)" >&2
    database=""
  fi
}

# Starts run $run's storage service, NATS and nodes, each on its fresh state, and waits until
# every node is ready; sets `urls` to the bench's --url options.
start_cluster() {
  local port k mode=none
  for port in "$nats_port" "$store_port" $(seq "$http_port" $((http_port + nodes - 1))); do
    if listening "$port"; then
      echo "something already listens on 127.0.0.1:$port; stop it or choose other ports" >&2
      exit 1
    fi
  done
  psql -q "$postgres/postgres" -c "create database peroxo_bench_$$_$run" >&2
  database=peroxo_bench_$$_$run
  start store env PEROXO_STORAGE__BACKEND=postgres \
    PEROXO_STORAGE__LISTEN="127.0.0.1:$store_port" \
    PEROXO_STORAGE__POSTGRES__URL="$postgres/$database" \
    "$PEROXO_BIN" store --config bench/config.toml
  wait_for store listening "$store_port"
  if [ "$nodes" -gt 1 ]; then
    mode=nats
    mkdir -p "$work/nats-$run"
    start nats nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats-$run"
    wait_for nats listening "$nats_port"
  fi
  urls=()
  for k in $(seq 1 "$nodes"); do
    port=$((http_port + k - 1))
    start "n$k" env PEROXO_HTTP__LISTEN="127.0.0.1:$port" \
      PEROXO_STORAGE__EMBEDDED=false \
      PEROXO_STORAGE__ENDPOINT="http://127.0.0.1:$store_port" \
      PEROXO_CLUSTER__MODE="$mode" \
      PEROXO_CLUSTER__NATS_URL="nats://127.0.0.1:$nats_port" \
      PEROXO_CLUSTER__NODE_ID="n$k" \
      "$PEROXO_BIN" serve --config bench/config.toml
    wait_for "n$k" curl -fsS "http://127.0.0.1:$port/readyz"
    urls+=(--url "ws://127.0.0.1:$port/ws")
  done
}

status=0
for run in $(seq 1 "$runs"); do
  start_cluster
  measure "$work/run-$run.json" "run $run of $runs, $nodes node(s)" "${urls[@]}" "$@"
  record_cpu | jq -s --argjson hz "$(getconf CLK_TCK)" '{cpu_secs: (add | map_values(. / $hz))}' \
    >"$work/cpu-$run.json"
  stop_run
done

bench/medians.sh "NODES=$nodes peroxo bench $*" "$work"/run-*.json
bench/medians.sh "CPU seconds per process" "$work"/cpu-*.json
exit "$status"
