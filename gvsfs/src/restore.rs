//! The daemon's side of `gvsfs rollback`: a directory brought back to one
//! of its snapshots in one metad transaction, as a snapshot is taken in
//! one. Asked for by setting `gvs.rollback` (or `gvs.rollback.prune`) to
//! the snapshot's name on the directory; the outcome, a report or the
//! reason it was refused, reads back from `gvs.rollback` there on the
//! same node (a setxattr only carries an errno).
//!
//! The snapshot tree is laid over the live one: a volume that exists is
//! cloned over from its snapshot record (its root, size and mode; it
//! keeps its inode number), a missing volume or directory is created
//! (new inode numbers), and with `prune` what the snapshot does not have
//! is removed (a directory holding snapshots of its own stays). Each
//! existing volume's write lease is taken first (its writer, anywhere,
//! hands it over after flushing) and held until the transaction, which
//! compares every lease epoch, record and name it read: another change
//! in between fails the whole rollback, and nothing is changed. A pin
//! keeps the collector off the snapshot's chunks meanwhile (see
//! [`crate::gc`]). No data is copied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use metad::{Compare, CompareTarget, Op, Txn};

use crate::blockmap::BlockMap;
use crate::error::{GvsError, Result};
use crate::gvs::{del, put, unchanged, Gvs};
use crate::meta::{self, Dirent, Inode, Kind};
use crate::snapshot::{self, View};
use crate::volume::{Volume, VolumeSlot};

/// Largest transaction a rollback sends (metad takes requests up to 8
/// MiB; the same bound as a snapshot's record).
const MAX_TXN: usize = 6 << 20;

/// What a rollback did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Volumes cloned back from the snapshot (existing or recreated).
    pub restored: u64,
    /// Directories recreated.
    pub dirs_created: u64,
    /// Volumes and directories removed by `prune`.
    pub pruned: u64,
}

impl Report {
    /// The text `gvs.rollback` reads after a rollback that worked.
    pub fn encode(&self) -> String {
        format!(
            "restored={} dirs_created={} pruned={}",
            self.restored, self.dirs_created, self.pruned
        )
    }

    /// Parses [`Report::encode`]'s text.
    pub fn decode(text: &str) -> Option<Report> {
        let mut r = Report::default();
        for kv in text.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            let v = v.parse().ok()?;
            match k {
                "restored" => r.restored = v,
                "dirs_created" => r.dirs_created = v,
                "pruned" => r.pruned = v,
                _ => return None,
            }
        }
        Some(r)
    }
}

/// The last outcome per directory on this node, for `gvs.rollback`.
static LAST: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);

/// What `gvs.rollback` reads on `dir`: the last rollback's report, or
/// `error: ` and why it was refused.
pub fn last(dir: u64) -> Option<String> {
    LAST.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()?
        .get(&dir)
        .cloned()
}

/// Rolls `dir` back to its snapshot `name` (see the module doc) and
/// records the outcome for [`last`].
pub fn rollback(gvs: &Gvs, dir: u64, name: &str, prune: bool) -> Result<Report> {
    let r = run(gvs, dir, name, prune);
    let text = match &r {
        Ok(rep) => rep.encode(),
        Err(e) => format!("error: {e}"),
    };
    LAST.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(dir, text);
    r
}

/// The transaction being built.
#[derive(Default)]
struct Plan {
    compare: Vec<Compare>,
    success: Vec<Op>,
    /// Existing volumes to clone over: (ino, snapshot record).
    restore: Vec<(u64, Inode)>,
    /// Volumes removed (their local state goes).
    removed: Vec<u64>,
    report: Report,
}

