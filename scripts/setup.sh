#!/usr/bin/env bash
# Prepares a Debian 12 machine: system packages, the Rust build, and the guest image.
# Idempotent; every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# nftables enforces VMs' egress policies; iproute2 and util-linux (nsenter) serve the tests.
for pkg_cmd in qemu-system-x86:qemu-system-x86_64 debootstrap:debootstrap e2fsprogs:mkfs.ext4 curl:curl \
    nftables:nft iproute2:ip util-linux:nsenter; do
  command -v "${pkg_cmd#*:}" >/dev/null 2>&1 || need_apt+=("${pkg_cmd%%:*}")
done
# The AWS SDK for Python, for the test that drives Ignition's Lambda API with it.
/usr/bin/python3 -c 'import boto3' >/dev/null 2>&1 || need_apt+=(python3-boto3)
# The AWS CLI (Debian's), for the test that manages functions with it as users do.
[ -x /usr/bin/aws ] || need_apt+=(awscli)
# Standard CNI plugins, for `--network cni` and its tests.
[ -x /usr/lib/cni/ptp ] || need_apt+=(containernetworking-plugins)
# A registry and skopeo, for the container image tests (they start their own on loopback).
for pkg_cmd in docker-registry:docker-registry skopeo:skopeo; do
  command -v "${pkg_cmd#*:}" >/dev/null 2>&1 || need_apt+=("${pkg_cmd%%:*}")
done
# PostgreSQL's server programs, for the shared store's tests (each starts a throwaway server
# of its own; nothing is left running).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# Debian's Chromium, and Node.js with npm, for the web console's browser test (Playwright drives
# Chromium; it downloads no browser of its own).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# debootstrap verifies the archive's signatures with this keyring (a Recommends, so named here).
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need_apt+=(debian-archive-keyring)
if [ ${#need_apt[@]} -gt 0 ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  echo "==> installing ${need_apt[*]:-package lists}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  if [ ${#need_apt[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi

echo "==> building the guest agent (static) and ignition"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked -p ignition-agent --target x86_64-unknown-linux-gnu
cargo build --release --locked -p ignition

browser_tests=crates/console/tests/browser
if [ ! -d "$browser_tests/node_modules/playwright-core" ]; then
  echo "==> installing playwright-core for the console's browser test"
  npm ci --prefix "$browser_tests" --no-audit --no-fund --loglevel=error
fi

echo "==> building the guest image (cached in ${IGNITION_CACHE_DIR:-~/.cache/ignition})"
./target/release/ignition image build >/dev/null
echo "==> ready"
