#!/bin/bash
# The README's first command: installs what is missing, then brings up a
# one-node grid that is this machine itself (grid "dev": metad and gvsfs in
# the host's namespaces, /gvs mounted here) and shows it working.
# Run again, it reinstalls nothing and finds the grid already up.
# Stop it with: devgrid down   (the node's data stays in /var/lib/grid)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
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
mkdir -p /gvs/demo
head -c 1M /dev/urandom > /gvs/demo/hello.vol
truncate -s 1G /gvs/demo/hello.vol
ls -ls /gvs/demo
getfattr -d -m gvs /gvs/demo/hello.vol
echo
echo "The grid is up: /gvs is mounted here. Stop it with: devgrid down"
