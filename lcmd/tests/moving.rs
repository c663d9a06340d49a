//! Moving: a TCP stream between two container appliances goes on, with no
//! reset and no byte lost, while the server appliance moves to another
//! node (its TAP and the tunnels follow the model in metad).

mod common;

use common::{grid, lcmd, wait_for, Appliance};
use lcmd::model::tap_name;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener};
use std::time::{Duration, Instant};

const GW: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 20);

fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

#[test]
fn a_tcp_stream_survives_moving_its_server_to_another_node() {
    let grid = grid("lcmmove", 2);
    let (n1, n2) = (grid.node_name(1), grid.node_name(2));
    let spec = format!(
        r#"
name = "mv"
range = "10.201.0.0/24"
[appliances.client]
node = "{n1}"
ip = "{CLIENT}"
outputs = ["srv"]
[appliances.server]
node = "{n2}"
ip = "{SERVER}"
inputs = {{ data = "tcp/7000" }}
[[connections]]
from = "client.srv"
to = "server.data"
"#
    );
    lcmd(&grid, 1, &["app", "apply", "-"], &spec);
    let tap = tap_name("mv", "server");
    let client = Appliance::attach(&grid, 1, &tap_name("mv", "client"), CLIENT, GW);
    let server = Appliance::attach(&grid, 2, &tap, SERVER, GW);

    let listener = server.run(|| TcpListener::bind("0.0.0.0:7000").unwrap());
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0u64;
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                return Ok::<u64, std::io::Error>(total);
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(
                    *b,
                    pattern(total + k as u64),
                    "byte {} corrupted",
                    total + k as u64
                );
            }
            total += n as u64;
        }
    });

    let mut s = client.connect((SERVER, 7000)).expect("connects");
    let mut sent = 0u64;
    let mut chunk = vec![0u8; 16384];
    let mut write_for = |s: &mut std::net::TcpStream, d: Duration, sent: &mut u64| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            for (k, b) in chunk.iter_mut().enumerate() {
                *b = pattern(*sent + k as u64);
            }
            s.write_all(&chunk).expect("no reset while writing");
            *sent += chunk.len() as u64;
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    write_for(&mut s, Duration::from_secs(1), &mut sent);
    let before = sent;

    // Move the server to node1, as a migration would: the model changes,
    // node2's lcmd closes the old TAP (the appliance's eth0 goes away),
    // node1's lcmd makes a new one, and the appliance's NIC is re-plugged.
    let moving = std::thread::scope(|sc| {
        let w = sc.spawn(|| {
            write_for(&mut s, Duration::from_secs(6), &mut sent);
        });
        let t0 = Instant::now();
        lcmd(&grid, 1, &["appliance", "move", "mv", "server", &n1], "");
        wait_for(15, "the old NIC to go", || {
            server
                .run(|| {
                    std::process::Command::new("ip")
                        .args(["link", "show", "eth0"])
                        .output()
                        .unwrap()
                })
                .status
                .success()
                .then_some(())
                .xor(Some(()))
        });
        server.plug(&grid, 1, &tap, SERVER, GW);
        let took = t0.elapsed();
        w.join().unwrap();
        took
    });
    write_for(&mut s, Duration::from_secs(1), &mut sent);
    s.shutdown(Shutdown::Write).unwrap();
    let got = reader.join().unwrap().expect("no reset while reading");
    assert!(sent > before, "the stream did not go on");
    assert_eq!(got, sent, "bytes lost");
    eprintln!("moved in {moving:?}; {sent} bytes streamed, none lost");

    let list = lcmd(&grid, 2, &["appliance", "list", "--json"], "");
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "server" && a["node"] == n1.as_str()));
}
