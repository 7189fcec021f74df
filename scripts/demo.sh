#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: set up, start a single-node server with its
# embedded store, deploy examples/hello-python, invoke it, print its JSON result, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/lib.sh

PORT="${IGNITION_DEMO_PORT:-7070}"
URL="http://127.0.0.1:$PORT"
DATA="$(mktemp -d /tmp/ignition-demo.XXXXXX)"
LOG="$DATA/server.log"
ign_server "$LOG" --dev --data-dir "$DATA" --listen "127.0.0.1:$PORT"
trap 'ign_stop_all; rm -rf "$DATA"' EXIT
ign_wait "$URL" "$IGN_PID" "$LOG"

export IGNITION_URL="$URL"
echo "==> deploying examples/hello-python"
"$BIN" fn deploy hello-python --runtime python3 --handler app.handler \
  --code examples/hello-python >/dev/null
echo "==> invoking it in a fresh microVM"
"$BIN" fn invoke hello-python --data '{"name": "Ignition"}'
