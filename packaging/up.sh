#!/bin/bash
# The README's first command: installs what is missing, brings up a one-node
# grid that is this machine itself (grid "dev": metad, gvsfs, lcmd and the
# vmctl agent in the host's namespaces, /gvs mounted here), then creates and
# starts the demo application: two tiny appliances (QEMU guests), each
# booting from its own clone of the catalog image in /gvs, wired by one
# lcmd connection (web reaches db:80 by name; db:8080 is dropped).
# Run again, it reinstalls nothing, finds the grid and the demo up, and
# shows them. Stop it with: devgrid down   (data stays in /var/lib/grid)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
"$here/install.sh"

if devgrid status --name dev >/dev/null 2>&1; then
    echo "up.sh: grid dev is already up"
    devgrid status --name dev
else
    devgrid up --host --name dev
fi

echo
echo "== metad =="
metad status
echo
echo "== /gvs =="
df -h /gvs

echo
echo "== the catalog: the tiny appliance =="
# Copies only what changed (nothing on a second run).
"$repo/vmctl/appliance/build.sh" import /gvs/catalog/tiny >/dev/null
ls -ls /gvs/catalog/tiny
getfattr -d -m gvs /gvs/catalog/tiny/root.vol

echo
echo "== the demo application =="
# A demo made before guest NICs existed has no connection on lcmd: made again.
if vmctl app show demo >/dev/null 2>&1 && ! lcmd appliance list | grep -q '^demo/web'; then
    echo "up.sh: the demo predates guest NICs; making it again"
    vmctl app destroy demo --force
fi
vmctl app show demo >/dev/null 2>&1 || vmctl app create "$here/demo/demo.toml"
vmctl app start demo
# VM $1's console since its last boot (the file keeps earlier boots).
this_boot() {
    vmctl vm console "$1" 2>/dev/null | tr -d '\r' |
        awk '/VMCTL-BOOT/ { b = "" } { b = b $0 "\n" } END { printf "%s", b }'
}
# The first line of VM $1's console since its last boot matching $2,
# waited for up to 180 s.
console_line() {
    for _ in $(seq 1 180); do
        this_boot "$1" | grep -E -m1 "$2" && return 0
        sleep 1
    done
    echo "(no \"$2\" on $1's console after 180 s)"
}
for vm in demo.web demo.db; do
    console_line "$vm" "VMCTL-(NET|ERROR)" >/dev/null
    echo "-- $vm's console --"
    this_boot "$vm" | grep -E "VMCTL-(BOOT|READY|NET|ERROR)|earlier boots" || true
done
echo
echo "== the connection web.db -> db.http (tcp/80), seen from web =="
console_line demo.web "VMCTL-REACH db:80 ok"
console_line demo.web "VMCTL-REACH db:8080 blocked"
lcmd conn list
echo "-- lcmd's drops (vmctl events) --"
vmctl events | grep -E " lcm +drop " | tail -n 2 || true
echo
vmctl vm list
echo
echo "The grid is up: /gvs is mounted here and the demo runs (vmctl vm list)."
echo "Stop it all with: devgrid down"
