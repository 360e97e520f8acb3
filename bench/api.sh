#!/usr/bin/env bash
# Server API and webhook benchmarks (BENCHMARKS.md, "Server API and webhooks"): each run starts
# a fresh release node (`peroxo serve --dev`, 127.0.0.1:8080, a new SQLite file) whose
# configuration is bench/config.toml plus a key made by `peroxo apikey` and, unless
# WEBHOOK=off, a webhook endpoint for `message.created` pointed at the receiver of
# `peroxo bench api` (127.0.0.1:9100). Then it runs one of:
#
#   bench/api.sh api [ARGS…]   peroxo bench api ARGS (e.g. --rate 2000 --duration 20s --warmup 5s)
#   bench/api.sh both [ARGS…]  peroxo bench dm ARGS, and peroxo bench api $API_ARGS started as
#                              soon as dm's users are connected, so that both windows overlap
#   bench/api.sh dm [ARGS…]    peroxo bench dm ARGS alone, on the same node configuration
#
# and prints the medians of each benchmark's JSON reports (bench/medians.sh).
#
#   bench/api.sh api --rate 2000 --duration 20s --warmup 5s
#   API_ARGS="--rate 2000 --duration 20s --warmup 5s" bench/api.sh both --users 1000 --rate 5000 --duration 20s --warmup 5s
#   WEBHOOK=off API_ARGS="…" bench/api.sh both …     (api then runs with --no-webhook)
#
# Environment:
#   RUNS=3           runs (the medians are over these runs)
#   PEROXO_BIN=path  use this peroxo binary instead of building target/release/peroxo
#   API_ARGS         `both`: the api benchmark's arguments [default: --rate 2000 --duration 20s --warmup 5s]
#   WEBHOOK=off      configure no webhook endpoint
#   KEEP=1           keep the temporary directory (config, server logs, JSON reports)
set -euo pipefail
cd "$(dirname "$0")/.."

health=http://127.0.0.1:8080/healthz
receiver=127.0.0.1:9100
secret=whsec_bench_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

# shellcheck source=bench/processes.sh
. bench/processes.sh
mode=$1
shift
case $mode in api | both | dm) ;; *)
  echo "the first argument is api, both or dm" >&2
  exit 64
  ;;
esac
api_args=${API_ARGS:---rate 2000 --duration 20s --warmup 5s}

keyed=$("$PEROXO_BIN" apikey --tenant bench-api --name bench 2>/dev/null)
key=$(head -n 1 <<<"$keyed")
{
  cat bench/config.toml
  printf '\n[server_api]\n# No benchmark reaches it: the API key'"'"'s own rate is not what is measured.\nrate_per_sec = 1000000\nrate_burst = 1000000\n\n'
  tail -n +2 <<<"$keyed"
  if [ "${WEBHOOK:-on}" != off ]; then
    printf '\n[[webhooks.endpoints]]\nname = "bench"\ntenant = "bench-api"\nurl = "http://%s/"\nsecret = "%s"\nevents = ["message.created"]\n' \
      "$receiver" "$secret"
  fi
} >"$work/config.toml"
"$PEROXO_BIN" check-config --config "$work/config.toml" >/dev/null

webhook_args=(--webhook-listen "$receiver" --webhook-secret "$secret")
[ "${WEBHOOK:-on}" = off ] && webhook_args=(--no-webhook)

# peroxo bench api with the key and receiver; its report goes to $work/api-$run.json.
run_api() {
  # shellcheck disable=SC2086 # each argument is its own word
  PEROXO_BENCH_API_KEY=$key "$PEROXO_BIN" bench api "${webhook_args[@]}" "$@" --json \
    >"$work/api-$run.json" 2>"$work/api-$run.log"
}

status=0
for run in $(seq 1 "$runs"); do
  if curl -fsS "$health" >/dev/null 2>&1; then
    echo "something already answers $health; stop it first" >&2
    exit 1
  fi
  start server env PEROXO_STORAGE__SQLITE_PATH="$work/bench-$run.db" \
    "$PEROXO_BIN" serve --dev --config "$work/config.toml"
  wait_for server curl -fsS "$health"
  echo "== run $run of $runs ($mode, webhook ${WEBHOOK:-on}); load: $(uptime)" >&2
  case $mode in
    api)
      run_api "$@" || { echo "   run $run (api) failed" >&2; status=1; }
      ;;
    dm)
      "$PEROXO_BIN" bench dm "$@" --json >"$work/dm-$run.json" 2>"$work/dm-$run.log" ||
        { echo "   run $run (dm) failed" >&2; status=1; }
      ;;
    both)
      "$PEROXO_BIN" bench dm "$@" --json >"$work/dm-$run.json" 2>"$work/dm-$run.log" &
      dm=$!
      until grep -q 'users connected' "$work/dm-$run.log" 2>/dev/null || ! kill -0 "$dm" 2>/dev/null; do
        sleep 0.05
      done
      # shellcheck disable=SC2086 # each argument is its own word
      run_api $api_args || { echo "   run $run (api) failed" >&2; status=1; }
      wait "$dm" || { echo "   run $run (dm) failed" >&2; status=1; }
      ;;
  esac
  stop_processes
done

for bench in api dm; do
  if compgen -G "$work/$bench-*.json" >/dev/null; then
    args="$*"
    [ "$mode" = both ] && [ "$bench" = api ] && args=$api_args
    bench/medians.sh "peroxo bench $bench $args (webhook ${WEBHOOK:-on})" "$work/$bench"-*.json
  fi
done
exit "$status"
