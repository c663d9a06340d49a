//! What end-to-end tests do over and over on a grid: run a shell script in
//! a node and look at how it went, and wait for the grid to reach a state.

use std::time::{Duration, Instant};

use crate::grid::Grid;

/// What a script run in a node printed, and how it exited.
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

impl Grid {
    /// Runs `script` with `sh -c` inside node `i`, with the grid's
    /// environment (see [`Grid::command`]).
    pub fn sh(&self, i: usize, script: &str) -> Run {
        let out = self
            .command(i, "sh")
            .args(["-c", script])
            .output()
            .expect("starting sh in a node");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Calls `f` every 100 ms until it returns `Some`, or panics naming `what`
/// after `timeout`: how a test waits for a grid to converge without
/// asserting on timing.
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
