#!/bin/bash
# metad against etcd on the grid in a box (issue 3, "Benchmark"): installs
# etcd (Debian's etcd-server and etcd-client) when missing, builds and runs
# metad/benches/vs_etcd.rs, and prints one table. Extra arguments go to the
# bench: --rounds N --writes-1 N --writes-64 N --failovers N. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
. "$HOME/.cargo/env" 2>/dev/null || true
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/grid-target}

etcd_pids() { pgrep -x etcd || true; }

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    before=$(etcd_pids)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq etcd-server etcd-client >/dev/null
    # The package may start its service (not under systemd here, through its
    # init script): stop it and kill whatever etcd it started, so that only
    # the bench's own members (in the grid's nodes) run.
    if [ -x /etc/init.d/etcd ]; then /etc/init.d/etcd stop >/dev/null 2>&1 || true; fi
    for pid in $(etcd_pids); do
        if ! grep -qw "$pid" <<<"$before"; then
            echo "run.sh: killing etcd $pid started by the package" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
fi

cd "$repo"
exe=$(cargo bench -p metad --bench vs_etcd --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*vs_etcd[^"]*\)".*/\1/p' | tail -1)
if [ -z "$exe" ]; then
    cargo bench -p metad --bench vs_etcd --no-run   # show why
    exit 1
fi
# An interrupted run still tears its grid (and the etcd members in it) down.
trap '"$exe" down' INT TERM
"$exe" --bench "$@"
