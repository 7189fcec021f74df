#!/usr/bin/env bash
# Builds the Debian package (target/debian/ignition_*.deb): the release binary, the static
# guest agent, the systemd unit, /etc/ignition/config.toml, shell completions and the man page.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p ignition-agent --target x86_64-unknown-linux-gnu
cargo build --release --locked -p ignition
mkdir -p target/package
# The static agent is built for an explicit target; cargo-deb takes it from here.
cp target/x86_64-unknown-linux-gnu/release/ignition-agent target/package/
bin=target/release/ignition
"$bin" completions bash >target/package/ignition.bash
"$bin" completions zsh >target/package/_ignition
"$bin" completions fish >target/package/ignition.fish
"$bin" man | gzip -9n >target/package/ignition.1.gz
cargo deb -p ignition --no-build --locked
ls target/debian/*.deb
