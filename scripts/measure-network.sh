#!/usr/bin/env bash
# Invoke latency with and without VM networking, in one run: two servers side by side (one
# `--network builtin`, one `--network none`), the same function on both, invocations
# interleaved so that drift on the host hits both alike. Prints medians from Server-Timing per
# start mode, and the ratio of totals. Needs root (networking) and a built tree
# (./scripts/setup.sh). Usage: scripts/measure-network.sh [N per mode, default 15]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-15}"
. scripts/lib.sh
tmp=$(mktemp -d)
trap 'ign_stop_all; rm -rf "$tmp"' EXIT

start() { # NAME PORT ARGS...
  local name=$1 port=$2
  shift 2
  ign_server "$tmp/$name.log" --dev --data-dir "$tmp/$name" --listen "127.0.0.1:$port" \
    --keep-alive 600 "$@"
  ign_wait "http://127.0.0.1:$port" "$IGN_PID" "$tmp/$name.log"
}

start net 7181 --network builtin --vm-subnet 10.201.0.0/24
start nonet 7182 --network none
for port in 7181 7182; do
  IGNITION_URL="http://127.0.0.1:$port" "$BIN" fn deploy echo --runtime python3 \
    --handler echo.handler --code examples/echo-python >/dev/null
  # The first invocation builds the snapshots; it is not measured.
  curl -fs -o /dev/null -X POST "http://127.0.0.1:$port/2015-03-31/functions/echo/invocations" -d '{}'
done

ready() { # PORT: whether a warm slot of echo is ready
  curl -fs "http://127.0.0.1:$1/v1/functions/echo/pool" | grep -q '"ready":[1-9]'
}
for port in 7181 7182; do
  curl -fs -o /dev/null -X PUT "http://127.0.0.1:$port/v1/functions/echo/pool" -d '{"min_ready": 1}' \
    -H 'content-type: application/json'
done
for mode in restore pool; do
  for _ in $(seq 1 "$N"); do
    # Pool mode measures taking a ready slot, not waiting for a refill: both servers' slots
    # are ready (no refill running on either) before each pair.
    if [ "$mode" = pool ]; then
      for _ in $(seq 1 200); do ready 7181 && ready 7182 && break; sleep 0.05; done
      sleep 0.3
    fi
    for port in 7181 7182; do
      curl -fsS -o /dev/null -D - -H "x-ignition-start: $mode" -X POST \
        "http://127.0.0.1:$port/2015-03-31/functions/echo/invocations" -d '{}' \
        | tr -d '\r' | sed -n 's/^[Ss]erver-[Tt]iming: //p' >>"$tmp/$mode-$port"
    done
  done
done

part() { timing_part "$@"; }

echo "medians of $N interleaved invocations per mode (ms)"
printf "%-8s %-8s %9s %9s %9s %9s %10s %11s\n" mode network total queued vm_start invoke net_setup net_attach
for mode in restore pool; do
  for port in 7181 7182; do
    f="$tmp/$mode-$port"
    label=$([ "$port" = 7181 ] && echo builtin || echo none)
    printf '%-8s %-8s %9s %9s %9s %9s %10s %11s\n' "$mode" "$label" "$(part "$f" total)" \
      "$(part "$f" queued)" "$(part "$f" vm_start)" "$(part "$f" invoke)" "$(part "$f" net_setup)" "$(part "$f" net_attach)"
  done
  awk -v a="$(part "$tmp/$mode-7181" total)" -v b="$(part "$tmp/$mode-7182" total)" -v m="$mode" \
    'BEGIN { printf "%-8s total with / without networking: %.2f\n", m, a / b }'
done
