#!/usr/bin/env bash
# Runs one `peroxo bench` scenario against two server builds side by side: the runs alternate
# (A, B, A, B, ...) so that a machine that slows down or speeds up during the session weighs on
# both alike, each run against a freshly started server on an empty database, and the load
# generator is the same binary for both (B's). Prints the medians of each build.
#
#   BASE_BIN=/path/to/old/peroxo bench/compare.sh dm --users 1000 --rate 5000 --duration 20s
#   BASE_BIN=/path/to/old/peroxo bench/compare.sh idle --connections 19000 --source-ips 4
#
# With BASE_BIN and PEROXO_BIN the same build, BASE_ENV and NEW_ENV compare two settings of it:
#
#   BASE_BIN=target/release/peroxo NEW_ENV="PEROXO_RETENTION__MAX_AGE=1s \
#     PEROXO_RETENTION__INTERVAL=1s" bench/compare.sh dm --users 1000 --rate 5000 --duration 20s
#
# and BASE_ARGS and NEW_ARGS two loads of one build (each side's own bench arguments, after
# the common ones):
#
#   BASE_BIN=target/release/peroxo NEW_ARGS="--edits 10 --reactions 5 --deletes 1" \
#     bench/compare.sh dm --users 1000 --rate 5000 --duration 20s
#
# Environment:
#   BASE_BIN=path    the build to compare against (required)
#   PEROXO_BIN=path  the build under test and the load generator [default: builds
#                    target/release/peroxo]
#   RUNS=3           runs of each build
#   BASE_ENV, NEW_ENV  extra VAR=value settings (space-separated) for the base and new server
#   BASE_ARGS, NEW_ARGS  extra bench arguments (space-separated) for the base and new runs
#   KEEP=1           keep the temporary directory (server logs, each run's JSON report)
set -euo pipefail
cd "$(dirname "$0")/.."

health=http://127.0.0.1:8080/healthz

# shellcheck source=bench/processes.sh
. bench/processes.sh
: "${BASE_BIN:?BASE_BIN names the build to compare against}"

status=0
for run in $(seq 1 "$runs"); do
  for side in base new; do
    server=$PEROXO_BIN
    settings=${NEW_ENV:-}
    extra=${NEW_ARGS:-}
    [ "$side" = base ] && server=$BASE_BIN && settings=${BASE_ENV:-} && extra=${BASE_ARGS:-}
    if curl -fsS "$health" >/dev/null 2>&1; then
      echo "something already answers $health; stop it first" >&2
      exit 1
    fi
    # shellcheck disable=SC2086 # each setting is its own word
    start "server-$side" env PEROXO_STORAGE__SQLITE_PATH="$work/bench-$side-$run.db" \
      PEROXO_STORAGE__LSM_PATH="$work/bench-$side-$run.lsm" $settings \
      "$server" serve --config bench/config.toml
    wait_for "server-$side" curl -fsS "$health"
    # shellcheck disable=SC2086 # each argument is its own word
    measure "$work/$side-$run.json" "run $run of $runs, $side ($server)" "$@" $extra
    stop_processes
  done
done

bench/medians.sh "base ($BASE_BIN ${BASE_ENV:-}): peroxo bench $* ${BASE_ARGS:-}" \
  "$work"/base-*.json
bench/medians.sh "new ($PEROXO_BIN ${NEW_ENV:-}): peroxo bench $* ${NEW_ARGS:-}" \
  "$work"/new-*.json
exit "$status"
