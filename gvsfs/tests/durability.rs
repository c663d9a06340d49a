//! Durability of acknowledged writes (invariant 1) on a grid in a box:
//! what an fsync acknowledged is on every mirror's disk, also when it went
//! there as a delta (a 4 KiB write into a committed block), as a chain of
//! them past its depth limit (one block patched and fsynced 20 times), or
//! by the store's flush path (a commit of 8 MiB or more skips RocksDB's
//! log).

mod common;

use common::{md5, sh, wait_mounted};
use devgrid::GridGuard;

#[test]
fn fsynced_writes_survive_sigkill_and_each_mirror_alone_serves_them() {
    let grid = GridGuard::up("gvdur", 3).unwrap();
    wait_mounted(&grid, 3);
    // 16 MiB in one commit (the flush path), then 4 KiB writes into
    // committed blocks, each acknowledged by its own fsync (deltas), 20
    // of them into block 5 (a chain deeper than the store keeps).
    sh(
        &grid,
        1,
        "head -c 16777216 /dev/urandom > /tmp/want && \
         dd if=/tmp/want of=/gvs/v.vol bs=16M conv=fsync status=none && \
         for off in 3 17 18 1000 2049 4095 $(seq 80 95) 81 90 83 94; do \
           head -c 4096 /dev/urandom > /tmp/p && \
           dd if=/tmp/p of=/tmp/want bs=4k seek=$off conv=notrunc status=none && \
           dd if=/tmp/p of=/gvs/v.vol bs=4k seek=$off conv=notrunc,fsync status=none; \
         done",
    );
    let want = md5(&grid, 1, "/tmp/want");
    // Right after the last fsync: every node's gvsfs killed, restarted.
    for i in 1..=3 {
        grid.kill(i, Some("gvsfs")).unwrap();
    }
    for i in 1..=3 {
        grid.start(i, Some("gvsfs")).unwrap();
    }
    wait_mounted(&grid, 3);
    for i in 1..=3 {
        assert_eq!(md5(&grid, i, "/gvs/v.vol"), want, "node{i} after SIGKILL");
    }
    // Each mirror alone: the other one down, read where it holds the
    // chunks itself (freshly restarted, so nothing is cached).
    let replicas: Vec<usize> = sh(
        &grid,
        1,
        "getfattr --absolute-names --only-values -n gvs.replicas /gvs/v.vol",
    )
    .split(',')
    .filter_map(|n| n.trim().strip_prefix("node")?.parse().ok())
    .collect();
    assert_eq!(replicas.len(), 2, "two mirrors: {replicas:?}");
    for (down, up) in [(replicas[0], replicas[1]), (replicas[1], replicas[0])] {
        grid.kill(down, Some("gvsfs")).unwrap();
        grid.kill(up, Some("gvsfs")).unwrap();
        grid.start(up, Some("gvsfs")).unwrap();
        wait_mounted_on(&grid, up);
        assert_eq!(
            md5(&grid, up, "/gvs/v.vol"),
            want,
            "node{up} alone (node{down} down)"
        );
        grid.start(down, Some("gvsfs")).unwrap();
        wait_mounted_on(&grid, down);
    }
}

fn wait_mounted_on(grid: &GridGuard, i: usize) {
    common::eventually(
        grid,
        i,
        "grep -q ' /gvs fuse' /proc/mounts && ls /gvs >/dev/null",
        90,
    );
}
