//! A nemesis test of `/gvs` in the spirit of Jepsen, bounded in time. On a
//! 3-node grid, one writer per volume (two volumes) writes numbered,
//! self-describing records (`grid_tests::records`), each with `pwrite` and
//! `fsync`, and notes which ones were acknowledged; meanwhile a nemesis
//! SIGKILLs a random gvsfs, metad or whole node and restarts it, cuts a
//! node off (both ways or only its outgoing traffic) and heals it, and
//! moves a volume's writer to another node (whose first write takes the
//! write lease over, after which the old writer tries once more with its
//! fenced handle). Once every fault is healed and every volume is in sync,
//! each node reads each volume: every acknowledged record must be there,
//! byte for byte, and no slot may hold anything but zeros or its own whole
//! record (a record whose write failed may be missing, not torn).
//!
//! `NEMESIS_SECS` (default 75) bounds the faults; `NEMESIS_SEED` replays
//! a run's sequence of faults (the timing of the writes around them is the
//! machine's). `tests/nemesis.sh --minutes N` runs a longer one.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use devgrid::{wait_for, Grid, GridGuard};
use grid_tests::metad_status;
use grid_tests::records::{check, encode, Outcome, Verdict, REC};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 3;
/// The volumes written, one writer each.
const VOLUMES: [&str; 2] = ["/gvs/nemesis-a.vol", "/gvs/nemesis-b.vol"];
/// The bound of every wait: long past any fault's recovery, so that it
/// only catches a hang.
const HANG: Duration = Duration::from_secs(180);
/// How long a writer pauses after a failed record, so that an unmounted
/// `/gvs` is not hammered while its gvsfs restarts.
const BACKOFF: Duration = Duration::from_millis(100);

/// A writer inside a node: for each line `w OFFSET HEX` it writes the
/// bytes at OFFSET and fsyncs, answering `ok` or the failed call and the
/// errno's name (`fsync EIO`). After
/// an error it drops its handle and opens the file anew for the next
/// record (a restarted gvsfs is a new mount; a fenced handle stays fenced).
const WRITER: &str = r#"
import errno, os, sys
path, fd = sys.argv[1], None
for line in sys.stdin:
    cmd = line.split()
    call = "open"
    try:
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        call = "pwrite"
        os.pwrite(fd, bytes.fromhex(cmd[2]), int(cmd[1]))
        call = "fsync"
        os.fsync(fd)
        print("ok", flush=True)
    except OSError as e:
        print(call, errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
            fd = None
"#;

/// A [`WRITER`] process on a node.
struct Writer {
    node: usize,
    child: Child,
    stdin: ChildStdin,
    /// Its answers, read on their own thread so that a write stuck in the
    /// kernel fails the test instead of hanging it.
    answers: mpsc::Receiver<String>,
}

impl Writer {
    fn start(grid: &Grid, node: usize, path: &str) -> Writer {
        let mut child = grid
            .command(node, "python3")
            .args(["-c", WRITER, path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting a writer");
        let stdin = child.stdin.take().expect("the writer's stdin");
        let stdout = BufReader::new(child.stdout.take().expect("the writer's stdout"));
        let (tx, answers) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line.trim().to_string()).is_err() {
                    break;
                }
            }
        });
        Writer {
            node,
            child,
            stdin,
            answers,
        }
    }

    /// Writes and fsyncs `record` at `offset`: `Ok(())` once acknowledged,
    /// else the failed call and the errno's name. Panics if no answer comes within [`HANG`].
    fn write(&mut self, offset: u64, record: &[u8]) -> Result<(), String> {
        let hex: String = record.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(self.stdin, "w {offset} {hex}").expect("telling the writer");
        self.stdin.flush().expect("telling the writer");
        let answer = self.answers.recv_timeout(HANG).unwrap_or_else(|e| {
            panic!(
                "the writer on node{} did not answer within {HANG:?}: {e}",
                self.node
            )
        });
        if answer == "ok" {
            Ok(())
        } else {
            Err(answer)
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets the flag when its thread unwinds, so the other threads stop too.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// One volume's writing: which node writes it now, where the nemesis
/// wants it to go, and what the writers learned.
struct Volume {
    index: u32,
    path: &'static str,
    at: AtomicUsize,
    move_to: Mutex<Option<usize>>,
}

/// What a volume's writers did.
#[derive(Default)]
struct Writes {
    outcomes: BTreeMap<u64, Outcome>,
    errors: BTreeMap<String, u64>,
    moves: u64,
    /// A fenced writer's last try after its lease moved: refused or not.
    stale_refused: u64,
    stale_accepted: u64,
}

impl Writes {
    fn acked(&self) -> usize {
        self.outcomes
            .values()
            .filter(|&&o| o == Outcome::Acked)
            .count()
    }

    /// Writes record `seq` with `w` and notes how it went.
    fn put(&mut self, w: &mut Writer, run: u64, vol: &Volume, seq: u64) -> bool {
        let r = w.write(seq * REC as u64, &encode(run, vol.index, seq));
        let outcome = match &r {
            Ok(()) => Outcome::Acked,
            Err(errno) => {
                *self.errors.entry(errno.clone()).or_default() += 1;
                Outcome::Unknown
            }
        };
        self.outcomes.insert(seq, outcome);
        r.is_ok()
    }
}

/// Writes `vol`'s records one after another until `stop` is set and one
/// more record was acknowledged after that (the grid healed, writes must
/// succeed again), moving the writer when the nemesis asks.
fn write_volume(grid: &Grid, run: u64, vol: &Volume, stop: &AtomicBool) -> Writes {
    let _stop = StopOnPanic(stop);
    let mut writes = Writes::default();
    let mut w = Writer::start(grid, vol.at.load(Ordering::Relaxed), vol.path);
    let mut seq = 0u64;
    let mut healed_since: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && healed_since.is_none() {
            healed_since = Some(Instant::now());
        }
        let acked = writes.put(&mut w, run, vol, seq);
        seq += 1;
        if let Some(since) = healed_since {
            if acked {
                return writes;
            }
            assert!(
                since.elapsed() < HANG,
                "{}: no write was acknowledged within {HANG:?} of the grid being healed",
                vol.path
            );
        }
        if !acked {
            thread::sleep(BACKOFF);
        }
        if let Some(to) = vol.move_to.lock().unwrap().take().filter(|_| !stopping) {
            w = writes.move_writer(grid, w, to, run, vol, seq);
            seq += 2;
        }
    }
}

impl Writes {
    /// Moves `vol`'s writing from `old` to a new writer on node `to`,
    /// whose first record (`seq`) takes the write lease over; then `old`
    /// tries record `seq + 1` with its handle, fenced by then.
    fn move_writer(
        &mut self,
        grid: &Grid,
        mut old: Writer,
        to: usize,
        run: u64,
        vol: &Volume,
        seq: u64,
    ) -> Writer {
        let mut new = Writer::start(grid, to, vol.path);
        self.put(&mut new, run, vol, seq);
        if self.put(&mut old, run, vol, seq + 1) {
            self.stale_accepted += 1;
        } else {
            self.stale_refused += 1;
        }
        self.moves += 1;
        vol.at.store(to, Ordering::Relaxed);
        new
    }
}

/// The faults the nemesis injects, one at a time, each healed before the
/// next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillGvsfs,
    KillMetad,
    KillNode,
    Cut,
    CutOneWay,
    MoveLease,
}

