//! Garbage collection and scrub: deleting volumes and snapshots shrinks
//! the chunk stores, while chunks a clone still names are kept, also with
//! clones, deletions and collections running at once; a corrupt chunk is
//! replaced from a mirror by the reader and by the scrub (which reports
//! its pass in the event log).

mod common;

use common::{eventually, md5, run, sh, stat, store_bytes, wait_mounted, xattr, GRACE_1S};
use devgrid::GridGuard;

/// Runs one collection round on every node and waits until each did.
fn collect(grid: &GridGuard) {
    let before: Vec<u64> = (1..=3).map(|i| stat(grid, i, "gc_rounds")).collect();
    sh(grid, 1, "setfattr -n gvs.gc.now -v 1 /gvs");
    for i in 1..=3 {
        eventually(
            grid,
            i,
            &format!(
                "getfattr --only-values -n gvs.stats /gvs | head -1 | grep -q ' gc_rounds=\\([{}-9]\\|[0-9][0-9]\\)'",
                before[i - 1] + 1
            ),
            60,
        );
    }
}

fn chunks(grid: &GridGuard) -> u64 {
    (1..=3).map(|i| stat(grid, i, "gc_kept")).sum()
}

fn disk(grid: &GridGuard) -> u64 {
    (1..=3).map(|i| store_bytes(grid, i)).sum()
}

#[test]
fn deleting_volumes_and_snapshots_gives_space_back_and_keeps_what_clones_share() {
    let grid = GridGuard::up("gvgc", 3).unwrap();
    wait_mounted(&grid, 3);
    sh(&grid, 1, "mkdir /gvs/v");
    // A grace period too short to protect in-flight commits is refused...
    let (ok, text) = run(&grid, 2, "setfattr -n gvs.gc.grace_secs -v 1 /gvs");
    assert!(!ok && text.contains("Invalid argument"), "{text}");
    assert_eq!(xattr(&grid, 3, "/gvs", "gvs.gc.grace_secs"), "600");
    // ...but this test wants every chunk collectable at once, to race the
    // collector against clones: it writes the setting into metad itself.
    sh(&grid, 1, GRACE_1S);
    // big: 16 MiB of A; snapshot; its first 8 MiB overwritten with B;
    // keep: a clone of it now (B head, A tail); junk: 16 MiB of its own.
    sh(&grid, 1, "head -c 16777216 /dev/urandom > /tmp/A && head -c 8388608 /dev/urandom > /tmp/B && cp /tmp/A /tmp/keep && dd if=/tmp/B of=/tmp/keep conv=notrunc status=none \
        && dd if=/tmp/A of=/gvs/v/big.vol bs=1M conv=fsync status=none && mkdir /gvs/v/.snapshots/s \
        && dd if=/tmp/B of=/gvs/v/big.vol bs=1M conv=notrunc,fsync status=none && gvsfs clone /gvs/v/big.vol /gvs/keep.vol \
        && head -c 16777216 /dev/urandom | dd of=/gvs/junk.vol bs=1M conv=fsync status=none");
    let keep = md5(&grid, 1, "/tmp/keep");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    collect(&grid);
    let (c0, d0) = (chunks(&grid), disk(&grid));
    // 16 + 8 + 16 MiB of 64 KiB blocks on 2 mirrors, plus maps.
    assert!(c0 >= 2 * 640, "chunks before: {c0}");

    // Deleting junk gives its 2 x 256 chunks back.
    sh(&grid, 2, "rm /gvs/junk.vol");
    collect(&grid);
    let (c1, d1) = (chunks(&grid), disk(&grid));
    assert!(
        c0 - c1 >= 2 * 256,
        "chunks {c0} -> {c1} after deleting junk"
    );
    assert!(
        d0 > d1 + (16 << 20),
        "store bytes {d0} -> {d1} after deleting junk"
    );

    // Deleting big keeps everything (the snapshot and keep name it all);
    // deleting the snapshot too frees A's head, which only it named.
    sh(&grid, 3, "rm /gvs/v/big.vol");
    collect(&grid);
    let c2 = chunks(&grid);
    assert!(
        c1 - c2 < 16,
        "chunks {c1} -> {c2}: a snapshot's chunks were collected"
    );
    assert_eq!(
        md5(&grid, 2, "/gvs/v/.snapshots/s/big.vol"),
        md5(&grid, 1, "/tmp/A")
    );
    sh(&grid, 3, "rmdir /gvs/v/.snapshots/s");
    collect(&grid);
    let (c3, d3) = (chunks(&grid), disk(&grid));
    assert!(
        c2 - c3 >= 2 * 128,
        "chunks {c2} -> {c3} after deleting the snapshot"
    );
    assert!(d1 > d3 + (8 << 20), "store bytes {d1} -> {d3}");
    for i in 1..=3 {
        assert_eq!(
            md5(&grid, i, "/gvs/keep.vol"),
            keep,
            "node{i} reads keep.vol"
        );
    }
    let df = |g: &GridGuard| -> u64 {
        sh(g, 1, "df -B1 --output=used /gvs | tail -1")
            .trim()
            .parse()
            .unwrap_or(0)
    };
    eprintln!(
        "chunks {c0} -> {c1} -> {c2} -> {c3}; store bytes {d0} -> {d1} -> {d3}; df used {}",
        df(&grid)
    );

    // Clones, writes and deletions while every node collects over and
    // over: every clone reads back what it was cloned from.
    let mut gc = grid
        .command(3, "sh")
        .args([
            "-c",
            "for i in $(seq 40); do setfattr -n gvs.gc.now -v $i /gvs; sleep 0.25; done",
        ])
        .spawn()
        .expect("gc loop");
    sh(&grid, 1, "for i in 1 2 3 4 5 6; do head -c 3145728 /dev/urandom > /tmp/k$i && dd if=/tmp/k$i of=/gvs/v/tmp.vol bs=1M conv=fsync status=none && gvsfs clone /gvs/v/tmp.vol /gvs/k$i.vol && mkdir /gvs/v/.snapshots/t$i && rm /gvs/v/tmp.vol && sleep 1; done");
    let _ = gc.wait();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    collect(&grid);
    for i in 1..=6 {
        let want = md5(&grid, 1, &format!("/tmp/k{i}"));
        assert_eq!(md5(&grid, 2, &format!("/gvs/k{i}.vol")), want, "k{i}");
        assert_eq!(
            md5(&grid, 3, &format!("/gvs/v/.snapshots/t{i}/tmp.vol")),
            want,
            "snapshot t{i}"
        );
    }
    assert_eq!(md5(&grid, 3, "/gvs/keep.vol"), keep);
}

