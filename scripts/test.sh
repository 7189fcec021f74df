#!/usr/bin/env bash
# The whole test suite in one run: the in-process tier (no root, no QEMU) and, with feature
# `vm-tests` turned on, the tests that boot real microVMs or need root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace --locked --features ignition/vm-tests,ignition-worker/vm-tests,ignition-net/vm-tests,ignition-oci/registry-tests,ignition-store/pg-tests,ignition-node/pg-tests
