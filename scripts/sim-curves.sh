#!/usr/bin/env bash
# Scheduling curves from the simulator (the same policy code the servers run): P50, P99 and
# messages per invocation against load, for 10,000 nodes by default. Writes a Markdown table on
# stdout and an SVG plot (default docs/scheduling-curves.svg).
# Usage: scripts/sim-curves.sh [NODES, default 10000] [SVG path]
set -euo pipefail
cd "$(dirname "$0")/.."
NODES="${1:-10000}"
OUT="${2:-docs/scheduling-curves.svg}"
cargo build --release -q -p ignition-scheduler
./target/release/ignition-sim --nodes "$NODES" --sweep 0.5,0.6,0.7,0.8,0.85,0.9,0.95 --json |
  python3 scripts/sim_plot.py "$OUT"
