//! Container appliances on two nodes of a grid in a box: a declared
//! connection works by terminal name, everything else is dropped and
//! reported with its reason, and tunnel packets that are forged or
//! replayed are dropped and reported.

mod common;

use common::{events, grid, lcmd, wait_event, wait_for, Appliance};
use lcmd::model::tap_name;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::time::Duration;

const GW: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 1);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 10);
const DB: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 20);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 200, 1, 30);

fn spec(n1: &str, n2: &str) -> String {
    format!(
        r#"
name = "shop"
range = "10.200.1.0/24"
[appliances.web]
node = "{n1}"
ip = "{WEB}"
outputs = ["db", "ping"]
[appliances.db]
node = "{n2}"
ip = "{DB}"
inputs = {{ http = "http", ping = "udp/5000" }}
[appliances.other]
node = "{n2}"
ip = "{OTHER}"
inputs = {{ x = "tcp/80" }}
[[connections]]
from = "web.db"
to = "db.http"
[[connections]]
from = "web.ping"
to = "db.ping"
"#
    )
}

#[test]
fn a_declared_connection_works_by_name_and_everything_else_is_reported() {
    let grid = grid("lcmhttp", 2);
    lcmd(
        &grid,
        1,
        &["app", "apply", "-"],
        &spec(&grid.node_name(1), &grid.node_name(2)),
    );
    let web = Appliance::attach(&grid, 1, &tap_name("shop", "web"), WEB, GW);
    let db = Appliance::attach(&grid, 2, &tap_name("shop", "db"), DB, GW);
    let other = Appliance::attach(&grid, 2, &tap_name("shop", "other"), OTHER, GW);
    let db_http = db.serve(80);
    let _db_81 = db.serve(81);
    let _other_80 = other.serve(80);
    let _web_80 = web.serve(80);

    // By terminal name, through the declared connection.
    assert_eq!(web.resolve("db", GW), Some(DB));
    assert_eq!(
        web.resolve("other", GW),
        None,
        "only terminal names resolve"
    );
    let answer = web
        .http_get((DB, 80))
        .expect("web reaches db through web.db -> db.http");
    assert!(answer.ends_with("hello"), "{answer}");

    // An appliance web has no connection to.
    assert!(web.http_get((OTHER, 80)).is_err(), "web reached other");
    wait_event(
        &grid,
        "undeclared-peer",
        &[
            ("src_appliance", json!("web")),
            ("dst_ip", json!(OTHER.to_string())),
            ("dst_port", json!(80)),
        ],
    );

    // Another port of its server.
    assert!(web.http_get((DB, 81)).is_err(), "web reached db:81");
    let e = wait_event(
        &grid,
        "wrong-port",
        &[
            ("src_appliance", json!("web")),
            ("dst_appliance", json!("db")),
            ("dst_port", json!(81)),
        ],
    );
    assert_eq!(
        (
            e["app"].clone(),
            e["src_terminal"].clone(),
            e["proto"].clone()
        ),
        (json!("shop"), json!("db"), json!(6))
    );

    // A flow opened from the input side.
    assert!(db.http_get((WEB, 80)).is_err(), "db opened a flow to web");
    let e = wait_event(
        &grid,
        "input-side-open",
        &[
            ("src_appliance", json!("db")),
            ("dst_appliance", json!("web")),
        ],
    );
    assert_eq!(e["src_terminal"], json!("http"));

    // A non-HTTP payload on the http connection.
    let mut s = web.connect((DB, 80)).expect("the handshake passes");
    s.write_all(b"HELLO NOT HTTP\r\n").unwrap();
    wait_event(
        &grid,
        "not-http",
        &[("src_appliance", json!("web")), ("dst_port", json!(80))],
    );
    // Whether the server received `needle` on any connection.
    let arrived = |needle: &[u8]| {
        db_http
            .got
            .lock()
            .unwrap()
            .iter()
            .any(|g| g.windows(needle.len()).any(|w| w == needle))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!arrived(b"HELLO"), "the non-HTTP payload arrived");
    drop(s);

    // A good request with something else behind it: every byte of the
    // flow is checked, not only its first request.
    let not_http = || {
        events(&grid)
            .iter()
            .filter(|e| e["reason"] == json!("not-http"))
            .count()
    };
    let before = not_http();
    let mut s = web.connect((DB, 80)).expect("the handshake passes");
    s.write_all(b"GET /one HTTP/1.1\r\nHost: db\r\n\r\nSMUGGLED BYTES\r\n\r\n")
        .unwrap();
    wait_for(20, "a second not-http event", || {
        (not_http() > before).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !arrived(b"SMUGGLED"),
        "bytes after the first request arrived unchecked"
    );
    drop(s);

    // A spoofed source address, then a spoofed source MAC.
    web.sh("ip addr add 10.200.1.99/32 dev eth0");
    web.run(|| {
        UdpSocket::bind("10.200.1.99:0")
            .unwrap()
            .send_to(b"x", (DB, 5000))
            .unwrap()
    });
    wait_event(
        &grid,
        "spoofed-ip",
        &[
            ("src_appliance", json!("web")),
            ("src_ip", json!("10.200.1.99")),
        ],
    );
    web.sh("ip addr del 10.200.1.99/32 dev eth0; ip link set eth0 address 02:00:00:00:00:99");
    web.run(|| {
        UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .send_to(b"x", (DB, 5000))
            .unwrap()
    });
    wait_event(&grid, "spoofed-mac", &[("src_appliance", json!("web"))]);

    // Statistics of the connection.
    let conns = wait_for(10, "statistics", || {
        let v: serde_json::Value =
            serde_json::from_str(&lcmd(&grid, 2, &["conn", "list", "--json"], "")).unwrap();
        let c = v
            .as_array()?
            .iter()
            .find(|c| c["id"] == "shop/web.db->db.http")?
            .clone();
        (c["packets"].as_u64()? > 5 && c["drops"].as_u64()? >= 1).then_some(c)
    });
    assert!(conns["bytes"].as_u64().unwrap() > 100, "{conns}");
}

/// Captures, in node 1, the next tunnel datagram it sends to `to`.
fn capture_tunnel_datagram(to: Ipv4Addr) -> Vec<u8> {
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        // ETH_P_ALL: outgoing packets reach only "all protocols" taps.
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        );
        assert!(fd >= 0, "AF_PACKET socket");
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        let end = std::time::Instant::now() + Duration::from_secs(10);
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut buf = vec![0u8; 65536];
        loop {
            let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
            assert!(
                std::time::Instant::now() < end,
                "no tunnel datagram captured"
            );
            if n < 28 || buf[0] >> 4 != 4 {
                continue;
            }
            let p = &buf[..n as usize];
            let ihl = ((p[0] & 0xf) as usize) * 4;
            if p[9] == 17
                && p[16..20] == to.octets()
                && u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]) == 2395
            {
                libc::close(fd);
                return p[ihl + 8..].to_vec();
            }
        }
    }
}

