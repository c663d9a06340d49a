#!/bin/sh
# Benchmark (not a test) on a 2-node grid in a box: time from `vmctl app start` to the guest's
# console marker ("VMCTL-BOOT", then "VMCTL-READY"), and live-migration downtime as QEMU reports
# it (query-migrate `downtime`), for ROUNDS migrations back and forth.
#
#   export CARGO_TARGET_DIR=/var/tmp/grid-target
#   cargo build --release -p vmctl -p gvsfs -p metad -p lcmd -p devgrid
#   sudo -E sh vmctl/bench/boot-and-migrate.sh [ROUNDS]      # as root, like the tests
set -eu
ROUNDS=${1:-3}
BIN=${CARGO_TARGET_DIR:-target}/release
GRID=vmbench
HERE=$(cd "$(dirname "$0")/.." && pwd)
dg() { "$BIN/devgrid" "$@"; }
on() { n=$1; shift; dg exec --name $GRID "$n" -- "$@"; }
now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{printf "%.2f", $1 - $2}'; }

dg down --name $GRID >/dev/null 2>&1 || true
dg up --name $GRID --nodes 2 >/dev/null
trap 'dg down --name $GRID >/dev/null 2>&1 || true' EXIT
sh "$HERE/appliance/build.sh" >/dev/null
on node1 sh "$HERE/appliance/build.sh" import /gvs/catalog/tiny >/dev/null
until [ "$(on node1 vmctl node list --json 2>/dev/null | grep -c '"name"')" -ge 2 ]; do sleep 0.5; done

desc=$(mktemp /tmp/vmbench.XXXXXX.toml)
printf 'name = "bm"\n[components.x]\nimage = "/gvs/catalog/tiny"\nmem = "128M"\n' >"$desc"
on node1 vmctl app create "$desc" >/dev/null
rm -f "$desc"

t0=$(now)
on node1 vmctl app start bm >/dev/null
placed=$(since "$t0")
node=$(on node1 vmctl vm show bm.x --json | sed -n 's/^  "node": "\(node[0-9]*\)".*/\1/p')
until on "$node" vmctl vm console bm.x 2>/dev/null | grep -q VMCTL-BOOT; do sleep 0.1; done
boot=$(since "$t0")
until on "$node" vmctl vm console bm.x 2>/dev/null | grep -q VMCTL-READY; do sleep 0.1; done
ready=$(since "$t0")
echo "app start -> placed ${placed}s, VMCTL-BOOT on the console ${boot}s, VMCTL-READY ${ready}s (on $node)"

i=1
while [ "$i" -le "$ROUNDS" ]; do
    to=node1; [ "$node" = node1 ] && to=node2
    sleep 3
    t0=$(now)
    out=$(on node1 vmctl vm migrate bm.x "$to")
    echo "migration $i: $out; command took $(since "$t0")s"
    node=$to
    i=$((i + 1))
done
