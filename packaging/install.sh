#!/bin/bash
# Installs what the grid needs on a Debian 12 machine and builds it.
# Idempotent: what is already there is neither downloaded nor rebuilt.
#   - Debian packages: the build's (compilers, protoc for raft-proto,
#     libclang for rocksdb's bindgen) and the runtime's (fuse3, iproute2,
#     nftables, util-linux; qemu and what builds the tiny appliance).
#   - Rust stable through rustup, when no cargo is on the PATH.
#   - A release build of the workspace in $CARGO_TARGET_DIR
#     (default /var/tmp/grid-target, outside the clone so later builds reuse it).
#   - The binaries, linked into /usr/local/bin.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (the grid creates namespaces, bridges and FUSE mounts)" >&2
    exit 1
fi
repo=$(cd "$(dirname "$0")/.." && pwd)

packages=(
    build-essential pkg-config curl ca-certificates git
    protobuf-compiler libclang-dev
    fuse3 iproute2 nftables util-linux bash procps attr fio
    qemu-system-x86 qemu-utils busybox-static e2fsprogs cpio gzip
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v cargo >/dev/null; then
    echo "install.sh: installing Rust (rustup, stable)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    . "$HOME/.cargo/env"
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/grid-target}
echo "install.sh: building the grid (release) in $CARGO_TARGET_DIR"
(cd "$repo" && cargo build --release --workspace --bins --quiet)

for bin in metad gvsfs vmctl lcmd devgrid; do
    ln -sf "$CARGO_TARGET_DIR/release/$bin" "/usr/local/bin/$bin"
done
