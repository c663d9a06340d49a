//! Two nodes writing the same volume: the write lease moves to the second
//! one, the first is fenced: its open file gets EIO on write, fsync and
//! close, and none of its writes after the fencing appear anywhere.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{eventually, md5, sh, wait_mounted};
use devgrid::GridGuard;

/// A writer on node1 that keeps one file open and does what it is told,
/// one command per line, answering each with one line: `ok` or the errno
/// name. Commands: `write BYTE OFFSET_MIB` (1 MiB of BYTE), `fsync`,
/// `close`.
const WRITER: &str = r#"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
print("open", flush=True)
for line in sys.stdin:
    cmd = line.split()
    try:
        if cmd[0] == "write":
            os.pwrite(fd, cmd[1].encode() * (1 << 20), int(cmd[2]) << 20)
        elif cmd[0] == "fsync":
            os.fsync(fd)
        elif cmd[0] == "close":
            os.close(fd)
        print("ok", flush=True)
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"#;

struct Writer {
    child: Child,
    stdin: ChildStdin,
    /// The writer's answers, read by their own thread so that a writer
    /// stuck in the kernel fails the test instead of hanging it.
    answers: mpsc::Receiver<String>,
}

/// How long one command may take before the writer counts as stuck.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

impl Writer {
    fn start(grid: &GridGuard, node: usize, file: &str) -> Writer {
        let mut child = grid
            .command(node, "python3")
            .args(["-c", WRITER, file])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the writer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line.trim().to_string()).is_err() {
                    break;
                }
            }
        });
        let mut w = Writer {
            child,
            stdin,
            answers,
        };
        assert_eq!(w.answer(), "open");
        w
    }

    fn answer(&mut self) -> String {
        self.answer_within(ANSWER_WAIT)
    }

    fn answer_within(&mut self, wait: Duration) -> String {
        self.answers
            .recv_timeout(wait)
            .unwrap_or_else(|e| panic!("the writer did not answer within {wait:?}: {e}"))
    }

    fn ask(&mut self, cmd: &str) -> String {
        self.ask_within(cmd, ANSWER_WAIT)
    }

    fn ask_within(&mut self, cmd: &str, wait: Duration) -> String {
        writeln!(self.stdin, "{cmd}").expect("telling the writer");
        self.stdin.flush().expect("flush");
        self.answer_within(wait)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// md5 of 1 MiB of each byte in `bytes`, concatenated.
fn md5_of(grid: &GridGuard, bytes: &str) -> String {
    let script: String = bytes
        .chars()
        .map(|c| format!("head -c 1048576 /dev/zero | tr '\\0' {c}; "))
        .collect();
    sh(grid, 3, &format!("({script}) | md5sum"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Writes 1 MiB of `byte` at `mib` MiB into `file` on `node`, fsynced.
fn write_mib(grid: &GridGuard, node: usize, file: &str, byte: char, mib: u64) {
    sh(
        grid,
        node,
        &format!(
            "head -c 1048576 /dev/zero | tr '\\0' {byte} | dd of={file} bs=1M seek={mib} conv=notrunc,fsync status=none"
        ),
    );
}

/// What every node reads: the same bytes, of the expected size.
fn assert_everywhere(grid: &GridGuard, file: &str, want_bytes: &str) {
    let want = md5_of(grid, want_bytes);
    let size = (want_bytes.len() << 20).to_string();
    for i in 1..=3 {
        // Reads may follow the last commit by a moment on other nodes.
        eventually(
            grid,
            i,
            &format!("test \"$(stat -c %s {file})\" = {size}"),
            5,
        );
        assert_eq!(md5(grid, i, file), want, "node{i} reads other bytes");
    }
}

#[test]
fn a_writer_whose_lease_was_handed_over_gets_eio_and_its_late_writes_never_land() {
    let grid = GridGuard::up("gvfnc", 3).unwrap();
    wait_mounted(&grid, 3);
    let file = "/gvs/f.vol";
    let mut w1 = Writer::start(&grid, 1, file);
    // node1 writes A (buffered, not fsynced): it holds the lease.
    assert_eq!(w1.ask("write A 0"), "ok");
    // node2 writes the same volume: node1 commits A and hands over.
    write_mib(&grid, 2, file, 'C', 1);
    // node1's handle is fenced: every later operation fails, nothing lands.
    assert_eq!(w1.ask("write D 0"), "EIO");
    assert_eq!(w1.ask("write D 2"), "EIO");
    assert_eq!(w1.ask("fsync"), "EIO");
    assert_eq!(w1.ask("close"), "EIO");
    assert_everywhere(&grid, file, "AC");
    // A new handle on node1 takes the lease back and writes normally.
    write_mib(&grid, 1, file, 'E', 2);
    assert_everywhere(&grid, file, "ACE");
}

/// A writer that streams MiB after MiB (MiB i all of byte `i % 251`,
/// 2 ms apart) into a file until a write fails, printing the index of
/// each write that returned, then `stop ERRNO`.
const STREAMER: &str = r#"
import errno, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
print("open", flush=True)
for i in range(int(sys.argv[2])):
    try:
        os.pwrite(fd, bytes([i % 251]) * (1 << 20), i << 20)
    except OSError as e:
        print("stop", errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        sys.exit(0)
    print(i, flush=True)
    time.sleep(0.002)
print("stop done", flush=True)
"#;

/// Checks, on `node`, that MiB 0..n of `file` are what [`STREAMER`] wrote.
const CHECKER: &str = r#"
import sys
with open(sys.argv[1], "rb") as f:
    for i in range(int(sys.argv[2])):
        if f.read(1 << 20) != bytes([i % 251]) * (1 << 20):
            print("MiB", i, "differs"); sys.exit(1)
"#;

#[test]
fn a_lease_taken_from_a_streaming_writer_keeps_every_write_it_acknowledged() {
    let grid = GridGuard::up("gvfsw", 3).unwrap();
    wait_mounted(&grid, 3);
    let file = "/gvs/s.vol";
    let mut child = grid
        .command(1, "python3")
        .args(["-c", STREAMER, file, "600"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the streamer");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = stdout.lines().map_while(Result::ok);
    assert_eq!(lines.next().as_deref(), Some("open"));
    // Let it buffer and commit a good deal (commits run while it writes),
    // then take the lease from node2 in the middle of the stream.
    let mut acked = 0;
    for line in lines.by_ref() {
        acked = line.parse::<u64>().expect("an index") + 1;
        if acked == 150 {
            break;
        }
    }
    write_mib(&grid, 2, file, 'Z', 700);
    let mut stop = String::new();
    for line in lines.by_ref() {
        match line.parse::<u64>() {
            Ok(i) => acked = i + 1,
            Err(_) => {
                stop = line;
                break;
            }
        }
    }
    let _ = child.wait();
    assert_eq!(
        stop, "stop EIO",
        "node1's writer was not fenced (acknowledged {acked} MiB)"
    );
    eprintln!("node1 had {acked} MiB acknowledged when it was fenced");
    // Every write node1 acknowledged before the hand-over is there, on
    // every node.
    for node in 1..=3 {
        sh(
            &grid,
            node,
            &format!("python3 -c '{CHECKER}' {file} {acked}"),
        );
    }
}

#[test]
fn a_writer_cut_off_while_another_node_takes_its_lease_is_fenced_by_the_epoch() {
    let grid = GridGuard::up("gvfcut", 3).unwrap();
    wait_mounted(&grid, 3);
    let file = "/gvs/g.vol";
    let mut w1 = Writer::start(&grid, 1, file);
    assert_eq!(w1.ask("write A 0"), "ok");
    assert_eq!(w1.ask("fsync"), "ok");
    // node1 is cut off: its node lease, and with it its write lease,
    // expires; node2 asks for the lease, gets it and writes.
    grid.cut(1, false).unwrap();
    write_mib(&grid, 2, file, 'C', 1);
    // node1 does not know yet: the write is buffered there...
    let during_cut = w1.ask("write B 2");
    assert!(
        during_cut == "ok" || during_cut == "EIO",
        "write during the cut: {during_cut}"
    );
    grid.heal(1).unwrap();
    // ...and once node1 sees the new lease holder, its writer is fenced.
    eventually(
        &grid,
        1,
        "dd if=/gvs/g.vol bs=1M skip=1 count=1 status=none | md5sum \
         | grep -q $(head -c 1048576 /dev/zero | tr '\\0' C | md5sum | cut -c1-32)",
        30,
    );
    assert_eq!(w1.ask("write D 0"), "EIO");
    assert_eq!(w1.ask("fsync"), "EIO");
    assert_eq!(w1.ask("close"), "EIO");
    // Neither B (written after node2 took the lease) nor D landed.
    assert_everywhere(&grid, file, "AC");
}

#[test]
fn a_writer_cut_off_from_metad_gets_eio_once_its_node_lease_lapses() {
    let grid = GridGuard::up("gvfeio", 3).unwrap();
    wait_mounted(&grid, 3);
    let file = "/gvs/e.vol";
    let mut w1 = Writer::start(&grid, 1, file);
    assert_eq!(w1.ask("write A 0"), "ok");
    assert_eq!(w1.ask("fsync"), "ok");
    grid.cut(1, false).unwrap();
    // The write is only buffered; the fsync needs metad, which node1
    // cannot reach. Once node1's own lease has lapsed (unconfirmed for
    // 10 s) its write lease may be gone: the fsync fails with EIO then,
    // instead of holding the writer in the kernel, unkillable, for as
    // long as metad is out of reach.
    assert_eq!(w1.ask("write B 1"), "ok");
    let asked = std::time::Instant::now();
    assert_eq!(w1.ask_within("fsync", Duration::from_secs(20)), "EIO");
    eprintln!("fsync on the cut node failed after {:?}", asked.elapsed());
    grid.heal(1).unwrap();
    // Nothing after the last good fsync landed, on any node.
    assert_everywhere(&grid, file, "A");
}

#[test]
fn a_node_whose_view_lags_never_commits_over_a_newer_root() {
    let grid = GridGuard::up("dulag", 3).unwrap();
    wait_mounted(&grid, 3);
    let file = "/gvs/l.vol";
    // The volume exists, nobody holds its lease; node2's view then stops
    // following metad (its watch lags).
    sh(&grid, 2, &format!("touch {file}"));
    eventually(&grid, 1, &format!("test -e {file}"), 30);
    sh(&grid, 2, "setfattr -n gvs.debug.watch_hold -v 1 /gvs");
    // node1 commits A, unseen by node2, and dies: its lease expires.
    write_mib(&grid, 1, file, 'A', 0);
    grid.kill(1, Some("gvsfs")).unwrap();
    // node2 takes the lease, its view still on the empty volume, and
    // writes C after A.
    let mut w2 = Writer::start(&grid, 2, file);
    let write = w2.ask("write C 1");
    sh(&grid, 2, "setfattr -n gvs.debug.watch_hold -v 0 /gvs");
    let fsync = w2.ask("fsync");
    drop(w2);
    grid.start(1, Some("gvsfs")).unwrap();
    wait_mounted(&grid, 3);
    // Told or not, node2 did not commit its stale view over A: a fresh
    // writer there, its view caught up, writes C after A.
    write_mib(&grid, 2, file, 'C', 1);
    assert_everywhere(&grid, file, "AC");
    assert!(
        write == "EIO" || fsync == "EIO",
        "the writer with the stale view was not told: write {write}, fsync {fsync}"
    );
}
