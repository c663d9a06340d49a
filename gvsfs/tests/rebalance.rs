//! Rebalance: with `gvsfs rebalance start`, a node fuller than the rest
//! moves mirrors to an emptier node (here one that joined after the data
//! was written): the new node copies at the rebalance rate, the replica
//! set switches, and the old node's collector gives the space back; the
//! data reads back byte for byte everywhere. The new node is killed in
//! the middle of its copy: nothing is lost, and the move completes once
//! it is back.

mod common;

use common::{eventually, md5, run, sh, store_bytes, wait_mounted, xattr};
use devgrid::GridGuard;

const VOLS: usize = 4;

fn vols() -> Vec<String> {
    (1..=VOLS).map(|i| format!("/gvs/rb/v{i}.vol")).collect()
}

/// Each volume's replicas, as read on node 1.
fn replicas(grid: &GridGuard) -> Vec<String> {
    vols()
        .iter()
        .map(|v| xattr(grid, 1, v, "gvs.replicas"))
        .collect()
}

#[test]
fn a_rebalance_moves_mirrors_to_an_emptier_node_and_survives_its_death() {
    let grid = GridGuard::up("gvrbl", 3).unwrap();
    wait_mounted(&grid, 3);
    // node3 joins later: every volume is written on node1 and node2.
    let nodes = |n: usize| {
        format!(
            "[ \"$(getfattr --only-values -n gvs.rebalance.status /gvs | grep -c '^node[0-9]*:')\" = {n} ]"
        )
    };
    eventually(&grid, 1, &nodes(3), 300);
    grid.kill(3, Some("gvsfs")).unwrap();
    // Its registration (and published fill) goes with its lease.
    eventually(&grid, 1, &nodes(2), 300);
    sh(
        &grid,
        1,
        &format!(
            "mkdir /gvs/rb && for f in {}; do head -c 8388608 /dev/urandom > $f; done && sync",
            vols().join(" ")
        ),
    );
    let sums: Vec<String> = vols().iter().map(|v| md5(&grid, 1, v)).collect();
    let before = replicas(&grid);
    assert!(
        before
            .iter()
            .all(|r| r == "node1,node2" || r == "node2,node1"),
        "{before:?}"
    );
    grid.start(3, Some("gvsfs")).unwrap();
    wait_mounted(&grid, 3);
    eventually(
        &grid,
        1,
        "getfattr --only-values -n gvs.rebalance.status /gvs | grep -q '^node3'",
        30,
    );
    let full_before = store_bytes(&grid, 1) + store_bytes(&grid, 2);

    // Bad input: one line on stderr, non-zero exit; nothing set.
    let (ok, text) = run(&grid, 2, "gvsfs rebalance start --threshold 50");
    assert!(!ok && text.trim().lines().count() == 1, "{text}");
    assert!(text.contains("at least 100"), "{text}");
    let (ok, text) = run(&grid, 2, "setfattr -n gvs.rebalance.threshold -v 50 /gvs");
    assert!(!ok && text.contains("Invalid argument"), "{text}");
    assert_eq!(xattr(&grid, 3, "/gvs", "gvs.rebalance.threshold"), "0");

    // 1 MiB/s: an 8 MiB copy takes 8 s (two batches of 4 MiB), long
    // enough to kill node3 in the middle of it.
    // Below the floor `gvs.gc.grace_secs` takes: written into metad directly.
    sh(&grid, 1, common::GRACE_1S);
    sh(&grid, 2, "gvsfs rebalance start --threshold 110 --rate 1");
    assert_eq!(xattr(&grid, 1, "/gvs", "gvs.rebalance.threshold"), "110");
    assert_eq!(xattr(&grid, 3, "/gvs", "gvs.rebalance.rate_mb"), "1");
    let moving = eventually(
        &grid,
        1,
        &format!(
            "for f in {}; do getfattr --absolute-names --only-values -n gvs.replicas $f | grep -q node3 && {{ echo $f; exit 0; }}; done; exit 1",
            vols().join(" ")
        ),
        300,
    );
    let moving = moving.trim().to_string();
    eventually(
        &grid,
        1,
        "grep -q ' gvs rebalance-started' /gvs/.grid/events",
        300,
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    grid.kill(3, Some("gvsfs")).unwrap();
    // Mid-move: the old mirrors are still replicas and serve every byte.
    let r = xattr(&grid, 1, &moving, "gvs.replicas");
    assert!(r.contains("node1") && r.contains("node2"), "{moving}: {r}");
    for i in 1..=2 {
        for (v, want) in vols().iter().zip(&sums) {
            assert_eq!(&md5(&grid, i, v), want, "node{i} {v} while node3 is down");
        }
    }
    let status = sh(&grid, 1, "gvsfs rebalance status");
    assert!(
        status.contains("rebalance: on") && status.contains("copying"),
        "{status}"
    );

    // node3 comes back, finishes its copy; the mover switches and frees.
    grid.start(3, Some("gvsfs")).unwrap();
    wait_mounted(&grid, 3);
    let settled = format!(
        "for f in {}; do r=$(getfattr --absolute-names --only-values -n gvs.replicas $f); \
         s=$(getfattr --absolute-names --only-values -n gvs.state $f); \
         [ $(echo $r | tr ',' '\\n' | wc -l) = 2 ] && [ \"$s\" = in-sync ] || {{ echo \"$f $r $s\"; exit 1; }}; done; \
         getfattr --only-values -n gvs.rebalance.status /gvs | grep -q 'copying\\|switching' && exit 1; exit 0",
        vols().join(" ")
    );
    eventually(&grid, 1, &settled, 600);
    let after = replicas(&grid);
    // The interrupted move completed.
    let i = vols().iter().position(|v| *v == moving).unwrap();
    assert!(after[i].contains("node3"), "{moving}: {after:?}");
    // The old mirrors gave the moved volumes' space back (8 MiB each).
    let moved = after.iter().filter(|r| r.contains("node3")).count() as u64;
    // Collection rounds are driven (`gvs.gc.now`), not waited for; the
    // bound only catches a collector that never gives the space back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let mut round = 0;
    let full_after = loop {
        let now = store_bytes(&grid, 1) + store_bytes(&grid, 2);
        if now + moved * (7 << 20) <= full_before || std::time::Instant::now() > deadline {
            break now;
        }
        round += 1;
        sh(&grid, 1, &format!("setfattr -n gvs.gc.now -v {round} /gvs"));
        std::thread::sleep(std::time::Duration::from_secs(1));
    };
    eprintln!(
        "replicas {before:?} -> {after:?}; node1+node2 stores {full_before} -> {full_after} bytes"
    );
    assert!(
        full_after + moved * (7 << 20) <= full_before,
        "{moved} volumes moved, but node1+node2 went from {full_before} to {full_after} bytes"
    );
    for i in 1..=3 {
        for (v, want) in vols().iter().zip(&sums) {
            assert_eq!(&md5(&grid, i, v), want, "node{i} {v} after the rebalance");
        }
    }
    // The story in the grid's event log: the mover's decision and switch,
    // and node3's throttled copy.
    let log = sh(&grid, 2, "cat /gvs/.grid/events");
    for l in log.lines().filter(|l| l.contains(" gvs rebalance-")) {
        eprintln!("{l}");
    }
    for kind in [
        "rebalance-moving",
        "rebalance-started",
        "rebalance-done",
        "rebalance-moved",
    ] {
        assert!(
            log.contains(&format!(" gvs {kind}")),
            "no {kind} in:\n{log}"
        );
    }
    // node3's copy started again after its restart.
    let copies = log
        .lines()
        .filter(|l| l.contains(" node3 ") && l.contains(" gvs rebalance-started"))
        .count();
    assert!(copies >= 2, "node3's copy did not resume:\n{log}");
    sh(&grid, 1, "gvsfs rebalance stop");
    assert!(sh(&grid, 3, "gvsfs rebalance status").starts_with("rebalance: off"));
}
