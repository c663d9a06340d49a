//! gvsfs: the grid's node storage daemon. It mounts the Global Volume
//! Store at `/gvs` (FUSE) and serves the node's chunk store to the other
//! nodes. Namespace and volume roots live in metad under `gvs/` (see
//! [`meta`]); volume data lives in BLAKE3-addressed chunks mirrored on R
//! nodes (see [`volume`]).
//!
//! Modules, one job each:
//! - [`chunk`]: chunk ids and the local chunk store (RocksDB);
//! - [`blockmap`]: a volume's block map as chunks, named by one root hash;
//! - [`placement`]: capacity-weighted rendezvous hashing of replicas;
//! - [`net`]: the authenticated chunk protocol between nodes;
//! - [`meta`]: the metad key layout and records;
//! - [`mirror`]: the watched copy of `gvs/` every node keeps;
//! - [`gvs`]: the node context and the namespace transactions;
//! - [`volume`]: buffered writes, commits, the write lease and fencing;
//! - [`fs`]: the FUSE file system;
//! - [`control`]: the control files under `/gvs/.grid` (apps, VMs, nodes, events);
//! - [`clone`]: copy-on-write clones (copy_file_range and the clone ioctl);
//! - [`snapshot`]: snapshot directories (`.snapshots/`);
//! - [`backup`]: `gvsfs export`/`import`, raw and sparse;
//! - [`rollback`]: `gvsfs rollback` of a directory to a snapshot;
//! - [`restore`]: the daemon's side of it, one metad transaction;
//! - [`xattr`]: the `gvs.*` attributes the commands talk to the daemon through;
//! - [`gc`]: mark-and-sweep garbage collection of each node's store;
//! - [`scrub`]: background verification and rewriting of bad chunks;
//! - [`repair`]: bringing a replica that missed commits up to date;
//! - [`remirror`]: rebuilding a gone node's mirrors on other nodes;
//! - [`rebalance`]: moving mirrors off nodes fuller than the rest;
//! - [`events`]: repairs, re-mirroring and scrubs in the grid's event log;
//! - [`stats`]: the node's counters;
//! - [`daemon`]: startup, registration, mount and shutdown.

pub mod backup;
pub mod blockmap;
pub mod chunk;
pub mod clone;
pub mod control;
pub mod daemon;
pub mod error;
pub mod events;
pub mod fs;
pub mod gc;
pub mod gvs;
pub mod meta;
pub mod mirror;
pub mod net;
pub mod placement;
pub mod rebalance;
pub mod remirror;
pub mod repair;
pub mod restore;
pub mod rollback;
pub mod scrub;
pub mod snapshot;
pub mod stats;
pub mod volume;
pub mod xattr;

pub use error::{GvsError, Result};

/// Block size of new volumes (bytes).
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest block size `gvs.block_size` accepts.
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;
/// Mirror count of new volumes (clamped to the live nodes).
pub const DEFAULT_MIRRORS: u32 = 2;
/// Largest volume: 16 TiB (writes and truncates past it get EFBIG).
pub const MAX_VOLUME_SIZE: u64 = 16 << 40;
/// Blocks read ahead of a sequential reader.
pub const READ_AHEAD_BLOCKS: u64 = 64;
/// Default chunk server port.
pub const CHUNK_PORT: u16 = 2390;
