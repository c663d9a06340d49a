//! Helpers shared by the end-to-end tests in `tests/`: running commands in
//! grid nodes the way an operator would, and waiting for a grid to settle.

use std::time::{Duration, Instant};

use devgrid::Grid;

/// What a command run in a node printed, and how it exited.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl Run {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `script` with `sh -c` inside node `i`.
pub fn sh(grid: &Grid, i: usize, script: &str) -> Run {
    let out = grid
        .command(i, "sh")
        .args(["-c", script])
        .output()
        .expect("running sh in a node");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Calls `f` until it returns `Some`, or panics naming `what` after
/// `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node whose metad member leads, once every member agrees on one and
/// all have applied the same index (asked from `from`, a client node).
pub fn metad_leader(grid: &Grid, from: usize) -> usize {
    wait_for(Duration::from_secs(20), "a metad leader", || {
        let v = metad_status(grid, from, "")?;
        let members = v["members"].as_array()?;
        let settled = members.iter().all(|m| {
            m["reachable"] == true
                && m["status"]["leader"] == v["leader"]
                && m["status"]["applied"] == members[0]["status"]["applied"]
        });
        settled.then(|| leader_node(&v)).flatten()
    })
}

/// `metad status --json` run in node `from` with extra `args`.
pub fn metad_status(grid: &Grid, from: usize, args: &str) -> Option<serde_json::Value> {
    let r = sh(grid, from, &format!("metad {args} status --json"));
    serde_json::from_str(&r.stdout).ok()
}

/// The node (from its member address `nodeN:port`) of the leader named in
/// a `metad status --json` answer.
pub fn leader_node(status: &serde_json::Value) -> Option<usize> {
    let leader = status["leader"].as_u64()?;
    let member = status["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"].as_u64() == Some(leader))?;
    let addr = member["addr"].as_str()?;
    addr.strip_prefix("node")?.split(':').next()?.parse().ok()
}
