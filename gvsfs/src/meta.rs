//! The metad key layout of GVS and the records stored under it.
//!
//! ```text
//! gvs/ino/<ino:016x>            Inode (postcard)
//! gvs/dir/<parent:016x>/<name>  Dirent (postcard): the child's ino and kind
//! gvs/next_ino                  decimal: next unallocated ino (taken in batches by CAS)
//! gvs/nodes/<node>              NodeInfo (postcard), attached to the node's metad lease
//! gvs/lease/<ino:016x>          node name of the volume's writer, attached to its metad
//!                               lease; the key's mod_rev is the lease epoch
//! gvs/leasereq/<ino:016x>       node name asking the writer to hand the lease over
//! gvs/missing/<node>/<ino:016x> empty: a volume commit that replica `node` missed
//!                               (`repairing` while it copies; `rebalancing`: a new
//!                               mirror a rebalance added)
//! gvs/flush/<ino:016x>          node name asking the volume's writer to commit now
//!                               (snapshots and clones); the writer deletes it when done
//! gvs/snapdir/<dir:016x>/<name> decimal id of the snapshot NAME of directory DIR
//! gvs/snap/<id:016x>            Snapshot (postcard): the tree and every volume's root
//! gvs/pin/<node>/<id:016x>      empty, on the node's metad lease: a clone or snapshot
//!                               in flight (it read roots it has not committed yet)
//! gvs/pinseq                    rewritten with every pin: the collector checks that
//!                               no pin came and went while it read the roots
//! gvs/conf/<name>               decimal grid-wide setting: gc_grace_secs,
//!                               gc_interval_secs, scrub_rate (chunks/s per node),
//!                               repair_grace_secs, repair_rate_mb (MiB/s per node),
//!                               rebalance_threshold (% of the mean fill; 0: off),
//!                               rebalance_rate_mb (MiB/s per node);
//!                               gc_now and scrub_now are triggers (any new value)
//! gvs/stats/<node>              text `key=value ...`: the node's gc and scrub counters
//! gvs/fill/<node>               decimal bytes the node's chunk store uses, on the node's
//!                               metad lease: what a rebalance compares
//! ```

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::chunk::ChunkId;
use crate::error::{GvsError, Result};

/// The root directory's inode number (FUSE's root).
pub const ROOT_INO: u64 = 1;
/// The key holding the next free inode number.
pub const NEXT_INO_KEY: &str = "gvs/next_ino";
/// Prefix of every GVS key; what every node watches.
pub const PREFIX: &str = "gvs/";
/// Prefix of the node registrations.
pub const NODES_PREFIX: &str = "gvs/nodes/";
/// Prefix of the lease keys.
pub const LEASE_PREFIX: &str = "gvs/lease/";
/// Prefix of the lease requests.
pub const LEASE_REQ_PREFIX: &str = "gvs/leasereq/";
/// Prefix of the inode records.
pub const INO_PREFIX: &str = "gvs/ino/";
/// Prefix of the directory entries.
pub const DIR_PREFIX: &str = "gvs/dir/";

/// Prefix of the flush requests.
pub const FLUSH_PREFIX: &str = "gvs/flush/";
/// Prefix of the snapshot records.
pub const SNAP_PREFIX: &str = "gvs/snap/";
/// Prefix of the pins (and the pin sequence key).
pub const PIN_PREFIX: &str = "gvs/pin";
/// The key every pin rewrites.
pub const PINSEQ_KEY: &str = "gvs/pinseq";
/// Prefix of the grid-wide settings.
pub const CONF_PREFIX: &str = "gvs/conf/";
/// Prefix of the nodes' counters.
pub const STATS_PREFIX: &str = "gvs/stats/";
/// Prefix of the missed-commit records.
pub const MISSING_PREFIX: &str = "gvs/missing/";

/// Key of a flush request for a volume.
pub fn flush_key(ino: u64) -> String {
    format!("gvs/flush/{ino:016x}")
}
/// Prefix of a directory's snapshot names.
pub fn snapdir_prefix(dir: u64) -> String {
    format!("gvs/snapdir/{dir:016x}/")
}
/// Key naming snapshot `name` of directory `dir`.
pub fn snapdir_key(dir: u64, name: &str) -> String {
    format!("gvs/snapdir/{dir:016x}/{name}")
}
/// Prefix of a snapshot record's parts (a record can be larger than one
/// metad value: it is stored in parts written by one transaction).
pub fn snap_prefix(id: u64) -> String {
    format!("gvs/snap/{id:016x}/")
}
/// Key of part `n` of a snapshot record (sorted by `n`).
pub fn snap_part_key(id: u64, n: usize) -> String {
    format!("gvs/snap/{id:016x}/{n:04}")
}
/// The snapshot id a record part's key belongs to.
pub fn snap_of_key(key: &str) -> Option<u64> {
    let rest = key.strip_prefix(SNAP_PREFIX)?;
    u64::from_str_radix(rest.split('/').next()?, 16).ok()
}
/// Key of a pin.
pub fn pin_key(node: &str, id: u64) -> String {
    format!("gvs/pin/{node}/{id:016x}")
}
/// Key of a grid-wide setting.
pub fn conf_key(name: &str) -> String {
    format!("gvs/conf/{name}")
}
/// Key of a node's counters.
pub fn stats_key(node: &str) -> String {
    format!("gvs/stats/{node}")
}
/// Prefix of the nodes' store sizes.
pub const FILL_PREFIX: &str = "gvs/fill/";
/// Key of a node's store size.
pub fn fill_key(node: &str) -> String {
    format!("{FILL_PREFIX}{node}")
}

