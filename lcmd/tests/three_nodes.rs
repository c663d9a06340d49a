//! Container appliances on three nodes: a client on node1 reaches a server
//! on node2 and another on node3, each by its terminal name and only
//! through its declared connection; the other ports of each server and a
//! flow between the two servers (no connection) are dropped and reported.

mod common;

use common::{grid, lcmd, wait_event, wait_for, Appliance};
use lcmd::model::tap_name;
use serde_json::json;
use std::net::Ipv4Addr;

const GW: Ipv4Addr = Ipv4Addr::new(10, 207, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 207, 0, 10);
const S2: Ipv4Addr = Ipv4Addr::new(10, 207, 0, 20);
const S3: Ipv4Addr = Ipv4Addr::new(10, 207, 0, 30);

#[test]
fn a_client_reaches_servers_on_two_other_nodes_only_through_its_connections() {
    let grid = grid("lcm3n", 3);
    let spec = format!(
        r#"
name = "tri"
range = "10.207.0.0/24"
[appliances.client]
node = "{}"
ip = "{CLIENT}"
outputs = ["web", "api"]
[appliances.s2]
node = "{}"
ip = "{S2}"
inputs = {{ http = "http" }}
[appliances.s3]
node = "{}"
ip = "{S3}"
inputs = {{ api = "tcp/81" }}
[[connections]]
from = "client.web"
to = "s2.http"
[[connections]]
from = "client.api"
to = "s3.api"
"#,
        grid.node_name(1),
        grid.node_name(2),
        grid.node_name(3)
    );
    lcmd(&grid, 1, &["app", "apply", "-"], &spec);
    let client = Appliance::attach(&grid, 1, &tap_name("tri", "client"), CLIENT, GW);
    let s2 = Appliance::attach(&grid, 2, &tap_name("tri", "s2"), S2, GW);
    let s3 = Appliance::attach(&grid, 3, &tap_name("tri", "s3"), S3, GW);
    let _s2_80 = s2.serve(80);
    let _s2_81 = s2.serve(81);
    let _s3_80 = s3.serve(80);
    let _s3_81 = s3.serve(81);

    // By terminal name, each through its own connection.
    assert_eq!(client.resolve("web", GW), Some(S2));
    assert_eq!(client.resolve("api", GW), Some(S3));
    assert_eq!(
        client.resolve("s3", GW),
        None,
        "only terminal names resolve"
    );
    let web = client.http_get((S2, 80)).expect("client.web -> s2.http");
    assert!(web.ends_with("hello"), "{web}");
    let api = client.http_get((S3, 81)).expect("client.api -> s3.api");
    assert!(api.ends_with("hello"), "{api}");

    // Each server's other port: its connection admits one.
    assert!(client.http_get((S3, 80)).is_err(), "client reached s3:80");
    wait_event(
        &grid,
        "wrong-port",
        &[
            ("src_appliance", json!("client")),
            ("dst_appliance", json!("s3")),
            ("dst_port", json!(80)),
        ],
    );
    assert!(client.http_get((S2, 81)).is_err(), "client reached s2:81");
    wait_event(
        &grid,
        "wrong-port",
        &[
            ("src_appliance", json!("client")),
            ("dst_appliance", json!("s2")),
            ("dst_port", json!(81)),
        ],
    );

    // The two servers have no connection between them (node2 -> node3).
    assert!(s2.http_get((S3, 81)).is_err(), "s2 reached s3");
    wait_event(
        &grid,
        "undeclared-peer",
        &[
            ("src_appliance", json!("s2")),
            ("dst_ip", json!(S3.to_string())),
        ],
    );
    // Nor from the servers back to the client.
    assert!(
        s3.http_get((CLIENT, 80)).is_err(),
        "s3 opened a flow to client"
    );
    wait_event(
        &grid,
        "input-side-open",
        &[
            ("src_appliance", json!("s3")),
            ("dst_appliance", json!("client")),
        ],
    );

    // Both connections carried traffic, counted where it entered.
    wait_for(10, "statistics of both connections", || {
        let v: serde_json::Value =
            serde_json::from_str(&lcmd(&grid, 1, &["conn", "list", "--json"], "")).unwrap();
        let rows = v.as_array()?.clone();
        let ok = |id: &str| {
            rows.iter()
                .any(|c| c["id"] == id && c["packets"].as_u64().unwrap_or(0) > 3)
        };
        (ok("tri/client.web->s2.http") && ok("tri/client.api->s3.api")).then_some(())
    });
}
