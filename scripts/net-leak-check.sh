#!/usr/bin/env bash
# Runs N invocations (default 1000, 4 at a time) on a server with VM networking, then checks
# that nothing of the VMs' networks is left: no host link with the server's prefix and no
# network namespace held by the server but its spare networks', no VM chain or map entry in its
# nftables table, no VM network in use; and after the server stops, no table and no link.
# Needs root and a built tree.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000}"
PORT=7191
URL="http://127.0.0.1:$PORT"
. scripts/lib.sh
tmp=$(mktemp -d)
trap 'ign_stop_all; rm -rf "$tmp"' EXIT

ign_server "$tmp/server.log" --dev --data-dir "$tmp/data" --listen "127.0.0.1:$PORT" --keep-alive 5 \
  --vm-subnet 10.202.0.0/22
pid=$IGN_PID
ign_wait "$URL" "$pid" "$tmp/server.log"
IGNITION_URL=$URL "$BIN" fn deploy echo --runtime python3 --handler echo.handler \
  --code examples/echo-python >/dev/null
stats() { curl -fs "$URL/v1/stats" | python3 -c "import json,sys; n=json.load(sys.stdin)['network']; print(n[sys.argv[1]])" "$1"; }
prefix=$(stats interface_prefix)
table=$(stats table)
host_ns=$(readlink /proc/self/ns/net)

echo "==> $N invocations"
start=$(date +%s)
seq 1 "$N" | xargs -P 4 -I{} curl -fs -o /dev/null -w '%{http_code}\n' -X POST \
  "$URL/2015-03-31/functions/echo/invocations" -d '{"n": {}}' >"$tmp/codes"
echo "    $(grep -c '^200$' "$tmp/codes") of $N answered 200 in $(( $(date +%s) - start )) s"

echo "==> waiting for idle VMs to go (keep-alive 5 s)"
for _ in $(seq 1 120); do [ "$(stats active)" = 0 ] && break; sleep 1; done
fail=0
check() { if [ "$2" = "$3" ]; then echo "    ok   $1: $2"; else echo "    LEAK $1: $2 (want $3)"; fail=1; fi; }
# What may remain while the server runs: its spare networks (made ahead, never used).
spares=$(stats spares)
echo "    spare networks: $spares"
check "VM networks in use" "$(stats active)" 0
check "networks made = removed" "$(stats attached)" "$(stats released)"
check "host links $prefix* (the spares')" "$(ls /sys/class/net | grep -c "^$prefix" || true)" "$spares"
check "VM chains in $table" "$(nft list table inet "$table" | grep -c 'chain vm' || true)" 0
check "map entries in $table" "$(nft list table inet "$table" | grep -c 'jump vm' || true)" 0
check "namespaces held by the server (the spares')" \
  "$(ls -l /proc/$pid/fd | grep -o 'net:\[[0-9]*\]' | grep -Fv "$host_ns" | sort -u | wc -l)" "$spares"
kill -TERM "$pid"
wait "$pid" || true
check "table after stop" "$(nft list tables | grep -c "$table" || true)" 0
check "host links $prefix* after stop" "$(ls /sys/class/net | grep -c "^$prefix" || true)" 0
exit $fail
