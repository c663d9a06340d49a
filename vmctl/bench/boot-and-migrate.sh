#!/bin/sh
# Benchmark (not a test) on a 3-node grid in a box: time from `vmctl app start` to the guest's
# console marker ("VMCTL-BOOT", then "VMCTL-READY"), live-migration downtime as QEMU reports
# it (query-migrate `downtime`), for ROUNDS migrations back and forth, and failover: the VM's
# node cut off the network, to the VM placed on another node and booting there. (The tests
# check that these happen, not how fast: under the suite's load a TCG boot takes what it takes.)
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
dg up --name $GRID --nodes 3 >/dev/null
trap 'dg down --name $GRID >/dev/null 2>&1 || true' EXIT
sh "$HERE/appliance/build.sh" >/dev/null
on node1 sh "$HERE/appliance/build.sh" import /gvs/catalog/tiny >/dev/null
until [ "$(on node1 vmctl node list --json 2>/dev/null | grep -c '"name"')" -ge 3 ]; do sleep 0.5; done

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

# Failover: cut the VM's node; ask another node where the VM runs.
ask=node1; [ "$node" = node1 ] && ask=node2
where() { on "$ask" vmctl vm show bm.x --json 2>/dev/null | sed -n 's/^  "node": "\(node[0-9]*\)".*/\1/p'; }
cut=$node
t0=$(now)
dg cut --name $GRID "$cut"
until n=$(where) && [ -n "$n" ] && [ "$n" != "$cut" ]; do sleep 0.2; done
placed=$(since "$t0")
until on "$n" vmctl vm console bm.x 2>/dev/null | grep -q VMCTL-BOOT; do sleep 0.1; done
echo "failover: $cut cut -> placed on $n ${placed}s, VMCTL-BOOT on its console $(since "$t0")s"
dg heal --name $GRID "$cut"