/// Key of an inode record.
pub fn ino_key(ino: u64) -> String {
    format!("gvs/ino/{ino:016x}")
}
/// Prefix of a directory's entries.
pub fn dir_prefix(parent: u64) -> String {
    format!("gvs/dir/{parent:016x}/")
}
/// Key of one directory entry.
pub fn dir_key(parent: u64, name: &str) -> String {
    format!("gvs/dir/{parent:016x}/{name}")
}
/// Key of a volume's write lease.
pub fn lease_key(ino: u64) -> String {
    format!("gvs/lease/{ino:016x}")
}
/// Key of a request for a volume's write lease.
pub fn lease_req_key(ino: u64) -> String {
    format!("gvs/leasereq/{ino:016x}")
}
/// Key of a node's registration.
pub fn node_key(node: &str) -> String {
    format!("gvs/nodes/{node}")
}
/// Key recording that `node` missed a commit of `ino`.
pub fn missing_key(node: &str, ino: u64) -> String {
    format!("gvs/missing/{node}/{ino:016x}")
}
/// The ino a `gvs/ino/`, `gvs/lease/` or `gvs/leasereq/` key names.
pub fn ino_of_key(key: &str, prefix: &str) -> Option<u64> {
    u64::from_str_radix(key.strip_prefix(prefix)?, 16).ok()
}
/// The parent and name a `gvs/dir/` key names.
pub fn dirent_of_key(key: &str) -> Option<(u64, &str)> {
    let rest = key.strip_prefix(DIR_PREFIX)?;
    let (p, name) = rest.split_once('/')?;
    Some((u64::from_str_radix(p, 16).ok()?, name))
}

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file: a volume.
    File,
    /// A symbolic link.
    Symlink,
}

/// A point in time, nanoseconds since the epoch.
pub type Nanos = i64;

/// The current time.
pub fn now() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// An inode record: everything about a file or directory but its name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inode {
    /// File, directory or symlink.
    pub kind: Kind,
    /// Permission bits (07777).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (a volume's size).
    pub size: u64,
    /// Access time.
    pub atime: Nanos,
    /// Modification time.
    pub mtime: Nanos,
    /// Change time.
    pub ctime: Nanos,
    /// Block size of the volume (a power of two); for a directory, what
    /// new files below inherit.
    pub block_size: u32,
    /// Wanted mirror count; for a directory, what new files inherit.
    pub mirrors: u32,
    /// The nodes holding the volume's chunks.
    pub replicas: Vec<String>,
    /// The volume's root (`None`: holds no data).
    pub root: Option<ChunkId>,
    /// Blocks that hold data (for `st_blocks`).
    pub written: u64,
    /// Whether a replica missed a commit.
    pub degraded: bool,
    /// A symlink's target.
    pub target: String,
    /// Extended attributes (`user.*` and other non-`gvs.` names).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Copies of a commit an fsync needs before it is acknowledged
    /// (`gvs.min_copies`, as Ceph's `min_size`): with fewer mirrors
    /// reachable it fails with EIO. 0: [`DEFAULT_MIN_COPIES`]. Last, so
    /// that records written before it existed still decode.
    pub min_copies: u32,
}

/// The copies an fsync needs when `gvs.min_copies` was never set: one,
/// so that a volume stays writable while a mirror is down (degraded).
pub const DEFAULT_MIN_COPIES: u32 = 1;

impl Inode {
    /// A fresh inode of `kind`.
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Inode {
        let t = now();
        Inode {
            kind,
            perm,
            uid,
            gid,
            size: 0,
            atime: t,
            mtime: t,
            ctime: t,
            block_size: crate::DEFAULT_BLOCK_SIZE,
            mirrors: crate::DEFAULT_MIRRORS,
            replicas: Vec::new(),
            root: None,
            written: 0,
            degraded: false,
            target: String::new(),
            xattrs: BTreeMap::new(),
            min_copies: 0,
        }
    }

