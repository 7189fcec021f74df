#!/usr/bin/env bash
# Latency of one invocation and its parts (median of N, default 5), sequential, from the
# Server-Timing header each invoke returns. Needs a running server (IGNITION_URL, default
# http://127.0.0.1:7070) with the function deployed (default: hello-python from scripts/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
URL="${IGNITION_URL:-http://127.0.0.1:7070}"
FN="${1:-hello-python}"
N="${2:-5}"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
for _ in $(seq 1 "$N"); do
  start=$(date +%s%N)
  timing=$(curl -fsS -o /dev/null -D - -X POST "$URL/2015-03-31/functions/$FN/invocations" -d '{}' \
    | tr -d '\r' | sed -n 's/^[Ss]erver-[Tt]iming: //p')
  end=$(date +%s%N)
  echo "client;dur=$(( (end - start) / 1000000 )), $timing" >> "$tmp"
done
echo "median of $N sequential invocations of $FN (ms):"
parts=$(tr ',' '\n' < "$tmp" | sed 's/^ *//; s/;dur=.*//' | sort -u)
for part in $parts; do
  printf '  %-12s %6s\n' "$part" "$(timing_part "$tmp" "$part")"
done
