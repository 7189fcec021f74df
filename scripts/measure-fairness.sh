#!/usr/bin/env bash
# Admission between tenants (#19): on a node with 2 VM slots, tenant A has 100 invocations of a
# 1-second function waiting; tenant B then invokes a short function 10 times, one after another.
# B's P50 behind A's queue is compared with B's P50 on the idle node, measured in the same run;
# in arrival order B would wait behind A's whole queue (~50 s and more). Starts a node of its own.
#
#   ./scripts/measure-fairness.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ -x "$BIN" ] || { echo "build first: ./scripts/setup.sh" >&2; exit 2; }

PORT="${IGNITION_MEASURE_PORT:-7173}"
URL="http://127.0.0.1:$PORT"
WORK="$(mktemp -d /tmp/ignition-fairness.XXXXXX)"
token() { "$BIN" key create --tenant "$1" --data-dir "$WORK/data" | sed -n 's/^CLI token: *IGNITION_TOKEN=//p'; }
A=$(token tenanta)
B=$(token tenantb)
ign_server "$WORK/server.log" --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  --run-dir "$WORK/run" --max-vms 2
trap 'ign_stop_all; rm -rf "$WORK"' EXIT
ign_wait "$URL" "$IGN_PID" "$WORK/server.log"
export IGNITION_URL="$URL"

mkdir -p "$WORK/slow" "$WORK/quick"
printf 'import time\ndef handler(event, context):\n    time.sleep(1)\n    return "a"\n' > "$WORK/slow/app.py"
printf 'def handler(event, context):\n    return "b"\n' > "$WORK/quick/app.py"
IGNITION_TOKEN=$A "$BIN" fn deploy slow --runtime python3 --handler app.handler --code "$WORK/slow" --timeout 30 >/dev/null
IGNITION_TOKEN=$B "$BIN" fn deploy quick --runtime python3 --handler app.handler --code "$WORK/quick" >/dev/null

# invoke TOKEN FUNCTION: one synchronous invocation; prints its time in ms.
invoke() {
  curl -fsS -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $1" \
    -X POST "$URL/2015-03-31/functions/$2/invocations" -d '{}' | awk '{ printf "%.0f\n", $1 * 1000 }'
}
# Each function's snapshot is made before anything is measured.
invoke "$A" slow >/dev/null
invoke "$B" quick >/dev/null

idle=$(for _ in $(seq 1 10); do invoke "$B" quick; done | median)
for _ in $(seq 1 100); do invoke "$A" slow >/dev/null & done
sleep 3
loaded=$(for _ in $(seq 1 10); do invoke "$B" quick; done | tee "$WORK/loaded" | median)
worst=$(sort -n "$WORK/loaded" | tail -1)
bound=$(( 2 * (idle + 1000) ))
echo "B P50 on the idle node: ${idle} ms"
echo "B P50 behind A's 100 queued 1-second invocations: ${loaded} ms (worst ${worst} ms)"
echo "bound 2 x (idle P50 + A's 1000 ms handler) = ${bound} ms: $([ "$loaded" -le "$bound" ] && echo within || echo EXCEEDED)"
wait_a() { for j in $(jobs -p); do [ "$j" = "$IGN_PID" ] || wait "$j" 2>/dev/null || true; done; }
wait_a
