//! A grid in a box: bringing N nodes up, operating on them, and tearing
//! every piece down again, also after a crash halfway through `up`.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Output};

use nix::fcntl::{Flock, FlockArg};
use nix::sched::{setns, CloneFlags};
use serde::{Deserialize, Serialize};

use crate::cmd::run;
use crate::error::{Error, IoContext, Result};
use crate::layout::{self, Layout, RUN_ROOT};
use crate::process::{self, ProcId};
use crate::{mountns, network};

/// A daemon the grid runs on some of its nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonSpec {
    /// Its name, as `devgrid kill|start NODE DAEMON` takes it.
    pub name: String,
    /// It runs on nodes 1..=`on_first` (all nodes when `None`).
    pub on_first: Option<usize>,
    /// Run once per node at `up`, before the daemon's first start (for
    /// example `metad init` or `metad join`).
    pub prepare: Option<Vec<String>>,
    /// The daemon's command line. `{bin}` is replaced by the directory of
    /// the grid's binaries, `{node}` by the node's name, `{i}` by its number
    /// and `{addr}` by its address.
    pub argv: Vec<String>,
    /// A command that succeeds once the daemon serves (run in the node
    /// until it does), so that `up` returns a working grid.
    #[serde(default)]
    pub ready: Option<Vec<String>>,
}

/// How long a daemon may take to become ready.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

impl DaemonSpec {
    /// Whether the daemon runs on node `i`.
    pub fn runs_on(&self, i: usize) -> bool {
        self.on_first.is_none_or(|n| i <= n)
    }
}

/// What `up` is asked to build.
#[derive(Debug, Clone)]
pub struct GridConfig {
    /// The grid's name (see [`layout::validate_name`]).
    pub name: String,
    /// How many nodes.
    pub nodes: usize,
    /// The daemons, started in this order, node by node.
    pub daemons: Vec<DaemonSpec>,
    /// Where the grid's binaries are.
    pub bin_dir: PathBuf,
    /// The environment of every daemon and `exec` in the grid.
    pub env: BTreeMap<String, String>,
    /// A one-node grid that is this machine itself: its daemons run in the
    /// host's namespaces, so `/gvs` is mounted on the host.
    pub host: bool,
}

impl GridConfig {
    /// A grid of `nodes` nodes running the project's daemons.
    pub fn new(name: &str, nodes: usize) -> Self {
        GridConfig {
            name: name.to_string(),
            nodes,
            daemons: crate::daemons::default_daemons(),
            bin_dir: crate::daemons::bin_dir(),
            env: crate::daemons::grid_env(&node_names(false, nodes)),
            host: false,
        }
    }

    /// A one-node grid on this machine itself, running the project's
    /// daemons in the host's namespaces: `/gvs` is the host's.
    pub fn host(name: &str) -> Self {
        GridConfig {
            env: crate::daemons::grid_env(&node_names(true, 1)),
            host: true,
            ..GridConfig::new(name, 1)
        }
    }
}

/// What every `devgrid` command reads back about a grid that is up.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    name: String,
    subnet: u8,
    nodes: usize,
    daemons: Vec<DaemonSpec>,
    bin_dir: PathBuf,
    env: BTreeMap<String, String>,
    #[serde(default)]
    host: bool,
    /// Running daemons by "nodeI.DAEMON".
    running: BTreeMap<String, ProcId>,
}

/// What `devgrid status` shows of one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// `nodeI`.
    pub name: String,
    /// Its address on the grid's bridge.
    pub addr: Ipv4Addr,
    /// Its network namespace.
    pub netns: String,
    /// "no", "both ways" or "outgoing".
    pub cut: String,
    /// Each daemon it should run, with its pid when it runs.
    pub daemons: BTreeMap<String, Option<i32>>,
}

/// A grid that is up.
#[derive(Debug)]
pub struct Grid {
    layout: Layout,
    state: State,
}

