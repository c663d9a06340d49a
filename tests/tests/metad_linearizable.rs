//! Concurrent compare-and-swap, writes and reads from several clients on a
//! few keys, through the `metad` CLI on a grid in a box, with the leader
//! killed and then the new leader cut off in the middle: the recorded
//! history must check as linearizable (metad's checker rejects known
//! non-linearizable histories in its own unit tests).

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use devgrid::GridGuard;
use grid_tests::metad_leader;
use metad::linearizability::{check, HistOp, RegOp};
use rand::Rng;

const CLIENTS: usize = 3;
const KEYS: usize = 2;

#[test]
fn concurrent_cas_through_a_leader_kill_and_a_partition_is_linearizable() {
    let grid = GridGuard::up("mlin", 4).unwrap();
    let start = Instant::now();
    let micros = || start.elapsed().as_micros() as u64;
    let history = Mutex::new(Vec::<HistOp>::new());
    let run_until = Duration::from_secs(12);

    thread::scope(|s| {
        for c in 0..CLIENTS {
            let (grid, history) = (&grid, &history);
            s.spawn(move || {
                let mut rng = rand::rng();
                let mut n = 0;
                while start.elapsed() < run_until {
                    n += 1;
                    let key = format!("lin/k{}", rng.random_range(0..KEYS));
                    let mine = format!("c{c}-{n}");
                    let (script, kind) = match rng.random_range(0..3) {
                        0 => (format!("metad --timeout-ms 2000 get {key}"), 0),
                        1 => (format!("metad --timeout-ms 2000 put {key} {mine}"), 1),
                        _ => {
                            // Swap from a value this client last read, or
                            // from "absent": both succeed and fail often.
                            let seen = grid.sh(4, &format!("metad --timeout-ms 2000 get {key}"));
                            let expect = if seen.ok() {
                                format!("--expect {}", seen.stdout.trim())
                            } else {
                                String::new()
                            };
                            (
                                format!("metad --timeout-ms 2000 cas {key} {mine} {expect}"),
                                2,
                            )
                        }
                    };
                    let call = micros();
                    let r = grid.sh(4, &script);
                    let done = Some(micros());
                    let (op, ret) = match kind {
                        0 if r.ok() => (RegOp::Read(Some(r.stdout.trim().into())), done),
                        0 if r.stderr.contains("not found") => (RegOp::Read(None), done),
                        0 => (RegOp::Read(None), None),
                        1 => (
                            RegOp::Write(mine.into_bytes()),
                            r.ok().then_some(done).flatten(),
                        ),
                        _ => {
                            let expected = script
                                .split("--expect ")
                                .nth(1)
                                .map(|v| v.trim().as_bytes().to_vec());
                            let ok = r.ok();
                            let known = ok || r.code == Some(2);
                            let op = RegOp::Cas {
                                expected,
                                new: mine.into_bytes(),
                                ok,
                            };
                            (op, known.then_some(done).flatten())
                        }
                    };
                    history.lock().unwrap().push(HistOp {
                        key: key.into_bytes(),
                        call,
                        ret,
                        op,
                    });
                }
            });
        }

        thread::sleep(Duration::from_secs(2));
        let leader = metad_leader(&grid, 4);
        grid.kill(leader, Some("metad")).unwrap();
        thread::sleep(Duration::from_secs(2));
        grid.start(leader, Some("metad")).unwrap();
        thread::sleep(Duration::from_secs(2));
        let leader = metad_leader(&grid, 4);
        grid.cut(leader, false).unwrap();
        thread::sleep(Duration::from_secs(3));
        grid.heal(leader).unwrap();
    });

    let history = history.into_inner().unwrap();
    let swapped = history
        .iter()
        .filter(|h| h.ret.is_some() && matches!(h.op, RegOp::Cas { ok: true, .. }))
        .count();
    let refused = history
        .iter()
        .filter(|h| h.ret.is_some() && matches!(h.op, RegOp::Cas { ok: false, .. }))
        .count();
    assert!(history.len() > 50, "too few operations: {}", history.len());
    assert!(
        swapped > 0 && refused > 0,
        "{swapped} swapped, {refused} refused"
    );
    check(&history).unwrap();
}
