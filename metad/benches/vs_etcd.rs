//! metad against etcd on the grid in a box (issue 3, "Benchmark"; not a
//! test: `cargo test` never runs it, and run in test mode it only says so).
//!
//! Brings up one 4-node grid (`mbench`) running only metad on node1..3, plus
//! a 3-member etcd (Debian's `etcd-server`) on the same three nodes (client
//! port 2379, peer port 2382; metad has 2380), so both clusters live in the
//! same namespaces, on the same disk, in the same run. The load comes from
//! node4, a client-only node: this very executable, run inside the node as
//! `load`. It measures 256-byte puts with 1 and with 64 concurrent clients,
//! one connection per client, each client writing sequentially, the same
//! number of writes for both systems, rounds interleaved metad/etcd (the
//! machine is shared, so drift is spread over both). Every write is
//! acknowledged only once durable (metad fsyncs its Raft log before
//! acknowledging; etcd fsyncs its WAL, and 3.4 cannot turn that off).
//!
//! etcd is driven through its v3 JSON gateway (HTTP/1.1 `POST /v3/kv/put`,
//! keep-alive), as Debian packages no etcd benchmark tool and `etcdctl`
//! starts one process per write.
//!
//! Then the fail-over time of metad: `failover` (again in node4) keeps 8
//! clients writing, SIGKILLs the leader itself and reports the time from
//! the kill to the first acknowledged write issued after it; the member is
//! restarted between runs.
//!
//! Run: `metad/bench/run.sh` (installs etcd when missing), or
//! `cargo bench -p metad --bench vs_etcd [-- --rounds N --writes-1 N
//! --writes-64 N --failovers N]`, as root.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devgrid::{DaemonSpec, GridConfig, GridGuard};
use metad::{Client, ClientConfig, Secret};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GRID: &str = "mbench";
const NODES: usize = 4;
const MEMBERS: usize = 3;
const LOAD_NODE: usize = 4;
const VALUE_LEN: usize = 256;
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2382;
const FAILOVER_WRITERS: usize = 8;
const CONCURRENCY: [usize; 2] = [1, 64];

type Res<T> = Result<T, String>;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Opts {
    rounds: usize,
    writes_1: usize,
    writes_64: usize,
    failovers: usize,
}

impl Opts {
    fn parse(args: &[String]) -> Res<(Opts, Vec<String>)> {
        let mut o = Opts {
            rounds: 5,
            writes_1: 1000,
            writes_64: 12800,
            failovers: 7,
        };
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut num = |what: &str| -> Res<usize> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or(format!("{what} takes a positive number"))
            };
            match a.as_str() {
                "--rounds" => o.rounds = num(a)?,
                "--writes-1" => o.writes_1 = num(a)?,
                "--writes-64" => o.writes_64 = num(a)?,
                "--failovers" => o.failovers = num(a)?,
                _ => rest.push(a.clone()),
            }
        }
        Ok((o, rest))
    }

    fn writes(&self, clients: usize) -> usize {
        let total = if clients == 1 {
            self.writes_1
        } else {
            self.writes_64
        };
        total.div_ceil(clients)
    }
}

fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let benching = all.iter().any(|a| a == "--bench");
    let args: Vec<String> = all.into_iter().filter(|a| a != "--bench").collect();
    let r = match args.first().map(String::as_str) {
        Some("load") => load_main(&args[1..]),
        Some("failover") => failover_main(&args[1..]),
        Some("down") => devgrid::teardown(GRID).map_err(|e| e.to_string()),
        _ if !benching => {
            println!(
                "vs_etcd: a benchmark, not a test; run it with metad/bench/run.sh \
                 or `cargo bench -p metad --bench vs_etcd` (as root)"
            );
            Ok(())
        }
        _ => Opts::parse(&args).and_then(|(o, rest)| match rest.first() {
            Some(x) => Err(format!("unknown argument {x}")),
            None => orchestrate(&o),
        }),
    };
    if let Err(e) = r {
        eprintln!("vs_etcd: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// On the host: the grid, etcd, the runs, the table.

/// What `load` prints (one JSON line) for one system and concurrency.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Measured {
    writes: usize,
    errors: usize,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    /// CPU time (user + system) of the three members per 1000 writes.
    cpu_ms_per_1k: f64,
    /// Writes per second of each round.
    round_rates: Vec<f64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.secs.max(1e-9)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LoadReport {
    /// By concurrency: (metad, etcd).
    rows: Vec<(usize, Measured, Measured)>,
    etcd_version: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct FailoverReport {
    leader: usize,
    ms: Option<f64>,
    /// When a surviving member first reported itself leader of a newer term.
    elected_ms: Option<f64>,
    before: usize,
}

fn etcd_spec() -> DaemonSpec {
    let s = |v: &str| v.to_string();
    let cluster: Vec<String> = (1..=MEMBERS)
        .map(|i| format!("node{i}=http://node{i}:{ETCD_PEER_PORT}"))
        .collect();
    DaemonSpec {
        name: "etcd".into(),
        on_first: Some(MEMBERS),
        prepare: None,
        argv: vec![
            s("etcd"),
            s("--name"),
            s("{node}"),
            s("--data-dir"),
            s("/var/lib/grid/etcd"),
            s("--listen-client-urls"),
            format!("http://{{addr}}:{ETCD_CLIENT_PORT}"),
            s("--advertise-client-urls"),
            format!("http://{{addr}}:{ETCD_CLIENT_PORT}"),
            s("--listen-peer-urls"),
            format!("http://{{addr}}:{ETCD_PEER_PORT}"),
            s("--initial-advertise-peer-urls"),
            format!("http://{{node}}:{ETCD_PEER_PORT}"),
            s("--initial-cluster"),
            cluster.join(","),
            s("--initial-cluster-token"),
            s("mbench"),
            s("--initial-cluster-state"),
            s("new"),
        ],
        // A lone member cannot serve before the others start: `load` waits
        // for the cluster instead.
        ready: None,
    }
}

fn orchestrate(o: &Opts) -> Res<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (network namespaces); run metad/bench/run.sh".into());
    }
    let etcd_ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !etcd_ok {
        return Err(
            "etcd is not installed: apt-get install etcd-server etcd-client \
                    (metad/bench/run.sh does)"
                .into(),
        );
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut daemons: Vec<DaemonSpec> = devgrid::daemons::default_daemons()
        .into_iter()
        .filter(|d| d.name == "metad")
        .collect();
    daemons.push(etcd_spec());
    let cfg = GridConfig {
        daemons,
        ..GridConfig::new(GRID, NODES)
    };
    eprintln!("vs_etcd: bringing up grid {GRID} ({NODES} nodes: metad and etcd on node1..3)");
    let grid = GridGuard::up_with(&cfg).map_err(|e| format!("grid up: {e}"))?;
    let etcd_eps: Vec<String> = (1..=MEMBERS)
        .map(|i| format!("{}:{ETCD_CLIENT_PORT}", grid.addr(i)))
        .collect();

    let pids = |daemon: &str| -> Vec<String> {
        (1..=MEMBERS)
            .filter_map(|i| grid.pid(i, daemon))
            .map(|p| p.to_string())
            .collect()
    };
    // Throughput and latency, both systems, interleaved.
    let out = grid
        .command(LOAD_NODE, &exe.to_string_lossy())
        .arg("load")
        .arg(etcd_eps.join(","))
        .arg(format!(
            "{};{}",
            pids("metad").join(","),
            pids("etcd").join(",")
        ))
        .arg(serde_json::to_string(o).expect("opts serialize"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running the load in node{LOAD_NODE}: {e}"))?;
    if !out.status.success() {
        return Err(format!("load in node{LOAD_NODE} failed ({})", out.status));
    }
    let report: LoadReport = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("load report: {e}: {}", String::from_utf8_lossy(&out.stdout)))?;

    // etcd is done: stop it so that it takes no CPU from the fail-over runs.
    for i in 1..=MEMBERS {
        grid.kill(i, Some("etcd")).map_err(|e| e.to_string())?;
    }

    // Fail-over: SIGKILL the leader, time the first write accepted after it.
    let mut failovers = Vec::new();
    for run in 1..=o.failovers {
        let pids: Vec<String> = (1..=MEMBERS)
            .map(|i| format!("{i}={}", grid.pid(i, "metad").unwrap_or(0)))
            .collect();
        let out = grid
            .command(LOAD_NODE, &exe.to_string_lossy())
            .arg("failover")
            .arg(pids.join(","))
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running failover in node{LOAD_NODE}: {e}"))?;
        if !out.status.success() {
            return Err(format!("failover run {run} failed ({})", out.status));
        }
        let f: FailoverReport = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "failover report: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        match f.ms {
            Some(ms) => eprintln!(
                "vs_etcd: fail-over {run}/{}: leader node{} killed, new leader seen after {} ms, \
                 first write after {ms:.0} ms",
                o.failovers,
                f.leader,
                f.elected_ms.map_or("?".into(), |e| format!("{e:.0}"))
            ),
            None => eprintln!(
                "vs_etcd: fail-over {run}/{}: leader node{} killed, no write accepted within 10 s",
                o.failovers, f.leader
            ),
        }
        failovers.push(f);
        // Reap it (the grid started it, from this process) and bring it back.
        let leader = failovers.last().map(|f| f.leader).unwrap_or(0);
        if leader != 0 {
            grid.kill(leader, Some("metad"))
                .map_err(|e| e.to_string())?;
            grid.start(leader, Some("metad"))
                .map_err(|e| e.to_string())?;
        }
    }

    print_table(o, &report, &failovers);
    Ok(())
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn print_table(o: &Opts, r: &LoadReport, f: &[FailoverReport]) {
    println!();
    println!(
        "metad vs etcd {}: 3 members each on grid-in-a-box nodes 1-3 (same namespaces, same disk, \
         same run), load from node4; {VALUE_LEN}-byte values, every write fsynced before it is \
         acknowledged",
        r.etcd_version
    );
    println!(
        "{:<11} | {:>9} {:>8} {:>8} | {:>9} {:>8} {:>8} | {:>10}",
        "", "metad w/s", "p50 ms", "p99 ms", "etcd w/s", "p50 ms", "p99 ms", "metad/etcd"
    );
    let mut errors = 0;
    for (clients, m, e) in &r.rows {
        let label = if *clients == 1 {
            "1 client".to_string()
        } else {
            format!("{clients} clients")
        };
        println!(
            "{:<11} | {:>9.0} {:>8} {:>8} | {:>9.0} {:>8} {:>8} | {:>9.2}x",
            label,
            m.rate(),
            ms(m.p50_us),
            ms(m.p99_us),
            e.rate(),
            ms(e.p50_us),
            ms(e.p99_us),
            m.rate() / e.rate().max(1e-9)
        );
        errors += m.errors + e.errors;
    }
    for (clients, m, e) in &r.rows {
        let per_round = |x: &Measured| {
            x.round_rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  {clients:>2} client(s), w/s by round: metad [{}], etcd [{}]; members' CPU per \
             1000 writes: metad {:.0} ms, etcd {:.0} ms",
            per_round(m),
            per_round(e),
            m.cpu_ms_per_1k,
            e.cpu_ms_per_1k
        );
    }
    let mut elected: Vec<f64> = f.iter().filter_map(|f| f.elected_ms).collect();
    elected.sort_by(f64::total_cmp);
    let mut done: Vec<f64> = f.iter().filter_map(|f| f.ms).collect();
    done.sort_by(f64::total_cmp);
    let failed = f.len() - done.len();
    if done.is_empty() {
        println!("metad fail-over (leader SIGKILL -> first accepted write): no run succeeded");
    } else {
        println!(
            "metad fail-over (leader SIGKILL -> first accepted write, {} runs): \
             min {:.0} ms, median {:.0} ms, max {:.0} ms{}",
            done.len(),
            done[0],
            done[done.len() / 2],
            done[done.len() - 1],
            if failed > 0 {
                format!(" ({failed} runs saw no write within 10 s)")
            } else {
                String::new()
            }
        );
    }
    if !elected.is_empty() {
        println!(
            "  of which the election (kill -> a survivor reports itself leader): min {:.0} ms, \
             median {:.0} ms, max {:.0} ms",
            elected[0],
            elected[elected.len() / 2],
            elected[elected.len() - 1]
        );
    }
    println!(
        "targets: metad/etcd >= 2x at 64 clients; fail-over < 1000 ms. \
         Writes per system and concurrency: {} (1 client), {} (64 clients), in {} interleaved \
         rounds{}.",
        o.writes(1) * o.rounds,
        o.writes(64) * 64 * o.rounds,
        o.rounds,
        if errors > 0 {
            format!("; {errors} writes FAILED and are not counted")
        } else {
            String::new()
        }
    );
    println!(
        "notes: each client is one connection writing sequentially (metad: one metad::Client \
         each; etcd: its v3 JSON gateway, HTTP/1.1 keep-alive POST /v3/kv/put to the leader, as \
         Debian ships no etcd benchmark tool; the gateway's JSON and internal gRPC hop cost etcd \
         some CPU). The machine is shared (2 cores), so numbers are noisy."
    );
}

// ---------------------------------------------------------------------------
// In node4: the load.

fn runtime() -> Res<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn metad_config() -> Res<ClientConfig> {
    let eps = std::env::var("METAD_ENDPOINTS").map_err(|_| "METAD_ENDPOINTS is not set")?;
    let secret_file =
        std::env::var("METAD_SECRET_FILE").unwrap_or_else(|_| "/etc/grid/secret".into());
    let secret = Secret::load(Path::new(&secret_file)).map_err(|e| e.to_string())?;
    Ok(ClientConfig::new(
        eps.split(',').map(str::to_string).collect(),
        secret,
    ))
}

/// The latencies of one round and how long it took.
#[derive(Default)]
struct Round {
    lat: Vec<Duration>,
    errors: usize,
    secs: f64,
    cpu_secs: f64,
}

#[derive(Default)]
struct Pool {
    lat: Vec<Duration>,
    errors: usize,
    secs: f64,
    cpu_secs: f64,
    round_rates: Vec<f64>,
}

impl Pool {
    fn add(&mut self, r: Round) {
        self.round_rates.push(r.lat.len() as f64 / r.secs.max(1e-9));
        self.cpu_secs += r.cpu_secs;
        self.lat.extend(r.lat);
        self.errors += r.errors;
        self.secs += r.secs;
    }

    fn measured(mut self) -> Measured {
        self.lat.sort();
        let p = |q: f64| {
            let n = self.lat.len();
            if n == 0 {
                return 0;
            }
            self.lat[((n as f64 * q) as usize).min(n - 1)].as_micros() as u64
        };
        Measured {
            writes: self.lat.len(),
            errors: self.errors,
            secs: self.secs,
            p50_us: p(0.50),
            p99_us: p(0.99),
            cpu_ms_per_1k: self.cpu_secs * 1e6 / self.lat.len().max(1) as f64,
            round_rates: self.round_rates,
        }
    }
}

fn value() -> Vec<u8> {
    (0..VALUE_LEN).map(|i| b'a' + (i % 26) as u8).collect()
}

fn load_main(args: &[String]) -> Res<()> {
    let [etcd_eps, pids, opts] = args else {
        return Err("usage: load ETCD_ENDPOINTS METAD_PIDS;ETCD_PIDS OPTS_JSON".into());
    };
    let pid_list = |s: &str| -> Vec<i32> { s.split(',').filter_map(|p| p.parse().ok()).collect() };
    let (mpids, epids) = pids.split_once(';').unwrap_or((pids, ""));
    let (mpids, epids) = (pid_list(mpids), pid_list(epids));
    let o: Opts = serde_json::from_str(opts).map_err(|e| e.to_string())?;
    let etcd_eps: Vec<String> = etcd_eps.split(',').map(str::to_string).collect();
    let cfg = metad_config()?;
    runtime()?.block_on(async move {
        eprintln!("vs_etcd: waiting for the etcd cluster");
        let (leader, version) = etcd_leader(&etcd_eps, Duration::from_secs(90)).await?;
        eprintln!("vs_etcd: etcd {version} leader at {leader}");
        // Warm both up (leader known, first RocksDB/bbolt pages, page cache).
        run_metad(&cfg, 8, 25, "warm", &mpids).await?;
        run_etcd(&leader, 8, 25, "warm", &epids).await?;
        let mut report = LoadReport {
            etcd_version: version,
            ..LoadReport::default()
        };
        for clients in CONCURRENCY {
            let writes = o.writes(clients);
            let (mut m, mut e) = (Pool::default(), Pool::default());
            for round in 0..o.rounds {
                let tag = format!("c{clients}r{round}");
                // Alternate which goes first, so that drift on the shared
                // machine hits both alike.
                if round % 2 == 0 {
                    m.add(run_metad(&cfg, clients, writes, &tag, &mpids).await?);
                    e.add(run_etcd(&leader, clients, writes, &tag, &epids).await?);
                } else {
                    e.add(run_etcd(&leader, clients, writes, &tag, &epids).await?);
                    m.add(run_metad(&cfg, clients, writes, &tag, &mpids).await?);
                }
                eprintln!(
                    "vs_etcd: {clients} clients, round {}/{} done",
                    round + 1,
                    o.rounds
                );
            }
            report.rows.push((clients, m.measured(), e.measured()));
        }
        let text = serde_json::to_string(&report).expect("report serializes");
        println!("{text}");
        Ok(())
    })
}

/// Runs `clients` metad clients (one connection each), each putting
/// `writes` values one after the other; the clock starts once every client
/// is connected.
async fn run_metad(
    cfg: &ClientConfig,
    clients: usize,
    writes: usize,
    tag: &str,
    pids: &[i32],
) -> Res<Round> {
    let mut conns = Vec::new();
    for w in 0..clients {
        let c = Client::new(cfg.clone());
        c.put(format!("bench/{tag}/{w}/connect"), value())
            .await
            .map_err(|e| format!("metad: {e}"))?;
        conns.push(c);
    }
    let cpu = cpu_secs(pids);
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, c)| {
            let tag = tag.to_string();
            tokio::spawn(async move {
                let v = value();
                let mut r = Round::default();
                for i in 0..writes {
                    let t = Instant::now();
                    match c.put(format!("bench/{tag}/{w}/{i}"), v.clone()).await {
                        Ok(_) => r.lat.push(t.elapsed()),
                        Err(e) => {
                            if r.errors == 0 {
                                eprintln!("vs_etcd: metad put: {e}");
                            }
                            r.errors += 1
                        }
                    }
                }
                r
            })
        })
        .collect();
    gather(tasks, start, pids, cpu).await
}

/// CPU time (user + system) the processes `pids` have used so far.
fn cpu_secs(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name: state is field 3, utime 14,
            // stime 15.
            let f: Vec<&str> = s[s.rfind(')')? + 2..].split(' ').collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / hz
}

async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Round>>,
    start: Instant,
    pids: &[i32],
    cpu: f64,
) -> Res<Round> {
    let mut all = Round::default();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())?;
        all.lat.extend(r.lat);
        all.errors += r.errors;
    }
    all.secs = start.elapsed().as_secs_f64();
    all.cpu_secs = cpu_secs(pids) - cpu;
    Ok(all)
}

