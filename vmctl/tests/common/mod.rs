//! What every vmctl grid test does: import the tiny appliance, run `vmctl`
//! in a node, and read a VM's record.

#![allow(dead_code)] // each test file uses its own subset

use devgrid::GridGuard;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

// Shared with gvsfs's control-file tests, which start VMs too.
mod appliance;
pub use appliance::import_appliance;

/// Runs `vmctl ARGS` in node `node`.
pub fn vmctl(grid: &GridGuard, node: usize, args: &[&str]) -> Output {
    grid.command(node, "vmctl").args(args).output().unwrap()
}

/// Runs `vmctl ARGS` in node `node`, which must succeed; its stdout.
pub fn ok(grid: &GridGuard, node: usize, args: &[&str]) -> String {
    let out = vmctl(grid, node, args);
    assert!(
        out.status.success(),
        "vmctl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `vmctl vm show NAME --json`, asked in node `node`.
pub fn vm(grid: &GridGuard, node: usize, name: &str) -> Value {
    serde_json::from_str(&ok(grid, node, &["vm", "show", name, "--json"])).unwrap()
}

/// The node number a VM record names.
pub fn node_num(v: &Value) -> Option<usize> {
    v["node"].as_str()?.trim_start_matches("node").parse().ok()
}

/// Waits until `n` agents have registered.
pub fn wait_nodes(grid: &GridGuard, n: usize) {
    devgrid::wait_for(Duration::from_secs(60), "the agents to register", || {
        let out = vmctl(grid, 1, &["node", "list", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v.as_array()?.len() == n).then_some(())
    });
}
