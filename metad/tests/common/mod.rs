//! Test harness: real `metad` processes on 127.0.0.1, each with its own port
//! and data directory, killed (and the directories removed) when the
//! [`Cluster`] is dropped, also when a test panics.
#![allow(dead_code)] // each test binary uses a different part of the harness

use metad::{Client, ClientConfig, Secret};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The binary under test.
pub const METAD: &str = env!("CARGO_BIN_EXE_metad");

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member process.
pub struct Member {
    /// Member id.
    pub id: u64,
    /// Data directory.
    pub dir: PathBuf,
    /// host:port.
    pub addr: String,
    child: Option<Child>,
}

/// A cluster of member processes.
pub struct Cluster {
    /// Root of the data directories.
    pub root: PathBuf,
    /// Extra arguments of `metad run`.
    run_args: Vec<String>,
    /// The members, member i+1 at index i.
    pub members: Vec<Member>,
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running metad");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// Starts a cluster of `n` members: `init` + `run` for the first,
    /// `join` + `run` for each other.
    pub fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// Like [`Cluster::start`], with extra arguments for `metad run`.
    pub fn start_with(n: usize, run_args: &[&str]) -> Cluster {
        let root =
            std::env::temp_dir().join(format!("metad-test-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&root).unwrap();
        let run_args = run_args.iter().map(|s| s.to_string()).collect();
        let mut c = Cluster {
            root,
            run_args,
            members: Vec::new(),
        };
        for i in 0..n {
            let dir = c.root.join(format!("m{}", i + 1));
            let addr = format!("127.0.0.1:{}", free_port());
            if i == 0 {
                run_ok(
                    Command::new(METAD)
                        .args(["init", "--listen", &addr, "--data-dir"])
                        .arg(&dir),
                );
            } else {
                run_ok(
                    c.cli()
                        .args(["join", "--listen", &addr, "--data-dir"])
                        .arg(&dir),
                );
            }
            c.members.push(Member {
                id: i as u64 + 1,
                dir,
                addr,
                child: None,
            });
            c.start_member(i);
        }
        c
    }

    /// The cluster secret file.
    pub fn secret_file(&self) -> PathBuf {
        self.root.join("m1").join("secret")
    }

    /// Every member's address.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.addr.clone()).collect()
    }

    /// A `metad` command with `--endpoints` and `--secret-file` set.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(METAD);
        cmd.env("METAD_ENDPOINTS", self.endpoints().join(","));
        cmd.env("METAD_SECRET_FILE", self.secret_file());
        cmd
    }

    /// A client of the whole cluster.
    pub fn client(&self) -> Client {
        Client::new(ClientConfig::new(
            self.endpoints(),
            Secret::load(&self.secret_file()).unwrap(),
        ))
    }

    /// Starts (or restarts) member index `i`.
    pub fn start_member(&mut self, i: usize) {
        let run_args = self.run_args.clone();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {} already running", m.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.dir.join("log"))
            .unwrap();
        let child = Command::new(METAD)
            .args(["run", "--data-dir"])
            .arg(&m.dir)
            .args(&run_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning metad run");
        m.child = Some(child);
        wait_listening(&m.addr);
    }

    /// SIGKILLs member index `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Index of the current leader, waiting up to 10 s for one.
    pub async fn leader(&self) -> usize {
        let client = self.client();
        for _ in 0..100 {
            if let Ok(s) = client.status().await {
                if let Some(i) = self.members.iter().position(|m| m.id == s.leader) {
                    if self.members[i].child.is_some() {
                        return i;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no leader within 10 s");
    }

    /// Waits until every running member has applied the same index and
    /// reports the same revision; returns that revision.
    pub async fn settled_revision(&self) -> u64 {
        let client = self.client();
        for _ in 0..100 {
            let mut seen = Vec::new();
            for m in self.members.iter().filter(|m| m.child.is_some()) {
                if let Ok(s) = client.member_status(&m.addr).await {
                    seen.push((s.applied, s.revision));
                }
            }
            let running = self.members.iter().filter(|m| m.child.is_some()).count();
            if seen.len() == running && seen.windows(2).all(|w| w[0] == w[1]) {
                return seen[0].1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("members did not converge within 10 s");
    }

    /// The log of member index `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.members[i].dir.join("log")).unwrap_or_default()
    }
}

fn wait_listening(addr: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("metad at {addr} did not start listening");
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("keeping {} for inspection", self.root.display());
        }
    }
}
