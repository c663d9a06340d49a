//! The grid in a box's own tests: reachability by name, cuts, and that
//! nothing of a grid survives `down` or a panicking test.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use devgrid::{DaemonSpec, GridConfig, GridGuard};

/// Everything of grid `name` still visible on the machine.
fn leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    for line in mounts.lines() {
        if line.contains(&format!("/devgrid/{name}/")) || line.contains(&format!("dg-{name}-")) {
            found.push(format!("mount: {line}"));
        }
    }
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        if line.starts_with(&format!("dg-{name}-")) {
            found.push(format!("netns: {line}"));
        }
    }
    for e in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
        let dev = e.file_name().to_string_lossy().into_owned();
        if dev.starts_with(&format!("dg{name}")) {
            found.push(format!("link: {dev}"));
        }
    }
    for dir in [
        format!("/run/devgrid/{name}"),
        format!("/var/lib/devgrid/{name}"),
    ] {
        if std::path::Path::new(&dir).exists() {
            found.push(format!("dir: {dir}"));
        }
    }
    found
}

fn sleeper() -> DaemonSpec {
    DaemonSpec {
        name: "sleeper".into(),
        on_first: None,
        prepare: None,
        argv: vec!["sleep".into(), "infinity".into()],
        ready: Some(vec!["true".into()]),
    }
}

fn bare(name: &str, nodes: usize) -> GridConfig {
    GridConfig {
        daemons: vec![],
        ..GridConfig::new(name, nodes)
    }
}

/// Opens a TCP connection from node `from` to `to`'s listener, by address,
/// giving up after a second.
fn connect(grid: &GridGuard, from: usize, to: SocketAddr) -> std::io::Result<TcpStream> {
    grid.in_netns(from, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(1))
    })
    .unwrap()
}

#[test]
fn three_nodes_reach_each_other_by_name() {
    let grid = GridGuard::up_with(&bare("hreach", 3)).unwrap();
    for to in 1..=3 {
        let listener = grid
            .in_netns(to, || TcpListener::bind("0.0.0.0:7001"))
            .unwrap()
            .unwrap();
        for from in (1..=3).filter(|&f| f != to) {
            // bash resolves the name with the node's /etc/hosts.
            let script = format!("exec 3<>/dev/tcp/node{to}/7001 && echo from{from} >&3");
            let st = grid
                .command(from, "bash")
                .args(["-c", &script])
                .status()
                .unwrap();
            assert!(st.success(), "node{from} could not reach node{to} by name");
            let (mut conn, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip(), grid.addr(from));
            let mut got = String::new();
            conn.read_to_string(&mut got).unwrap();
            assert_eq!(got.trim(), format!("from{from}"));
        }
    }
    let out = grid.command(2, "hostname").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node2");
}

#[test]
fn a_cut_node_reaches_nobody_and_heals() {
    let grid = GridGuard::up_with(&bare("hcut", 3)).unwrap();
    let listeners: Vec<TcpListener> = (1..=3)
        .map(|i| {
            grid.in_netns(i, || TcpListener::bind("0.0.0.0:7002"))
                .unwrap()
                .unwrap()
        })
        .collect();
    let at = |i: usize| SocketAddr::new(grid.addr(i).into(), 7002);
    connect(&grid, 1, at(2)).expect("before the cut");

    grid.cut(2, false).unwrap();
    assert_eq!(grid.status().unwrap()[1].cut, "both ways");
    assert!(connect(&grid, 1, at(2)).is_err(), "node1 reached cut node2");
    assert!(connect(&grid, 3, at(2)).is_err(), "node3 reached cut node2");
    assert!(connect(&grid, 2, at(1)).is_err(), "cut node2 reached node1");
    connect(&grid, 1, at(3)).expect("the others still talk");

    grid.heal(2).unwrap();
    assert_eq!(grid.status().unwrap()[1].cut, "no");
    connect(&grid, 1, at(2)).expect("after heal");
    connect(&grid, 2, at(3)).expect("after heal");
    drop(listeners);
}