#[test]
fn a_corrupt_chunk_is_replaced_from_a_mirror_by_the_reader_and_by_the_scrub() {
    let grid = GridGuard::up("gvscr", 3).unwrap();
    wait_mounted(&grid, 3);
    // Three mirrors: every node holds every chunk.
    sh(&grid, 1, "touch /gvs/r.vol && setfattr -n gvs.mirrors -v 3 /gvs/r.vol && head -c 4194304 /dev/urandom > /tmp/r && dd if=/tmp/r of=/gvs/r.vol bs=1M conv=fsync status=none");
    let want = md5(&grid, 1, "/tmp/r");
    let chunk =
        |i: usize, off: u64| xattr(&grid, i, "/gvs/r.vol", &format!("gvs.debug.chunk.{off}"));

    // Read repair: node2 never read the file; its copy of block 0 rots.
    assert!(chunk(2, 0).ends_with(" intact"));
    sh(&grid, 2, "setfattr -n gvs.debug.corrupt -v 0 /gvs/r.vol");
    assert!(chunk(2, 0).ends_with(" corrupt"), "{}", chunk(2, 0));
    assert_eq!(md5(&grid, 2, "/gvs/r.vol"), want, "the reader got bad data");
    assert!(
        chunk(2, 0).ends_with(" intact"),
        "not repaired: {}",
        chunk(2, 0)
    );
    assert!(stat(&grid, 2, "read_repaired") >= 1);

    // Scrub: node3's copies of two blocks rot; a pass finds and rewrites them.
    sh(&grid, 3, "setfattr -n gvs.debug.corrupt -v 1048576 /gvs/r.vol && setfattr -n gvs.debug.corrupt -v 3000000 /gvs/r.vol");
    assert!(chunk(3, 1048576).ends_with(" corrupt"));
    sh(
        &grid,
        1,
        "setfattr -n gvs.scrub.rate -v 1000 /gvs && setfattr -n gvs.scrub.now -v 1 /gvs",
    );
    assert_eq!(xattr(&grid, 2, "/gvs", "gvs.scrub.rate"), "1000");
    eventually(
        &grid,
        3,
        "getfattr --only-values -n gvs.stats /gvs | head -1 | grep -q ' scrub_repaired=2 '",
        30,
    );
    assert!(stat(&grid, 3, "scrub_bad") >= 2);
    assert!(chunk(3, 1048576).ends_with(" intact"));
    assert!(chunk(3, 3000000).ends_with(" intact"));
    assert_eq!(
        stat(&grid, 3, "read_repaired"),
        0,
        "the scrub, not a reader, repaired"
    );
    assert_eq!(md5(&grid, 3, "/gvs/r.vol"), want);
    // Its report reaches metad (and every node's gvs.stats).
    eventually(
        &grid,
        1,
        "getfattr --only-values -n gvs.stats /gvs | grep -q '^node3: .*scrub_repaired=2'",
        30,
    );
    // And the requested pass is in the grid's event log, with what it fixed.
    let log = eventually(
        &grid,
        1,
        "grep 'node3 *gvs scrub-done .* 2 rewritten' /gvs/.grid/events",
        30,
    );
    assert!(log.contains("2 corrupt"), "{log}");
    assert!(sh(&grid, 2, "cat /gvs/.grid/events").contains("gvs scrub-started"));
    // Bad input: the debug hook wants an offset in data.
    let (ok, text) = common::run(
        &grid,
        1,
        "setfattr -n gvs.debug.corrupt -v 99999999 /gvs/r.vol",
    );
    assert!(!ok && text.contains("Invalid argument"), "{text}");
}
