//! Helpers of lcmd's grid tests: a grid running metad and lcmd, container
//! appliances (a network namespace whose only interface is the lcmd TAP),
//! a tiny DNS client and the event log.

#![allow(dead_code)]

use devgrid::{GridConfig, GridGuard};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// A grid of `nodes` nodes running only metad and lcmd.
pub fn grid(name: &str, nodes: usize) -> GridGuard {
    let mut cfg = GridConfig::new(name, nodes);
    cfg.daemons
        .retain(|d| d.name == "metad" || d.name == "lcmd");
    GridGuard::up_with(&cfg).expect("grid up")
}

/// Runs `lcmd ARGS` in node `i`, with `stdin`, and returns its stdout.
pub fn lcmd(grid: &GridGuard, i: usize, args: &[&str], stdin: &str) -> String {
    let mut child = grid
        .command(i, "lcmd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lcmd runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lcmd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns `Some`, for up to `secs` seconds.
pub fn wait_for<T>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    devgrid::wait_for(Duration::from_secs(secs), what, f)
}

/// The security events in the grid, as JSON values.
pub fn events(grid: &GridGuard) -> Vec<serde_json::Value> {
    lcmd(grid, 1, &["events", "--json"], "")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits for an event matching `reason` and every `(field, value)`.
pub fn wait_event(
    grid: &GridGuard,
    reason: &str,
    fields: &[(&str, serde_json::Value)],
) -> serde_json::Value {
    wait_for(15, &format!("event {reason} {fields:?}"), || {
        events(grid)
            .into_iter()
            .find(|e| e["reason"] == reason && fields.iter().all(|(k, v)| &e[*k] == v))
    })
}

/// A container appliance: a network namespace (kept alive by a file
/// descriptor, so it disappears with this value and leaves no mount)
/// whose only interface, `eth0`, is the TAP lcmd made for it.
pub struct Appliance {
    ns: File,
}

impl Appliance {
    /// Moves TAP `tap` from node `node` into a new namespace and
    /// configures it as `ip`/24 with the range's gateway `gw`.
    pub fn attach(
        grid: &GridGuard,
        node: usize,
        tap: &str,
        ip: Ipv4Addr,
        gw: Ipv4Addr,
    ) -> Appliance {
        let a = Appliance { ns: new_netns() };
        a.plug(grid, node, tap, ip, gw);
        a
    }

    /// Moves TAP `tap` of node `node` in as `eth0` (replacing nothing: the
    /// old `eth0` must be gone) and configures it.
    pub fn plug(&self, grid: &GridGuard, node: usize, tap: &str, ip: Ipv4Addr, gw: Ipv4Addr) {
        // Wait until lcmd has configured it (it is up last): moving it
        // earlier makes lcmd's configuration fail and the TAP go away.
        wait_for(15, &format!("TAP {tap} up on node{node}"), || {
            let out = grid
                .command(node, "ip")
                .args(["-o", "link", "show", "dev", tap])
                .output()
                .unwrap();
            (out.status.success() && String::from_utf8_lossy(&out.stdout).contains(",UP"))
                .then_some(())
        });
        // `ip link set netns PID` needs a task in the namespace: a thread
        // that enters it and waits.
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let ns = &self.ns;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
                tx.send(nix::unistd::gettid().as_raw()).unwrap();
                let _ = done_rx.recv();
            });
            let tid = rx.recv().unwrap();
            let st = grid
                .command(node, "ip")
                .args(["link", "set", "dev", tap, "netns", &tid.to_string()])
                .status()
                .unwrap();
            drop(done_tx);
            assert!(st.success(), "moving {tap} into the appliance");
        });
        self.sh(&format!(
            "set -e; sysctl -qw net.ipv6.conf.all.disable_ipv6=1; ip link set lo up; \
             ip link set dev {tap} name eth0; ip addr add {ip}/24 dev eth0; ip link set eth0 up; \
             ip route add default via {gw}"
        ));
    }

    /// Runs `f` on a thread inside the appliance: sockets it opens live there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Runs a shell script inside the appliance; it must succeed.
    pub fn sh(&self, script: &str) {
        let out = self.run(|| Command::new("sh").args(["-c", script]).output().unwrap());
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Resolves `name` with lcmd's DNS at `gw`.
    pub fn resolve(&self, name: &str, gw: Ipv4Addr) -> Option<Ipv4Addr> {
        self.run(|| resolve(name, gw))
    }

    /// Opens a TCP connection from inside the appliance.
    pub fn connect(&self, to: (Ipv4Addr, u16)) -> std::io::Result<TcpStream> {
        self.run(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)))
    }

    /// An HTTP GET; the whole answer.
    pub fn http_get(&self, to: (Ipv4Addr, u16)) -> std::io::Result<String> {
        let mut s = self.connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r)
    }

    /// A server inside the appliance (see [`Server`]).
    pub fn serve(&self, port: u16) -> Server {
        let l = self.run(|| TcpListener::bind(("0.0.0.0", port)).unwrap());
        Server::start(l)
    }
}

/// A new network namespace, held by a descriptor.
pub fn new_netns() -> File {
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).unwrap();
        File::open("/proc/thread-self/ns/net").unwrap()
    })
    .join()
    .unwrap()
}

/// A TCP server that answers HTTP requests with `hello` and records what
/// each connection sent.
pub struct Server {
    /// What each connection sent, in order.
    pub got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(l: TcpListener) -> Server {
        l.set_nonblocking(true).unwrap();
        let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let g = g.clone();
                std::thread::spawn(move || {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = vec![0u8; 4096];
                    let n = c.read(&mut buf).unwrap_or(0);
                    g.lock().unwrap().push(buf[..n].to_vec());
                    if buf[..n].starts_with(b"GET") {
                        let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello");
                    }
                });
            }
        });
        Server {
            got,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A DNS query for `name` (type A) to `server`; the address, or `None` for
/// NXDOMAIN or no answer.
pub fn resolve(name: &str, server: Ipv4Addr) -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    for _ in 0..3 {
        s.send_to(&q, (server, 53)).unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = s.recv(&mut buf) {
            if n < 12 || buf[..2] != [0xab, 0xcd] {
                continue;
            }
            let ancount = u16::from_be_bytes([buf[6], buf[7]]);
            if buf[3] & 0xf != 0 || ancount == 0 {
                return None;
            }
            return Some(Ipv4Addr::new(
                buf[n - 4],
                buf[n - 3],
                buf[n - 2],
                buf[n - 1],
            ));
        }
    }
    None
}
