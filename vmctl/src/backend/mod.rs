//! Hypervisor backends behind one interface: the agent hands a [`VmConfig`]
//! to a [`Hypervisor`] and gets back an [`Instance`] it can query, stop and
//! migrate, whatever runs underneath (QEMU here, Xen's `xl` where a Xen
//! hypervisor runs).

pub mod cgroup;
pub mod qemu;
pub mod qmp;
pub mod xl;

use std::path::PathBuf;
use std::time::Duration;

/// Errors of backends.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The hypervisor refused or failed a command.
    #[error("{0}")]
    Hypervisor(String),
    /// QMP failed.
    #[error("QMP: {0}")]
    Qmp(String),
    /// The operation is not possible with this backend or here.
    #[error("{0}")]
    Unsupported(String),
    /// A value of the VM may not reach the hypervisor.
    #[error("refused: {0}")]
    Invalid(#[from] crate::values::ValueError),
}

/// A virtual NIC. An appliance's NIC is served by lcmd on the VM's node
/// through a pair of unix datagram sockets (`Socket`; why not a TAP:
/// [`lcmd::vmnic`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nic {
    /// QEMU user-mode networking (no host setup; for demos).
    User {
        /// Guest MAC address.
        mac: String,
    },
    /// A TAP device by name: Xen's vif seam (`xl` only).
    Tap {
        /// The TAP device's name on the node.
        ifname: String,
        /// Guest MAC address.
        mac: String,
    },
    /// Frames as datagrams between a socket QEMU binds (`local`) and the
    /// one lcmd binds (`remote`): QEMU's `-netdev dgram` (QEMU 7.2).
    Socket {
        /// The socket QEMU binds.
        local: PathBuf,
        /// lcmd's socket.
        remote: PathBuf,
        /// Guest MAC address.
        mac: String,
    },
}

/// Everything a backend needs to run one VM on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// `app.component`.
    pub name: String,
    /// vCPUs the guest sees.
    pub vcpus: u32,
    /// Its CPU cap, in CPUs (a cgroup `cpu.max`, Xen's `cap`).
    pub cpu_cap: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Physical CPUs dedicated to it (empty: not pinned).
    pub pinned_cpus: Vec<u32>,
    /// Kernel.
    pub kernel: PathBuf,
    /// Initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Disk files (in /gvs), first is the root (`vda`/`xvda`).
    pub disks: Vec<PathBuf>,
    /// NICs.
    pub nics: Vec<Nic>,
    /// Where the backend keeps its sockets, config and logs for this VM.
    pub run_dir: PathBuf,
    /// Where the guest's serial console goes.
    pub console: PathBuf,
    /// Wait for an incoming live migration on this TCP port instead of booting.
    pub incoming_port: Option<u16>,
}

/// What an instance is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Running.
    Running,
    /// Paused (or waiting for an incoming migration).
    Paused(String),
    /// The hypervisor process or domain is gone.
    Exited(String),
}

/// One running VM.
pub trait Instance: Send {
    /// Its current state.
    fn state(&mut self) -> RunState;
    /// Stops it: an orderly quit (flushing its disks), forced after `grace`.
    fn stop(&mut self, grace: Duration) -> Result<(), BackendError>;
    /// Kills it at once, without flushing: fencing, when it already runs
    /// elsewhere and must not write another byte.
    fn kill(&mut self);
    /// Its hypervisor process, when there is one on this node.
    fn pid(&self) -> Option<u32>;
    /// Live-migrates it to `dest_host:port` at no more than `max_bps`
    /// bytes a second, returning when done (the source is then paused, its
    /// disks flushed; the caller stops it).
    fn migrate(
        &mut self,
        dest_host: &str,
        port: u16,
        max_bps: u64,
    ) -> Result<MigrationStats, BackendError>;
}

/// What the hypervisor reports of a completed live migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationStats {
    /// How long the guest was paused (QEMU's `downtime`), ms.
    pub downtime_ms: Option<u64>,
    /// The whole migration (QEMU's `total-time`), ms.
    pub total_ms: Option<u64>,
}

/// A way to run VMs.
pub trait Hypervisor: Send + Sync {
    /// "qemu" or "xen".
    fn name(&self) -> &'static str;
    /// The accelerator used ("kvm", "tcg", "xen").
    fn accel(&self) -> String;
    /// How resource limits are enforced.
    fn limits(&self) -> String;
    /// Starts a VM.
    fn start(&self, vm: &VmConfig) -> Result<Box<dyn Instance>, BackendError>;
}

/// The io error wrapper with what was being done.
pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
    let what = what.into();
    move |source| BackendError::Io { what, source }
}
