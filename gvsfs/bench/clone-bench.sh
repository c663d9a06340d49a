#!/usr/bin/env bash
# gvsfs volume-store benchmark (issue 5), on a 3-node grid in a box:
#   - clone (`gvsfs clone`) and snapshot (`mkdir DIR/.snapshots/NAME`)
#     latency for sparse volumes of 1, 16 and 256 GiB with 1 MiB written in
#     every GiB, side by side with the same file on the local disk: a qcow2
#     overlay on it (`qemu-img create -b`) and a full sparse copy
#     (`cp --sparse=always`);
#   - repair throughput: a mirror of a volume killed, the time from the
#     repair's start (`gvs.state` reads `repairing`) to `in-sync`, with the
#     throttle off;
#   - tar of a snapshot of TAR_GIB GiB of data against tar of the same data
#     on the local disk.
# Prints one table. Not a test: it asserts nothing, it measures.
#
# Run as root from the workspace, after
#   CARGO_TARGET_DIR=/var/tmp/grid-target cargo build --release -p gvsfs -p devgrid -p metad
#   gvsfs/bench/clone-bench.sh
# Environment: BIN (the binaries, default $CARGO_TARGET_DIR/release),
# SIZES (GiB, default "1 16 256"), ROUNDS (clones and snapshots timed per
# size, the median printed; default 5), REPAIR_MIB (default 1024), TAR_GIB
# (default 4). About 2 minutes.
set -euo pipefail

BIN=${BIN:-${CARGO_TARGET_DIR:-/var/tmp/grid-target}/release}
SIZES=${SIZES:-1 16 256}
ROUNDS=${ROUNDS:-5}
REPAIR_MIB=${REPAIR_MIB:-1024}
TAR_GIB=${TAR_GIB:-4}
GRID=gvclone
WORK=/var/tmp/gvs-clone-bench

[ "$(id -u)" = 0 ] || { echo "clone-bench: run as root" >&2; exit 1; }
for b in devgrid gvsfs metad; do
    [ -x "$BIN/$b" ] || { echo "clone-bench: $BIN/$b missing: build first (see the header)" >&2; exit 1; }
done
command -v qemu-img >/dev/null || apt-get install -y qemu-utils >/dev/null
command -v getfattr >/dev/null || apt-get install -y attr >/dev/null

