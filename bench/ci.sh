#!/usr/bin/env bash
# Short `peroxo bench dm`, `group` and `api` runs for CI: a few seconds each at a small rate
# against one fresh node (each run takes a fresh tenant; api the tenant of a key made here). They
# check the delivery contract only (every acked message delivered exactly once to each
# recipient, in order, gapless seqs; for groups also every member's stream read back with sync;
# for api every acked message's `message.created` delivered by a signed webhook) and never fail
# on timings: the machine running CI is shared and noisy.
#
#   bench/ci.sh [path/to/peroxo]     (default: target/debug/peroxo)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/peroxo}
work=$(mktemp -d "${TMPDIR:-/tmp}/peroxo-ci-bench.XXXXXX")
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
receiver=$(free_port)
# bench/config.toml with a server API key and a webhook endpoint to the api run's receiver.
keyed=$("$bin" apikey --tenant ci-api --name ci 2>/dev/null)
secret=whsec_ci_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
{
  cat bench/config.toml
  printf '\n'
  tail -n +2 <<<"$keyed"
  printf '\n[[webhooks.endpoints]]\nname = "ci"\ntenant = "ci-api"\nurl = "http://127.0.0.1:%s/"\nsecret = "%s"\nevents = ["message.created"]\n' \
    "$receiver" "$secret"
} >"$work/config.toml"
PEROXO_HTTP__LISTEN="127.0.0.1:$port" \
PEROXO_STORAGE__LISTEN="127.0.0.1:0" \
PEROXO_STORAGE__SQLITE_PATH="$work/ci.db" \
  "$bin" serve --config "$work/config.toml" >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 200); do
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then break; fi
  sleep 0.05
done
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null
"$bin" bench dm --url "ws://127.0.0.1:$port/ws" --users 40 --rate 400 \
  --duration 4s --warmup 1s --drain 10s --text-bytes 64
"$bin" bench group --url "ws://127.0.0.1:$port/ws" --users 40 --groups 8 --members 10 \
  --rate 200 --duration 3s --warmup 1s --drain 10s --text-bytes 64
PEROXO_BENCH_API_KEY=$(head -n 1 <<<"$keyed") "$bin" bench api --http-url "http://127.0.0.1:$port" \
  --webhook-listen "127.0.0.1:$receiver" --webhook-secret "$secret" --users 20 --rate 200 \
  --duration 3s --warmup 1s --drain 10s --text-bytes 64
