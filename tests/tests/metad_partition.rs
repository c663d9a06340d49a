//! metad under network partitions, on a grid in a box: three members on
//! node1..node3 and a client-only node4, driven through the `metad` CLI as
//! an operator would.

use std::time::Duration;

use devgrid::wait_for;
use devgrid::GridGuard;
use grid_tests::{leader_node, metad_leader, metad_status};

#[test]
fn the_minority_side_accepts_no_write_and_catches_up_after_heal() {
    let grid = GridGuard::up("mpart", 4).unwrap();
    let old = metad_leader(&grid, 4);
    let only_old = format!("metad --endpoints node{old}:2380 --timeout-ms 2000");

    // The leader is cut off: it is the minority now.
    grid.cut(old, false).unwrap();
    let w = grid.sh(old, &format!("{only_old} put part minority"));
    assert!(!w.ok(), "the minority accepted a write: {w:?}");
    assert!(w.stderr.starts_with("metad: "), "{w:?}");
    assert_eq!(w.stderr.lines().count(), 1, "{w:?}");

    // The majority elects a new leader and goes on.
    wait_for(
        Duration::from_secs(15),
        "a write on the majority side",
        || grid.sh(4, "metad put part majority").ok().then_some(()),
    );
    let new = metad_leader_excluding(&grid, old);
    assert_ne!(new, old);

    // The minority serves no stale read either: reads are linearizable.
    let r = grid.sh(old, &format!("{only_old} get part"));
    assert!(!r.ok(), "the minority served a read: {r:?}");

    grid.heal(old).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the healed member to catch up",
        || {
            let r = grid.sh(old, &format!("{only_old} get part"));
            (r.ok() && r.stdout.trim() == "majority").then_some(())
        },
    );
    let r = grid.sh(4, "metad get part");
    assert_eq!(r.stdout.trim(), "majority");
}

/// The leader as seen by the two members other than `cut`.
fn metad_leader_excluding(grid: &GridGuard, cut: usize) -> usize {
    let others: Vec<String> = (1..=3)
        .filter(|&i| i != cut)
        .map(|i| format!("node{i}:2380"))
        .collect();
    wait_for(
        Duration::from_secs(15),
        "a leader on the majority side",
        || {
            let v = metad_status(grid, 4, &format!("--endpoints {}", others.join(",")))?;
            leader_node(&v).filter(|&leader| leader != cut)
        },
    )
}

#[test]
fn a_watch_on_a_member_that_is_cut_off_resumes_elsewhere_and_misses_nothing() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let grid = GridGuard::up("mwcut", 4).unwrap();
    metad_leader(&grid, 4);
    // The watch starts on node1 (listed first): the member about to be cut.
    // It starts from a known revision, so that no put can race ahead of it.
    let r = grid.sh(4, "metad put wcut-start x");
    let rev: u64 = r
        .stdout
        .trim()
        .trim_start_matches("revision ")
        .parse()
        .unwrap();
    let from = (rev + 1).to_string();
    let mut watch = grid
        .command(4, "metad")
        .args(["--endpoints", "node1:2380,node2:2380,node3:2380"])
        .args(["watch", "wcut/", "--from", &from])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Lines arrive on a channel so that a stuck watch fails the test
    // instead of hanging it.
    let (tx, lines) = std::sync::mpsc::channel();
    let out = BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let put = |n: usize| {
        let r = grid.sh(4, &format!("metad put wcut/{n:03} v{n}"));
        assert!(r.ok(), "{r:?}");
    };
    for n in 0..5 {
        put(n);
    }
    grid.cut(1, false).unwrap();
    for n in 5..15 {
        put(n);
    }
    grid.heal(1).unwrap();
    for n in 15..20 {
        put(n);
    }
    let seen: Vec<String> = (0..20)
        .map_while(|_| lines.recv_timeout(Duration::from_secs(30)).ok())
        .map(|l| l.split(' ').nth(2).unwrap_or_default().to_string())
        .collect();
    let _ = watch.kill();
    let _ = watch.wait();
    let want: Vec<String> = (0..20).map(|n| format!("wcut/{n:03}")).collect();
    assert_eq!(seen, want, "the watch missed or repeated events");
}
