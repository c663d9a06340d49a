//! What DVM keeps in metad, under `dvm/`: the records and their keys. One
//! JSON document per key, so that any part of the grid (and a person with
//! `metad get`) can read them.
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `dvm/nodes/<node>` | [`NodeRecord`], attached to the agent's lease | agent (heartbeat) |
//! | `dvm/scheduler` | the node name of the scheduling agent, on its lease | agent (election) |
//! | `dvm/apps/<app>` | [`AppRecord`] | CLI; scheduler (outcome) |
//! | `dvm/vms/<app>.<comp>` | [`VmRecord`]: desired state, reservation (`node`) | CLI; scheduler (`node`); agent (flapping) |
//! | `dvm/status/<app>.<comp>` | [`VmStatus`]: what is true on the node | agent |
//! | `dvm/console/<app>.<comp>` | [`crate::console::ConsoleTail`]: the console's last bytes | agent |

use crate::descriptor::AppSpec;
use crate::guest::GuestNic;
use serde::{Deserialize, Serialize};

/// The root of DVM's keys.
pub const PREFIX: &str = "dvm/";
/// Prefix of node records.
pub const NODES: &str = "dvm/nodes/";
/// Prefix of application records.
pub const APPS: &str = "dvm/apps/";
/// Prefix of VM records.
pub const VMS: &str = "dvm/vms/";
/// Prefix of VM status records.
pub const STATUS: &str = "dvm/status/";
/// Prefix of console tails.
pub const CONSOLES: &str = "dvm/console/";
/// The scheduler election key.
pub const SCHEDULER: &str = "dvm/scheduler";

/// Key of a node record.
pub fn node_key(node: &str) -> String {
    format!("{NODES}{node}")
}
/// Key of an application record.
pub fn app_key(app: &str) -> String {
    format!("{APPS}{app}")
}
/// Key of a VM record.
pub fn vm_key(vm: &str) -> String {
    format!("{VMS}{vm}")
}
/// Key of a VM status record.
pub fn status_key(vm: &str) -> String {
    format!("{STATUS}{vm}")
}
/// Key of a VM's console tail.
pub fn console_key(vm: &str) -> String {
    format!("{CONSOLES}{vm}")
}
/// A VM's name: `app.component`.
pub fn vm_name(app: &str, component: &str) -> String {
    format!("{app}.{component}")
}

/// Milliseconds since the epoch: timestamps in records.
pub use metad::events::now_ms;

/// What a node offers, as its agent registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// CPUs the scheduler may reserve.
    pub cpus: u32,
    /// Memory the scheduler may reserve, MiB.
    pub mem_mib: u64,
    /// Network bandwidth the scheduler may reserve, Mbit/s.
    pub bw_mbit: u64,
    /// QEMU accelerator in use ("kvm" or "tcg").
    pub accel: String,
    /// Backends this node can run.
    pub hypervisors: Vec<String>,
    /// How resource limits are enforced here ("cgroup v2", or why not).
    pub limits: String,
    /// When the agent started, ms since the epoch.
    pub since_ms: u64,
}

/// Wanted state of an application or VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    /// Should run.
    Running,
    /// Should not run.
    Stopped,
}

/// The scheduler's answer to one `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The `start_gen` it answers.
    pub gen: u64,
    /// Whether the whole application was placed.
    pub placed: bool,
    /// Why not (or where, when placed).
    pub reason: String,
}

/// An application as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// The validated descriptor.
    pub spec: AppSpec,
    /// The descriptor as written.
    pub source: String,
    /// Wanted state.
    pub desired: Desired,
    /// Bumped by every `start`; the scheduler answers it in `outcome`.
    pub start_gen: u64,
    /// The scheduler's last answer.
    pub outcome: Option<Outcome>,
    /// Creation time, ms.
    pub created_ms: u64,
}

/// How a VM boots: the image's kernel, initrd and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSpec {
    /// Kernel path (in /gvs).
    pub kernel: String,
    /// Initrd path (in /gvs), if any.
    pub initrd: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
}

