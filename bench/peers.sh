#!/usr/bin/env bash
# Runs one `peroxo bench` scenario against PerOXO and against reference servers that speak
# protocol 1's hot path (`welcome`; `send` → `ack` + `message` with per-user seqs; dev
# identities `?user=`), side by side: the runs alternate (PerOXO, then each reference, then
# PerOXO again, ...) so that a machine that slows down during the session weighs on all
# alike, every run against a freshly started server. Prints the medians of each server.
#
#   NODE_HUB=/path/to/server.mjs THIN_RELAY=/path/to/thin-relay \
#     bench/peers.sh dm --users 1000 --rate 5000 --duration 20s --warmup 5s --drain 60s
#
# The references (each optional; a side whose variable is unset is left out):
#   NODE_HUB=path    a Node.js hub on the `ws` package, in memory, started as
#                    `node path PORT` (its folder needs `npm install`)
#   THIN_RELAY=path  a minimal Rust relay (axum, no actors, no validation), started with
#                    `--listen 127.0.0.1:PORT --nodelay --small-buffers`, once in memory and
#                    once with `--persist --db FILE`: every message committed to SQLite (WAL,
#                    synchronous=FULL, one transaction per batch) before its ack
#
# Environment:
#   PEROXO_BIN=path  the PerOXO build, run as `serve --config bench/config.toml`, and the load
#                    generator for every side [default: builds target/release/peroxo]
#   PEROXO_ENV       extra VAR=value settings (space-separated) for PerOXO
#   PEROXO_ALT_ENV   settings for a second PerOXO side, `peroxo-alt`, of the same build (for
#                    instance PEROXO_STORAGE__BACKEND=lsm); left out when unset
#   RUNS=3           runs of each server
#   KEEP=1           keep the temporary directory (server logs, each run's JSON report)
set -euo pipefail
cd "$(dirname "$0")/.."

port=8080
health=http://127.0.0.1:$port/healthz

# shellcheck source=bench/processes.sh
. bench/processes.sh

sides=(peroxo)
[ -n "${PEROXO_ALT_ENV:-}" ] && sides+=(peroxo-alt)
[ -n "${NODE_HUB:-}" ] && sides+=(node)
[ -n "${THIN_RELAY:-}" ] && sides+=(relay relay-sqlite)

status=0
for run in $(seq 1 "$runs"); do
  for side in "${sides[@]}"; do
    if listening "$port"; then
      echo "something already listens on port $port; stop it first" >&2
      exit 1
    fi
    case $side in
      peroxo | peroxo-alt)
        settings=${PEROXO_ENV:-}
        [ "$side" = peroxo-alt ] && settings=$PEROXO_ALT_ENV
        # Each run's database is new, whichever backend the settings choose.
        # shellcheck disable=SC2086 # each setting is its own word
        start "$side" env PEROXO_STORAGE__SQLITE_PATH="$work/$side-$run.db" \
          PEROXO_STORAGE__LSM_PATH="$work/$side-$run.lsm" $settings \
          "$PEROXO_BIN" serve --config bench/config.toml
        wait_for "$side" curl -fsS "$health"
        ;;
      node)
        start node node "$NODE_HUB" "$port"
        wait_for node listening "$port"
        ;;
      relay)
        start relay "$THIN_RELAY" --listen "127.0.0.1:$port" --nodelay --small-buffers
        wait_for relay listening "$port"
        ;;
      relay-sqlite)
        start relay-sqlite "$THIN_RELAY" --listen "127.0.0.1:$port" --nodelay --small-buffers \
          --persist --db "$work/relay-$run.db"
        wait_for relay-sqlite listening "$port"
        ;;
    esac
    measure "$work/$side-$run.json" "run $run of $runs, $side" "$@"
    stop_processes
  done
done

for side in "${sides[@]}"; do
  bench/medians.sh "$side: peroxo bench $*" "$work/$side"-[0-9]*.json
done
exit "$status"
