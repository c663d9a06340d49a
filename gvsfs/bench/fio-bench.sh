#!/usr/bin/env bash
# gvsfs benchmark (issue 4): the same fio jobs on
#   local   a plain file on this machine's disk,
#   gvs     a /gvs volume of a 3-node grid in a box (2 mirrors), used on node1,
#   gluster a GlusterFS replica-2 volume (two bricks on this machine, FUSE client),
# cold (page cache dropped; gvsfs restarted on every node before the reads)
# and warm (the same job again right after), and prints one table with the
# ratios gvs/local and gvs/gluster.
#
# Run as root from the workspace, after
#   CARGO_TARGET_DIR=/var/tmp/grid-target cargo build --release -p gvsfs -p devgrid -p metad
#   gvsfs/bench/fio-bench.sh
# Environment: BIN (the binaries, default $CARGO_TARGET_DIR/release),
# SEQ_SIZE (bytes of the sequential jobs, default 1G: gvsfs commits a
# writer's buffer every 64 MiB while it goes on writing, so a short file
# shows mostly the last commit), SIZE (the part of the file the random jobs
# use, default 256M), RUNTIME (seconds per random job, default 8),
# ROUNDS (how many times every job runs on every system, default 3; the
# table shows the median and the range: single runs here vary by up to a
# third, GlusterFS's more), KEEP_LOGS=1 keeps the fio JSON in $WORK.
# Takes about 2.5 minutes a round with SIZE=128M RUNTIME=5 (plus installing
# glusterfs-server the first time).
# Not a test: it asserts nothing, it measures.
set -euo pipefail

BIN=${BIN:-${CARGO_TARGET_DIR:-/var/tmp/grid-target}/release}
SEQ_SIZE=${SEQ_SIZE:-1G}
SIZE=${SIZE:-256M}
RUNTIME=${RUNTIME:-8}
ROUNDS=${ROUNDS:-3}
GRID=gvbench
GLVOL=gvbench
WORK=/var/tmp/gvs-fio-bench
GLMNT=$WORK/gluster-mnt
LOCALDIR=$WORK/local
GLUSTERD_PID=$WORK/glusterd.pid

[ "$(id -u)" = 0 ] || { echo "fio-bench: run as root" >&2; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "fio-bench: ROUNDS must be a positive number, not '$ROUNDS'" >&2; exit 1; }
for b in devgrid gvsfs metad; do
    [ -x "$BIN/$b" ] || { echo "fio-bench: $BIN/$b missing: build first (see the header)" >&2; exit 1; }
done
command -v fio >/dev/null || apt-get install -y fio >/dev/null
command -v jq >/dev/null || apt-get install -y jq >/dev/null
if ! command -v glusterd >/dev/null; then
    echo "installing glusterfs-server..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y glusterfs-server >/dev/null
fi

DEVGRID="$BIN/devgrid"
log() { echo "[$(date +%T)] $*" >&2; }
# shellcheck source=gvsfs/bench/grid.sh
. "$(dirname "$0")/grid.sh"

gl_started=0
gl_mount() {
    mount -t glusterfs "$HOSTIP:/$GLVOL" "$GLMNT"
    # The FUSE client this mount started (it outlives umount for a while).
    pgrep -f -- "--volfile-id=/$GLVOL $GLMNT\$" >"$WORK/gluster-client.pid" || true
}
gl_umount() {
    if mountpoint -q "$GLMNT" 2>/dev/null; then umount "$GLMNT"; fi
    for p in $(cat "$WORK/gluster-client.pid" 2>/dev/null); do
        for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill "$p" 2>/dev/null || true
    done
    rm -f "$WORK/gluster-client.pid"
}
cleanup() {
    set +e
    log "cleaning up"
    gl_umount
    if [ "$gl_started" = 1 ]; then
        gluster --mode=script volume stop "$GLVOL" force >/dev/null 2>&1
        gluster --mode=script volume delete "$GLVOL" >/dev/null 2>&1
        # What glusterd started for our volume (bricks, self-heal daemon),
        # by the pids it reported, then glusterd itself.
        for p in $(cat "$WORK/gluster.pids" 2>/dev/null); do kill "$p" 2>/dev/null; done
        [ -f "$GLUSTERD_PID" ] && kill "$(cat "$GLUSTERD_PID")" 2>/dev/null
    fi
    "$DEVGRID" down --name "$GRID" >/dev/null 2>&1
    [ "${KEEP_LOGS:-0}" = 1 ] || rm -rf "$WORK/bricks" "$LOCALDIR"
}
trap cleanup EXIT

rm -rf "$WORK"
mkdir -p "$WORK/json" "$LOCALDIR" "$GLMNT" "$WORK/bricks"

# ---- the three systems ---------------------------------------------------
log "bringing up a 3-node grid"
grid_up

if pgrep -x glusterd >/dev/null; then
    echo "fio-bench: a glusterd runs already; stop it first (this script starts and stops its own)" >&2
    exit 1
fi
log "starting glusterd and a replica-2 volume"
glusterd --pid-file="$GLUSTERD_PID"
gl_started=1
for _ in $(seq 50); do gluster --mode=script volume list >/dev/null 2>&1 && break; sleep 0.2; done
HOSTIP=$(hostname -I | awk '{print $1}')
gluster --mode=script volume create "$GLVOL" replica 2 \
    "$HOSTIP:$WORK/bricks/b1" "$HOSTIP:$WORK/bricks/b2" force >/dev/null
