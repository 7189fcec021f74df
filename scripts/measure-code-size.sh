#!/usr/bin/env bash
# Invoke cost against code size (#19): a function with a 1 KiB bundle and the same function
# padded with 40 MiB of incompressible data, N warm-pool invocations of each at concurrency 1
# (`ignition bench --compare`, default N=200), at the default memory and at `--memory 128`,
# with the node's resident memory after each. Starts a node of its own.
#
#   ./scripts/measure-code-size.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"
. scripts/lib.sh
[ -x "$BIN" ] || { echo "build first: ./scripts/setup.sh" >&2; exit 2; }

PORT="${IGNITION_MEASURE_PORT:-7172}"
URL="http://127.0.0.1:$PORT"
WORK="$(mktemp -d /tmp/ignition-code-size.XXXXXX)"
ign_server "$WORK/server.log" --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  --run-dir "$WORK/run" --keep-alive 600
trap 'ign_stop_all; rm -rf "$WORK"' EXIT
ign_wait "$URL" "$IGN_PID" "$WORK/server.log"
export IGNITION_URL="$URL"

mkdir -p "$WORK/small" "$WORK/large"
# 1 KiB of code: a handler and a comment to fill it.
{
  printf 'def handler(event, context):\n    return {"ok": True}\n'
  printf '#%.0s' $(seq 1 960)
  printf '\n'
} > "$WORK/small/app.py"
cp "$WORK/small/app.py" "$WORK/large/app.py"
head -c $((40 * 1024 * 1024)) /dev/urandom > "$WORK/large/padding.bin"

for memory in 512 128; do
  for f in small large; do
    "$BIN" fn deploy "code-$f-$memory" --runtime python3 --handler app.handler \
      --code "$WORK/$f" --memory "$memory" >/dev/null
  done
  echo "== --memory $memory"
  "$BIN" bench --function "code-small-$memory" --compare "code-large-$memory" \
    --samples "$N" --json "$WORK/bench-$memory.json"
  python3 - "$WORK/bench-$memory.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ratio, rss = r["p50_ratio"], r["node_rss_mib_delta"]
print(f"p50 ratio {ratio:.3f} (at most 1.1: {'yes' if ratio <= 1.1 else 'NO'}); "
      f"node RSS difference {rss:+.1f} MiB (within 64: {'yes' if abs(rss) <= 64 else 'NO'})")
PY
done
