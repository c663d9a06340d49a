//! Live migration on a grid in a box with real QEMU guests: a guest that
//! prints "tick N" every second moves to another node while it runs; on the
//! target's console the counter goes on (no second boot, no gap of more than
//! a few seconds) and the downtime QEMU reports is in the VM's status. A
//! migration to a node without room is refused with the reason.

mod common;

use common::{import_appliance, node_num, ok, vm, vmctl, wait_nodes};
use devgrid::{wait_for, GridGuard};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The console file of a VM on `node` (node-local), CR LF made LF.
fn console(grid: &GridGuard, node: usize, path: &str) -> String {
    let out = grid.command(node, "cat").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

/// The "tick N" counters printed on a console.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

const APP: &str = r#"name = "mig"
placement = "spread"

[components.ticker]
image = "/gvs/catalog/tiny"
cpu = 1
mem = "128M"

# Takes every CPU of its node (2 here), never next to the ticker.
[components.hog]
image = "/gvs/catalog/tiny"
cpu = { min = NCPU, max = 1 }
mem = "128M"
anti_affinity = ["ticker"]
"#;

#[test]
fn a_running_guest_moves_and_its_counter_goes_on() {
    let grid = GridGuard::up("vmmig", 3).unwrap();
    import_appliance(&grid);
    wait_nodes(&grid, 3);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    // cpu.max must be at least cpu.min: the hog sees all of them.
    let desc = APP.replace("{ min = NCPU, max = 1 }", &ncpu.to_string());
    let file = std::env::temp_dir().join("vmctl-test-vmmig.toml");
    std::fs::write(&file, desc).unwrap();
    ok(&grid, 1, &["app", "create", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    ok(&grid, 1, &["app", "start", "mig"]);

    let t = vm(&grid, 1, "mig.ticker");
    let src = node_num(&t).expect("ticker placed");
    let full = node_num(&vm(&grid, 1, "mig.hog")).expect("hog placed");
    let free = (1..=3).find(|n| *n != src && *n != full).unwrap();
    let path = wait_for(Duration::from_secs(240), "the ticker's status", || {
        let v = vm(&grid, 1, "mig.ticker");
        (v["state"] == "running").then(|| v["status"]["console"].as_str().map(String::from))?
    });
    wait_for(Duration::from_secs(480), "tick 3 on the source", || {
        (ticks(&console(&grid, src, &path)).last() >= Some(&3)).then_some(())
    });

    // The hog's node has no CPU left: refused, one line, with the reason.
    let out = vmctl(
        &grid,
        1,
        &["vm", "migrate", "mig.ticker", &format!("node{full}")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("refused") && err.contains("ticker needs"),
        "{err}"
    );
    assert_eq!(node_num(&vm(&grid, 1, "mig.ticker")), Some(src));

    // Live migration to the free node, watching both consoles meanwhile:
    // the largest counter seen anywhere must keep moving.
    let mut child = grid
        .command(1, "vmctl")
        .args(["vm", "migrate", "mig.ticker", &format!("node{free}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let (mut last_change, mut top) = (Instant::now(), 0u64);
    let mut max_gap = Duration::ZERO;
    let mut done = None;
    loop {
        let s = ticks(&console(&grid, src, &path));
        let d = ticks(&console(&grid, free, &path));
        let m = s.iter().chain(&d).copied().max().unwrap_or(0);
        if m > top {
            if top > 0 {
                max_gap = max_gap.max(last_change.elapsed());
            }
            top = m;
            last_change = Instant::now();
        }
        if done.is_none() {
            done = child.try_wait().unwrap();
        }
        if done.is_some() && d.len() >= 5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "migration: no 5 ticks on node{free} in 600 s; source ticks {:?}, target {d:?}",
            s.last()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("downtime"), "{said}");

    // No second boot on the target, and the counter went on where it was.
    let before = ticks(&console(&grid, src, &path));
    let target = console(&grid, free, &path);
    assert!(
        !target.contains("VMCTL-BOOT"),
        "the guest booted again:\n{target}"
    );
    let after = ticks(&target);
    let (last_src, first_dst) = (*before.last().unwrap(), after[0]);
    assert!(
        first_dst > last_src && first_dst <= last_src + 3,
        "counter jumped from {last_src} to {first_dst}"
    );
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "counter not continuous on the target: {after:?}"
    );

    // The record moved; the downtime QEMU reported is in the status.
    let v = wait_for(Duration::from_secs(120), "the target's status", || {
        let v = vm(&grid, 1, "mig.ticker");
        (v["state"] == "running" && v["status"]["node"] == format!("node{free}")).then_some(v)
    });
    assert_eq!(node_num(&v), Some(free));
    assert!(v["record"]["migration"].is_null());
    let downtime = wait_for(Duration::from_secs(120), "downtime in the status", || {
        vm(&grid, 1, "mig.ticker")["status"]["last_migration"]["downtime_ms"].as_u64()
    });
    let text = ok(&grid, 1, &["vm", "show", "mig.ticker"]);
    assert!(text.contains(&format!("downtime {downtime} ms")), "{text}");
    eprintln!(
        "live migration node{src} -> node{free}: downtime {downtime} ms, counter {last_src} -> {first_dst}, longest stall seen {max_gap:?}"
    );
}
