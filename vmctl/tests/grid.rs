//! vmctl on a grid in a box, with real QEMU guests (the tiny appliance of
//! vmctl/appliance/build.sh, TCG where KVM stalls): whole applications
//! start and each VM boots from its own cloned volume; a volume follows its
//! VM to another node; refusals and bad descriptors say why.

mod common;

use common::{import_appliance, ok, vm, vmctl, wait_nodes};
use devgrid::{wait_for, GridGuard};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Node number of VM `name`, once it is reserved somewhere.
fn node_of(grid: &GridGuard, name: &str) -> usize {
    wait_for(
        Duration::from_secs(120),
        &format!("{name} to be placed"),
        || {
            let v = vm(grid, 1, name);
            let n = v["node"]
                .as_str()?
                .trim_start_matches("node")
                .parse()
                .ok()?;
            Some(n)
        },
    )
}

/// Waits until `name`'s console (read on its node) contains `marker`.
fn console_shows(grid: &GridGuard, name: &str, marker: &str, timeout: Duration) -> String {
    let node = node_of(grid, name);
    wait_for(timeout, &format!("{marker:?} on {name}'s console"), || {
        let out = vmctl(grid, node, &["vm", "console", name]);
        // The serial console ends lines with CR LF.
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        text.contains(marker).then_some(text)
    })
}

const APP3: &str = r#"name = "trio"
placement = "spread"

[components.web]
image = "/gvs/catalog/tiny"
cpu = 1
mem = "128M"
outputs = ["db"]

[components.db]
image = "/gvs/catalog/tiny"
cpu = { min = 1 }
mem = "128M"
inputs = { sql = "tcp/3306" }
anti_affinity = ["web"]

[components.cache]
image = "/gvs/catalog/tiny"
mem = "128M"

[[connections]]
from = "web.db"
to = "db.sql"
"#;

#[test]
fn an_application_of_three_boots_each_vm_from_its_own_volume() {
    let grid = GridGuard::up("vmapp3", 3).unwrap();
    import_appliance(&grid);
    wait_nodes(&grid, 3);
    let dir = std::env::temp_dir().join("vmctl-test-vmapp3");
    std::fs::create_dir_all(&dir).unwrap();

    // A bad descriptor: one line naming the line and the field.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        APP3.replace("mem = \"128M\"\ninputs", "mem = \"lots\"\ninputs"),
    )
    .unwrap();
    let out = vmctl(&grid, 1, &["app", "create", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("line 13, field `components.db.mem`"), "{err}");

    let good = dir.join("trio.toml");
    std::fs::write(&good, APP3).unwrap();
    let t0 = Instant::now();
    ok(&grid, 1, &["app", "create", good.to_str().unwrap()]);
    let created = t0.elapsed();
    ok(&grid, 2, &["app", "start", "trio"]);
    let t1 = Instant::now();
    let mut disks = Vec::new();
    for c in ["web", "db", "cache"] {
        let name = format!("trio.{c}");
        let text = console_shows(
            &grid,
            &name,
            &format!("VMCTL-READY {name} boots=1"),
            Duration::from_secs(120),
        );
        assert!(
            text.contains(&format!("VMCTL-BOOT {name} on node")),
            "{text}"
        );
        let v = vm(&grid, 1, &name);
        assert_eq!(v["state"], "running", "{v}");
        disks.push(v["record"]["disks"][0].as_str().unwrap().to_string());
    }
    eprintln!(
        "create (3 clones) took {created:?}; start to three console markers {:?}",
        t1.elapsed()
    );
    assert_eq!(disks[0], "/gvs/apps/trio/web/root.vol");
    disks.dedup();
    assert_eq!(disks.len(), 3, "each VM has its own volume");
    assert_ne!(
        node_of(&grid, "trio.web"),
        node_of(&grid, "trio.db"),
        "anti-affinity"
    );

    // Too big for the grid: refused whole, with the reason, nothing reserved.
    let before = serde_json::from_str::<Value>(&ok(&grid, 1, &["node", "list", "--json"])).unwrap();
    let huge = dir.join("huge.toml");
    std::fs::write(
        &huge,
        "name = \"huge\"\n[components.small]\nimage = \"/gvs/catalog/tiny\"\nmem = \"64M\"\n\
         [components.db]\nimage = \"/gvs/catalog/tiny\"\nmem = \"4T\"\n",
    )
    .unwrap();
    ok(&grid, 1, &["app", "create", huge.to_str().unwrap()]);
    let out = vmctl(&grid, 3, &["app", "start", "huge"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "vmctl: cannot start huge: db needs 4096 GiB; the most free on any node is"
        ),
        "{err}"
    );
    let after = serde_json::from_str::<Value>(&ok(&grid, 1, &["node", "list", "--json"])).unwrap();
    let used = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n["used_mem_mib"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        used(&before),
        used(&after),
        "the refused app reserved something"
    );
    let small = vm(&grid, 1, "huge.small");
    assert_eq!(small["node"], Value::Null);
    ok(&grid, 1, &["app", "destroy", "huge"]);

    // Stop releases everything; destroy removes the volumes.
    ok(&grid, 1, &["app", "stop", "trio"]);
    let stopped =
        serde_json::from_str::<Value>(&ok(&grid, 1, &["node", "list", "--json"])).unwrap();
    assert!(used(&stopped).iter().all(|&m| m == 0), "{stopped}");
    ok(&grid, 1, &["app", "destroy", "trio"]);
    let out = grid.command(1, "ls").arg("/gvs/apps").output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("trio"));
    let events = ok(&grid, 1, &["events"]);
    assert!(
        events.contains("refused") && events.contains("placed"),
        "{events}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_written_by_a_guest_is_there_when_it_starts_on_another_node() {
    let grid = GridGuard::up("vmmove", 3).unwrap();
    import_appliance(&grid);
    wait_nodes(&grid, 3);
    let dir = std::env::temp_dir().join("vmctl-test-vmmove");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.join("solo.toml");
    std::fs::write(
        &d,
        "name = \"solo\"\n[components.box]\nimage = \"/gvs/catalog/tiny\"\nmem = \"128M\"\n",
    )
    .unwrap();
    ok(&grid, 1, &["app", "create", d.to_str().unwrap()]);
    ok(&grid, 1, &["app", "start", "solo"]);
    // The guest appends "solo.box@<node>" to /var/boots on its root volume and syncs.
    console_shows(
        &grid,
        "solo.box",
        "VMCTL-READY solo.box boots=1",
        Duration::from_secs(120),
    );
    let first = node_of(&grid, "solo.box");
    ok(&grid, 1, &["app", "stop", "solo"]);
    let other = if first == 1 { 2 } else { 1 };
    ok(
        &grid,
        1,
        &["vm", "migrate", "solo.box", &format!("node{other}")],
    );
    ok(&grid, 1, &["app", "start", "solo"]);
    assert_eq!(node_of(&grid, "solo.box"), other);
    let text = console_shows(
        &grid,
        "solo.box",
        "VMCTL-READY solo.box boots=2",
        Duration::from_secs(120),
    );
    assert!(
        text.contains(&format!("earlier boots:\nsolo.box@node{first}")),
        "the first boot's file is not on the volume: {text}"
    );
    ok(&grid, 1, &["app", "destroy", "solo", "--force"]);
    let _ = std::fs::remove_dir_all(&dir);
}
