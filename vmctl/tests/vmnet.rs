//! Guest NICs on lcmd, end to end, with real QEMU guests: an application of
//! two guests on two nodes, `web` with the output terminal `db` and `db`
//! with the input `http = "tcp/80"`, connected. Inside `web` the name `db`
//! resolves (lcmd's DNS) and port 80 answers through the tunnel; port
//! 8080, where `db` also serves, is dropped and reported with the
//! appliances and terminals; after `db` is live-migrated to a third node
//! lcmd serves its NIC there and `web` reaches it again; destroying the
//! application removes it from lcmd.

mod common;

use common::{import_appliance, node_num, ok, vm, vmctl, wait_nodes};
use devgrid::{wait_for, GridGuard};
use serde_json::Value;
use std::time::{Duration, Instant};

const APP: &str = r#"name = "net"

[components.web]
image = "/gvs/catalog/tiny"
mem = "128M"
outputs = ["db"]
properties = { probe = "db:80,db:8080" }

[components.db]
image = "/gvs/catalog/tiny"
mem = "128M"
inputs = { http = "tcp/80" }
anti_affinity = ["web"]
properties = { listen = "8080" }

[[connections]]
from = "web.db"
to = "db.http"
"#;

fn console(grid: &GridGuard, node: usize, name: &str) -> String {
    String::from_utf8_lossy(&vmctl(grid, node, &["vm", "console", name]).stdout).replace('\r', "")
}

/// lcmd's appliance records, by name.
fn appliances(grid: &GridGuard) -> Vec<Value> {
    let out = grid
        .command(1, "lcmd")
        .args(["appliance", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The node lcmd serves appliance `name` on.
fn lcm_node(grid: &GridGuard, name: &str) -> Option<String> {
    appliances(grid)
        .into_iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["node"].as_str().map(String::from))
}

/// How many lines of `console` are `VMCTL-REACH target verdict`.
fn reach_count(console: &str, target: &str, verdict: &str) -> usize {
    let line = format!("VMCTL-REACH {target} {verdict}");
    console.lines().filter(|l| l.trim_end() == line).count()
}

#[test]
fn guests_talk_through_declared_connections_only() {
    let grid = GridGuard::up("vmnet", 3).unwrap();
    import_appliance(&grid);
    wait_nodes(&grid, 3);
    let d = std::env::temp_dir().join("vmctl-test-vmnet.toml");
    std::fs::write(&d, APP).unwrap();
    ok(&grid, 1, &["app", "create", d.to_str().unwrap()]);
    let _ = std::fs::remove_file(&d);

    // Declared to lcmd at creation, from the descriptor: VM NICs, no node yet.
    let a = appliances(&grid);
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(
        a.iter().all(|a| a["nic"] == "vm" && a["node"] == ""),
        "{a:?}"
    );

    ok(&grid, 1, &["app", "start", "net"]);
    let started = Instant::now();
    let (web, db) = wait_for(Duration::from_secs(120), "placement", || {
        Some((
            node_num(&vm(&grid, 1, "net.web"))?,
            node_num(&vm(&grid, 1, "net.db"))?,
        ))
    });
    assert_ne!(web, db, "anti-affinity");
    // Each agent claimed its VM's appliance for its node.
    wait_for(Duration::from_secs(120), "lcmd to follow the VMs", || {
        (lcm_node(&grid, "web")? == format!("node{web}")
            && lcm_node(&grid, "db")? == format!("node{db}"))
        .then_some(())
    });

    // By name, through the tunnel, on the declared port only.
    let c = wait_for(Duration::from_secs(600), "web to reach db:80", || {
        let c = console(&grid, web, "net.web");
        (reach_count(&c, "db:80", "ok") > 0).then_some(c)
    });
    eprintln!(
        "vmnet: web reached db:80 {:?} after app start",
        started.elapsed()
    );
    assert!(c.contains("VMCTL-NET net.web 10.250.0.11/24"), "{c}");
    let blocked = reach_count(&c, "db:8080", "blocked");
    // db serves 8080 too (vmctl.listen), so a refusal after db:80
    // answered is lcmd's.
    wait_for(
        Duration::from_secs(600),
        "a db:8080 try after db:80 answered",
        || {
            let c = console(&grid, web, "net.web");
            (reach_count(&c, "db:8080", "blocked") > blocked).then_some(())
        },
    );
    let c = console(&grid, web, "net.web");
    assert_eq!(reach_count(&c, "db:8080", "ok"), 0, "{c}");
    let db_console = console(&grid, db, "net.db");
    assert!(
        db_console.contains("VMCTL-NET net.db 10.250.0.10/24"),
        "{db_console}"
    );

    // The drop is in the grid's event log, with appliances and terminals.
    let drop = wait_for(Duration::from_secs(120), "the wrong-port event", || {
        ok(&grid, 1, &["events", "--json"])
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["source"] == "lcm" && e["reason"] == "wrong-port" && e["dst_port"] == 8080)
    });
    assert_eq!(
        (
            &drop["app"],
            &drop["src_appliance"],
            &drop["src_terminal"],
            &drop["dst_appliance"],
            &drop["dst_terminal"],
            &drop["src_ip"],
            &drop["dst_ip"],
        ),
        (
            &Value::from("net"),
            &Value::from("web"),
            &Value::from("db"),
            &Value::from("db"),
            &Value::from("http"),
            &Value::from("10.250.0.11"),
            &Value::from("10.250.0.10"),
        ),
        "{drop}"
    );
    let text = ok(&grid, 1, &["events"]);
    assert!(text.contains("(web.db -> db.http): wrong-port"), "{text}");

    // db moves to the third node: lcmd serves its NIC there, web reaches it.
    let third = (1..=3).find(|n| *n != web && *n != db).unwrap();
    ok(
        &grid,
        1,
        &["vm", "migrate", "net.db", &format!("node{third}")],
    );
    wait_for(
        Duration::from_secs(600),
        "lcmd to follow the migration",
        || (lcm_node(&grid, "db")? == format!("node{third}")).then_some(()),
    );
    let moved = Instant::now();
    let before = reach_count(&console(&grid, web, "net.web"), "db:80", "ok");
    wait_for(
        Duration::from_secs(240),
        "web to reach the moved db",
        || {
            let c = console(&grid, web, "net.web");
            (reach_count(&c, "db:80", "ok") > before).then_some(())
        },
    );
    eprintln!(
        "vmnet: web reached the moved db {:?} after lcmd followed",
        moved.elapsed()
    );

    // Destroying the application removes it from lcmd.
    ok(&grid, 1, &["app", "destroy", "net", "--force"]);
    assert!(appliances(&grid).is_empty());
}
