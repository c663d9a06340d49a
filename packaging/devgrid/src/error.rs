//! Errors of the grid in a box, each naming what it was doing.

use std::io;

/// Why a grid operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A grid name that would not fit in interface names or paths.
    #[error("bad grid name {0:?}: use 1 to 8 characters, a lowercase letter then lowercase letters or digits")]
    BadName(String),
    /// A node count outside what one /24 subnet holds.
    #[error("bad node count {0}: a grid has 1 to {max} nodes", max = crate::layout::MAX_NODES)]
    BadNodeCount(usize),
    /// A node name that is not one of this grid's.
    #[error("grid {grid} has no node {node:?} (it has node1..node{nodes})")]
    NoSuchNode {
        /// The grid asked.
        grid: String,
        /// The name given.
        node: String,
        /// How many nodes the grid has.
        nodes: usize,
    },
    /// A daemon name that the grid does not run on that node.
    #[error("node {node} runs no daemon {daemon:?} (it runs: {known})")]
    NoSuchDaemon {
        /// The node asked.
        node: String,
        /// The daemon named.
        daemon: String,
        /// The daemons that node runs, comma-separated.
        known: String,
    },
    /// An operation that needs namespaces, asked of a host grid.
    #[error("grid {grid} is this machine itself: it cannot be {what}")]
    HostGrid {
        /// The host grid.
        grid: String,
        /// What was asked ("cut", "heal").
        what: String,
    },
    /// A daemon that died or did not start serving.
    #[error("{daemon} on {node} is not ready: {why} (its log: {log})")]
    NotReady {
        /// The node.
        node: String,
        /// The daemon.
        daemon: String,
        /// What was seen.
        why: String,
        /// Where its log is.
        log: String,
    },
    /// `up` on a grid that already exists.
    #[error("grid {0} is already up (devgrid down --name {0} first)")]
    AlreadyUp(String),
    /// Any command on a grid that does not exist.
    #[error("grid {0} is not up")]
    NotUp(String),
    /// Every private subnet this tool uses is taken.
    #[error("no free 10.77.x.0/24 subnet left for another grid")]
    NoSubnet,
    /// A helper command (ip, nft, unshare, mount) failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr (or its exit status).
        stderr: String,
    },
    /// A file or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The grid's state file could not be read or written.
    #[error("grid state {path}: {source}")]
    State {
        /// The state file.
        path: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// Results of the grid in a box.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches "what was being done" to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}
