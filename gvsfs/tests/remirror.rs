//! Self-healing: a node whose gvsfs stays down past the grace period has
//! its mirrors rebuilt on the other nodes, until every volume has its
//! mirror count again, in sync, with its data intact; throttled to
//! `gvs.repair.rate_mb`, `gvs.state` reading `repairing` meanwhile, and
//! reported in the grid's event log. When it comes back, it is no longer
//! a replica of those volumes: its collector frees their chunks, and the
//! volumes read back intact from their new mirrors.

mod common;

use common::{md5, sh, stat, store_bytes, wait_mounted, xattr};
use devgrid::GridGuard;

#[test]
fn a_node_down_past_the_grace_period_has_its_mirrors_rebuilt_elsewhere() {
    let grid = GridGuard::up("gvrmr", 3).unwrap();
    wait_mounted(&grid, 3);
    sh(&grid, 1, "setfattr -n gvs.repair.grace_secs -v 3 /gvs");
    assert_eq!(xattr(&grid, 2, "/gvs", "gvs.repair.grace_secs"), "3");
    // 1 MiB/s: each 2 MiB volume takes seconds to copy, so `repairing`
    // can be seen.
    assert_eq!(xattr(&grid, 3, "/gvs", "gvs.repair.rate_mb"), "50");
    sh(&grid, 2, "setfattr -n gvs.repair.rate_mb -v 1 /gvs");
    assert_eq!(xattr(&grid, 1, "/gvs", "gvs.repair.rate_mb"), "1");
    sh(
        &grid,
        1,
        "mkdir -p /gvs/rm && for i in 1 2 3 4 5 6; do head -c 2097152 /dev/urandom > /gvs/rm/v$i.vol; done \
         && touch /gvs/rm/v7.vol && setfattr -n gvs.mirrors -v 3 /gvs/rm/v7.vol \
         && head -c 2097152 /dev/urandom > /gvs/rm/v7.vol && sync",
    );
    // v7 is on every node: re-mirroring only drops the gone one.
    let vols: Vec<String> = (1..=7).map(|i| format!("/gvs/rm/v{i}.vol")).collect();
    let mut sums: Vec<String> = vols.iter().map(|v| md5(&grid, 1, v)).collect();
    // The victim: a replica of the first volume other than node1.
    let replicas = xattr(&grid, 1, &vols[0], "gvs.replicas");
    let victim: usize = replicas
        .split(',')
        .filter_map(|n| n.trim().strip_prefix("node")?.parse().ok())
        .find(|&n| n != 1)
        .expect("a replica besides node1");
    let held = vols
        .iter()
        .filter(|v| {
            xattr(&grid, 1, v, "gvs.replicas")
                .split(',')
                .any(|n| n == format!("node{victim}"))
        })
        .count();
    let others: Vec<usize> = (1..=3).filter(|&i| i != victim).collect();
    let before: u64 = others
        .iter()
        .map(|&i| stat(&grid, i, "repair_chunks"))
        .sum();

    grid.kill(victim, Some("gvsfs")).unwrap();
    // A write the victim misses leaves v7 degraded; once the victim is
    // dropped, the others hold everything: v7 is in sync again.
    sh(
        &grid,
        others[0],
        "head -c 65536 /dev/urandom | dd of=/gvs/rm/v7.vol conv=notrunc,fsync status=none",
    );
    sums[6] = md5(&grid, others[0], &vols[6]);
    // While the new mirrors copy, a volume reads `repairing`.
    let seen = common::eventually(
        &grid,
        others[0],
        &format!(
            "for f in {}; do s=$(getfattr --absolute-names --only-values -n gvs.state $f); \
             [ \"$s\" = repairing ] && {{ echo $f; exit 0; }}; done; sleep 0.2; exit 1",
            vols.join(" ")
        ),
        90,
    );
    assert!(seen.contains("/gvs/rm/v"), "{seen}");
    let check = format!(
        "for f in {}; do r=$(getfattr --absolute-names --only-values -n gvs.replicas $f); \
         s=$(getfattr --absolute-names --only-values -n gvs.state $f); \
         case \",$r,\" in *,node{victim},*) echo \"$f $r $s\"; exit 1;; esac; \
         [ $(echo $r | tr ',' '\\n' | wc -l) = 2 ] && [ \"$s\" = in-sync ] || {{ echo \"$f $r $s\"; exit 1; }}; done",
        vols.join(" ")
    );
    common::eventually(&grid, others[0], &check, 90);

    // The new replicas copied the chunks; every volume reads back intact
    // on both live nodes.
    let after: u64 = others
        .iter()
        .map(|&i| stat(&grid, i, "repair_chunks"))
        .sum();
    assert!(
        after > before,
        "{held} volumes lost a mirror but no chunk was copied"
    );
    for &i in &others {
        for (v, want) in vols.iter().zip(&sums) {
            assert_eq!(&md5(&grid, i, v), want, "node{i} {v}");
        }
    }

    // The event log tells the story, on any node: the re-mirroring of the
    // victim, then each new mirror's repair with what it copied.
    let log = sh(&grid, others[1], "cat /gvs/.grid/events");
    assert!(
        log.lines()
            .any(|l| l.contains(" gvs remirror-started") && l.contains(&format!("node{victim}"))),
        "{log}"
    );
    let done: Vec<serde_json::Value> = sh(&grid, others[0], "vmctl events --json")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["source"] == "gvs" && e["kind"] == "repair-done")
        .collect();
    let copied: u64 = done.iter().filter_map(|e| e["bytes"].as_u64()).sum();
    assert!(copied >= 2 << 20, "{done:?}");
    assert!(
        done.iter().all(|e| e["volumes"].as_u64() >= Some(1)),
        "{done:?}"
    );

    // The victim comes back holding its old copies of the volumes it
    // lost; a collection round frees them (2 MiB of data each: its store
    // shrinks by at least 1.5 MiB a volume).
    // Below the floor `gvs.gc.grace_secs` takes: written into metad directly.
    sh(&grid, 1, common::GRACE_1S);
    let held_bytes = store_bytes(&grid, victim);
    grid.start(victim, Some("gvsfs")).unwrap();
    wait_mounted(&grid, 3);
    let rounds = stat(&grid, victim, "gc_rounds");
    sh(&grid, victim, "setfattr -n gvs.gc.now -v 1 /gvs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stat(&grid, victim, "gc_rounds") <= rounds {
        assert!(
            std::time::Instant::now() < deadline,
            "node{victim} ran no collection round"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let freed_bytes = store_bytes(&grid, victim);
    eprintln!(
        "node{victim} held {held} volumes: store {held_bytes} -> {freed_bytes} bytes, {} chunks deleted",
        stat(&grid, victim, "gc_deleted")
    );
    assert!(
        held_bytes >= freed_bytes + held as u64 * (3 << 19),
        "node{victim}'s store went from {held_bytes} to {freed_bytes} bytes after a collection"
    );
    for i in 1..=3 {
        for (v, want) in vols.iter().zip(&sums) {
            assert_eq!(&md5(&grid, i, v), want, "node{i} {v} after the collection");
        }
    }
}