/// A VM: what it needs, what is wanted of it, and where it is reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// `app.component`.
    pub name: String,
    /// Its application.
    pub app: String,
    /// Its component.
    pub component: String,
    /// Reserved vCPUs.
    pub cpu_min: u32,
    /// vCPUs the guest sees (and its CPU cap).
    pub cpu_max: u32,
    /// Reserved memory, MiB.
    pub mem_mib: u64,
    /// Reserved bandwidth, Mbit/s.
    pub bw_min: u64,
    /// Dedicated CPUs.
    pub pin: bool,
    /// Backend.
    pub hypervisor: String,
    /// Components of the app it must not share a node with.
    pub anti_affinity: Vec<String>,
    /// How it boots.
    pub boot: BootSpec,
    /// Its volumes (cloned into /gvs/apps/APP/COMPONENT/), first is the root.
    pub disks: Vec<String>,
    /// Wanted state.
    pub desired: Desired,
    /// The node its resources are reserved on (and that runs it).
    pub node: Option<String>,
    /// The node asked for by `vm migrate` of a stopped VM.
    pub target: Option<String>,
    /// Why it is stopped or not placed, when it is.
    pub reason: Option<String>,
    /// The live migration in flight, if any (see [`Migration`]).
    #[serde(default)]
    pub migration: Option<Migration>,
    /// How the last live migration went.
    #[serde(default)]
    pub last_migration: Option<MigrationReport>,
    /// Its NIC on lcmd, when its application declares connections
    /// (see [`crate::guest`]).
    #[serde(default)]
    pub nic: Option<GuestNic>,
}

/// Where a live migration is. The CLI writes `Requested`; the scheduler
/// checks the target's capacity and writes `Accepted` (the VM is then
/// reserved on both nodes) or refuses; the target's agent starts QEMU with
/// `-incoming` and writes `Incoming` with its port; the source's agent
/// migrates and stops its QEMU; the record's `node` moves to the target
/// (written by whichever of the two agents sees the migration complete first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationPhase {
    /// Asked for; the scheduler has not checked the target yet.
    Requested,
    /// The target has room; its agent is to start the incoming QEMU.
    Accepted,
    /// The target's QEMU waits on `port`; the source's agent migrates.
    Incoming,
}

/// A live migration in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Identifies the request (ms timestamp of `vmctl vm migrate`).
    pub id: u64,
    /// The target node.
    pub to: String,
    /// Where it is.
    pub phase: MigrationPhase,
    /// The target QEMU's `-incoming` TCP port, once it listens.
    pub port: Option<u16>,
}

/// The outcome of a live migration (or of its request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The request's [`Migration::id`].
    pub id: u64,
    /// Source node.
    pub from: String,
    /// Target node.
    pub to: String,
    /// When it ended, ms.
    pub at_ms: u64,
    /// Why it was refused or failed; `None` when it completed.
    pub error: Option<String>,
    /// The downtime QEMU reports (query-migrate `downtime`), ms.
    pub downtime_ms: Option<u64>,
    /// The whole migration as QEMU reports it (`total-time`), ms.
    pub total_ms: Option<u64>,
}

/// What a VM is, on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// The backend is bringing it up.
    Starting,
    /// It runs.
    Running,
    /// It was stopped (asked to).
    Stopped,
    /// It exited without being asked to; it will be restarted.
    Crashed,
    /// It failed too often (or could not start); it stays stopped.
    Failed,
}

/// A VM's real state, as its node's agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The node reporting.
    pub node: String,
    /// State.
    pub state: VmState,
    /// Backend.
    pub backend: String,
    /// Accelerator ("kvm", "tcg").
    pub accel: String,
    /// The hypervisor process id on the node.
    pub pid: Option<u32>,
    /// The console file on the node.
    pub console: String,
    /// Unexpected exits within the flapping window, ms timestamps.
    pub crashes: Vec<u64>,
    /// Why (for failed/crashed).
    pub reason: Option<String>,
    /// How limits are enforced.
    pub limits: String,
    /// When the state was entered, ms.
    pub since_ms: u64,
    /// The last live migration (downtime as QEMU reported it).
    #[serde(default)]
    pub last_migration: Option<MigrationReport>,
}
