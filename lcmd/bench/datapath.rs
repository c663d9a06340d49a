//! The LCM datapath benchmark (issue 7, "Benchmark (not a test)"), run by
//! `lcmd/bench/run.sh`: between two container appliances on two nodes of
//! one grid in a box, in one run and with the same two namespaces, TCP
//! throughput (iperf3) and UDP round-trip latency (p50/p99)
//!
//! 1. through lcmd (TAP, enforcement, BLAKE3-authenticated UDP tunnel);
//! 2. over a plain routed veth path: each appliance namespace gets a veth
//!    to its node, and the nodes route the two appliance subnets to each
//!    other over the same underlay bridge (no lcmd, no encapsulation);
//! 3. through tinc (Debian's `tincd`, router mode, default cipher and
//!    digest) running in the two node namespaces on the same underlay,
//!    with the nodes' routes to the appliance subnets switched to its
//!    tun device.
//!
//! Then prints a table with the ratios lcmd/veth and lcmd/tinc.
//! Environment: `BENCH_SECS` (iperf3 duration, default 10),
//! `BENCH_PINGS` (round trips per path, default 2000).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{grid, lcmd, Appliance};
use lcmd::model::tap_name;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GW: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 1);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 10);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 204, 0, 20);
/// Plain-path (and tinc) addresses: A in 10.205.1.0/24, B in 10.205.2.0/24.
const A_V: Ipv4Addr = Ipv4Addr::new(10, 205, 1, 2);
const B_V: Ipv4Addr = Ipv4Addr::new(10, 205, 2, 2);
const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7007;