/// The same for etcd, through its JSON gateway on the leader.
async fn run_etcd(
    leader: &str,
    clients: usize,
    writes: usize,
    tag: &str,
    pids: &[i32],
) -> Res<Round> {
    let b64v = b64(&value());
    let mut conns = Vec::new();
    for w in 0..clients {
        let mut c = Http::connect(leader).await?;
        c.put(&format!("bench/{tag}/{w}/connect"), &b64v).await?;
        conns.push(c);
    }
    let cpu = cpu_secs(pids);
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| {
            let tag = tag.to_string();
            let b64v = b64v.clone();
            tokio::spawn(async move {
                let mut r = Round::default();
                for i in 0..writes {
                    let t = Instant::now();
                    match c.put(&format!("bench/{tag}/{w}/{i}"), &b64v).await {
                        Ok(()) => r.lat.push(t.elapsed()),
                        Err(e) => {
                            if r.errors == 0 {
                                eprintln!("vs_etcd: etcd put: {e}");
                            }
                            r.errors += 1;
                            // A broken connection: open another one.
                            if let Ok(n) = Http::connect(&c.addr).await {
                                c = n;
                            }
                        }
                    }
                }
                r
            })
        })
        .collect();
    gather(tasks, start, pids, cpu).await
}

/// The etcd member that leads (its client address) and etcd's version.
async fn etcd_leader(eps: &[String], within: Duration) -> Res<(String, String)> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        for ep in eps {
            let r = async {
                let mut c = Http::connect(ep).await?;
                let body = c.post("/v3/maintenance/status", "{}").await?;
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let leader = v["leader"].as_str().unwrap_or("0");
                if leader != "0" && Some(leader) == v["header"]["member_id"].as_str() {
                    // It leads, and takes a write.
                    c.put("bench/ready", &b64(b"ready")).await?;
                    let version = v["version"].as_str().unwrap_or("?").to_string();
                    return Ok(Some(version));
                }
                Ok::<_, String>(None)
            }
            .await;
            match r {
                Ok(Some(version)) => return Ok((ep.clone(), version)),
                Ok(None) => last = format!("{ep} is not the leader"),
                Err(e) => last = e,
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no etcd leader after {within:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One keep-alive HTTP/1.1 connection to an etcd member.
struct Http {
    addr: String,
    conn: tokio::io::BufReader<TcpStream>,
    line: String,
}

impl Http {
    async fn connect(addr: &str) -> Res<Http> {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to etcd {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        Ok(Http {
            addr: addr.to_string(),
            conn: tokio::io::BufReader::new(s),
            line: String::new(),
        })
    }

    async fn put(&mut self, key: &str, b64_value: &str) -> Res<()> {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{b64_value}\"}}",
            b64(key.as_bytes())
        );
        let answer = self.post("/v3/kv/put", &body).await?;
        // A put's answer is `{"header":{...revision...}}`; an error has
        // "error"/"code" instead.
        if answer.starts_with(b"{\"header\"") {
            Ok(())
        } else {
            Err(format!(
                "etcd put: unexpected answer {}",
                String::from_utf8_lossy(&answer)
            ))
        }
    }

    /// POSTs `body` to `path` and returns the answer's body (status 200).
    async fn post(&mut self, path: &str, body: &str) -> Res<Vec<u8>> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let addr = self.addr.clone();
        let io = |e: std::io::Error| format!("etcd {addr}: {e}");
        self.conn
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(io)?;
        let status = self.read_line().await?;
        let code: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("etcd {}: bad status line {status:?}", self.addr))?;
        let (mut len, mut chunked) = (None, false);
        loop {
            let h = self.read_line().await?;
            if h.is_empty() {
                break;
            }
            let Some((name, v)) = h.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if name.eq_ignore_ascii_case("content-length") {
                len = v.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.eq_ignore_ascii_case("chunked");
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                let size = self.read_line().await?;
                let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| format!("etcd {}: bad chunk size {size:?}", self.addr))?;
                let mut chunk = vec![0; n + 2];
                self.conn.read_exact(&mut chunk).await.map_err(io)?;
                out.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else {
            let n = len.ok_or_else(|| format!("etcd {}: answer without length", self.addr))?;
            out.resize(n, 0);
            self.conn.read_exact(&mut out).await.map_err(io)?;
        }
        if code != 200 {
            return Err(format!(
                "etcd {}: HTTP {code}: {}",
                self.addr,
                String::from_utf8_lossy(&out)
            ));
        }
        Ok(out)
    }

    async fn read_line(&mut self) -> Res<String> {
        self.line.clear();
        let n = self
            .conn
            .read_line(&mut self.line)
            .await
            .map_err(|e| format!("etcd {}: {e}", self.addr))?;
        if n == 0 {
            return Err(format!("etcd {}: connection closed", self.addr));
        }
        Ok(self.line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------
// In node4: one fail-over.

fn failover_main(args: &[String]) -> Res<()> {
    let [pids] = args else {
        return Err("usage: failover 1=PID,2=PID,3=PID".into());
    };
    let pids: BTreeMap<usize, i32> = pids
        .split(',')
        .filter_map(|p| {
            let (n, pid) = p.split_once('=')?;
            Some((n.parse().ok()?, pid.parse().ok()?))
        })
        .collect();
    let cfg = metad_config()?;
    let report = runtime()?.block_on(failover(cfg, pids))?;
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
    Ok(())
}

/// The leader's node once every member is reachable, agrees on it and has
/// applied the same index.
async fn settled_leader(client: &Client, within: Duration) -> Res<usize> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(s) = client.status().await {
            let statuses: Vec<_> = s.members.iter().filter_map(|m| m.status.as_ref()).collect();
            let settled = s.leader != 0
                && statuses.len() == MEMBERS
                && statuses
                    .iter()
                    .all(|m| m.leader == s.leader && m.applied == statuses[0].applied);
            let node = s
                .members
                .iter()
                .find(|m| m.id == s.leader)
                .and_then(|m| m.addr.strip_prefix("node")?.split(':').next()?.parse().ok());
            if let (true, Some(node)) = (settled, node) {
                return Ok(node);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("metad did not settle within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn failover(cfg: ClientConfig, pids: BTreeMap<usize, i32>) -> Res<FailoverReport> {
    let admin = Client::new(cfg.clone());
    let leader = settled_leader(&admin, Duration::from_secs(60)).await?;
    let pid = *pids
        .get(&leader)
        .filter(|&&p| p > 0)
        .ok_or(format!("no pid for the leader, node{leader}"))?;

    // (issued, acknowledged) of every accepted write.
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..FAILOVER_WRITERS {
        let c = Client::new(cfg.clone());
        let (acks, stop) = (acks.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let v = value();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                if c.put(format!("failover/{w}/{i}"), v.clone()).await.is_ok() {
                    let done = Instant::now();
                    acks.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((t, done));
                }
                i += 1;
            }
        }));
    }
    // Steady writes first, every writer connected to the leader.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = acks.lock().unwrap_or_else(|e| e.into_inner()).len();
    if before == 0 {
        return Err("no write accepted before the kill".into());
    }

    let old_term = admin
        .member_status(&format!("node{leader}:{}", devgrid::daemons::METAD_PORT))
        .await
        .map(|s| s.term)
        .unwrap_or(0);
    let survivors: Vec<String> = (1..=MEMBERS)
        .filter(|&i| i != leader)
        .map(|i| format!("node{i}:{}", devgrid::daemons::METAD_PORT))
        .collect();
    let killed = Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(format!(
            "killing node{leader}'s metad (pid {pid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    // The first write issued after the kill that is acknowledged (a write
    // issued before it could have been acknowledged by the dying leader).
    let first = |acks: &[(Instant, Instant)]| {
        acks.iter()
            .filter(|(t, _)| *t >= killed)
            .map(|(_, done)| *done)
            .min()
    };
    // Meanwhile, when the survivors elect a leader (to tell the election
    // from the client's part of the fail-over time).
    let elected = tokio::spawn(async move {
        while killed.elapsed() < Duration::from_secs(10) {
            for addr in &survivors {
                let probe = admin.member_status(addr);
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), probe).await {
                    if s.role == "Leader" && s.term > old_term {
                        return Some(killed.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    });
    let mut ms = None;
    while killed.elapsed() < Duration::from_secs(10) {
        let seen = first(&acks.lock().unwrap_or_else(|e| e.into_inner()));
        if seen.is_some() {
            // Let writers that may have been acknowledged a little earlier
            // record it too.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let seen = first(&acks.lock().unwrap_or_else(|e| e.into_inner()));
            ms = seen.map(|d| (d - killed).as_secs_f64() * 1000.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = tokio::time::timeout(Duration::from_secs(6), w).await;
    }
    let elected_ms = elected.await.ok().flatten();
    let _ = std::io::stdout().flush();
    Ok(FailoverReport {
        leader,
        ms,
        elected_ms,
        before,
    })
}
