//! The command line: what `vmctl` accepts (clap), separate from what the
//! commands do ([`crate::commands`]).

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// vmctl: the grid's VM manager: CLI and node agent
#[derive(Parser, Debug)]
#[command(name = "vmctl", version, long_about = None)]
pub struct Cli {
    /// Where metad is and the cluster secret.
    #[command(flatten)]
    pub metad: metad::MetadArgs,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The top-level commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Applications: create, start, stop, destroy, list, show.
    #[command(subcommand)]
    App(AppCmd),
    /// VMs (an application's components): list, show, console, migrate.
    #[command(subcommand)]
    Vm(VmCmd),
    /// Nodes and their capacity.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The event log (starts, stops, placements, refusals, failovers, crashes).
    Events {
        /// Keep printing new events.
        #[arg(long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Run the node agent: heartbeat, run this node's VMs, schedule when elected.
    Agent {
        /// This node's name (default: the hostname).
        #[arg(long)]
        node: Option<String>,
        /// CPUs offered to VMs (default: all).
        #[arg(long, env = "VMCTL_CPUS")]
        cpus: Option<u32>,
        /// Memory offered to VMs, e.g. "8G" (default: MemTotal less 512M).
        #[arg(long, env = "VMCTL_MEM")]
        mem: Option<String>,
        /// Bandwidth offered to VMs.
        #[arg(long, env = "VMCTL_BW", default_value = "1G")]
        bw: String,
        /// Per-VM runtime directories (QMP sockets, console files).
        #[arg(long, default_value = "/run/grid/vmctl")]
        run_dir: PathBuf,
        /// Where guests' NIC sockets meet the node's lcmd (`lcmd run --nic-dir`).
        #[arg(long, default_value = lcmd::vmnic::NIC_DIR)]
        nic_dir: PathBuf,
    },
}

/// `vmctl app ...`
#[derive(Subcommand, Debug)]
pub enum AppCmd {
    /// Validate a descriptor, clone its components' volumes and store it.
    Create {
        /// The descriptor (TOML).
        file: PathBuf,
        /// Print the stored application as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Schedule the whole application and run it (or be told why not).
    Start {
        /// Application.
        name: String,
        /// Seconds to wait for the scheduler's answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Stop every VM of the application and release its reservations.
    Stop {
        /// Application.
        name: String,
        /// Seconds to wait for the VMs to stop.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Remove a stopped application, its records and its volumes.
    Destroy {
        /// Application.
        name: String,
        /// Stop it first if it runs.
        #[arg(long)]
        force: bool,
    },
    /// Applications.
    List {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// One application with its VMs.
    Show {
        /// Application.
        name: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `vmctl vm ...`
#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// VMs, where they run and their state.
    List {
        /// Only this application's.
        #[arg(long)]
        app: Option<String>,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// One VM: its record and its status.
    Show {
        /// VM (APP.COMPONENT).
        name: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start one stopped (or failed) VM of a running application; refused
    /// with the reason when no node has room.
    Start {
        /// VM (APP.COMPONENT).
        name: String,
        /// Seconds to wait for the scheduler.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Stop one VM (its application goes on).
    Stop {
        /// VM (APP.COMPONENT).
        name: String,
        /// Seconds to wait for it to stop.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Print a VM's serial console (from another node: the last 16 KiB,
    /// copied every 2 s).
    Console {
        /// VM (APP.COMPONENT).
        name: String,
        /// Keep printing.
        #[arg(long)]
        follow: bool,
    },
    /// Move a VM to NODE: a running VM is live-migrated (QEMU migration;
    /// refused with the reason when NODE lacks room); a stopped VM starts
    /// there next time.
    Migrate {
        /// VM (APP.COMPONENT).
        name: String,
        /// Destination node.
        node: String,
        /// Seconds to wait for a live migration to finish.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
}

/// `vmctl node ...`
#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Live nodes: capacity, reserved, VMs.
    List {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
}