DEVGRID="$BIN/devgrid"
log() { echo "[$(date +%T)] $*" >&2; }
# shellcheck source=gvsfs/bench/grid.sh
. "$(dirname "$0")/grid.sh"
cleanup() {
    set +e
    "$DEVGRID" down --name "$GRID" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

# us CMD...: runs CMD here, prints its wall time in microseconds.
us() {
    local s e
    s=$(date +%s%N)
    "$@" >/dev/null
    e=$(date +%s%N)
    echo $(((e - s) / 1000))
}
# node_us NODE SCRIPT: the same, for a shell script run inside a node.
node_us() {
    gx "$1" -- sh -c "s=\$(date +%s%N); $2 >/dev/null; e=\$(date +%s%N); echo \$(((e - s) / 1000))"
}
ms() { awk -v u="$1" 'BEGIN { printf "%.1f", u / 1000 }'; }
# median: the median of the numbers on stdin.
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# node_median NODE SCRIPT: SCRIPT run inside NODE $ROUNDS times, with $i
# set to the round; prints the median wall time in microseconds.
node_median() {
    gx "$1" -- sh -c "for i in \$(seq $ROUNDS); do s=\$(date +%s%N); $2 >/dev/null; e=\$(date +%s%N); \
        echo \$(((e - s) / 1000)); done" | median
}

rm -rf "$WORK"
mkdir -p "$WORK"
log "bringing up a 3-node grid"
grid_up

# ---- clone and snapshot -------------------------------------------------
# A sparse volume of $1 GiB with 1 MiB of random data at every GiB, written
# by $2 (a shell prefix: "gx node1 --" or nothing) at path $3.
fill() {
    local gib=$1 path=$3
    $2 sh -c "truncate -s ${gib}G $path && for i in \$(seq 0 $((gib - 1))); do \
        head -c 1048576 /dev/urandom | dd of=$path bs=1M seek=\$((i * 1024)) conv=notrunc status=none; done && sync"
}
declare -A R
for g in $SIZES; do
    log "clone and snapshot: ${g} GiB"
    gx node1 -- mkdir -p "/gvs/cb$g"
    fill "$g" "gx node1 --" "/gvs/cb$g/vol"
    R[clone.$g]=$(node_median node1 "gvsfs clone /gvs/cb$g/vol /gvs/cb$g/clone\$i")
    R[snap.$g]=$(node_median node1 "mkdir /gvs/cb$g/.snapshots/s\$i")
    fill "$g" "" "$WORK/local$g.raw"
    R[qemu.$g]=$(for i in $(seq "$ROUNDS"); do
        us qemu-img create -q -f qcow2 -b "$WORK/local$g.raw" -F raw "$WORK/overlay$g.$i.qcow2"
    done | median)
    R[copy.$g]=$(for i in $(seq "$ROUNDS"); do
        us cp --sparse=always "$WORK/local$g.raw" "$WORK/copy$g.$i.raw"
        rm -f "$WORK/copy$g.$i.raw"
    done | median)
    rm -f "$WORK/local$g.raw" "$WORK"/overlay"$g".*.qcow2
    gx node1 -- sh -c "rmdir /gvs/cb$g/.snapshots/s*; rm -rf /gvs/cb$g"
done

# ---- repair -------------------------------------------------------------
log "repair: ${REPAIR_MIB} MiB volume, one mirror killed"
gx node1 -- setfattr -n gvs.repair.grace_secs -v 2 /gvs
gx node1 -- setfattr -n gvs.repair.rate_mb -v 0 /gvs
gx node1 -- sh -c "head -c $((REPAIR_MIB << 20)) /dev/urandom > /tmp/cb.r && dd if=/tmp/cb.r of=/gvs/repair.vol bs=1M conv=fsync status=none && rm /tmp/cb.r"
state() { gx node1 -- getfattr --absolute-names --only-values -n gvs.state /gvs/repair.vol 2>/dev/null || true; }
replicas=$(gx node1 -- getfattr --absolute-names --only-values -n gvs.replicas /gvs/repair.vol)
victim=$(echo "$replicas" | tr ',' '\n' | grep -v '^node1$' | head -1)
"$DEVGRID" kill --name "$GRID" "$victim" gvsfs >/dev/null
repair_us=-
for _ in $(seq 600); do [ "$(state)" = repairing ] && break; sleep 0.1; done
if [ "$(state)" = repairing ]; then
    start=$(date +%s%N)
    for _ in $(seq 3000); do [ "$(state)" = in-sync ] && break; sleep 0.1; done
    [ "$(state)" = in-sync ] && repair_us=$((($(date +%s%N) - start) / 1000))
fi
"$DEVGRID" start --name "$GRID" "$victim" gvsfs >/dev/null

# ---- tar ----------------------------------------------------------------
log "tar: ${TAR_GIB} GiB in 4 volumes, snapshot against local files"
gx node1 -- mkdir -p /gvs/tar
per=$((TAR_GIB * 256))
for i in 1 2 3 4; do
    head -c $((per << 20)) /dev/urandom >"$WORK/tar-src.$i"
    gx node1 -- dd if="$WORK/tar-src.$i" of="/gvs/tar/v$i" bs=1M conv=fsync status=none
done
mkdir -p "$WORK/local-tar"
mv "$WORK"/tar-src.* "$WORK/local-tar/"
gx node1 -- mkdir /gvs/tar/.snapshots/t
sync
echo 3 >/proc/sys/vm/drop_caches
tar_gvs=$(node_us node1 "tar -cSf - -C /gvs/tar/.snapshots/t . | cat >/dev/null")
tar_local=$(us sh -c "tar -cSf - -C $WORK/local-tar . | cat >/dev/null")

# ---- the table --------------------------------------------------------------
echo
echo "sparse volumes with 1 MiB written in every GiB; gvs: 3-node grid in a box, 2 mirrors;"
echo "local: the same file on this machine's disk; times in ms, wall, including the command's start"
echo "(median of $ROUNDS; gvs: clones of one volume, snapshots of its directory)"
printf "\n%-10s %12s %12s %16s %16s\n" "size" "gvs clone" "gvs snapshot" "qemu-img -b" "cp --sparse"
for g in $SIZES; do
    printf "%-10s %12s %12s %16s %16s\n" "${g} GiB" "$(ms "${R[clone.$g]}")" "$(ms "${R[snap.$g]}")" \
        "$(ms "${R[qemu.$g]}")" "$(ms "${R[copy.$g]}")"
done
echo
if [ "$repair_us" = - ]; then
    echo "repair: did not finish (${REPAIR_MIB} MiB)"
else
    awk -v mib="$REPAIR_MIB" -v u="$repair_us" 'BEGIN {
        printf "repair: %d MiB re-mirrored in %.1f s = %.2f GiB/min (throttle off)\n", mib, u / 1e6, mib / 1024 / (u / 6e7) }'
fi
awk -v g="$TAR_GIB" -v a="$tar_gvs" -v b="$tar_local" 'BEGIN {
    printf "tar -S of %d GiB, page cache dropped: snapshot %.1f s, local %.1f s, gvs/local time %.2fx\n", g, a / 1e6, b / 1e6, a / b }'
