//! Durability of acknowledged writes (invariant 1) on a grid in a box:
//! what an fsync acknowledged is on every mirror's disk, also when it went
//! there as a delta (a 4 KiB write into a committed block), as a chain of
//! them past its depth limit (one block patched and fsynced 20 times), or
//! by the store's flush path (a commit of 8 MiB or more skips RocksDB's
//! log); and what an fsync acknowledged with fewer copies than mirrors
//! tells (`gvs.state`, the event log), or refuses (`gvs.min_copies`).

mod common;

use common::{eventually, md5, run, sh, wait_mounted, xattr};
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

/// What the min_copies test expects the volume to hold (its own name:
/// the other test of this file, run alongside, keeps `/tmp/want`).
const WANT: &str = "/tmp/dumin.want";

/// Writes 1 MiB of `byte` at `mib` MiB into `file` on `node` and into
/// [`WANT`] there, fsynced; returns (success, output).
fn write_fsync(grid: &GridGuard, node: usize, file: &str, byte: char, mib: u64) -> (bool, String) {
    let one = format!("head -c 1048576 /dev/zero | tr '\\0' {byte}");
    let dd = format!("bs=1M seek={mib} conv=notrunc,fsync status=none");
    let (ok, out) = run(grid, node, &format!("{one} | dd of={file} {dd}"));
    if ok {
        sh(grid, node, &format!("{one} | dd of={WANT} {dd}"));
    }
    (ok, out)
}

#[test]
fn an_fsync_with_a_mirror_down_is_seen_as_degraded_or_refused_below_min_copies() {
    let grid = GridGuard::up("dumin", 3).unwrap();
    wait_mounted(&grid, 3);
    let file = "/gvs/m.vol";
    sh(&grid, 1, &format!("touch {file}"));
    let replicas: Vec<usize> = xattr(&grid, 1, file, "gvs.replicas")
        .split(',')
        .filter_map(|n| n.trim().strip_prefix("node")?.parse().ok())
        .collect();
    let (w, down) = (replicas[0], replicas[1]);
    let other = (1..=3).find(|i| !replicas.contains(i)).unwrap();
    sh(&grid, w, &format!("rm -f {WANT}"));
    let (ok, out) = write_fsync(&grid, w, file, 'A', 0);
    assert!(ok, "{out}");
    // A mirror down: the fsync is acknowledged with one copy, and says so.
    grid.kill(down, Some("gvsfs")).unwrap();
    let (ok, out) = write_fsync(&grid, w, file, 'B', 1);
    assert!(ok, "an fsync with one mirror down: {out}");
    let state = format!("getfattr --absolute-names --only-values -n gvs.state {file}");
    eventually(&grid, other, &format!("test \"$({state})\" = degraded"), 30);
    eventually(
        &grid,
        other,
        "grep ' gvs degraded .*/m.vol' /gvs/.grid/events",
        60,
    );
    // Asked for two copies, it refuses to acknowledge one.
    for bad in ["0", "3", "two"] {
        let (ok, out) = run(
            &grid,
            other,
            &format!("setfattr -n gvs.min_copies -v {bad} {file}"),
        );
        assert!(!ok && out.contains("Invalid argument"), "{bad}: {out}");
    }
    sh(
        &grid,
        other,
        &format!("setfattr -n gvs.min_copies -v 2 {file}"),
    );
    eventually(
        &grid,
        w,
        &format!("getfattr -n gvs.min_copies {file} | grep -q '\"2\"'"),
        30,
    );
    let (ok, out) = write_fsync(&grid, w, file, 'C', 2);
    assert!(
        !ok && out.contains("Input/output error"),
        "one copy of two acknowledged: {out}"
    );
    // The mirror back, the same write is acknowledged, with both copies.
    grid.start(down, Some("gvsfs")).unwrap();
    wait_mounted(&grid, 3);
    eventually(
        &grid,
        w,
        &format!(
            "head -c 1048576 /dev/zero | tr '\\0' C | dd of={file} bs=1M seek=2 conv=notrunc,fsync status=none"
        ),
        120,
    );
    sh(
        &grid,
        w,
        &format!(
            "head -c 1048576 /dev/zero | tr '\\0' C | dd of={WANT} bs=1M seek=2 conv=notrunc status=none"
        ),
    );
    let want = md5(&grid, w, WANT);
    for i in [other, down] {
        // Reads may follow the last commit by a moment on other nodes.
        eventually(
            &grid,
            i,
            &format!("test $(stat -c %s {file}) = 3145728"),
            30,
        );
        assert_eq!(md5(&grid, i, file), want, "node{i} reads other bytes");
    }
}
