#!/usr/bin/env bash
# Work stealing on one machine, against the same cluster without it, in one run: two clusters
# of three nodes (2 slots each), one stealing and one with `--no-steal`, the same 1-second
# function, all the load sent to node 1. Rounds alternate between the clusters so that drift
# on the host hits both alike; the clusters idle while the other is measured. Prints, per
# cluster: wall time of a burst, latency P50/P99, and the share of invocations other nodes ran.
# Needs root (VM networking), Debian's postgresql and a built tree (./scripts/setup.sh).
# Usage: scripts/measure-cluster.sh [ROUNDS, default 3] [INVOCATIONS per burst, default 12]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
N="${2:-12}"
. scripts/lib.sh
tmp=$(mktemp -d)
chmod 755 "$tmp"
trap 'ign_stop_all; pg_stop "$tmp/pg-steal"; pg_stop "$tmp/pg-nosteal"; rm -rf "$tmp"' EXIT
# Each cluster's nodes share a store: a throwaway PostgreSQL per cluster.
pg_start "$tmp/pg-steal"
store_steal=$PG_URL
pg_start "$tmp/pg-nosteal"
store_nosteal=$PG_URL

start() { # NAME API_PORT CLUSTER_PORT SUBNET ARGS...
  local name=$1 port=$2 cport=$3 subnet=$4
  shift 4
  ign_server "$tmp/$name.log" --dev --data-dir "$tmp/$name" --listen "127.0.0.1:$port" \
    --cluster-addr "127.0.0.1:$cport" --node-id "$name" --slots 2 --max-vms 2 \
    --vm-subnet "$subnet" "$@"
}

# Cluster "steal": API 7301-7303, cluster 7311-7313. Cluster "nosteal": 7321-7323 / 7331-7333.
for c in steal nosteal; do
  if [ $c = steal ]; then base=7300; flags=(--store "$store_steal"); net=10.202
  else base=7320; flags=(--no-steal --store "$store_nosteal"); net=10.203; fi
  for i in 1 2 3; do
    peers=()
    [ "$i" -gt 1 ] && peers=(--peers "127.0.0.1:$((base + 11))")
    start "$c-n$i" $((base + i)) $((base + 10 + i)) "$net.$i.0/24" "${flags[@]}" "${peers[@]}"
  done
done
for p in 7301 7302 7303 7321 7322 7323; do ign_wait "http://127.0.0.1:$p"; done
for p in 7301 7321; do
  IGNITION_URL="http://127.0.0.1:$p" "$BIN" fn deploy sleeper --runtime python3 \
    --handler app.handler --timeout 60 --code examples/sleep-python >/dev/null
done
# Every node reads the function from the shared store; a warm-up burst builds each node's
# snapshot.
python3 - "$ROUNDS" "$N" <<'PY'
import concurrent.futures, json, statistics, sys, time, urllib.request

rounds, n = int(sys.argv[1]), int(sys.argv[2])
clusters = {"steal": 7301, "nosteal": 7321}

def invoke(port, i):
    body = json.dumps({"i": i, "sleep": 1}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/2015-03-31/functions/sleeper/invocations", data=body, method="POST")
    t = time.monotonic()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
        ok = r.status == 200 and out.get("i") == i
        return r.headers.get("x-ignition-node"), ok, time.monotonic() - t

def burst(port):
    t = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        res = list(ex.map(lambda i: invoke(port, i), range(n)))
    return time.monotonic() - t, res

for name, port in clusters.items():  # warm-up: snapshots on every node that runs something
    burst(port)
    burst(port)
walls = {c: [] for c in clusters}
lat = {c: [] for c in clusters}
elsewhere = {c: 0 for c in clusters}
errors = {c: 0 for c in clusters}
for _ in range(rounds):
    for name, port in clusters.items():
        wall, res = burst(port)
        walls[name].append(wall)
        for node, ok, l in res:
            lat[name].append(l)
            errors[name] += 0 if ok else 1
            elsewhere[name] += 0 if node and node.endswith("-n1") else 1
        time.sleep(1)

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

print(f"{rounds} rounds of {n} one-second invocations sent to node 1 of 3 (2 slots each)")
print("| cluster | burst wall s (median) | latency P50 s | latency P99 s | run by other nodes | errors |")
print("|---|---|---|---|---|---|")
for c in clusters:
    total = len(lat[c])
    print(f"| {c} | {statistics.median(walls[c]):.2f} | {pct(lat[c], 50):.2f} | {pct(lat[c], 99):.2f} "
          f"| {elsewhere[c]}/{total} ({100 * elsewhere[c] / total:.0f}%) | {errors[c]} |")
ratio = statistics.median(walls["nosteal"]) / statistics.median(walls["steal"])
print(f"no-steal / steal burst wall time: {ratio:.2f}x")
PY
for p in 7301 7302 7303; do
  curl -fs "http://127.0.0.1:$p/v1/stats" | python3 -c 'import json,sys; c=json.load(sys.stdin)["cluster"]; print(c["node"], {k: c[k] for k in ("accepted","ran_local","ran_stolen","lent","offered","offers_accepted","returned","reclaimed","probes","steal_requests","stolen")})'
done
