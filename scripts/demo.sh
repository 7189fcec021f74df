#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: set up, start a single-node server with its
# embedded store, deploy examples/hello-python, invoke it, print its JSON result, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

PORT="${IGNITION_DEMO_PORT:-7070}"
URL="http://127.0.0.1:$PORT"
DATA="$(mktemp -d /tmp/ignition-demo.XXXXXX)"
LOG="$DATA/server.log"
./target/release/ignition server --dev --data-dir "$DATA" --listen "127.0.0.1:$PORT" 2>"$LOG" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -rf "$DATA"' EXIT

for _ in $(seq 1 600); do
  curl -fsS "$URL/" >/dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.2
done

export IGNITION_URL="$URL"
echo "==> deploying examples/hello-python"
./target/release/ignition fn deploy hello-python --runtime python3 --handler app.handler \
  --code examples/hello-python >/dev/null
echo "==> invoking it in a fresh microVM"
./target/release/ignition fn invoke hello-python --data '{"name": "Ignition"}'
