#!/usr/bin/env bash
# The whole test suite: unit tests, and end-to-end tests that boot real microVMs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace --locked