#[test]
fn a_oneway_cut_drops_only_outgoing_traffic() {
    let grid = GridGuard::up_with(&bare("honeway", 2)).unwrap();
    let sock = |i: usize| {
        let s = grid
            .in_netns(i, || UdpSocket::bind("0.0.0.0:7003"))
            .unwrap()
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        s
    };
    let (s1, s2) = (sock(1), sock(2));
    let at = |i: usize| SocketAddr::new(grid.addr(i).into(), 7003);
    let mut buf = [0u8; 16];

    grid.cut(1, true).unwrap();
    assert_eq!(grid.status().unwrap()[0].cut, "outgoing");
    // The local firewall's drop shows to the sender as EPERM, or not at all.
    let _ = s1.send_to(b"out", at(2));
    assert!(
        s2.recv_from(&mut buf).is_err(),
        "node1's outgoing packet arrived"
    );
    s2.send_to(b"in", at(1)).unwrap();
    let (n, from) = s1.recv_from(&mut buf).expect("incoming packet dropped");
    assert_eq!((&buf[..n], from), (&b"in"[..], at(2)));

    grid.heal(1).unwrap();
    s1.send_to(b"out", at(2)).unwrap();
    assert!(s2.recv_from(&mut buf).is_ok(), "still cut after heal");
}

#[test]
fn daemons_are_killed_and_started_and_down_leaves_nothing() {
    let name = "hdown";
    let cfg = GridConfig {
        daemons: vec![sleeper()],
        ..bare(name, 2)
    };
    let grid = GridGuard::up_with(&cfg).unwrap();
    let first = grid.pid(2, "sleeper").expect("sleeper runs on node2");

    grid.kill(2, Some("sleeper")).unwrap();
    assert!(grid.pid(2, "sleeper").is_none());
    assert!(!std::path::Path::new(&format!("/proc/{first}")).exists());
    let err = grid.kill(2, Some("nosuch")).unwrap_err().to_string();
    assert!(err.contains("runs no daemon \"nosuch\""), "{err}");

    grid.start(2, None).unwrap();
    let second = grid.pid(2, "sleeper").expect("restarted");
    assert_ne!(first, second);

    // A TAP device and a stray process inside a node go with the grid too.
    let st = grid
        .command(1, "ip")
        .args(["tuntap", "add", "mode", "tap", "name", "apptap0"])
        .status()
        .unwrap();
    assert!(st.success());
    // Not waited on here: `down` kills and reaps it, which is under test.
    #[allow(clippy::zombie_processes)]
    let stray = grid.command(1, "sleep").arg("1000").spawn().unwrap();
    let pids = [grid.pid(1, "sleeper").unwrap(), second, stray.id() as i32];

    drop(grid);
    assert_eq!(leftovers(name), Vec::<String>::new());
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} survived down"
        );
    }
}

#[test]
fn a_panicking_test_leaves_nothing() {
    let name = "hpanic";
    let cfg = GridConfig {
        daemons: vec![sleeper()],
        ..bare(name, 2)
    };
    let pid = std::thread::spawn(move || {
        let grid = GridGuard::up_with(&cfg).unwrap();
        let pid = grid.pid(1, "sleeper").unwrap();
        std::panic::panic_any(pid);
    })
    .join()
    .unwrap_err();
    let pid = *pid.downcast::<i32>().unwrap();
    assert_eq!(leftovers(name), Vec::<String>::new());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn two_grids_run_side_by_side() {
    let a = GridGuard::up_with(&bare("hsidea", 1)).unwrap();
    let b = GridGuard::up_with(&bare("hsideb", 1)).unwrap();
    assert_ne!(a.addr(1), b.addr(1));
    assert_ne!(a.layout().bridge(), b.layout().bridge());
    let err = devgrid::Grid::up(&bare("hsidea", 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already up"), "{err}");
}
