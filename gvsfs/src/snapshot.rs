//! Snapshot directories. Every directory D has a virtual `.snapshots/`;
//! `mkdir D/.snapshots/NAME` takes a snapshot of every volume below D at
//! one instant, `rmdir` deletes it, and the snapshot reads as a read-only
//! tree (EROFS on any change) whose files read the recorded roots.
//!
//! Taking one: pin (so the collector keeps what the roots name), ask every
//! writer below D to flush (see [`Gvs::flush_writers`]), read every inode
//! record from metad at one revision (the cut: each volume's root as of
//! that revision), and commit the record (`gvs/snap/<id>`) and its name
//! (`gvs/snapdir/<D>/<NAME>`) in one transaction. O(1) in volume size:
//! roots are copied, never chunks.
//!
//! Virtual inode numbers (real ones are far below 2^62):
//! `.snapshots` of D is `2^62 | D`; entry `i` of snapshot `id` is
//! `2^63 | id << 20 | i` (the snapshot's top directory is entry 0).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metad::{Compare, CompareTarget, Op, Txn};

use crate::error::{GvsError, Result};
use crate::gvs::{check_name, del, put, unchanged, Gvs};
use crate::meta::{self, Dirent, Inode, Kind, SnapEntry, Snapshot};
use crate::stats::Stats;

/// The virtual directory's name.
pub const SNAPSHOTS: &str = ".snapshots";
const SNAPDIR_BIT: u64 = 1 << 62;
const ENTRY_BIT: u64 = 1 << 63;
const IDX_BITS: u32 = 20;
/// Largest encoded snapshot record: its parts go to metad in one
/// transaction, whose request is at most 8 MiB.
const MAX_RECORD: usize = 6 << 20;

/// What an inode number names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Virt {
    /// A real inode.
    Real(u64),
    /// The `.snapshots` directory of a real directory.
    SnapDir(u64),
    /// Entry `idx` of snapshot `id`.
    Entry {
        /// The snapshot.
        id: u64,
        /// The entry.
        idx: u32,
    },
}

/// Classifies an inode number.
pub fn classify(ino: u64) -> Virt {
    if ino & ENTRY_BIT != 0 {
        Virt::Entry {
            id: (ino & !ENTRY_BIT) >> IDX_BITS,
            idx: (ino & ((1 << IDX_BITS) - 1)) as u32,
        }
    } else if ino & SNAPDIR_BIT != 0 {
        Virt::SnapDir(ino & !SNAPDIR_BIT)
    } else {
        Virt::Real(ino)
    }
}

/// The inode number of D's `.snapshots`.
pub fn snapdir_ino(dir: u64) -> u64 {
    SNAPDIR_BIT | dir
}

/// The inode number of entry `idx` of snapshot `id`.
pub fn entry_ino(id: u64, idx: u32) -> u64 {
    ENTRY_BIT | (id << IDX_BITS) | idx as u64
}

/// A decoded snapshot with its directories' children by name.
pub struct View {
    /// The record.
    pub snap: Snapshot,
    children: HashMap<u32, Vec<(String, u32)>>,
}

impl View {
    fn new(snap: Snapshot) -> View {
        let mut children: HashMap<u32, Vec<(String, u32)>> = HashMap::new();
        for (i, e) in snap.entries.iter().enumerate().skip(1) {
            children
                .entry(e.parent)
                .or_default()
                .push((e.name.clone(), i as u32));
        }
        for c in children.values_mut() {
            c.sort();
        }
        View { snap, children }
    }

    /// Entry `idx`.
    pub fn entry(&self, idx: u32) -> Result<&SnapEntry> {
        self.snap
            .entries
            .get(idx as usize)
            .ok_or(GvsError::NotFound)
    }

    /// The children of directory entry `idx`, by name.
    pub fn children(&self, idx: u32) -> &[(String, u32)] {
        self.children.get(&idx).map_or(&[], |v| v.as_slice())
    }

    /// The child `name` of directory entry `idx`.
    pub fn child(&self, idx: u32, name: &str) -> Result<u32> {
        let c = self.children(idx);
        c.binary_search_by(|(n, _)| n.as_str().cmp(name))
            .map(|i| c[i].1)
            .map_err(|_| GvsError::NotFound)
    }
}

