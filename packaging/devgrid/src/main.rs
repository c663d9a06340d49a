//! `devgrid`: run a whole grid on one machine, one network and mount
//! namespace per node, for development, demos and tests.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use devgrid::{teardown, Grid, GridConfig};

/// devgrid: a grid in a box, N grid nodes on this machine, each in its own
/// network and mount namespaces
#[derive(Parser)]
#[command(name = "devgrid", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a grid of N nodes with the grid's daemons, and print where each node is
    Up {
        /// How many nodes
        #[arg(long, default_value_t = 3, conflicts_with = "host")]
        nodes: usize,
        /// A one-node grid that is this machine itself: daemons in the host's
        /// namespaces, /gvs mounted on the host, data kept in /var/lib/grid
        #[arg(long)]
        host: bool,
        #[arg(long, default_value = "dev")]
        name: String,
    },
    /// Run a command inside a node's network and mount namespaces; its exit status is passed through
    Exec {
        #[arg(long, default_value = "dev")]
        name: String,
        /// The node (node1, node2, ...)
        node: String,
        /// The command and its arguments
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// SIGKILL a node's daemons, or one of them
    Kill {
        #[arg(long, default_value = "dev")]
        name: String,
        node: String,
        daemon: Option<String>,
    },
    /// Start a node's daemons that are not running, or one of them
    Start {
        #[arg(long, default_value = "dev")]
        name: String,
        node: String,
        daemon: Option<String>,
    },
    /// Cut a node off the network: both ways, or only its outgoing traffic
    Cut {
        #[arg(long, default_value = "dev")]
        name: String,
        node: String,
        /// Drop only what the node sends
        #[arg(long)]
        oneway: bool,
    },
    /// Restore a cut node's network
    Heal {
        #[arg(long, default_value = "dev")]
        name: String,
        node: String,
    },
    /// Show each node: address, cut, daemons and their pids
    Status {
        #[arg(long, default_value = "dev")]
        name: String,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Stop every process of the grid and remove its namespaces, mounts, devices and files
    Down {
        #[arg(long, default_value = "dev")]
        name: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("devgrid: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Up { nodes, host, name } => {
            let cfg = if host {
                GridConfig::host(&name)
            } else {
                GridConfig::new(&name, nodes)
            };
            let grid = Grid::up(&cfg)?;
            print_status(&grid)?;
            if grid.is_host() {
                println!("this machine is the grid's node: /gvs is mounted here; stop the grid: devgrid down --name {name}");
            } else {
                println!(
                    "run a command on a node: devgrid exec --name {name} node1 -- CMD; stop the grid: devgrid down --name {name}"
                );
            }
        }
        Cmd::Exec { name, node, cmd } => {
            let grid = Grid::open(&name)?;
            let i = grid.node(&node)?;
            let status = grid
                .command(i, &cmd[0])
                .args(&cmd[1..])
                .status()
                .map_err(|e| anyhow::anyhow!("running {}: {e}", cmd[0]))?;
            return Ok(exit_code(status));
        }
        Cmd::Kill { name, node, daemon } => {
            let grid = Grid::open(&name)?;
            let i = grid.node(&node)?;
            grid.kill(i, daemon.as_deref())?;
        }
        Cmd::Start { name, node, daemon } => {
            let grid = Grid::open(&name)?;
            let i = grid.node(&node)?;
            grid.start(i, daemon.as_deref())?;
        }
        Cmd::Cut { name, node, oneway } => {
            let grid = Grid::open(&name)?;
            grid.cut(grid.node(&node)?, oneway)?;
        }
        Cmd::Heal { name, node } => {
            let grid = Grid::open(&name)?;
            grid.heal(grid.node(&node)?)?;
        }
        Cmd::Status { name, json } => {
            let grid = Grid::open(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&grid.status()?)?);
            } else {
                print_status(&grid)?;
            }
        }
        Cmd::Down { name } => teardown(&name)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit status of a command run in a node, as devgrid's own: a signal
/// becomes 128 + its number, as shells report it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn print_status(grid: &Grid) -> anyhow::Result<()> {
    if grid.is_host() {
        println!("grid {} (this machine itself)", grid.name());
    } else {
        let (name, nodes, bridge) = (grid.name(), grid.nodes(), grid.layout().bridge());
        println!("grid {name} ({nodes} nodes, bridge {bridge})");
    }
    println!(
        "{:<8} {:<15} {:<20} {:<10} daemons",
        "node", "address", "netns", "cut"
    );
    for n in grid.status()? {
        let daemons: Vec<String> = n
            .daemons
            .iter()
            .map(|(d, pid)| match pid {
                Some(p) => format!("{d}:{p}"),
                None => format!("{d}:stopped"),
            })
            .collect();
        let daemons = if daemons.is_empty() {
            "-".to_string()
        } else {
            daemons.join(" ")
        };
        println!(
            "{:<8} {:<15} {:<20} {:<10} {}",
            n.name, n.addr, n.netns, n.cut, daemons
        );
    }
    Ok(())
}