/// Serializes subnet allocation and `up`/`down` between concurrent devgrid
/// processes and test threads.
fn lock() -> Result<Flock<fs::File>> {
    fs::create_dir_all(RUN_ROOT).ctx(|| format!("creating {RUN_ROOT}"))?;
    let path = format!("{RUN_ROOT}/.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx(|| format!("opening {path}"))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
        what: format!("locking {path}"),
        source: e.into(),
    })
}

/// The lowest 10.77.x.0/24 that no grid and no host interface uses.
fn free_subnet() -> Result<u8> {
    let mut used = Vec::new();
    for entry in fs::read_dir(RUN_ROOT).into_iter().flatten().flatten() {
        if let Ok(s) = fs::read_to_string(entry.path().join("state.json")) {
            if let Ok(st) = serde_json::from_str::<State>(&s) {
                used.push(st.subnet);
            }
        }
    }
    let addrs = run(&["ip", "-o", "-4", "addr", "show"])?;
    (1..=250u8)
        .find(|k| !used.contains(k) && !addrs.contains(&format!(" 10.77.{k}.")))
        .ok_or(Error::NoSubnet)
}

impl Grid {
    /// Brings a grid up: bridge, nodes, namespaces, daemons. On failure,
    /// whatever was made is torn down again before the error is returned.
    pub fn up(cfg: &GridConfig) -> Result<Grid> {
        layout::validate_name(&cfg.name)?;
        if !(1..=layout::MAX_NODES).contains(&cfg.nodes) || (cfg.host && cfg.nodes != 1) {
            return Err(Error::BadNodeCount(cfg.nodes));
        }
        let grid = {
            let _lock = lock()?;
            let probe = Layout::new(&cfg.name, 0)?;
            if probe.state_file().exists() || probe.netns_path(1).exists() {
                return Err(Error::AlreadyUp(cfg.name.clone()));
            }
            if cfg.host {
                if let Some(other) = host_grid() {
                    return Err(Error::AlreadyUp(other));
                }
            }
            let subnet = if cfg.host { 0 } else { free_subnet()? };
            let layout = Layout::new(&cfg.name, subnet)?;
            let grid = Grid {
                state: State {
                    name: cfg.name.clone(),
                    subnet: layout.subnet(),
                    nodes: cfg.nodes,
                    daemons: cfg.daemons.clone(),
                    bin_dir: cfg.bin_dir.clone(),
                    env: cfg.env.clone(),
                    host: cfg.host,
                    running: BTreeMap::new(),
                },
                layout,
            };
            // Saved first, so that `down` finds a grid whose `up` died.
            grid.save()?;
            grid
        };
        match grid.build() {
            Ok(()) => Ok(grid),
            Err(e) => {
                let _ = teardown(&cfg.name);
                Err(e)
            }
        }
    }

    fn build(&self) -> Result<()> {
        let l = &self.layout;
        if self.state.host {
            mountns::create_host_paths()?;
        } else {
            mountns::write_hosts(l, self.state.nodes)?;
            mountns::prepare_ns_dir(l)?;
            network::create_bridge(l)?;
            for i in 1..=self.state.nodes {
                network::create_node(l, i)?;
                mountns::create_node(l, i)?;
            }
        }
        for d in self.state.daemons.clone() {
            for i in (1..=self.state.nodes).filter(|&i| d.runs_on(i)) {
                if let Some(prep) = &d.prepare {
                    let argv = self.expand(prep, i);
                    let out = self.exec_output(i, &argv)?;
                    if !out.status.success() {
                        return Err(Error::Command {
                            cmd: format!("node{i}: {}", argv.join(" ")),
                            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                        });
                    }
                }
                self.start_one(i, &d, true)?;
            }
        }
        Ok(())
    }