/// Decoded snapshots, by id, with the mod revision they were decoded at.
#[derive(Default)]
pub struct Cache {
    views: Mutex<HashMap<u64, (u64, Arc<View>)>>,
}

impl Cache {
    /// Snapshot `id`, from the watched namespace copy.
    pub fn view(&self, gvs: &Gvs, id: u64) -> Result<Arc<View>> {
        let parts = gvs.mirror.range(&meta::snap_prefix(id));
        // The parts are written together: the first one's revision is
        // the record's.
        let rev = parts.first().ok_or(GvsError::NotFound)?.1.mod_rev;
        let mut g = self.views.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, view)) = g.get(&id) {
            if *seen == rev {
                return Ok(view.clone());
            }
        }
        let snap = Snapshot::decode_parts(parts.iter().map(|(_, v)| v.value.as_slice()))?;
        let view = Arc::new(View::new(snap));
        if g.len() > 64 {
            g.clear();
        }
        g.insert(id, (rev, view.clone()));
        Ok(view)
    }
}

/// The id of snapshot `name` of `dir`.
pub fn id_of(gvs: &Gvs, dir: u64, name: &str) -> Result<u64> {
    let v = gvs
        .mirror
        .get(&meta::snapdir_key(dir, name))
        .ok_or(GvsError::NotFound)?;
    std::str::from_utf8(&v.value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| GvsError::Corrupt(format!("snapshot name {name}")))
}

/// The snapshots of `dir`: (name, id), by name.
pub fn list(gvs: &Gvs, dir: u64) -> Vec<(String, u64)> {
    let prefix = meta::snapdir_prefix(dir);
    gvs.mirror
        .range(&prefix)
        .into_iter()
        .filter_map(|(k, v)| {
            let id = std::str::from_utf8(&v.value).ok()?.parse().ok()?;
            Some((k[prefix.len()..].to_string(), id))
        })
        .collect()
}

/// The inode numbers of every file below `dir`, from the namespace copy.
fn files_below(gvs: &Gvs, dir: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut todo = vec![dir];
    while let Some(d) = todo.pop() {
        for (_, de) in gvs.list(d) {
            match de.kind {
                Kind::Dir => todo.push(de.ino),
                Kind::File => out.push(de.ino),
                Kind::Symlink => {}
            }
        }
    }
    out
}

/// Takes snapshot `name` of directory `dir`; returns its id.
pub fn take(gvs: &Gvs, dir: u64, name: &str) -> Result<u64> {
    check_name(name)?;
    let (d, _) = gvs.inode(dir)?;
    if d.kind != Kind::Dir {
        return Err(GvsError::NotDir);
    }
    let nk = meta::snapdir_key(dir, name);
    if gvs.mirror.get(&nk).is_some() {
        return Err(GvsError::Exists);
    }
    let pin = gvs.pin()?;
    let r = take_pinned(gvs, &pin, dir, name, &nk);
    match &r {
        Ok(id) => {
            Stats::add(&gvs.stats.snapshots, 1);
            tracing::info!("snapshot {name} of directory {dir:#x} taken (id {id})");
        }
        Err(_) => gvs.unpin(&pin),
    }
    r
}