const FAULTS: [Fault; 6] = [
    Fault::KillGvsfs,
    Fault::KillMetad,
    Fault::KillNode,
    Fault::Cut,
    Fault::CutOneWay,
    Fault::MoveLease,
];

/// Waits until node `i` has `/gvs` mounted and serving again.
fn wait_mounted(grid: &Grid, i: usize) {
    wait_for(HANG, &format!("/gvs mounted on node{i}"), || {
        grid.sh(i, "grep -q ' /gvs fuse' /proc/mounts && ls /gvs >/dev/null")
            .ok()
            .then_some(())
    });
}

/// Waits until every metad member answers and agrees on a leader.
fn wait_metad(grid: &Grid) {
    wait_for(HANG, "every metad member reachable", || {
        let v = metad_status(grid, 1, "")?;
        let members = v["members"].as_array()?;
        members
            .iter()
            .all(|m| m["reachable"] == true && m["status"]["leader"] == v["leader"])
            .then_some(())
    });
}

/// Injects `fault` on a random node and heals it again.
fn inject(grid: &Grid, rng: &mut StdRng, fault: Fault, volumes: &[Volume]) {
    let node = rng.random_range(1..=NODES);
    let lasting = Duration::from_millis(rng.random_range(500..4000));
    eprintln!("nemesis: {fault:?} node{node} for {lasting:?}");
    match fault {
        Fault::KillGvsfs | Fault::KillMetad | Fault::KillNode => {
            let daemon = match fault {
                Fault::KillGvsfs => Some("gvsfs"),
                Fault::KillMetad => Some("metad"),
                _ => None,
            };
            grid.kill(node, daemon).unwrap();
            thread::sleep(lasting);
            grid.start(node, daemon).unwrap();
            wait_mounted(grid, node);
            wait_metad(grid);
        }
        Fault::Cut | Fault::CutOneWay => {
            grid.cut(node, fault == Fault::CutOneWay).unwrap();
            // Sometimes past the 10 s after which a node that cannot reach
            // metad fails its pending fsyncs.
            thread::sleep(lasting * rng.random_range(1..=4));
            grid.heal(node).unwrap();
        }
        Fault::MoveLease => {
            let vol = &volumes[rng.random_range(0..volumes.len())];
            let from = vol.at.load(Ordering::Relaxed);
            let to = (from + rng.random_range(0..NODES - 1)) % NODES + 1;
            *vol.move_to.lock().unwrap() = Some(to);
        }
    }
}