struct Result {
    mbits: f64,
    retrans: u64,
    p50_us: f64,
    p99_us: f64,
    lost: usize,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// iperf3 from `a` to `b` at `dst` for `secs` seconds: Mbit/s received
/// and TCP retransmissions.
fn iperf(a: &Appliance, b: &Appliance, dst: Ipv4Addr, secs: u64) -> (f64, u64) {
    let mut server: Child = b.run(|| {
        Command::new("iperf3")
            .args(["-s", "-1", "-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 -s")
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = a.run(|| {
        Command::new("iperf3")
            .args([
                "-c",
                &dst.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
                "-t",
                &secs.to_string(),
                "-J",
            ])
            .output()
            .expect("iperf3 -c")
    });
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    if bps == 0.0 {
        eprintln!(
            "iperf3 to {dst} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (bps / 1e6, retrans)
}

/// `n` sequential UDP round trips from `a` to an echo server in `b`:
/// p50 and p99 in microseconds, and how many got no answer in 1 s.
fn rtt(a: &Appliance, b: &Appliance, dst: Ipv4Addr, n: usize) -> (f64, f64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let sock = b.run(|| UdpSocket::bind(("0.0.0.0", ECHO_PORT)).expect("echo bind"));
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let st = stop.clone();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !st.load(Ordering::SeqCst) {
            if let Ok((k, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..k], from);
            }
        }
    });
    let c = a.run(|| UdpSocket::bind("0.0.0.0:0").expect("client bind"));
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut samples = Vec::with_capacity(n);
    let mut lost = 0;
    let mut buf = [0u8; 64];
    for i in 0..(n + 50) as u64 {
        let t0 = Instant::now();
        c.send_to(&i.to_le_bytes(), (dst, ECHO_PORT)).unwrap();
        loop {
            match c.recv(&mut buf) {
                Ok(8) if buf[..8] == i.to_le_bytes() => {
                    // The first 50 warm up ARP, flows and caches.
                    if i >= 50 {
                        samples.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    if i >= 50 {
                        lost += 1;
                    }
                    break;
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let _ = echo.join();
    samples.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| {
        if samples.is_empty() {
            f64::NAN
        } else {
            samples[((samples.len() - 1) as f64 * p).round() as usize]
        }
    };
    (pct(0.5), pct(0.99), lost)
}

fn measure(a: &Appliance, b: &Appliance, dst: Ipv4Addr, secs: u64, pings: usize) -> Result {
    let (p50_us, p99_us, lost) = rtt(a, b, dst, pings);
    let (mbits, retrans) = iperf(a, b, dst, secs);
    Result {
        mbits,
        retrans,
        p50_us,
        p99_us,
        lost,
    }
}

/// A veth from appliance `ap` (as `vp0`, address `mine`/24) to node `node`
/// (as `ap<node>`, the subnet's `.1`), and the node's route to the other
/// appliance subnet `other` via `via` (the other node's underlay address).
fn plain_path(
    g: &devgrid::GridGuard,
    ap: &Appliance,
    node: usize,
    mine: Ipv4Addr,
    other: Ipv4Addr,
    via: Ipv4Addr,
) {
    let ns = g.layout().netns(node);
    let peer = format!("ap{node}");
    ap.run(|| {
        sh(Command::new("ip").args([
            "link", "add", "vp0", "type", "veth", "peer", "name", &peer, "netns", &ns,
        ]))
    });
    let o = mine.octets();
    let gw = Ipv4Addr::new(o[0], o[1], o[2], 1);
    let on = other.octets();
    let other_net = format!("{}.{}.{}.0/24", on[0], on[1], on[2]);
    ap.sh(&format!(
        "set -e; ip addr add {mine}/24 dev vp0; ip link set vp0 up; \
         ip route add {other_net} via {gw}"
    ));
    sh(g.command(node, "sh").args([
        "-c",
        &format!(
            "set -e; sysctl -qw net.ipv4.ip_forward=1; ip addr add {gw}/24 dev {peer}; \
             ip link set {peer} up; ip route replace {other_net} via {via}"
        ),
    ]));
}

/// tinc 1.0 configuration of node `me` (router mode, defaults otherwise).
fn tinc_config(dir: &std::path::Path, me: &str, other: &str, subnet: &str, addr: Ipv4Addr) {
    let d = dir.join(me);
    std::fs::create_dir_all(d.join("hosts")).unwrap();
    std::fs::write(
        d.join("tinc.conf"),
        format!(
            "Name = {me}\nMode = router\nDeviceType = tun\nInterface = tinc{me}\n\
             AddressFamily = ipv4\nConnectTo = {other}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("hosts").join(me),
        format!("Address = {addr}\nSubnet = {subnet}\n"),
    )
    .unwrap();
    let out = Command::new("tincd")
        .args(["-c", &d.display().to_string(), "-K2048"])
        .stdin(Stdio::null())
        .output()
        .expect("tincd -K");
    assert!(
        out.status.success(),
        "tincd -K: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let secs = env_num("BENCH_SECS", 10);
    let pings = env_num("BENCH_PINGS", 2000) as usize;
    let g = grid("lcmbench", 2);
    let (n1, n2) = (g.node_name(1), g.node_name(2));
    let spec = format!(
        "name = \"bench\"\nrange = \"10.204.0.0/24\"\n\
         [appliances.a]\nnode = \"{n1}\"\nip = \"{A_IP}\"\noutputs = [\"b\", \"echo\"]\n\
         [appliances.b]\nnode = \"{n2}\"\nip = \"{B_IP}\"\n\
         inputs = {{ sink = \"tcp/{IPERF_PORT}\", echo = \"udp/{ECHO_PORT}\" }}\n\
         [[connections]]\nfrom = \"a.b\"\nto = \"b.sink\"\n\
         [[connections]]\nfrom = \"a.echo\"\nto = \"b.echo\"\n"
    );
    lcmd(&g, 1, &["app", "apply", "-"], &spec);
    let a = Appliance::attach(&g, 1, &tap_name("bench", "a"), A_IP, GW);
    let b = Appliance::attach(&g, 2, &tap_name("bench", "b"), B_IP, GW);

    // The plain path.
    plain_path(&g, &a, 1, A_V, B_V, g.addr(2));
    plain_path(&g, &b, 2, B_V, A_V, g.addr(1));

    // tinc: keys and configuration, each node's host file copied to the
    // other.
    let dir = std::env::temp_dir().join(format!("lcmbench-tinc-{}", std::process::id()));
    tinc_config(&dir, "n1", "n2", "10.205.1.0/24", g.addr(1));
    tinc_config(&dir, "n2", "n1", "10.205.2.0/24", g.addr(2));
    for (x, y) in [("n1", "n2"), ("n2", "n1")] {
        std::fs::copy(
            dir.join(x).join("hosts").join(x),
            dir.join(y).join("hosts").join(x),
        )
        .unwrap();
    }
    let version = Command::new("tincd")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();

    let mut results = Vec::new();
    eprintln!("measuring lcmd ...");
    results.push(("lcmd", measure(&a, &b, B_IP, secs, pings)));
    eprintln!("measuring plain veth path ...");
    results.push(("veth", measure(&a, &b, B_V, secs, pings)));

    eprintln!("measuring tinc ...");
    let mut tincds = Vec::new();
    for (i, me) in [(1, "n1"), (2, "n2")] {
        tincds.push(
            g.command(i, "tincd")
                .args([
                    "-c",
                    &dir.join(me).display().to_string(),
                    "-D",
                    &format!("--pidfile={}", dir.join(me).join("pid").display()),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tincd"),
        );
    }
    for (i, me, other) in [(1, "n1", "10.205.2.0/24"), (2, "n2", "10.205.1.0/24")] {
        common::wait_for(15, &format!("tinc{me} on node{i}"), || {
            g.command(i, "ip")
                .args(["link", "set", &format!("tinc{me}"), "up"])
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
                .then_some(())
        });
        sh(g.command(i, "ip")
            .args(["route", "replace", other, "dev", &format!("tinc{me}")]));
    }
    // Wait for the two tincds to have met (the meta connection and its
    // key exchange): a round trip goes through.
    common::wait_for(30, "tinc to connect", || {
        let c = a.run(|| UdpSocket::bind("0.0.0.0:0").unwrap());
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let e = b.run(|| UdpSocket::bind(("0.0.0.0", ECHO_PORT)).unwrap());
        e.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        c.send_to(b"hi", (B_V, ECHO_PORT)).unwrap();
        let mut buf = [0u8; 8];
        e.recv_from(&mut buf).ok().map(|_| ())
    });
    results.push(("tinc", measure(&a, &b, B_V, secs, pings)));
    for mut t in tincds {
        let _ = t.kill();
        let _ = t.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "LCM datapath benchmark: 2 nodes, one run, iperf3 -t {secs} (1 stream), \
         {pings} sequential UDP round trips"
    );
    println!(
        "underlay: the grid's bridge, MTU {} (every path crosses it)",
        devgrid::UNDERLAY_MTU
    );
    println!("tinc: {version}, router mode, default cipher/digest");
    println!();
    println!(
        "{:<6} {:>12} {:>8} {:>12} {:>12} {:>6}",
        "path", "TCP Mbit/s", "retrans", "RTT p50 us", "RTT p99 us", "lost"
    );
    for (name, r) in &results {
        println!(
            "{:<6} {:>12.0} {:>8} {:>12.0} {:>12.0} {:>6}",
            name, r.mbits, r.retrans, r.p50_us, r.p99_us, r.lost
        );
    }
    let l = &results[0].1;
    for (name, r) in &results[1..] {
        println!(
            "lcmd/{name}: throughput {:.2}x, RTT p50 {:.2}x, RTT p99 {:.2}x",
            l.mbits / r.mbits,
            l.p50_us / r.p50_us,
            l.p99_us / r.p99_us
        );
    }
    let (veth, tinc) = (&results[1].1, &results[2].1);
    println!(
        "targets: lcmd >= 2x tinc: {}; lcmd >= veth/2: {}",
        if l.mbits >= 2.0 * tinc.mbits {
            "met"
        } else {
            "NOT met"
        },
        if l.mbits >= veth.mbits / 2.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
