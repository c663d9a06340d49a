//! `lcmd`: the grid's connection daemon (`lcmd run`) and the commands that
//! declare applications, move appliances and read connections and events.

use clap::{Parser, Subcommand};
use lcmd::daemon::{self, Options};
use lcmd::model::{AppSpec, NicKind, TUNNEL_PORT};
use lcmd::store::Store;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

/// lcmd: the grid's connection daemon: appliance TAPs, tunnels and enforcement
#[derive(Parser)]
#[command(
    name = "lcmd",
    version,
    about = "lcmd: the grid's connection daemon: appliance TAPs, tunnels and enforcement",
    long_about = None
)]
struct Cli {
    #[command(flatten)]
    metad: metad::MetadArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node's daemon: TAPs for local appliances, tunnels, enforcement.
    Run {
        /// This node's name (default: the hostname).
        #[arg(long)]
        node: Option<String>,
        /// This node's underlay address, where tunnels reach it.
        #[arg(long)]
        advertise: Ipv4Addr,
        /// Tunnel UDP port.
        #[arg(long, default_value_t = TUNNEL_PORT)]
        port: u16,
        /// Where VM appliances' NIC sockets are bound (shared with the
        /// node's vmctl agent).
        #[arg(long, default_value = lcmd::vmnic::NIC_DIR)]
        nic_dir: PathBuf,
    },
    /// Applications.
    #[command(subcommand)]
    App(AppCmd),
    /// Appliances.
    #[command(subcommand)]
    Appliance(ApplianceCmd),
    /// Connections.
    #[command(subcommand)]
    Conn(ConnCmd),
    /// Security events reported by lcmd, oldest first (`vmctl events`
    /// shows every service's).
    Events {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AppCmd {
    /// Declare or redeclare an application from a TOML spec ("-": stdin).
    Apply {
        /// The spec file.
        file: PathBuf,
        /// Print what was stored as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an application with its appliances and connections.
    Delete {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ApplianceCmd {
    /// List appliances.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Move an appliance to another node (its TAP and tunnels follow).
    Move {
        /// Application.
        app: String,
        /// Appliance.
        name: String,
        /// Destination node.
        node: String,
    },
}

#[derive(Subcommand)]
enum ConnCmd {
    /// List connections with their bytes, packets, drops (and those by a
    /// bandwidth limit) and round-trip time.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

async fn main_async(cli: Cli) -> anyhow::Result<()> {
    let store = Store::connect(cli.metad.endpoints, &cli.metad.secret_file)?;
    match cli.cmd {
        Cmd::Run {
            node,
            advertise,
            port,
            nic_dir,
        } => {
            let node = match node {
                Some(n) => n,
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
                    .trim()
                    .to_string(),
            };
            daemon::run(
                store,
                Options {
                    node,
                    advertise,
                    port,
                    nic_dir,
                },
            )
            .await?;
        }
        Cmd::App(AppCmd::Apply { file, json }) => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file)?;
            }
            let r = store.apply(&AppSpec::from_toml(&text)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for a in &r.appliances {
                    println!(
                        "{}/{}\t{}\t{}\t{}\t{}",
                        a.app,
                        a.name,
                        a.node,
                        a.ip,
                        a.mac,
                        a.tap_name()
                    );
                }
            }
        }
        Cmd::App(AppCmd::Delete { name }) => store.delete_app(&name).await?,
        Cmd::Appliance(ApplianceCmd::List { json }) => {
            let list = store.appliances().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("APPLIANCE\tNODE\tIP\tMAC\tNIC");
                for a in list {
                    let nic = match a.nic {
                        NicKind::Tap => a.tap_name(),
                        NicKind::Vm => format!("vm:{}", a.tap_name()),
                    };
                    println!(
                        "{}/{}\t{}\t{}\t{}\t{}",
                        a.app, a.name, a.node, a.ip, a.mac, nic
                    );
                }
            }
        }
        Cmd::Appliance(ApplianceCmd::Move { app, name, node }) => {
            let a = store.move_appliance(&app, &name, &node).await?;
            println!("{}/{} -> {}", a.app, a.name, a.node);
        }
        Cmd::Conn(ConnCmd::List { json }) => {
            let rows = store.connections().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("CONNECTION\tPROTOCOL\tPACKETS\tBYTES\tDROPS\tSHAPED\tRTT_US");
                for r in rows {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        r.id,
                        r.conn.protocol,
                        r.stats.packets,
                        r.stats.bytes,
                        r.stats.drops,
                        r.stats.shaped,
                        r.stats.rtt_us
                    );
                }
            }
        }
        Cmd::Events { json } => {
            for e in store.events().await? {
                if json {
                    println!("{}", serde_json::to_string(&e)?);
                } else {
                    println!("{}", e.line());
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    metad::logging::init();
    metad::limits::raise_nofile_limit_or_warn();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lcmd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main_async(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lcmd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
