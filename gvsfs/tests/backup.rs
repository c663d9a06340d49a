//! Backup and restore: `gvsfs export` and `gvsfs import` round-trip a
//! sparse volume and keep it sparse, `qemu-img convert` writes onto a
//! /gvs file, and `gvsfs rollback` brings a directory back to a snapshot.

mod common;

use common::{md5, run, sh, wait_mounted};
use devgrid::GridGuard;

const GIB: u64 = 1 << 30;

/// `stat -c %s` of `path` on node `i`.
fn size(grid: &GridGuard, i: usize, path: &str) -> u64 {
    sh(grid, i, &format!("stat -c %s {path}"))
        .trim()
        .parse()
        .unwrap()
}

/// Allocated KiB (`du -k`) of `path` on node `i`.
fn du_kib(grid: &GridGuard, i: usize, path: &str) -> u64 {
    sh(grid, i, &format!("du -k {path}"))
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Asserts that a command fails with exactly one line on stderr that
/// contains `needle`.
fn fails(grid: &GridGuard, i: usize, script: &str, needle: &str) {
    let (ok, text) = run(grid, i, script);
    assert!(!ok, "`{script}` succeeded:\n{text}");
    assert!(
        text.contains(needle) && text.trim().lines().count() == 1,
        "`{script}`: wanted one line with {needle:?}, got:\n{text}"
    );
}

#[test]
fn export_import_qemu_img_and_rollback() {
    let grid = GridGuard::up("gvbak", 3).unwrap();
    wait_mounted(&grid, 3);

    // A 1 GiB sparse volume with 6 MiB of data in three places.
    sh(
        &grid,
        1,
        "mkdir -p /gvs/bk && truncate -s 1G /gvs/bk/disk.vol \
         && head -c 3145728 /dev/urandom | dd of=/gvs/bk/disk.vol bs=1M conv=notrunc,fsync status=none \
         && head -c 2097152 /dev/urandom | dd of=/gvs/bk/disk.vol bs=1M seek=300 conv=notrunc,fsync status=none \
         && head -c 1048576 /dev/urandom | dd of=/gvs/bk/disk.vol bs=1M seek=1023 conv=notrunc,fsync status=none",
    );
    let vol_md5 = md5(&grid, 1, "/gvs/bk/disk.vol");
    let vol_du = du_kib(&grid, 2, "/gvs/bk/disk.vol");

    // Export on another node: same size, same bytes, and as sparse as the
    // volume (6 MiB of data, not 1 GiB).
    sh(&grid, 2, "gvsfs export /gvs/bk/disk.vol -o /tmp/disk.raw");
    assert_eq!(size(&grid, 2, "/tmp/disk.raw"), GIB);
    assert_eq!(md5(&grid, 2, "/tmp/disk.raw"), vol_md5);
    let exp_du = du_kib(&grid, 2, "/tmp/disk.raw");
    assert!(
        (6 * 1024..=8 * 1024).contains(&exp_du),
        "exported file allocates {exp_du} KiB for 6 MiB of data (volume: {vol_du} KiB)"
    );
    assert!(
        vol_du <= 16 * 1024,
        "the volume allocates {vol_du} KiB for 6 MiB of data"
    );
    // To stdout: a pipe gets the holes as zeros; a file stays sparse.
    let piped = sh(&grid, 2, "gvsfs export /gvs/bk/disk.vol | md5sum");
    assert!(piped.starts_with(&vol_md5), "piped export: {piped}");
    sh(&grid, 2, "gvsfs export /gvs/bk/disk.vol > /tmp/disk2.raw");
    assert_eq!(md5(&grid, 2, "/tmp/disk2.raw"), vol_md5);
    assert!(du_kib(&grid, 2, "/tmp/disk2.raw") <= 8 * 1024);

    // Import as a new volume; read it on a third node.
    sh(&grid, 2, "gvsfs import /tmp/disk.raw /gvs/bk/copy.vol");
    assert_eq!(size(&grid, 3, "/gvs/bk/copy.vol"), GIB);
    assert_eq!(md5(&grid, 3, "/gvs/bk/copy.vol"), vol_md5);
    let copy_du = du_kib(&grid, 3, "/gvs/bk/copy.vol");
    assert!(
        copy_du <= 16 * 1024,
        "imported volume allocates {copy_du} KiB"
    );

    // Bad input: one line, non-zero exit.
    fails(
        &grid,
        2,
        "gvsfs import /tmp/nope.raw /gvs/bk/x.vol",
        "No such file",
    );
    fails(
        &grid,
        2,
        "gvsfs import /tmp/disk.raw /tmp/x.vol",
        "not on a gvs mount",
    );
    fails(
        &grid,
        2,
        "gvsfs import /tmp/disk.raw /gvs/bk/copy.vol",
        "exists",
    );
    fails(
        &grid,
        2,
        "gvsfs export /gvs/bk/nope.vol -o /tmp/n.raw",
        "No such file",
    );
    fails(
        &grid,
        2,
        "gvsfs export /gvs/bk -o /tmp/n.raw",
        "not a volume",
    );
    // --force replaces it.
    sh(&grid, 2, "head -c 65536 /dev/urandom > /tmp/small.raw && gvsfs import --force /tmp/small.raw /gvs/bk/copy.vol");
    assert_eq!(size(&grid, 3, "/gvs/bk/copy.vol"), 65536);
    assert_eq!(
        md5(&grid, 3, "/gvs/bk/copy.vol"),
        md5(&grid, 2, "/tmp/small.raw")
    );

    // Other formats come in through qemu-img convert onto a /gvs file.
    sh(
        &grid,
        2,
        "qemu-img convert -f raw -O qcow2 /tmp/disk.raw /tmp/disk.qcow2 \
         && qemu-img convert -f qcow2 -O raw /tmp/disk.qcow2 /gvs/bk/fromq.vol",
    );
    assert_eq!(size(&grid, 3, "/gvs/bk/fromq.vol"), GIB);
    assert_eq!(md5(&grid, 3, "/gvs/bk/fromq.vol"), vol_md5);

    // Rollback: write, snapshot, modify (overwrite, delete, create), roll back.
    sh(
        &grid,
        1,
        "mkdir -p /gvs/app/sub \
         && head -c 2097152 /dev/urandom > /gvs/app/a.vol \
         && head -c 1048576 /dev/urandom > /gvs/app/sub/b.vol && sync \
         && mkdir /gvs/app/.snapshots/s1",
    );
    let a = md5(&grid, 1, "/gvs/app/.snapshots/s1/a.vol");
    let b = md5(&grid, 1, "/gvs/app/.snapshots/s1/sub/b.vol");
    sh(
        &grid,
        2,
        "head -c 65536 /dev/zero | dd of=/gvs/app/a.vol bs=64k seek=3 conv=notrunc,fsync status=none \
         && truncate -s 3M /gvs/app/a.vol && rm /gvs/app/sub/b.vol \
         && echo new > /gvs/app/c.vol && mkdir /gvs/app/newdir && echo n > /gvs/app/newdir/d.vol",
    );
    assert_ne!(md5(&grid, 3, "/gvs/app/a.vol"), a);
    let out = sh(&grid, 3, "gvsfs rollback /gvs/app s1");
    assert!(out.contains("2 volumes restored"), "{out}");
    for i in 1..=3 {
        assert_eq!(md5(&grid, i, "/gvs/app/a.vol"), a, "node{i} a.vol");
        assert_eq!(md5(&grid, i, "/gvs/app/sub/b.vol"), b, "node{i} sub/b.vol");
    }
    assert_eq!(size(&grid, 1, "/gvs/app/a.vol"), 2 << 20);
    // Volumes created after the snapshot stay, unless --prune.
    sh(
        &grid,
        1,
        "test -f /gvs/app/c.vol && test -f /gvs/app/newdir/d.vol",
    );
    let out = sh(&grid, 3, "gvsfs rollback --prune /gvs/app s1");
    assert!(out.contains("3 entries pruned"), "{out}");
    sh(
        &grid,
        1,
        "test ! -e /gvs/app/c.vol && test ! -e /gvs/app/newdir && test -d /gvs/app/.snapshots/s1",
    );
    assert_eq!(md5(&grid, 1, "/gvs/app/a.vol"), a);
    fails(&grid, 2, "gvsfs rollback /gvs/app nope", "no snapshot");
    fails(&grid, 2, "gvsfs rollback /gvs/nodir s1", "not a directory");
}
