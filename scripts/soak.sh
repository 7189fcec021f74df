#!/usr/bin/env bash
# Soak: a server invoked with a mix of normal and hostile functions for DURATION seconds
# (default 300), sampling its memory, open files, child processes, tap devices and temp files.
# After the load stops and the keep-alive passes, everything must be back where it started.
# Prints one line per sample and exits non-zero if anything grew.
#
#   ./scripts/soak.sh [DURATION_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-300}"
. scripts/lib.sh
[ -x "$BIN" ] || { echo "build first: ./scripts/setup.sh" >&2; exit 2; }

PORT="${IGNITION_SOAK_PORT:-7171}"
URL="http://127.0.0.1:$PORT"
WORK="$(mktemp -d /tmp/ignition-soak.XXXXXX)"
RUN="$WORK/run"
ign_server "$WORK/server.log" --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  --run-dir "$RUN" --keep-alive 5
SERVER=$IGN_PID
trap 'ign_stop_all; rm -rf "$WORK"' EXIT
ign_wait "$URL" "$SERVER" "$WORK/server.log"

export IGNITION_URL="$URL"
CODE="$WORK/code"
mkdir -p "$CODE"
cat > "$CODE/mix.py" <<'PY'
import os, sys, time
def normal(event, context):
    return {"n": event.get("n", 0)}
def raises(event, context):
    raise RuntimeError("expected failure")
def sleeps(event, context):
    time.sleep(60)
def hog(event, context):
    hoard = []
    while True:
        hoard.append(bytearray(16 * 1024 * 1024))
def flood(event, context):
    for _ in range(400):
        sys.stdout.write("x" * 65536)
    return "flooded"
def bomb(event, context):
    while True:
        try:
            os.fork()
        except OSError:
            pass
PY
for f in normal raises sleeps hog flood bomb; do
  "$BIN" fn deploy "$f" --runtime python3 --handler "mix.$f" --code "$CODE" --timeout 3 >/dev/null
done

sample() {
  local rss fds kids taps files
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER/status")
  fds=$(ls "/proc/$SERVER/fd" | wc -l)
  kids=$(ps -o pid= --ppid "$SERVER" | wc -l)
  taps=$(ip -o link show 2>/dev/null | grep -c ' tap' || true)
  files=$( (find "$RUN" "$WORK/data/snapshots" -mindepth 1 2>/dev/null || true) | wc -l)
  echo "$rss $fds $kids $taps $files"
}

printf '%6s %9s %6s %6s %5s %6s %8s\n' "t(s)" "rss(KiB)" "fds" "vmms" "taps" "files" "invokes"
start=$(date +%s)
invokes=0
first=""
i=0
while [ $(( $(date +%s) - start )) -lt "$DURATION" ]; do
  pids=()
  for f in normal normal normal raises sleeps normal hog flood normal bomb; do
    curl -s -o /dev/null -X POST "$URL/2015-03-31/functions/$f/invocations" -d "{\"n\": $i}" &
    pids+=($!)
    i=$((i + 1))
  done
  wait "${pids[@]}"
  invokes=$((invokes + 10))
  s=$(sample)
  [ -n "$first" ] || first="$s"
  printf '%6d %9s %6s %6s %5s %6s %8d\n' $(( $(date +%s) - start )) $s "$invokes"
done
echo "load stopped; waiting for the keep-alive to pass"
sleep 10
final=$(sample)
printf '%6s %9s %6s %6s %5s %6s\n' "end" $final
read -r rss0 fds0 _ _ _ <<<"$first"
read -r rss1 fds1 kids1 taps1 _ <<<"$final"
files1=$( (find "$RUN" -mindepth 1 2>/dev/null || true) | wc -l)
ok=1
[ "$kids1" -eq 0 ] || { echo "FAIL: $kids1 VMM processes left"; ok=0; }
[ "$taps1" -eq 0 ] || { echo "FAIL: $taps1 tap devices left"; ok=0; }
[ "$files1" -eq 0 ] || { echo "FAIL: $files1 files left in the run directory"; ok=0; }
[ "$fds1" -le $((fds0 + 8)) ] || { echo "FAIL: open files grew from $fds0 to $fds1"; ok=0; }
[ "$rss1" -le $((rss0 * 3 / 2 + 8192)) ] || { echo "FAIL: memory grew from $rss0 KiB to $rss1 KiB"; ok=0; }
curl -fsS "$URL/v1/stats"; echo
[ "$ok" -eq 1 ] && echo "soak passed: $invokes invocations" || exit 1
