//! A measurement, not a test (`--ignored`): TCP throughput between two
//! container appliances on two nodes, through both lcmds and the tunnel.

mod common;

use common::{grid, lcmd, Appliance};
use lcmd::model::tap_name;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener};
use std::time::{Duration, Instant};

#[test]
#[ignore]
fn tcp_throughput_between_two_nodes() {
    let gw = Ipv4Addr::new(10, 202, 0, 1);
    let (a_ip, b_ip) = (Ipv4Addr::new(10, 202, 0, 10), Ipv4Addr::new(10, 202, 0, 20));
    let grid = grid("lcmbw", 2);
    let spec = format!(
        "name = \"bw\"\nrange = \"10.202.0.0/24\"\n[appliances.a]\nnode = \"{}\"\nip = \"{a_ip}\"\noutputs = [\"b\"]\n\
         [appliances.b]\nnode = \"{}\"\nip = \"{b_ip}\"\ninputs = {{ sink = \"tcp/5201\" }}\n\
         [[connections]]\nfrom = \"a.b\"\nto = \"b.sink\"\n",
        grid.node_name(1),
        grid.node_name(2)
    );
    lcmd(&grid, 1, &["app", "apply", "-"], &spec);
    let a = Appliance::attach(&grid, 1, &tap_name("bw", "a"), a_ip, gw);
    let b = Appliance::attach(&grid, 2, &tap_name("bw", "b"), b_ip, gw);
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
    let mut s = a.connect((b_ip, 5201)).unwrap();
    let chunk = vec![7u8; 1 << 16];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(Shutdown::Write).unwrap();
    let total = reader.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "lcmd tunnel, 2 nodes: {:.0} Mbit/s ({total} bytes in {secs:.1} s)",
        total as f64 * 8.0 / secs / 1e6
    );
}
