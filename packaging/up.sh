#!/bin/bash
# The README's first command: installs what is missing, brings up a one-node
# grid that is this machine itself (grid "dev": metad, gvsfs, lcmd and the
# vmctl agent in the host's namespaces, /gvs mounted here), then creates and
# starts the demo application: two tiny appliances (QEMU guests), each
# booting from its own clone of the catalog image in /gvs.
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
if [ ! -f /gvs/catalog/tiny/image.toml ]; then
    "$repo/vmctl/appliance/build.sh" import /gvs/catalog/tiny
fi
ls -ls /gvs/catalog/tiny
getfattr -d -m gvs /gvs/catalog/tiny/root.vol

echo
echo "== the demo application =="
vmctl app show demo >/dev/null 2>&1 || vmctl app create "$here/demo/demo.toml"
vmctl app start demo
for vm in demo.web demo.db; do
    for _ in $(seq 1 180); do
        vmctl vm console "$vm" 2>/dev/null | grep -q VMCTL-READY && break
        sleep 1
    done
    echo "-- $vm's console --"
    vmctl vm console "$vm" | tr -d '\r' | grep -E "VMCTL|earlier boots" || true
done
vmctl vm list
echo
echo "The grid is up: /gvs is mounted here and the demo runs (vmctl vm list)."
echo "Stop it all with: devgrid down"
