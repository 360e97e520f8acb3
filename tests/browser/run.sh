#!/usr/bin/env bash
# The browser end-to-end test of the chat page (web/chat.html): installs what it needs
# (Debian's Chromium, playwright-core from package-lock.json), builds the server unless
# PEROXO_BIN names one, and runs chat.test.mjs with Node's test runner.
# Screenshots and logs: target/browser-artifacts/.
set -euo pipefail

# A PEROXO_BIN given relative to the caller's directory, made absolute before moving.
if [[ -n "${PEROXO_BIN:-}" ]]; then
  PEROXO_BIN="$(realpath "$PEROXO_BIN")"
  export PEROXO_BIN
fi
cd "$(dirname "$0")"

if [[ ! -x /usr/bin/chromium ]]; then
  echo "== installing Chromium (Debian package)"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

echo "== npm ci"
npm ci --no-audit --no-fund

if [[ -z "${PEROXO_BIN:-}" ]]; then
  echo "== cargo build"
  (cd ../.. && cargo build)
  export PEROXO_BIN="$PWD/../../target/debug/peroxo"
fi

echo "== node --test chat.test.mjs"
node --test --test-reporter=spec chat.test.mjs