gluster --mode=script volume start "$GLVOL" >/dev/null
gluster --mode=script volume status "$GLVOL" | awk '$NF ~ /^[0-9]+$/ && $(NF-1) ~ /^[YN]$/ {print $NF}' >"$WORK/gluster.pids"
gl_mount

# ---- fio ------------------------------------------------------------------
common="--output-format=json --group_reporting --name=job"
declare -A JOB=(
    [seqwrite]="--size=$SEQ_SIZE --rw=write --bs=1M --ioengine=psync --end_fsync=1"
    [seqread]="--size=$SEQ_SIZE --rw=read --bs=1M --ioengine=psync"
    [randread]="--size=$SIZE --rw=randread --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --runtime=$RUNTIME --time_based"
    [randwrite]="--size=$SIZE --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --runtime=$RUNTIME --time_based --end_fsync=1"
    [randwrite_fsync32]="--size=$SIZE --rw=randwrite --bs=4k --ioengine=libaio --iodepth=16 --direct=1 --fsync=32 --runtime=$RUNTIME --time_based"
)
ORDER="seqwrite seqread randread randwrite randwrite_fsync32"

# run_fio SYSTEM JOB PHASE: runs one job, prints MiB/s (seq) or IOPS (rand).
run_fio() {
    local sys=$1 job=$2 phase=$3 out="$WORK/json/$1.$2.$3.json"
    # shellcheck disable=SC2086
    case $sys in
        local) fio $common ${JOB[$job]} --filename="$LOCALDIR/file" >"$out" ;;
        gvs) gx node1 -- fio $common ${JOB[$job]} --filename=/gvs/bench.vol >"$out" ;;
        gluster) fio $common ${JOB[$job]} --filename="$GLMNT/file" >"$out" ;;
    esac
    case $job in
        seq*) jq '[.jobs[0].read.bw, .jobs[0].write.bw] | add / 1024' "$out" ;;
        *) jq '[.jobs[0].read.iops, .jobs[0].write.iops] | add' "$out" ;;
    esac
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
restart_gvsfs() {
    for i in 1 2 3; do "$DEVGRID" kill --name "$GRID" "node$i" gvsfs >/dev/null; done
    for i in 1 2 3; do "$DEVGRID" start --name "$GRID" "node$i" gvsfs >/dev/null; done
    wait_gvs
}
cold() { # cold SYSTEM JOB
    drop_caches
    case $1 in
        gvs) case $2 in *read*) restart_gvsfs ;; esac ;;
        gluster) gl_umount; drop_caches; gl_mount ;;
    esac
}

# Every round runs every system, in an order that turns by one each round
# (so that none always goes first on a cooled or warmed machine); each cell
# of the table is the median of its rounds.
declare -A R
SYSTEMS=(local gvs gluster)
for round in $(seq "$ROUNDS"); do
    for k in 0 1 2; do
        sys=${SYSTEMS[$(((k + round - 1) % 3))]}
        for job in $ORDER; do
            log "round $round: $sys $job cold"
            cold "$sys" "$job"
            R[$sys.$job.cold]+=" $(run_fio "$sys" "$job" "cold.$round")"
            log "round $round: $sys $job warm"
            R[$sys.$job.warm]+=" $(run_fio "$sys" "$job" "warm.$round")"
        done
    done
done
REPLICAS=$(gx node1 -- getfattr --absolute-names --only-values -n gvs.replicas /gvs/bench.vol 2>/dev/null || echo "?")

# ---- the table --------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
spread() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.0f-%.0f", lo, hi }'; }
echo
echo "fio, seq: $SEQ_SIZE, rand: over $SIZE; gvs: 3-node grid in a box, 2 mirrors ($REPLICAS), fio on node1;"
echo "gluster: replica 2, two bricks on this host, FUSE; seq in MiB/s, rand in IOPS;"
echo "rand: 4 KiB, libaio iodepth 16, O_DIRECT, ${RUNTIME}s; cold = page cache dropped (+ gvsfs restarted for reads)"
echo "median of $ROUNDS rounds (the systems' order turns each round); the lowest and highest below"
printf "\n%-26s %10s %10s %10s %10s %12s\n" "job" "local" "gvs" "gluster" "gvs/local" "gvs/gluster"
for job in $ORDER; do
    for phase in cold warm; do
        l=$(median "${R[local.$job.$phase]}")
        g=$(median "${R[gvs.$job.$phase]}")
        c=$(median "${R[gluster.$job.$phase]}")
        printf "%-26s %10.0f %10.0f %10.0f %10s %12s\n" "$job ($phase)" "$l" "$g" "$c" \
            "$(ratio "$g" "$l")" "$(ratio "$g" "$c")"
    done
done
printf "\n%-26s %14s %14s %14s\n" "job (lowest-highest)" "local" "gvs" "gluster"
for job in $ORDER; do
    for phase in cold warm; do
        printf "%-26s %14s %14s %14s\n" "$job ($phase)" "$(spread "${R[local.$job.$phase]}")" \
            "$(spread "${R[gvs.$job.$phase]}")" "$(spread "${R[gluster.$job.$phase]}")"
    done
done
