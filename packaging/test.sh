#!/bin/bash
# The README's second command: installs what is missing, then runs the whole
# test suite (style, lints, unit and end-to-end tests on grids in a box).
# Every end-to-end test brings up and tears down its own grid.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
"$here/install.sh"
. "$HOME/.cargo/env" 2>/dev/null || true
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/grid-target}
cd "$repo"
cargo fmt --all --check
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
# Every test binary runs even after a failure, so one run reports them all.
cargo test --release --workspace --no-fail-fast
