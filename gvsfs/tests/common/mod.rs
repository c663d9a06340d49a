//! Helpers shared by the end-to-end tests: running scripts in a node of a
//! grid in a box and waiting for conditions.
#![allow(dead_code)] // each test binary uses its own subset

use std::time::{Duration, Instant};

use devgrid::GridGuard;

/// Runs a shell script on node `i`; returns (success, stdout+stderr).
pub fn run(grid: &GridGuard, i: usize, script: &str) -> (bool, String) {
    let out = grid
        .command(i, "sh")
        .args(["-c", script])
        .output()
        .expect("running a command in a node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a script that must succeed; returns its stdout+stderr.
pub fn sh(grid: &GridGuard, i: usize, script: &str) -> String {
    let (ok, text) = run(grid, i, script);
    assert!(ok, "node{i}: `{script}` failed:\n{text}");
    text
}

/// Waits until `script` succeeds on node `i` (at most `secs`).
pub fn eventually(grid: &GridGuard, i: usize, script: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (ok, text) = run(grid, i, script);
        if ok {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "node{i}: `{script}` did not succeed within {secs} s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_mounted(grid: &GridGuard, nodes: usize) {
    for i in 1..=nodes {
        eventually(
            grid,
            i,
            "grep -q ' /gvs fuse' /proc/mounts && ls /gvs >/dev/null",
            90,
        );
    }
}

pub fn md5(grid: &GridGuard, i: usize, path: &str) -> String {
    sh(grid, i, &format!("md5sum < {path}"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Node `i`'s own counters (the first line of `gvs.stats` on /gvs).
pub fn stats(grid: &GridGuard, i: usize) -> std::collections::HashMap<String, u64> {
    let text = sh(grid, i, "getfattr --only-values -n gvs.stats /gvs");
    let line = text.lines().next().unwrap_or_default();
    line.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Counter `key` of node `i`.
pub fn stat(grid: &GridGuard, i: usize, key: &str) -> u64 {
    stats(grid, i).get(key).copied().unwrap_or(0)
}

/// Bytes on disk of node `i`'s chunk store.
pub fn store_bytes(grid: &GridGuard, i: usize) -> u64 {
    sh(grid, i, "du -sb /var/lib/grid/gvsfs/chunks")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The value of a `gvs.*` attribute of `path` on node `i`.
pub fn xattr(grid: &GridGuard, i: usize, path: &str, name: &str) -> String {
    sh(
        grid,
        i,
        &format!("getfattr --absolute-names --only-values -n {name} {path}"),
    )
}

/// Sets the collector's grace period to 1 s, below the floor that
/// `gvs.gc.grace_secs` refuses, by writing the setting into metad itself:
/// for tests that want every unreferenced chunk collectable at once.
pub const GRACE_1S: &str = "metad put gvs/conf/gc_grace_secs 1";
