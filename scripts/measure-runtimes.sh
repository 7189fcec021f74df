#!/usr/bin/env bash
# Node.js against Python (#22): examples/hello-node and examples/hello-python, N warm-pool
# invocations of each at concurrency 1 in one run (`ignition bench --compare`, default N=100),
# then the whole benchmark, small, on the Node.js function alone. Starts a node of its own.
#
#   ./scripts/measure-runtimes.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100}"
. scripts/lib.sh
[ -x "$BIN" ] || { echo "build first: ./scripts/setup.sh" >&2; exit 2; }

PORT="${IGNITION_MEASURE_PORT:-7173}"
URL="http://127.0.0.1:$PORT"
WORK="$(mktemp -d /tmp/ignition-runtimes.XXXXXX)"
ign_server "$WORK/server.log" --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  --run-dir "$WORK/run" --keep-alive 600
trap 'ign_stop_all; rm -rf "$WORK"' EXIT
ign_wait "$URL" "$IGN_PID" "$WORK/server.log"
export IGNITION_URL="$URL"

"$BIN" fn deploy hello-node --runtime nodejs18.x --handler index.handler \
  --code examples/hello-node --timeout 30 >/dev/null
"$BIN" fn deploy hello-python --runtime python3.11 --handler app.handler \
  --code examples/hello-python --timeout 30 >/dev/null

echo "== warm pool, concurrency 1: hello-node, then hello-python"
"$BIN" bench --function hello-node --compare hello-python --samples "$N" \
  --json "$WORK/compare.json"
python3 - "$WORK/compare.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"p50 hello-node / hello-python: {1 / r['p50_ratio']:.2f}")
PY

echo "== the benchmark on hello-node"
"$BIN" bench --function hello-node --samples 20 --concurrency 8 --invocations 200 \
  --memory-slots 4
