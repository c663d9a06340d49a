#!/bin/bash
# The README's first command: installs what is missing, then brings up a
# one-node grid on this machine (grid "dev") and shows it working.
# Run again, it reinstalls nothing and finds the grid already up.
# Stop it with: devgrid down
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/install.sh"

if devgrid status --name dev >/dev/null 2>&1; then
    echo "up.sh: grid dev is already up"
    devgrid status --name dev
else
    devgrid up --name dev --nodes 1
fi

echo
echo "== node1, seen from inside =="
devgrid exec --name dev node1 -- sh -c 'echo "hostname: $(hostname)"; ip -br -4 addr show eth0'
echo
echo "The grid is up. Stop it with: devgrid down"