fn run(gvs: &Gvs, dir: u64, name: &str, prune: bool) -> Result<Report> {
    let (d, _) = gvs.inode(dir)?;
    if d.kind != Kind::Dir {
        return Err(GvsError::NotDir);
    }
    let id = snapshot::id_of(gvs, dir, name)
        .map_err(|_| GvsError::Invalid(format!("no snapshot {name:?} of this directory")))?;
    let view = snapshot::Cache::default().view(gvs, id)?;
    let pin = gvs.pin()?;
    let r = (|| {
        let mut plan = Plan::default();
        plan.compare.push(Compare {
            key: meta::ino_key(dir).into_bytes(),
            target: CompareTarget::Exists(true),
        });
        lay(gvs, &view, 0, dir, true, prune, &mut plan)?;
        commit(gvs, plan, pin.compare(), pin.release())
    })();
    if r.is_err() {
        gvs.unpin(&pin);
    }
    r
}

/// Lays snapshot directory entry `sidx` over directory `live` (which
/// `exists` already, or is created by this transaction).
fn lay(
    gvs: &Gvs,
    view: &View,
    sidx: u32,
    live: u64,
    exists: bool,
    prune: bool,
    plan: &mut Plan,
) -> Result<()> {
    for (name, cidx) in view.children(sidx) {
        let e = view.entry(*cidx)?;
        let dk = meta::dir_key(live, name);
        let now = if exists {
            match gvs.dirent(live, name) {
                Ok(found) => Some(found),
                Err(GvsError::NotFound) => None,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        match (e.inode.kind, now) {
            (Kind::Dir, Some((de, rev))) if de.kind == Kind::Dir => {
                plan.compare.push(unchanged(&dk, rev));
                lay(gvs, view, *cidx, de.ino, true, prune, plan)?;
            }
            (Kind::File, Some((de, rev))) if de.kind == Kind::File => {
                plan.compare.push(unchanged(&dk, rev));
                plan.restore.push((de.ino, e.inode.clone()));
                plan.report.restored += 1;
            }
            (Kind::Dir | Kind::File, None) => {
                let ino = gvs.alloc_ino()?;
                let rec = if e.inode.kind == Kind::Dir {
                    let mut rec = e.inode.clone();
                    rec.mtime = meta::now();
                    rec.ctime = rec.mtime;
                    plan.report.dirs_created += 1;
                    rec
                } else {
                    let mut fresh = Inode::new(Kind::File, e.inode.perm, e.inode.uid, e.inode.gid);
                    fresh.xattrs = e.inode.xattrs.clone();
                    plan.report.restored += 1;
                    crate::clone::cloned(&e.inode, fresh)
                };
                if exists {
                    plan.compare.push(unchanged(&dk, 0));
                }
                let kind = rec.kind;
                plan.success.extend(crate::clone::repairs(ino, &rec));
                plan.success.push(put(&meta::ino_key(ino), rec.encode()));
                plan.success.push(put(&dk, Dirent { ino, kind }.encode()));
                if kind == Kind::Dir {
                    lay(gvs, view, *cidx, ino, false, prune, plan)?;
                }
            }
            (Kind::Dir, Some(_)) => {
                return Err(GvsError::Invalid(format!(
                    "{name} is a directory in the snapshot but not now; remove it first"
                )))
            }
            (Kind::File, Some(_)) => {
                return Err(GvsError::Invalid(format!(
                    "{name} is a volume in the snapshot but a directory now; remove it first"
                )))
            }
            // Symlinks: left as they are (not volumes).
            (Kind::Symlink, _) => {}
        }
    }
    if prune && exists {
        for (name, de) in gvs.list(live) {
            if view.child(sidx, &name).is_err() {
                remove(gvs, live, &name, &de, plan)?;
            }
        }
    }
    Ok(())
}

/// Removes `name` (and what is below it) from `parent`; a directory
/// holding snapshots of its own stays, emptied.
fn remove(gvs: &Gvs, parent: u64, name: &str, de: &Dirent, plan: &mut Plan) -> Result<()> {
    let dk = meta::dir_key(parent, name);
    let (_, rev) = gvs.dirent(parent, name)?;
    plan.compare.push(unchanged(&dk, rev));
    if de.kind == Kind::Dir {
        for (n, child) in gvs.list(de.ino) {
            remove(gvs, de.ino, &n, &child, plan)?;
        }
        if gvs.mirror.any_under(&meta::snapdir_prefix(de.ino)) {
            return Ok(());
        }
    } else {
        plan.removed.push(de.ino);
        plan.success.extend([
            del(&meta::lease_key(de.ino)),
            del(&meta::lease_req_key(de.ino)),
            del(&meta::flush_key(de.ino)),
        ]);
    }
    plan.success.extend([del(&dk), del(&meta::ino_key(de.ino))]);
    plan.report.pruned += 1;
    Ok(())
}

/// Takes the write lease of every volume to restore, then commits the
/// whole plan in one transaction (with `pin`), and makes the restored
/// volumes' local state follow.
fn commit(gvs: &Gvs, mut plan: Plan, pin_compare: Compare, pin_release: Op) -> Result<Report> {
    // Locked in inode order, held until the transaction: no local write
    // slips in between, and no two rollbacks deadlock.
    plan.restore.sort_by_key(|(ino, _)| *ino);
    let vols: Vec<Arc<VolumeSlot>> = plan.restore.iter().map(|(i, _)| gvs.volume(*i)).collect();
    let mut locked: Vec<MutexGuard<Volume>> = vols
        .iter()
        .map(|v| v.lock().unwrap_or_else(|e| e.into_inner()))
        .collect();
    let mut recs = Vec::new();
    for ((ino, srec), v) in plan.restore.iter().zip(locked.iter_mut()) {
        v.ensure_lease(gvs)?;
        let epoch = v.epoch().ok_or(GvsError::Fenced(*ino))?;
        let (drec, d_rev) = gvs.inode(*ino)?;
        if drec.kind != Kind::File {
            return Err(GvsError::Conflict(format!("volume {ino:#x} changed kind")));
        }
        let rec = crate::clone::cloned(srec, drec);
        let k = meta::ino_key(*ino);
        plan.compare.push(Compare {
            key: meta::lease_key(*ino).into_bytes(),
            target: CompareTarget::ModRev(epoch),
        });
        plan.compare.push(unchanged(&k, d_rev));
        plan.success.extend(crate::clone::repairs(*ino, &rec));
        plan.success.push(put(&k, rec.encode()));
        recs.push(rec);
    }
    plan.compare.push(pin_compare);
    plan.success.push(pin_release);
    let size: usize = plan
        .success
        .iter()
        .map(|op| match op {
            Op::Put { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::DeletePrefix { prefix } => prefix.len(),
        })
        .sum();
    if size > MAX_TXN {
        return Err(GvsError::Invalid(format!(
            "a rollback of {size} bytes of records is over the {MAX_TXN}-byte transaction limit"
        )));
    }
    let t = Txn {
        compare: plan.compare,
        success: plan.success,
        failure: vec![],
    };
    if !gvs.txn(t)? {
        return Err(GvsError::Conflict(
            "the directory changed during the rollback; nothing was changed, try again".into(),
        ));
    }
    for (((ino, _), v), rec) in plan.restore.iter().zip(locked.iter_mut()).zip(&recs) {
        let fetch = |id: &crate::chunk::ChunkId| Ok(gvs.fetch(id, &rec.replicas)?.to_vec());
        match BlockMap::load(rec.root, &fetch) {
            Ok(map) => v.adopt(rec.root, map),
            // Committed: the local state starts afresh from the record.
            Err(e) => {
                tracing::warn!("volume {ino:#x}: map after the rollback: {e}");
                **v = Volume::new(*ino);
            }
        }
        gvs.invalidate(*ino);
    }
    drop(locked);
    let mut g = gvs.volumes.lock().unwrap_or_else(|e| e.into_inner());
    for ino in &plan.removed {
        g.remove(ino);
    }
    Ok(plan.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        let r = Report {
            restored: 3,
            dirs_created: 1,
            pruned: 2,
        };
        assert_eq!(Report::decode(&r.encode()), Some(r));
        assert_eq!(Report::decode("error: x"), None);
    }
}
