//! `metad`: the grid's replicated metadata service (Raft on RocksDB), and
//! its operator's client.

use clap::{Parser, Subcommand};
use metad::member::{DataDir, MemberFile};
use metad::{Client, MetadArgs};
use std::path::PathBuf;
use std::process::ExitCode;

/// metad: the grid's replicated metadata service (Raft on RocksDB)
#[derive(Parser)]
#[command(name = "metad", version)]
struct Cli {
    #[command(flatten)]
    metad: MetadArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create member 1 of a new cluster and the cluster secret (DIR/secret), then exit.
    Init {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:2380")]
        listen: String,
        /// Address the other members reach this one at (default: --listen, unless a wildcard).
        #[arg(long)]
        advertise: Option<String>,
    },
    /// Serve as a member.
    Run {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Applied entries between snapshots (log compactions).
        #[arg(long, default_value_t = 10_000)]
        snapshot_interval: u64,
        /// Revisions of history kept for resuming watches.
        #[arg(long, default_value_t = metad::state::DEFAULT_HISTORY)]
        history: usize,
        /// Connections (peers and clients) held open at most; more are closed at once.
        #[arg(long, default_value_t = metad::server::MAX_CONNECTIONS)]
        max_connections: usize,
    },
    /// Ask the cluster (--endpoints, --secret-file) to add this member, record its id, then exit; then `run`.
    Join {
        /// Data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:2380")]
        listen: String,
        /// Address the other members reach this one at (default: --listen, unless a wildcard).
        #[arg(long)]
        advertise: Option<String>,
    },
    /// Print a stopped member's keys under PREFIX from its own disk, after a
    /// `# revision R applied I` line (no quorum needed; for post-mortems).
    Dump {
        /// Data directory of the stopped member.
        #[arg(long)]
        data_dir: PathBuf,
        /// Prefix of the keys printed (default: all).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Membership changes.
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
    /// Members, leader, term, commit and applied index, and each member's health.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a key's value.
    Get {
        /// Key.
        key: String,
    },
    /// Set a key.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Set KEY to NEW only if it holds EXPECTED (or, without --expect, only
    /// if it is absent). Exit status 0: swapped; 2: not swapped (the value
    /// differs); 1: an error (the outcome may be unknown).
    Cas {
        /// Key.
        key: String,
        /// New value.
        new: String,
        /// The value KEY must hold now.
        #[arg(long)]
        expect: Option<String>,
    },
    /// Delete a key.
    Del {
        /// Key.
        key: String,
    },
    /// List the keys under a prefix.
    List {
        /// Prefix.
        prefix: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the events under a prefix as they happen.
    Watch {
        /// Prefix.
        prefix: String,
        /// First revision (default: from now on).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Remove a member by id.
    Remove {
        /// Member id.
        id: u64,
    },
}

/// A compare-and-swap whose comparison failed: a result, not an error, so
/// it gets its own exit status.
#[derive(Debug, thiserror::Error)]
#[error("cas on {0} not applied: the value differs")]
struct NotSwapped(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    metad::logging::init();
    metad::limits::raise_nofile_limit_or_warn();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<NotSwapped>() => {
            eprintln!("metad: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("metad: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client(cli: &Cli) -> anyhow::Result<Client> {
    Ok(Client::new(cli.metad.client_config()?))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The address others reach a member at: `--advertise`, else `--listen`
/// unless that is a wildcard address, which nobody can connect to.
fn advertised(listen: &str, advertise: &Option<String>) -> anyhow::Result<String> {
    match advertise {
        Some(a) => Ok(a.clone()),
        None if listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:") => {
            anyhow::bail!("--advertise is required when --listen ({listen}) is a wildcard address")
        }
        None => Ok(listen.to_string()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Init {
            data_dir,
            listen,
            advertise,
        } => {
            let m = DataDir::new(data_dir).init(listen, &advertised(listen, advertise)?)?;
            println!(
                "initialized member {} ({}); secret in {}",
                m.id,
                m.advertise,
                DataDir::new(data_dir).secret_path().display()
            );
        }
        Cmd::Run {
            data_dir,
            snapshot_interval,
            history,
            max_connections,
        } => {
            DataDir::new(data_dir)
                .run(*snapshot_interval, *history, *max_connections)
                .await?
        }
        Cmd::Dump { data_dir, prefix } => {
            let state = DataDir::new(data_dir).offline_state()?;
            let meta = state.meta();
            println!(
                "# revision {} applied {}",
                meta.revision, meta.applied_index
            );
            for kv in state.range(prefix.as_bytes(), 0) {
                println!("{}\t{}", text(&kv.key), text(&kv.value));
            }
        }
        Cmd::Join {
            data_dir,
            listen,
            advertise,
        } => {
            let c = client(&cli)?;
            let advertise = advertised(listen, advertise)?;
            if DataDir::new(data_dir).holds_member() {
                anyhow::bail!("{} already holds a member", data_dir.display());
            }
            let (id, members) = c.member_add(&advertise).await?;
            let m = MemberFile {
                id,
                listen: listen.clone(),
                advertise,
                peers: members.into_iter().collect(),
            };
            DataDir::new(data_dir).record_join(&m, &c.config().secret)?;
            println!(
                "joined as member {id}; now run: metad run --data-dir {}",
                data_dir.display()
            );
        }
        Cmd::Member {
            cmd: MemberCmd::Remove { id },
        } => {
            let members = client(&cli)?.member_remove(*id).await?;
            println!("removed member {id}; members: {members:?}");
        }
        Cmd::Status { json } => {
            let s = client(&cli)?.status().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("leader: {}", s.leader);
                for m in &s.members {
                    match &m.status {
                        Some(st) => println!(
                            "member {} {} {} term {} commit {} applied {} revision {}",
                            m.id, m.addr, st.role, st.term, st.commit, st.applied, st.revision
                        ),
                        None => println!(
                            "member {} {} unreachable: {}",
                            m.id,
                            m.addr,
                            m.error.as_deref().unwrap_or("")
                        ),
                    }
                }
            }
        }
        Cmd::Get { key } => match client(&cli)?.get(key.as_bytes()).await? {
            Some(kv) => println!("{}", text(&kv.value)),
            None => anyhow::bail!("key {key} not found"),
        },
        Cmd::Put { key, value } => {
            let rev = client(&cli)?.put(key.as_bytes(), value.as_bytes()).await?;
            println!("revision {rev}");
        }
        Cmd::Cas { key, new, expect } => {
            let expected = expect.as_deref().map(str::as_bytes);
            if !client(&cli)?
                .cas(key.as_bytes(), expected, new.as_bytes())
                .await?
            {
                return Err(NotSwapped(key.clone()).into());
            }
            println!("swapped");
        }
        Cmd::Del { key } => {
            let rev = client(&cli)?.delete(key.as_bytes()).await?;
            println!("revision {rev}");
        }
        Cmd::List { prefix, json } => {
            let (kvs, rev) = client(&cli)?.get_prefix(prefix.as_bytes()).await?;
            if *json {
                let items: Vec<_> = kvs
                    .iter()
                    .map(|kv| serde_json::json!({"key": text(&kv.key), "value": text(&kv.value), "mod_rev": kv.mod_rev, "version": kv.version, "lease": kv.lease}))
                    .collect();
                println!("{}", serde_json::json!({"revision": rev, "kvs": items}));
            } else {
                for kv in kvs {
                    println!("{}\t{}", text(&kv.key), text(&kv.value));
                }
            }
        }
        Cmd::Watch { prefix, from } => {
            let c = client(&cli)?;
            let mut w = c.watch(prefix.as_bytes(), *from).await?;
            use std::io::Write;
            while let Some(ev) = w.next().await {
                let ev = ev?;
                println!(
                    "{} {:?} {} {}",
                    ev.rev,
                    ev.kind,
                    text(&ev.kv.key),
                    text(&ev.kv.value)
                );
                std::io::stdout().flush()?;
            }
        }
    }
    Ok(())
}
