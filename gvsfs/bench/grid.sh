# Sourced by the gvsfs benchmarks: the grid in a box they run on.
# Needs DEVGRID (the devgrid binary) and GRID (the grid's name).

# gx NODE -- CMD...: runs CMD in a node of the grid.
gx() { "$DEVGRID" exec --name "$GRID" "$@"; }

# wait_gvs: waits until /gvs answers on every node.
wait_gvs() {
    for n in node1 node2 node3; do
        for _ in $(seq 300); do
            gx "$n" -- sh -c 'mountpoint -q /gvs && ls /gvs >/dev/null' 2>/dev/null && break
            sleep 0.2
        done
    done
}

# grid_up: a fresh 3-node grid with /gvs mounted on every node.
grid_up() {
    "$DEVGRID" down --name "$GRID" >/dev/null 2>&1 || true
    "$DEVGRID" up --name "$GRID" --nodes 3 >/dev/null
    wait_gvs
}
