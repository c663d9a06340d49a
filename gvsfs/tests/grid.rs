//! End-to-end tests of gvsfs on a grid in a box: 3 nodes, metad on each,
//! a real FUSE mount of /gvs in every node's mount namespace.

mod common;

use common::{eventually, md5, run, sh, wait_mounted};
use devgrid::GridGuard;

#[test]
fn written_on_one_node_reads_back_on_the_others_and_namespace_follows() {
    let grid = GridGuard::up("gvrw", 3).unwrap();
    wait_mounted(&grid, 3);
    // 5 MB + a partial block, written with 1 MiB requests, fsynced.
    sh(&grid, 1, "mkdir -p /gvs/apps/shop && head -c 5300000 /dev/urandom > /tmp/r && dd if=/tmp/r of=/gvs/apps/shop/db.vol bs=1M conv=fsync status=none");
    let want = md5(&grid, 1, "/tmp/r");
    assert_eq!(md5(&grid, 1, "/gvs/apps/shop/db.vol"), want);
    for i in [2, 3] {
        assert_eq!(
            md5(&grid, i, "/gvs/apps/shop/db.vol"),
            want,
            "node{i} reads other bytes"
        );
    }
    // Partial overwrite in the middle, from another node (the lease moves).
    sh(
        &grid,
        2,
        "printf hello | dd of=/gvs/apps/shop/db.vol bs=1 seek=70000 conv=notrunc,fsync status=none",
    );
    sh(
        &grid,
        1,
        "printf hello | dd of=/tmp/r bs=1 seek=70000 conv=notrunc status=none",
    );
    let want = md5(&grid, 1, "/tmp/r");
    for i in [1, 2, 3] {
        assert_eq!(
            md5(&grid, i, "/gvs/apps/shop/db.vol"),
            want,
            "node{i} after the overwrite"
        );
    }
    // mkdir, rename, unlink on one node show on the others within a second.
    sh(&grid, 2, "mkdir /gvs/apps/web && touch /gvs/apps/web/a");
    for i in [1, 3] {
        eventually(&grid, i, "test -f /gvs/apps/web/a", 1);
    }
    sh(&grid, 3, "mv /gvs/apps/web/a /gvs/apps/web/b");
    for i in [1, 2] {
        eventually(
            &grid,
            i,
            "test -f /gvs/apps/web/b && ! test -e /gvs/apps/web/a",
            1,
        );
    }
    sh(&grid, 1, "rm /gvs/apps/web/b && rmdir /gvs/apps/web");
    for i in [2, 3] {
        eventually(&grid, i, "! test -e /gvs/apps/web", 1);
    }
    // Rename replacing an existing file is atomic and keeps the content.
    sh(&grid, 1, "echo old > /gvs/apps/x && cp /gvs/apps/shop/db.vol /gvs/apps/y && mv /gvs/apps/y /gvs/apps/x");
    assert_eq!(md5(&grid, 3, "/gvs/apps/x"), want);
    // Sparse: a 20 GiB volume takes no space; holes read as zeros; SEEK_DATA.
    sh(&grid, 1, "truncate -s 20G /gvs/apps/big.vol && printf data | dd of=/gvs/apps/big.vol bs=1 seek=10737418240 conv=notrunc,fsync status=none");
    let du = sh(&grid, 2, "du -k /gvs/apps/big.vol");
    assert!(
        du.starts_with("64\t"),
        "du of a sparse volume with one block: {du}"
    );
    assert_eq!(
        sh(
            &grid,
            3,
            "dd if=/gvs/apps/big.vol bs=1 skip=10737418238 count=6 status=none | od -An -c"
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["\\0", "\\0", "d", "a", "t", "a"]
    );
    let seek = sh(&grid, 2, "python3 -c \"import os; f=os.open('/gvs/apps/big.vol', os.O_RDONLY); print(os.lseek(f, 0, os.SEEK_DATA), os.lseek(f, 10737418240, os.SEEK_HOLE))\"");
    assert_eq!(seek.trim(), "10737418240 10737483776");
    // Shrink and grow: the tail past the shrink reads as zeros after growing.
    sh(
        &grid,
        1,
        "truncate -s 100000 /gvs/apps/x && truncate -s 200000 /gvs/apps/x",
    );
    assert_eq!(sh(&grid, 2, "stat -c %s /gvs/apps/x").trim(), "200000");
    assert_eq!(
        sh(
            &grid,
            2,
            "dd if=/gvs/apps/x bs=100000 skip=1 count=1 status=none | tr -d '\\000' | wc -c"
        )
        .trim(),
        "0"
    );
    // chmod, chown, utimens, user xattrs, health xattrs.
    sh(&grid, 1, "chmod 640 /gvs/apps/x && chown 1000:1000 /gvs/apps/x && touch -d 2020-01-02T03:04:05Z /gvs/apps/x && setfattr -n user.owner -v alice /gvs/apps/x");
    assert_eq!(
        sh(&grid, 3, "stat -c '%a %u %g %Y' /gvs/apps/x").trim(),
        "640 1000 1000 1577934245"
    );
    let attrs = sh(&grid, 2, "getfattr -d -m - /gvs/apps/x");
    for want in [
        "user.owner=\"alice\"",
        "gvs.mirrors=\"2\"",
        "gvs.state=\"in-sync\"",
        "gvs.block_size=\"65536\"",
        "gvs.replicas=\"node",
    ] {
        assert!(attrs.contains(want), "missing {want} in:\n{attrs}");
    }
    // Permissions are enforced for non-root users.
    let (ok, _) = run(
        &grid,
        2,
        "setpriv --reuid=1001 --regid=1001 --clear-groups cat /gvs/apps/x",
    );
    assert!(!ok, "uid 1001 read a 0640 file of uid 1000");
    // Bad input gets clear errors.
    let (ok, text) = run(&grid, 1, "mknod /gvs/apps/dev b 8 0");
    assert!(!ok && text.contains("not supported"), "{text}");
    let (ok, text) = run(&grid, 1, "mkfifo /gvs/apps/fifo");
    assert!(!ok && text.contains("not supported"), "{text}");
    sh(&grid, 1, "touch /gvs/apps/new.vol");
    for (name, value) in [
        ("gvs.block_size", "3000"),
        ("gvs.mirrors", "0"),
        ("gvs.mirrors", "4"),
    ] {
        let (ok, text) = run(
            &grid,
            1,
            &format!("setfattr -n {name} -v {value} /gvs/apps/new.vol"),
        );
        assert!(
            !ok && text.contains("Invalid argument"),
            "{name}={value}: {text}"
        );
    }
    sh(&grid, 1, "setfattr -n gvs.block_size -v 1048576 /gvs/apps/new.vol && setfattr -n gvs.mirrors -v 3 /gvs/apps/new.vol");
    assert!(
        sh(
            &grid,
            3,
            "getfattr --absolute-names -n gvs.replicas /gvs/apps/new.vol"
        )
        .contains("node1,node2,node3")
            || sh(
                &grid,
                3,
                "getfattr -n gvs.replicas --only-values /gvs/apps/new.vol"
            )
            .split(',')
            .count()
                == 3
    );
    let (ok, text) = run(
        &grid,
        1,
        "dd if=/dev/zero of=/gvs/apps/new.vol bs=1 count=1 seek=17592186044416 status=none",
    );
    assert!(
        !ok && text.contains("too large"),
        "writing past the maximum size: {text}"
    );
}

#[test]
fn a_mirror_killed_during_writes_leaves_the_volume_degraded_and_data_intact_and_restarts_keep_it() {
    let grid = GridGuard::up("gvkl", 3).unwrap();
    wait_mounted(&grid, 3);
    sh(&grid, 1, "head -c 3000000 /dev/urandom > /tmp/a && head -c 3000000 /dev/urandom > /tmp/b && cat /tmp/a /tmp/b > /tmp/ab");
    sh(
        &grid,
        1,
        "dd if=/tmp/a of=/gvs/v.vol bs=1M conv=fsync status=none",
    );
    let replicas = sh(
        &grid,
        1,
        "getfattr --absolute-names --only-values -n gvs.replicas /gvs/v.vol",
    );
    let victim: usize = replicas
        .split(',')
        .filter_map(|n| n.trim().strip_prefix("node")?.parse().ok())
        .find(|&n| n != 1)
        .expect("a replica besides node1");
    grid.kill(victim, Some("gvsfs")).unwrap();
    // Writes go on, to the live replica.
    sh(&grid, 1, "dd if=/tmp/b of=/gvs/v.vol bs=1M seek=3000000 oflag=seek_bytes conv=notrunc,fsync status=none");
    assert_eq!(
        sh(
            &grid,
            1,
            "getfattr --absolute-names --only-values -n gvs.state /gvs/v.vol"
        ),
        "degraded"
    );
    let want = md5(&grid, 1, "/tmp/ab");
    // A clone of the degraded volume is degraded too, and is repaired
    // with it once the mirror is back (below).
    sh(&grid, 1, "gvsfs clone /gvs/v.vol /gvs/c.vol");
    let state = |i: usize, f: &str| {
        sh(
            &grid,
            i,
            &format!("getfattr --absolute-names --only-values -n gvs.state {f}"),
        )
    };
    assert_eq!(state(1, "/gvs/c.vol"), "degraded");
    let reader = if victim == 2 { 3 } else { 2 };
    assert_eq!(md5(&grid, 1, "/gvs/v.vol"), want);
    assert_eq!(md5(&grid, reader, "/gvs/v.vol"), want);
    // Every daemon on every node killed, then restarted: data intact.
    for i in 1..=3 {
        grid.kill(i, None).unwrap();
    }
    for i in 1..=3 {
        grid.start(i, None).unwrap();
    }
    wait_mounted(&grid, 3);
    for i in 1..=3 {
        assert_eq!(
            md5(&grid, i, "/gvs/v.vol"),
            want,
            "node{i} after the restart"
        );
    }
    // The returning mirror is brought up to date from gvs/missing/: the
    // volume is in sync again and its own copy of the late data is there.
    eventually(
        &grid,
        victim,
        "test \"$(getfattr --absolute-names --only-values -n gvs.state /gvs/v.vol)\" = in-sync",
        30,
    );
    assert!(sh(
        &grid,
        victim,
        "getfattr --absolute-names --only-values -n gvs.debug.chunk.5000000 /gvs/v.vol"
    )
    .ends_with(" intact"));
    assert_eq!(md5(&grid, victim, "/gvs/v.vol"), want);
    eventually(
        &grid,
        victim,
        "test \"$(getfattr --absolute-names --only-values -n gvs.state /gvs/c.vol)\" = in-sync",
        30,
    );
    assert_eq!(state(victim, "/gvs/c.vol"), "in-sync");
    assert_eq!(md5(&grid, victim, "/gvs/c.vol"), want);
}
