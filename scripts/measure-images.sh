#!/usr/bin/env bash
# A container image's function against the same runtime as a bundle (#22): one bash runtime,
# examples/hello-provided/bootstrap, deployed once as a `provided` bundle and once as a
# container image (bash, cut and uname with their libraries from this host, the bootstrap as
# ENTRYPOINT) made into an OCI archive here and deployed with --image-archive. N warm-pool
# invocations of each at concurrency 1 in one run (`ignition bench --compare`, default N=100),
# then the whole benchmark, small, on the image's function. Starts a node of its own.
#
#   ./scripts/measure-images.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100}"
. scripts/lib.sh
[ -x "$BIN" ] || { echo "build first: ./scripts/setup.sh" >&2; exit 2; }

PORT="${IGNITION_MEASURE_PORT:-7174}"
URL="http://127.0.0.1:$PORT"
WORK="$(mktemp -d /tmp/ignition-images.XXXXXX)"

# The image: an OCI layout in a tar, two layers (the programs, then the bootstrap).
python3 - "$WORK/hello-image.tar" examples/hello-provided/bootstrap <<'PY'
import gzip, hashlib, io, json, os, subprocess, sys, tarfile

out, bootstrap = sys.argv[1], sys.argv[2]
programs = ["/bin/bash", "/usr/bin/cut", "/usr/bin/uname"]
paths = set(programs)
for p in programs:
    for line in subprocess.run(["ldd", p], capture_output=True, text=True).stdout.splitlines():
        words = line.split("=>")[-1].split()
        if words and words[0].startswith("/"):
            paths.add(words[0])

def layer(entries):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in entries:
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            t.addfile(info, io.BytesIO(data))
    return raw.getvalue()

blobs = {}
def put(data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}

layers = [layer([(p, open(p, "rb").read()) for p in sorted(paths)]),
          layer([("var/task/bootstrap", open(bootstrap, "rb").read())])]
descs = [dict(put(gzip.compress(l)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip")
         for l in layers]
config = {"architecture": "amd64", "os": "linux",
          "config": {"Entrypoint": ["/var/task/bootstrap"],
                     "Env": ["PATH=/usr/bin:/bin", "_HANDLER=image.handler"]},
          "rootfs": {"type": "layers",
                     "diff_ids": ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]}}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": dict(put(json.dumps(config).encode()),
                           mediaType="application/vnd.oci.image.config.v1+json"),
            "layers": descs}
m = put(json.dumps(manifest).encode())
index = {"schemaVersion": 2, "manifests": [dict(m, mediaType=manifest["mediaType"],
         platform={"architecture": "amd64", "os": "linux"})]}
with tarfile.open(out, "w") as t:
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    add("index.json", json.dumps(index).encode())
    for digest, data in blobs.items():
        add("blobs/sha256/" + digest.split(":")[1], data)
PY

ign_server "$WORK/server.log" --dev --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
  --run-dir "$WORK/run" --keep-alive 600
trap 'ign_stop_all; rm -rf "$WORK"' EXIT
ign_wait "$URL" "$IGN_PID" "$WORK/server.log"
export IGNITION_URL="$URL"

"$BIN" fn deploy hello-provided --runtime provided.al2023 --handler image.handler \
  --code examples/hello-provided --timeout 30 >/dev/null
"$BIN" fn deploy hello-image --image-archive "$WORK/hello-image.tar" --timeout 30 >/dev/null
"$BIN" fn invoke hello-image --data '{}'

echo "== warm pool, concurrency 1: hello-image, then hello-provided"
"$BIN" bench --function hello-image --compare hello-provided --samples "$N" \
  --json "$WORK/compare.json"
python3 - "$WORK/compare.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"p50 hello-image / hello-provided: {1 / r['p50_ratio']:.2f}")
PY

echo "== the benchmark on hello-image (restores from its snapshot among the modes)"
"$BIN" bench --function hello-image --samples 20 --concurrency 8 --invocations 200 \
  --memory-slots 4
