#!/bin/sh
# The LCM datapath benchmark (issue 7): TCP throughput (iperf3) and UDP
# round-trip latency between two container appliances on two nodes of a
# grid in a box, through lcmd, over a plain routed veth path and through
# tinc, all in one run; prints a table with the ratios. Not a test.
#
#   sudo lcmd/bench/run.sh            # BENCH_SECS=10 BENCH_PINGS=2000
#
# Numbers are noisy on a shared machine: the three paths are measured in the
# same run, one after another, so that they see the same load.
set -eu
cd "$(dirname "$0")/../.."
need=""
command -v iperf3 >/dev/null || need="$need iperf3"
command -v tincd >/dev/null || need="$need tinc"
if [ -n "$need" ]; then
    apt-get install -y $need
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/grid-target}"
cargo build --release -p metad --bin metad
cargo build --release -p lcmd --bin lcmd --example datapath
DEVGRID_BIN_DIR="$CARGO_TARGET_DIR/release" exec "$CARGO_TARGET_DIR/release/examples/datapath"
