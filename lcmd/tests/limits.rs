//! Statistics and limits on a grid in a box: an appliance declared with
//! `bw = { max = "20M" }` that sends as fast as TCP lets it has frames
//! dropped by its bandwidth limit, counted as `shaped` (and `drops`) of its
//! connection, while its stream still flows; and the connection's
//! round-trip time is measured from its TCP handshake. (How much gets
//! through is not asserted, being a timing: the token bucket's arithmetic
//! is tested with a fake clock in `bandwidth.rs`.)

mod common;

use common::{grid, lcmd, wait_for, Appliance};
use lcmd::model::tap_name;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener};
use std::time::{Duration, Instant};

const GW: Ipv4Addr = Ipv4Addr::new(10, 206, 0, 1);
const A: Ipv4Addr = Ipv4Addr::new(10, 206, 0, 10);
const B: Ipv4Addr = Ipv4Addr::new(10, 206, 0, 20);

#[test]
fn a_flow_over_its_appliances_limit_is_shaped_and_its_rtt_is_measured() {
    let grid = grid("lcmlim", 2);
    let spec = format!(
        "name = \"lim\"\nrange = \"10.206.0.0/24\"\n\
         [appliances.a]\nnode = \"{}\"\nip = \"{A}\"\noutputs = [\"b\"]\n\
         bw = {{ min = \"5M\", max = \"20M\" }}\n\
         [appliances.b]\nnode = \"{}\"\nip = \"{B}\"\ninputs = {{ sink = \"tcp/5201\" }}\n\
         [[connections]]\nfrom = \"a.b\"\nto = \"b.sink\"\n",
        grid.node_name(1),
        grid.node_name(2)
    );
    lcmd(&grid, 1, &["app", "apply", "-"], &spec);
    let a = Appliance::attach(&grid, 1, &tap_name("lim", "a"), A, GW);
    let b = Appliance::attach(&grid, 2, &tap_name("lim", "b"), B, GW);

    let l = b.run(|| TcpListener::bind("0.0.0.0:5201").unwrap());
    let reader = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        total
    });
    let mut s = a.connect((B, 5201)).expect("a reaches b.sink");
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let chunk = vec![7u8; 1 << 16];
    let mut sent = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        s.write_all(&chunk).expect("the shaped stream still flows");
        sent += chunk.len() as u64;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got, sent, "a shaped TCP stream loses no byte");

    let c = wait_for(
        10,
        "shaped drops and a round trip in the statistics",
        || {
            let v: serde_json::Value =
                serde_json::from_str(&lcmd(&grid, 1, &["conn", "list", "--json"], "")).unwrap();
            let c = v
                .as_array()?
                .iter()
                .find(|c| c["id"] == "lim/a.b->b.sink")?
                .clone();
            (c["shaped"].as_u64()? > 0 && c["rtt_samples"].as_u64()? >= 1).then_some(c)
        },
    );
    assert!(c["drops"].as_u64().unwrap() >= c["shaped"].as_u64().unwrap());
    assert!(c["rtt_us"].as_u64().unwrap() > 0, "{c}");
    assert!(c["bytes"].as_u64().unwrap() > 0, "{c}");

    // The appliance record keeps its bandwidth for the scheduler.
    let list = lcmd(&grid, 1, &["appliance", "list", "--json"], "");
    assert!(
        list.contains("\"max\":\"20M\"") || list.contains("\"max\": \"20M\""),
        "{list}"
    );
}
