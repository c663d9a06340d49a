//! Helpers shared by the end-to-end tests in `tests/`: asking metad how
//! the grid stands, the way an operator would (the generic ones, running a
//! script in a node and waiting, are devgrid's), and the nemesis test's
//! records and their checker.

pub mod records;

use std::time::Duration;

use devgrid::{wait_for, Grid};

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
    let r = grid.sh(from, &format!("metad {args} status --json"));
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

pub mod fuzzing;
