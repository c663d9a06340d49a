//! `gvsfs rollback` is one metad transaction: a rollback that cannot
//! complete (a name that is a volume in the snapshot is a directory now)
//! changes nothing, not even the volumes it could have restored; once the
//! obstacle is gone, every volume comes back at once, on every node, and
//! `--prune` removes what was created since.

mod common;

use common::{md5, run, sh, wait_mounted};
use devgrid::GridGuard;

#[test]
fn a_rollback_is_all_or_nothing() {
    let grid = GridGuard::up("gvrbk", 3).unwrap();
    wait_mounted(&grid, 3);
    sh(
        &grid,
        1,
        "mkdir -p /gvs/app/sub && head -c 1048576 /dev/urandom > /gvs/app/a.vol \
         && head -c 1048576 /dev/urandom > /gvs/app/sub/b.vol \
         && head -c 65536 /dev/urandom > /gvs/app/z.vol && sync \
         && mkdir /gvs/app/.snapshots/s1",
    );
    let snap = |f: &str| md5(&grid, 1, &format!("/gvs/app/.snapshots/s1/{f}"));
    let (a, b, z) = (snap("a.vol"), snap("sub/b.vol"), snap("z.vol"));

    // Changed since: a.vol rewritten (on node2), z.vol now a directory.
    sh(
        &grid,
        2,
        "head -c 1048576 /dev/urandom | dd of=/gvs/app/a.vol conv=notrunc,fsync status=none \
         && rm /gvs/app/z.vol && mkdir /gvs/app/z.vol",
    );
    let changed = md5(&grid, 2, "/gvs/app/a.vol");
    assert_ne!(changed, a);

    // Refused, with the reason on one line; a.vol (restorable, and first
    // in name order) is untouched on every node.
    let (ok, out) = run(&grid, 3, "gvsfs rollback /gvs/app s1");
    assert!(!ok, "{out}");
    assert!(
        out.trim().lines().count() == 1
            && out.contains("z.vol is a volume in the snapshot but a directory now"),
        "{out}"
    );
    for i in 1..=3 {
        assert_eq!(md5(&grid, i, "/gvs/app/a.vol"), changed, "node{i} a.vol");
    }

    // The obstacle gone, everything comes back in one go.
    sh(&grid, 1, "rmdir /gvs/app/z.vol");
    let out = sh(&grid, 3, "gvsfs rollback /gvs/app s1");
    assert!(out.contains("3 volumes restored"), "{out}");
    for i in 1..=3 {
        assert_eq!(md5(&grid, i, "/gvs/app/a.vol"), a, "node{i} a.vol");
        assert_eq!(md5(&grid, i, "/gvs/app/sub/b.vol"), b, "node{i} sub/b.vol");
        assert_eq!(md5(&grid, i, "/gvs/app/z.vol"), z, "node{i} z.vol");
    }

    // What was created since stays, unless --prune.
    sh(
        &grid,
        2,
        "echo new > /gvs/app/c.vol && mkdir /gvs/app/newdir && echo n > /gvs/app/newdir/d.vol",
    );
    let out = sh(&grid, 1, "gvsfs rollback /gvs/app s1");
    assert!(out.contains("0 entries pruned"), "{out}");
    sh(
        &grid,
        3,
        "test -f /gvs/app/c.vol && test -f /gvs/app/newdir/d.vol",
    );
    let out = sh(&grid, 1, "gvsfs rollback --prune /gvs/app s1");
    assert!(out.contains("3 entries pruned"), "{out}");
    sh(
        &grid,
        3,
        "test ! -e /gvs/app/c.vol && test ! -e /gvs/app/newdir && test -d /gvs/app/.snapshots/s1",
    );
    assert_eq!(md5(&grid, 2, "/gvs/app/a.vol"), a);
}