    /// The copies a commit of this volume must reach (`gvs.min_copies`),
    /// at most its mirror count.
    pub fn copies_wanted(&self) -> u32 {
        match self.min_copies {
            0 => DEFAULT_MIN_COPIES,
            n => n,
        }
        .min(self.mirrors.max(1))
    }

    /// Sets `gvs.min_copies`: a volume's, in 1..=its mirror count.
    pub fn set_min_copies(&mut self, n: u32) -> Result<()> {
        if self.kind != Kind::File {
            return Err(GvsError::Invalid(
                "gvs.min_copies is a volume's setting, not a directory's".into(),
            ));
        }
        if n == 0 || n > self.mirrors {
            return Err(GvsError::Invalid(format!(
                "gvs.min_copies must be 1..={} (gvs.mirrors), not {n}",
                self.mirrors
            )));
        }
        self.min_copies = n;
        self.ctime = now();
        Ok(())
    }

    /// Encodes for metad.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("inode encodes")
    }

    /// Decodes from metad.
    pub fn decode(b: &[u8]) -> Result<Inode> {
        match postcard::from_bytes(b) {
            // Written before `min_copies` existed: the record ends where
            // it would begin (a 0, the default, is one byte).
            Err(postcard::Error::DeserializeUnexpectedEnd) => {
                postcard::from_bytes(&[b, &[0]].concat())
            }
            r => r,
        }
        .map_err(|e| GvsError::Corrupt(format!("inode record: {e}")))
    }
}

/// A directory entry's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dirent {
    /// The child.
    pub ino: u64,
    /// Its kind (for readdir without reading the inode).
    pub kind: Kind,
}

impl Dirent {
    /// Encodes for metad.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("dirent encodes")
    }
    /// Decodes from metad.
    pub fn decode(b: &[u8]) -> Result<Dirent> {
        postcard::from_bytes(b).map_err(|e| GvsError::Corrupt(format!("dirent: {e}")))
    }
}

/// A node's registration: where its chunk server listens and its capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` of its chunk server.
    pub addr: String,
    /// Bytes of its data file system.
    pub capacity: u64,
    /// Bytes free there.
    pub free: u64,
}

impl NodeInfo {
    /// Encodes for metad.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("node info encodes")
    }
    /// Decodes from metad.
    pub fn decode(b: &[u8]) -> Result<NodeInfo> {
        postcard::from_bytes(b).map_err(|e| GvsError::Corrupt(format!("node record: {e}")))
    }
}

/// One file or directory of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapEntry {
    /// Index of its directory in [`Snapshot::entries`] (the top: itself).
    pub parent: u32,
    /// Its name there (empty for the top).
    pub name: String,
    /// The inode it was taken from.
    pub ino: u64,
    /// Its record at the snapshot's instant: root, size, mode, times.
    pub inode: Inode,
}

/// A snapshot of a directory tree: every volume's root as of one metad
/// revision, so the snapshot is one consistent cut of all of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its id (from the inode number space).
    pub id: u64,
    /// The directory it was taken of.
    pub dir: u64,
    /// Its name under the directory's `.snapshots/`.
    pub name: String,
    /// When it was taken.
    pub taken: Nanos,
    /// The metad revision of the cut.
    pub revision: u64,
    /// The tree, the top directory first; parents before children.
    pub entries: Vec<SnapEntry>,
}

/// Largest part of a snapshot record (metad takes values up to 1 MiB).
pub const SNAP_PART: usize = 960 * 1024;

impl Snapshot {
    /// Encodes for metad, in parts of at most [`SNAP_PART`] bytes, to be
    /// stored under [`snap_part_key`] in order.
    pub fn encode_parts(&self) -> Vec<Vec<u8>> {
        let all = postcard::to_allocvec(self).expect("snapshot encodes");
        all.chunks(SNAP_PART).map(<[u8]>::to_vec).collect()
    }
    /// Decodes from its parts, in key order.
    pub fn decode_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Result<Snapshot> {
        let all: Vec<u8> = parts.into_iter().flatten().copied().collect();
        postcard::from_bytes(&all).map_err(|e| GvsError::Corrupt(format!("snapshot record: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inode_record_from_before_min_copies_decodes_with_the_default() {
        let mut rec = Inode::new(Kind::File, 0o644, 1, 2);
        rec.xattrs.insert("user.a".into(), b"b".to_vec());
        let mut old = rec.encode();
        assert_eq!(old.pop(), Some(0), "min_copies 0 is the last byte");
        assert_eq!(Inode::decode(&old).unwrap(), rec);
        assert_eq!(rec.copies_wanted(), DEFAULT_MIN_COPIES);
        rec.set_min_copies(2).unwrap();
        assert_eq!(Inode::decode(&rec.encode()).unwrap().copies_wanted(), 2);
        assert!(rec.set_min_copies(0).is_err());
        assert!(rec.set_min_copies(3).is_err());
        assert!(Inode::decode(&old[..old.len() - 3]).is_err());
    }
}