fn take_pinned(gvs: &Gvs, pin: &crate::gvs::Pin, dir: u64, name: &str, nk: &str) -> Result<u64> {
    let leftovers = gvs.flush_writers(&files_below(gvs, dir))?;
    // The cut: every inode record at one revision.
    let client = gvs.client();
    let (inos, revision) = gvs
        .rt
        .block_on(client.get_prefix(meta::INO_PREFIX))
        .inspect_err(|e| gvs.metad_trouble(e))?;
    let (dirs, _) = gvs
        .rt
        .block_on(client.get_prefix(meta::DIR_PREFIX))
        .inspect_err(|e| gvs.metad_trouble(e))?;
    let inodes: HashMap<u64, Inode> = inos
        .iter()
        .filter_map(|kv| {
            let ino = meta::ino_of_key(std::str::from_utf8(&kv.key).ok()?, meta::INO_PREFIX)?;
            Some((ino, Inode::decode(&kv.value).ok()?))
        })
        .collect();
    let mut children: HashMap<u64, Vec<(String, Dirent)>> = HashMap::new();
    for kv in &dirs {
        let Ok(k) = std::str::from_utf8(&kv.key) else {
            continue;
        };
        if let (Some((parent, n)), Ok(de)) = (meta::dirent_of_key(k), Dirent::decode(&kv.value)) {
            children
                .entry(parent)
                .or_default()
                .push((n.to_string(), de));
        }
    }
    let top = inodes.get(&dir).ok_or(GvsError::NotFound)?.clone();
    let mut entries = vec![SnapEntry {
        parent: 0,
        name: String::new(),
        ino: dir,
        inode: top,
    }];
    // Breadth first: parents before children. A name created after the
    // inode read (no record at the cut) is not part of the snapshot.
    let mut i = 0;
    while i < entries.len() {
        if entries[i].inode.kind == Kind::Dir {
            let mut kids = children.remove(&entries[i].ino).unwrap_or_default();
            kids.sort_by(|a, b| a.0.cmp(&b.0));
            for (n, de) in kids {
                if let Some(rec) = inodes.get(&de.ino) {
                    entries.push(SnapEntry {
                        parent: i as u32,
                        name: n,
                        ino: de.ino,
                        inode: rec.clone(),
                    });
                }
            }
        }
        i += 1;
        if entries.len() >= 1 << IDX_BITS {
            return Err(GvsError::Invalid(
                "too many files below the directory for one snapshot".into(),
            ));
        }
    }
    let id = gvs.alloc_ino()?;
    let snap = Snapshot {
        id,
        dir,
        name: name.to_string(),
        taken: meta::now(),
        revision,
        entries,
    };
    let parts = snap.encode_parts();
    let size: usize = parts.iter().map(Vec::len).sum();
    if size > MAX_RECORD {
        return Err(GvsError::Invalid(format!(
            "a snapshot of {} entries ({size} bytes) is over the {MAX_RECORD}-byte record limit",
            snap.entries.len()
        )));
    }
    let mut success: Vec<_> = parts
        .into_iter()
        .enumerate()
        .map(|(n, p)| put(&meta::snap_part_key(id, n), p))
        .collect();
    success.push(put(nk, id.to_string().into_bytes()));
    success.push(pin.release());
    success.extend(leftovers.iter().map(|k| del(k)));
    let t = Txn {
        compare: vec![
            unchanged(nk, 0),
            Compare {
                key: meta::ino_key(dir).into_bytes(),
                target: CompareTarget::Exists(true),
            },
            pin.compare(),
        ],
        success,
        failure: vec![],
    };
    if gvs.txn(t)? {
        return Ok(id);
    }
    if gvs.mirror.get(nk).is_some() {
        return Err(GvsError::Exists);
    }
    if gvs.mirror.get(&meta::ino_key(dir)).is_none() {
        return Err(GvsError::NotFound);
    }
    Err(GvsError::Conflict(format!(
        "snapshot {name}: the node's pin lapsed; try again"
    )))
}

/// Deletes snapshot `name` of `dir` (its chunks go at the next collection
/// unless something else still names them).
pub fn remove(gvs: &Gvs, dir: u64, name: &str) -> Result<()> {
    let nk = meta::snapdir_key(dir, name);
    for _ in 0..10 {
        let v = gvs.mirror.get(&nk).ok_or(GvsError::NotFound)?;
        let id = id_of(gvs, dir, name)?;
        let t = Txn {
            compare: vec![unchanged(&nk, v.mod_rev)],
            success: vec![
                del(&nk),
                Op::DeletePrefix {
                    prefix: meta::snap_prefix(id).into_bytes(),
                },
            ],
            failure: vec![],
        };
        if gvs.txn(t)? {
            tracing::info!("snapshot {name} of directory {dir:#x} deleted");
            return Ok(());
        }
    }
    Err(GvsError::Conflict(format!(
        "snapshot {name}: it kept changing"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_inode_numbers_round_trip() {
        assert_eq!(classify(5), Virt::Real(5));
        assert_eq!(classify(snapdir_ino(5)), Virt::SnapDir(5));
        assert_eq!(
            classify(entry_ino(1234567, 99)),
            Virt::Entry {
                id: 1234567,
                idx: 99
            }
        );
        assert_eq!(classify(entry_ino(7, 0)), Virt::Entry { id: 7, idx: 0 });
    }
}