/// Injects faults until `secs` have passed (or another thread failed);
/// returns how many of each kind.
fn nemesis(
    grid: &Grid,
    seed: u64,
    secs: u64,
    volumes: &[Volume],
    stop: &AtomicBool,
) -> BTreeMap<Fault, u64> {
    let _stop = StopOnPanic(stop);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut count = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let fault = FAULTS[rng.random_range(0..FAULTS.len())];
        inject(grid, &mut rng, fault, volumes);
        *count.entry(fault).or_default() += 1;
        thread::sleep(Duration::from_millis(rng.random_range(200..2000)));
    }
    count
}

/// Every fault undone: every node healed, every daemon running and
/// serving.
fn heal_all(grid: &Grid) {
    for i in 1..=NODES {
        grid.heal(i).unwrap();
        grid.start(i, None).unwrap();
    }
    for i in 1..=NODES {
        wait_mounted(grid, i);
    }
    wait_metad(grid);
}

/// A number from environment variable `name`, or `default` when unset.
fn env_u64(name: &str, default: impl FnOnce() -> u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default(),
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{name}={s:?} is not a non-negative integer")),
    }
}

#[test]
fn every_acknowledged_record_survives_kills_cuts_and_lease_moves_on_every_node() {
    let secs = env_u64("NEMESIS_SECS", || 75);
    let seed = env_u64("NEMESIS_SEED", rand::random);
    eprintln!("nemesis: seed {seed} (replay with NEMESIS_SEED={seed}), {secs} s of faults");
    let grid = GridGuard::up("nemesis", NODES).unwrap();
    for i in 1..=NODES {
        wait_mounted(&grid, i);
    }
    let volumes: Vec<Volume> = (0..VOLUMES.len())
        .map(|v| Volume {
            index: v as u32,
            path: VOLUMES[v],
            at: AtomicUsize::new(v % NODES + 1),
            move_to: Mutex::new(None),
        })
        .collect();

    let stop = AtomicBool::new(false);
    let (faults, writes) = thread::scope(|s| {
        let writers: Vec<_> = volumes
            .iter()
            .map(|vol| s.spawn(|| write_volume(&grid, seed, vol, &stop)))
            .collect();
        let faults = nemesis(&grid, seed, secs, &volumes, &stop);
        heal_all(&grid);
        stop.store(true, Ordering::Relaxed);
        let writes: Vec<Writes> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        (faults, writes)
    });

    eprintln!("nemesis: faults injected {faults:?}");
    for (vol, w) in volumes.iter().zip(&writes) {
        eprintln!(
            "nemesis: {}: {} records tried, {} acked, errors {:?}, {} writer moves \
             (the old writer's next write refused {}, accepted {})",
            vol.path,
            w.outcomes.len(),
            w.acked(),
            w.errors,
            w.moves,
            w.stale_refused,
            w.stale_accepted
        );
    }
    let c = check_everywhere(&grid, seed, &volumes, &writes);
    let checked: u64 = c.verdicts.iter().map(|v| v.acked_ok).sum();
    let lost: usize = c.verdicts.iter().map(|v| v.lost.len()).sum();
    let torn: usize = c.verdicts.iter().map(|v| v.torn.len()).sum();
    eprintln!(
        "nemesis: acknowledged records checked {checked} (every volume on every node), \
         lost {lost}, torn {torn}, nodes reading other bytes than node1 {:?}",
        c.disagree
    );
    assert_eq!(lost, 0, "acknowledged records lost (seed {seed})");
    assert_eq!(torn, 0, "torn or misplaced records (seed {seed})");
    assert!(
        c.disagree.is_empty(),
        "nodes read other bytes than node1 (seed {seed}): {:?}",
        c.disagree
    );
}

/// How every node's copy of every volume measured up.
struct Checked {
    verdicts: Vec<Verdict>,
    /// (volume, node) whose bytes differ from node1's.
    disagree: Vec<(&'static str, usize)>,
}

/// Waits for every volume to be in sync, then reads each on every node and
/// checks it.
fn check_everywhere(grid: &Grid, run: u64, volumes: &[Volume], writes: &[Writes]) -> Checked {
    let mut checked = Checked {
        verdicts: Vec::new(),
        disagree: Vec::new(),
    };
    for (vol, w) in volumes.iter().zip(writes) {
        let state = format!(
            "getfattr --absolute-names --only-values -n gvs.state {}",
            vol.path
        );
        for i in 1..=NODES {
            wait_for(HANG, &format!("{} in sync on node{i}", vol.path), || {
                (grid.sh(i, &state).stdout.trim() == "in-sync").then_some(())
            });
        }
        let mut first: Option<Vec<u8>> = None;
        for i in 1..=NODES {
            let out = grid.command(i, "cat").arg(vol.path).output().unwrap();
            assert!(
                out.status.success(),
                "node{i}: reading {}: {out:?}",
                vol.path
            );
            let verdict = check(&out.stdout, run, vol.index, &w.outcomes);
            eprintln!("nemesis: node{i} {}: {verdict}", vol.path);
            checked.verdicts.push(verdict);
            match &first {
                None => first = Some(out.stdout),
                Some(f) if *f != out.stdout => checked.disagree.push((vol.path, i)),
                Some(_) => {}
            }
        }
    }
    checked
}
