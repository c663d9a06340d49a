//! metad keeps accepting writes while its leader is killed twice and a
//! follower is cut off, and afterwards every acknowledged write is on every
//! member's own disk. Three members on node1..node3; the writer is on
//! node4, a client-only node, so it is never the one killed or cut.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use devgrid::GridGuard;
use grid_tests::metad_leader;

/// How long each disruption lasts: long enough for an election (< 1 s)
/// and some writes after it.
const PHASE: Duration = Duration::from_secs(3);

#[test]
fn acknowledged_writes_survive_leader_kills_and_a_cut_follower_on_every_member() {
    let grid = GridGuard::up("mchurn", 4).unwrap();
    let acked: Mutex<BTreeMap<u32, String>> = Mutex::new(BTreeMap::new());
    let stop = AtomicBool::new(false);
    let count = || acked.lock().unwrap().len();

    let mut grown = Vec::new();
    thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let value = format!("v{i}-{}", "x".repeat(200));
                if grid.sh(4, &format!("metad put churn/{i:06} {value}")).ok() {
                    acked.lock().unwrap().insert(i, value);
                }
            }
        });
        thread::sleep(Duration::from_secs(1));

        for _ in 0..2 {
            let leader = metad_leader(&grid, 4);
            let before = count();
            grid.kill(leader, Some("metad")).unwrap();
            thread::sleep(PHASE);
            grown.push(("leader killed", count() - before));
            grid.start(leader, Some("metad")).unwrap();
        }

        let leader = metad_leader(&grid, 4);
        let follower = (1..=3).find(|&i| i != leader).unwrap();
        let before = count();
        grid.cut(follower, false).unwrap();
        thread::sleep(PHASE);
        grown.push(("follower cut", count() - before));
        grid.heal(follower).unwrap();
        thread::sleep(Duration::from_secs(1));

        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    for (phase, n) in &grown {
        assert!(*n > 0, "no write was accepted while the {phase}");
    }

    // Once every member has applied the same index, each one's own disk
    // must hold every acknowledged write.
    metad_leader(&grid, 4);
    let acked = acked.into_inner().unwrap();
    let mut dumps = Vec::new();
    for i in 1..=3 {
        grid.kill(i, Some("metad")).unwrap();
    }
    for i in 1..=3 {
        let r = grid.sh(i, "metad dump --data-dir /var/lib/grid/metad churn/");
        assert!(r.ok(), "node{i}: {r:?}");
        let keys: BTreeMap<String, String> = r
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (n, value) in &acked {
            assert_eq!(
                keys.get(&format!("churn/{n:06}")),
                Some(value),
                "node{i} lacks acknowledged write {n}"
            );
        }
        dumps.push(r.stdout);
    }
    assert_eq!(dumps[0], dumps[1], "members 1 and 2 differ");
    assert_eq!(dumps[0], dumps[2], "members 1 and 3 differ");
}
