#!/usr/bin/env bash
# The nemesis test (tests/tests/nemesis.rs) for longer than CI runs it:
# writers on two /gvs volumes of a 3-node grid in a box while daemons are
# SIGKILLed, nodes cut off and write leases moved, then every acknowledged
# record is checked on every node.
#
#   tests/nemesis.sh [--minutes N] [--seed S]
#
# --minutes N: N minutes of faults (default 10); --seed S replays the
# sequence of faults of a run that printed "seed S". Run as root from the
# workspace (the grid needs namespaces); CARGO_TARGET_DIR is honoured.
set -euo pipefail

usage() { echo "usage: $0 [--minutes N] [--seed S]" >&2; exit 2; }
MINUTES=10
SEED=
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) [ $# -ge 2 ] || usage; MINUTES=$2; shift 2 ;;
        --seed) [ $# -ge 2 ] || usage; SEED=$2; shift 2 ;;
        *) usage ;;
    esac
done
[[ $MINUTES =~ ^[1-9][0-9]*$ ]] || { echo "nemesis: --minutes must be a positive number, not '$MINUTES'" >&2; exit 2; }
[[ -z $SEED || $SEED =~ ^[0-9]+$ ]] || { echo "nemesis: --seed must be a non-negative number, not '$SEED'" >&2; exit 2; }

cd "$(dirname "$0")/.."
export NEMESIS_SECS=$((MINUTES * 60))
[ -z "$SEED" ] || export NEMESIS_SEED=$SEED
exec cargo test --release -p grid-tests --test nemesis -- --nocapture