#[test]
fn forged_and_replayed_tunnel_packets_are_dropped_and_reported() {
    let grid = grid("lcmtun", 2);
    lcmd(
        &grid,
        1,
        &["app", "apply", "-"],
        &spec(&grid.node_name(1), &grid.node_name(2)),
    );
    let web = Appliance::attach(&grid, 1, &tap_name("shop", "web"), WEB, GW);
    let db = Appliance::attach(&grid, 2, &tap_name("shop", "db"), DB, GW);
    let sink = db.run(|| UdpSocket::bind("0.0.0.0:5000").unwrap());
    sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 100];
    let ping = web.resolve("ping", GW).expect("the terminal name resolves");
    assert_eq!(ping, DB);
    let node2 = grid.addr(2);

    // A genuine datagram, captured on its way.
    let captured = std::thread::scope(|s| {
        let cap = s.spawn(|| grid.in_netns(1, || capture_tunnel_datagram(node2)).unwrap());
        std::thread::sleep(Duration::from_millis(300));
        web.run(|| {
            UdpSocket::bind("0.0.0.0:0")
                .unwrap()
                .send_to(b"ping-1", (ping, 5000))
                .unwrap()
        });
        cap.join().unwrap()
    });
    let (n, _) = sink
        .recv_from(&mut buf)
        .expect("the genuine datagram arrives");
    assert_eq!(&buf[..n], b"ping-1");

    // Sent again, from node1's own address: a replay.
    let send = |d: &[u8]| {
        grid.in_netns(1, || {
            UdpSocket::bind("0.0.0.0:0")
                .unwrap()
                .send_to(d, (node2, 2395))
                .unwrap()
        })
        .unwrap()
    };
    send(&captured);
    assert!(
        sink.recv_from(&mut buf).is_err(),
        "a replayed datagram was delivered"
    );
    wait_event(
        &grid,
        "replayed-tunnel-packet",
        &[
            ("app", json!("shop")),
            ("src_ip", json!(grid.addr(1).to_string())),
        ],
    );

    // One byte of the frame changed (and a fresh sequence number): a forgery.
    let mut forged = captured.clone();
    forged[20] ^= 0x40;
    let last = forged.len() - 20;
    forged[last] ^= 1;
    send(&forged);
    assert!(
        sink.recv_from(&mut buf).is_err(),
        "a forged datagram was delivered"
    );
    wait_event(&grid, "forged-tunnel-packet", &[("app", json!("shop"))]);

    // Garbage of no application.
    send(b"LCM1 not a real tunnel packet at all, just bytes of the right length......");
    wait_event(&grid, "forged-tunnel-packet", &[("app", json!(null))]);

    // The genuine path still works.
    web.run(|| {
        UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .send_to(b"ping-2", (ping, 5000))
            .unwrap()
    });
    let (n, _) = sink.recv_from(&mut buf).expect("traffic still flows");
    assert_eq!(&buf[..n], b"ping-2");
}

#[test]
fn a_large_request_body_crosses_an_http_connection_whole() {
    let grid = grid("lcmbig", 2);
    lcmd(
        &grid,
        1,
        &["app", "apply", "-"],
        &spec(&grid.node_name(1), &grid.node_name(2)),
    );
    let web = Appliance::attach(&grid, 1, &tap_name("shop", "web"), WEB, GW);
    let db = Appliance::attach(&grid, 2, &tap_name("shop", "db"), DB, GW);
    // The body crosses as TSO segments whose checksums the receiving
    // kernel fills in (NEEDS_CSUM), in tunnel pieces: the http check
    // commits each segment once it is sent, so none is refused as
    // beyond the checked bytes and the flow does not stall.
    let body = vec![b'x'; 8 << 20];
    let head = format!(
        "POST /big HTTP/1.1\r\nHost: db\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let listener = db.run(|| TcpListener::bind(("0.0.0.0", 80)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        got.len()
    });
    let mut s = web.connect((DB, 80)).expect("the handshake passes");
    // Only to end a stalled flow (a write that blocks for good) with a
    // failure rather than a hang.
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).expect("the flow stalled");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), head.len() + body.len());
}