    /// Opens a grid that is up (from another process, or after `up`).
    pub fn open(name: &str) -> Result<Grid> {
        let probe = Layout::new(name, 0)?;
        let path = probe.state_file();
        let text = fs::read_to_string(&path).map_err(|_| Error::NotUp(name.to_string()))?;
        let state: State = serde_json::from_str(&text).map_err(|source| Error::State {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Grid {
            layout: Layout::new(name, state.subnet)?,
            state,
        })
    }

    fn save(&self) -> Result<()> {
        let path = self.layout.state_file();
        fs::create_dir_all(self.layout.run_dir())
            .ctx(|| format!("creating {}", self.layout.run_dir().display()))?;
        let text = serde_json::to_string_pretty(&self.state).expect("state serializes");
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).ctx(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).ctx(|| format!("writing {}", path.display()))
    }

    /// The grid's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// How many nodes it has.
    pub fn nodes(&self) -> usize {
        self.state.nodes
    }

    /// Where its pieces are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Node `i`'s address (loopback for a host grid).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        if self.state.host {
            Ipv4Addr::LOCALHOST
        } else {
            self.layout.addr(i)
        }
    }

    /// Node `i`'s name: `nodeI`, or this machine's hostname for a host grid.
    pub fn node_name(&self, i: usize) -> String {
        node_names(self.state.host, i).pop().unwrap_or_default()
    }

    /// Whether this is a host grid (see [`GridConfig::host`]).
    pub fn is_host(&self) -> bool {
        self.state.host
    }

    /// Parses a node name (`node2` or `2`) of this grid.
    pub fn node(&self, s: &str) -> Result<usize> {
        layout::parse_node(&self.state.name, self.state.nodes, s)
    }

    fn expand(&self, argv: &[String], i: usize) -> Vec<String> {
        argv.iter()
            .map(|a| {
                a.replace("{bin}", &self.state.bin_dir.to_string_lossy())
                    .replace("{node}", &self.node_name(i))
                    .replace("{i}", &i.to_string())
                    .replace("{addr}", &self.layout.addr(i).to_string())
            })
            .collect()
    }

    /// A command that runs `program` inside node `i` (network, mount and
    /// UTS namespaces) with the grid's environment and its binaries first
    /// on the PATH; add arguments and run it as any `Command`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = if self.state.host {
            Command::new(program)
        } else {
            process::in_node(&self.layout, i, program)
        };
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        cmd.envs(&self.state.env)
            .env("PATH", format!("{}:{path}", self.state.bin_dir.display()));
        cmd
    }

    /// Runs `argv` inside node `i` and collects its output.
    pub fn exec_output(&self, i: usize, argv: &[String]) -> Result<Output> {
        let mut cmd = self.command(i, &argv[0]);
        cmd.args(&argv[1..]);
        cmd.output()
            .ctx(|| format!("running `{}` in node{i}", argv.join(" ")))
    }

    /// Runs `f` on a new thread whose network namespace is node `i`'s, and
    /// returns what it returns: sockets it opens live in that node.
    pub fn in_netns<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = if self.state.host {
            PathBuf::from("/proc/self/ns/net")
        } else {
            self.layout.netns_path(i)
        };
        let ns = fs::File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
                    what: format!("entering {}", path.display()),
                    source: e.into(),
                })?;
                Ok(f())
            })
            .join()
            .expect("in_netns closure panicked")
        })
    }

    fn daemons_of(&self, i: usize, which: Option<&str>) -> Result<Vec<DaemonSpec>> {
        let here: Vec<DaemonSpec> = self
            .state
            .daemons
            .iter()
            .filter(|d| d.runs_on(i))
            .cloned()
            .collect();
        match which {
            None => Ok(here),
            Some(name) => match here.iter().find(|d| d.name == name) {
                Some(d) => Ok(vec![d.clone()]),
                None => Err(Error::NoSuchDaemon {
                    node: format!("node{i}"),
                    daemon: name.to_string(),
                    known: here
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            },
        }
    }

    /// Starts daemon `d` on node `i` unless it runs; with `wait`, returns
    /// only once its ready probe passes.
    fn start_one(&self, i: usize, d: &DaemonSpec, wait: bool) -> Result<ProcId> {
        let key = format!("node{i}.{}", d.name);
        let mut me = Grid::open(&self.state.name)?;
        if let Some(p) = me.state.running.get(&key).filter(|p| p.alive()) {
            return Ok(*p);
        }
        let argv = self.expand(&d.argv, i);
        let log = self.layout.log_file(i, &d.name);
        let p = process::spawn(self.command(i, &argv[0]).args(&argv[1..]), &log)?;
        me.state.running.insert(key, p);
        me.save()?;
        if let Some(ready) = d.ready.as_ref().filter(|_| wait) {
            self.wait_ready(i, d, p, &self.expand(ready, i))?;
        }
        Ok(p)
    }

    fn wait_ready(&self, i: usize, d: &DaemonSpec, p: ProcId, probe: &[String]) -> Result<()> {
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        let not_ready = |why: &str| Error::NotReady {
            node: self.node_name(i),
            daemon: d.name.clone(),
            why: why.to_string(),
            log: self.layout.log_file(i, &d.name).display().to_string(),
        };
        loop {
            if !p.alive() {
                return Err(not_ready("it exited"));
            }
            let mut cmd = self.command(i, &probe[0]);
            cmd.args(&probe[1..])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if cmd.status().is_ok_and(|s| s.success()) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(not_ready(&format!(
                    "`{}` still fails after {READY_TIMEOUT:?}",
                    probe.join(" ")
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Starts node `i`'s daemons (or only `daemon`) that are not running.
    /// It does not wait for them to serve: after a crash of the whole grid
    /// a daemon may need others, started later, before it can.
    pub fn start(&self, i: usize, daemon: Option<&str>) -> Result<()> {
        for d in self.daemons_of(i, daemon)? {
            self.start_one(i, &d, false)?;
        }
        Ok(())
    }

    /// SIGKILLs node `i`'s daemons (or only `daemon`), as a crash would.
    pub fn kill(&self, i: usize, daemon: Option<&str>) -> Result<()> {
        // The state file, not this handle, knows what runs now: other
        // processes and threads start and kill daemons too.
        let mut now = Grid::open(&self.state.name)?;
        for d in self.daemons_of(i, daemon)? {
            if let Some(p) = now.state.running.remove(&format!("node{i}.{}", d.name)) {
                process::kill_and_wait(p);
            }
        }
        now.save()
    }

    /// The pid of node `i`'s `daemon`, when it runs.
    pub fn pid(&self, i: usize, daemon: &str) -> Option<i32> {
        let g = Grid::open(&self.state.name).ok()?;
        let p = g.state.running.get(&format!("node{i}.{daemon}"))?;
        p.alive().then_some(p.pid)
    }

    /// Cuts node `i` off the network: both ways, or only its outgoing
    /// traffic when `oneway`.
    pub fn cut(&self, i: usize, oneway: bool) -> Result<()> {
        self.not_host("cut")?;
        network::cut(&self.layout, i, oneway)
    }

    fn not_host(&self, what: &str) -> Result<()> {
        if self.state.host {
            Err(Error::HostGrid {
                grid: self.state.name.clone(),
                what: what.to_string(),
            })
        } else {
            Ok(())
        }
    }

    /// Restores node `i`'s network.
    pub fn heal(&self, i: usize) -> Result<()> {
        self.not_host("heal")?;
        network::heal(&self.layout, i)
    }

    /// What runs where, and which nodes are cut.
    pub fn status(&self) -> Result<Vec<NodeStatus>> {
        let g = Grid::open(&self.state.name)?;
        (1..=g.state.nodes)
            .map(|i| {
                let cut = if g.state.host {
                    "-"
                } else {
                    match network::is_cut(&g.layout, i)? {
                        None => "no",
                        Some(true) => "outgoing",
                        Some(false) => "both ways",
                    }
                };
                let daemons = g
                    .daemons_of(i, None)?
                    .into_iter()
                    .map(|d| (d.name.clone(), g.pid(i, &d.name)))
                    .collect();
                Ok(NodeStatus {
                    name: g.node_name(i),
                    addr: g.addr(i),
                    netns: if g.state.host {
                        "(host)".into()
                    } else {
                        g.layout.netns(i)
                    },
                    cut: cut.to_string(),
                    daemons,
                })
            })
            .collect()
    }

    /// Tears the grid down; see [`teardown`].
    pub fn down(self) -> Result<()> {
        teardown(&self.state.name)
    }
}

/// Removes every piece of grid `name` that exists: processes inside its
/// nodes, namespaces (and the mounts and TAP devices in them), veths, the
/// bridge and its directories. Pieces are found on the system, not only in
/// the state file, so a grid whose `up` crashed is removed too; running it
/// again is harmless.
pub fn teardown(name: &str) -> Result<()> {
    layout::validate_name(name)?;
    let _lock = lock()?;
    let probe = Layout::new(name, 0)?;
    if let Ok(g) = Grid::open(name) {
        if g.state.host {
            return teardown_host(&g);
        }
    }
    let nodes = existing_nodes(&probe);
    for &i in &nodes {
        process::kill_all_in_node(&probe, i);
    }
    for &i in &nodes {
        process::remove_vm_cgroups(&format!("node{i}"));
        mountns::delete_node(&probe, i);
        network::delete_node(&probe, i);
    }
    network::delete_bridge(&probe);
    mountns::release_ns_dir(&probe);
    for dir in [probe.run_dir(), probe.data_dir()] {
        if dir.exists() {
            fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Stops a host grid: its daemons (by the pids it recorded: the host's
/// other processes are not the grid's) and its `/gvs` mount. The node's
/// data in /var/lib/grid stays, so `up` brings the same grid back.
fn teardown_host(g: &Grid) -> Result<()> {
    for p in g.state.running.values() {
        process::kill_and_wait(*p);
    }
    mountns::release_host_paths();
    for dir in [g.layout.run_dir(), g.layout.data_dir()] {
        if dir.exists() {
            fs::remove_dir_all(&dir).ctx(|| format!("removing {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The name of the host grid that is up, if any: there can be only one,
/// since it owns the host's `/gvs` and ports.
fn host_grid() -> Option<String> {
    fs::read_dir(RUN_ROOT).ok()?.flatten().find_map(|e| {
        let text = fs::read_to_string(e.path().join("state.json")).ok()?;
        let st: State = serde_json::from_str(&text).ok()?;
        st.host.then_some(st.name)
    })
}

/// The names of nodes 1..=`upto` (a host grid's one node is the hostname).
fn node_names(host: bool, upto: usize) -> Vec<String> {
    if host {
        let h = nix::unistd::gethostname().unwrap_or_default();
        vec![h.to_string_lossy().into_owned()]
    } else {
        (1..=upto).map(|i| format!("node{i}")).collect()
    }
}

/// The node numbers of grid `l` that have a namespace, a namespace file or
/// a veth on this machine.
fn existing_nodes(l: &Layout) -> Vec<usize> {
    let mut found = std::collections::BTreeSet::new();
    let netns_prefix = l.netns(0).trim_end_matches('0').to_string();
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        if let Some(n) = e
            .file_name()
            .to_str()
            .and_then(|f| f.strip_prefix(&netns_prefix))
        {
            found.extend(n.parse::<usize>());
        }
    }
    for e in fs::read_dir(l.ns_dir()).into_iter().flatten().flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = f.strip_prefix("node").and_then(|f| f.split('.').next()) {
            found.extend(n.parse::<usize>());
        }
    }
    let veth_prefix = l.veth(0).trim_end_matches('0').to_string();
    for e in fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(n) = e
            .file_name()
            .to_str()
            .and_then(|f| f.strip_prefix(&veth_prefix))
        {
            found.extend(n.parse::<usize>());
        }
    }
    found.into_iter().collect()
}
