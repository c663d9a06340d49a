//! A grid in a box: N grid nodes on one machine. Each node is a network
//! namespace with its own address on a private bridge, plus its own mount
//! and UTS namespaces in which its `/gvs`, `/var/lib/grid`, `/run/grid`,
//! `/etc/grid`, `/etc/hosts` and hostname are its own. The `devgrid` binary
//! drives it for people; end-to-end tests use [`GridGuard`].

mod cmd;
pub mod daemons;
mod error;
pub mod grid;
mod guard;
pub mod layout;
mod mountns;
mod network;
pub mod process;
pub mod script;

pub use error::{Error, Result};
pub use grid::{teardown, DaemonSpec, Grid, GridConfig, NodeStatus};
pub use guard::GridGuard;
pub use network::UNDERLAY_MTU;
pub use script::{wait_for, Run};
