#!/usr/bin/env bash
# Runs the end-to-end suites against the Firecracker driver. Needs a host with hardware KVM
# (`ignition doctor` says "kvm": "hardware") and the `firecracker` binary (and optionally
# `jailer`) on PATH or in $FIRECRACKER; this project's development machines have neither, so
# this script is for KVM hosts. Usage: scripts/firecracker-e2e.sh [cargo test filter]
set -euo pipefail
cd "$(dirname "$0")/.."
FC="${FIRECRACKER:-$(command -v firecracker || true)}"
if [ -z "$FC" ] || [ ! -x "$FC" ]; then
  echo "firecracker not found: put it on PATH or set FIRECRACKER=/path/to/firecracker" >&2
  exit 2
fi
./scripts/setup.sh
kvm=$(./target/release/ignition doctor --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvm"])')
if [ "$kvm" != hardware ]; then
  echo "KVM here is \"$kvm\", not hardware: Firecracker cannot run on this host" >&2
  exit 2
fi
export IGNITION_TEST_SERVER_ARGS="--vmm firecracker --firecracker $FC --accel kvm"
cargo test --locked -p ignition --features vm-tests --test microvm_e2e --test snapshot_pool_e2e --test network_e2e \
  --test limits_e2e -- "$@"
