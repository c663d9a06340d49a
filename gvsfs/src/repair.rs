//! Bringing a replica up to date: a commit that a replica missed (down or
//! cut off) leaves `gvs/missing/<node>/<ino>` and marks the volume
//! degraded. The node, once back, walks the volume's current root, copies
//! every chunk it lacks from the other replicas, and deletes its record;
//! the last record gone, the volume is in sync again. It never wipes
//! anything: it only adds chunks. `gvs.state` reads `repairing` while a
//! live replica has records left.
//!
//! Rebuilding the mirrors of a node that stays down on other nodes
//! ([`crate::remirror`]) reuses this: each new replica gets a record.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use metad::Txn;

use crate::blockmap;
use crate::chunk::ChunkId;
use crate::error::{GvsError, Result};
use crate::gvs::{del, unchanged, Gvs};
use crate::meta::{self, Kind};
use crate::stats::Stats;

/// Chunks fetched at a time.
const BATCH: usize = 64;

/// Whether a volume has missed-commit records (`in_progress`: only
/// those a returning node is repairing now).
pub fn missing_of(gvs: &Gvs, ino: u64, in_progress: bool) -> bool {
    let suffix = format!("/{ino:016x}");
    gvs.mirror
        .range(meta::MISSING_PREFIX)
        .into_iter()
        .filter(|(k, _)| k.ends_with(&suffix))
        .any(|(_, v)| !in_progress || v.value == REPAIRING)
}

/// The value a node gives its missed-commit record while repairing it.
const REPAIRING: &[u8] = b"repairing";

/// Repairs this node's copy of `ino` and drops its record (if it did not
/// change meanwhile). Returns the chunks copied.
fn repair_one(gvs: &Gvs, ino: u64, key: &str, rev: u64) -> Result<u64> {
    let mut copied = 0;
    // Marked as being repaired (gvs.state reads `repairing`); a commit
    // missed meanwhile rewrites the record, and the final delete fails.
    if !gvs.txn(Txn {
        compare: vec![unchanged(key, rev)],
        success: vec![crate::gvs::put(key, REPAIRING.to_vec())],
        failure: vec![],
    })? {
        return Ok(0);
    }
    let rev = gvs.mirror.get(key).map_or(0, |v| v.mod_rev);
    match gvs.inode(ino) {
        Ok((rec, _)) if rec.kind == Kind::File && rec.replicas.contains(&gvs.me) => {
            if let Some(root) = rec.root {
                let fetch = |id: &ChunkId| Ok(gvs.fetch(id, &rec.replicas)?.to_vec());
                let (mut walked, mut ids) = (HashSet::new(), HashSet::new());
                blockmap::mark(root, &fetch, &mut walked, &mut ids)?;
                let mut lacking = Vec::new();
                for id in ids {
                    if !gvs.store.has(&id)? {
                        lacking.push(id);
                    }
                }
                for part in lacking.chunks(BATCH) {
                    let data = gvs.fetch_many(part, &rec.replicas)?;
                    let chunks: Vec<_> = part.iter().copied().zip(data).collect();
                    gvs.store.put_many(&chunks, true)?;
                    copied += chunks.len() as u64;
                    // Throttled, so that the node's own I/O goes on.
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        // Gone, or no longer a replica here: nothing to repair.
        Ok(_) | Err(GvsError::NotFound) => {}
        Err(e) => return Err(e),
    }
    let done = gvs.txn(Txn {
        compare: vec![unchanged(key, rev)],
        success: vec![del(key)],
        failure: vec![],
    })?;
    if done && !missing_of(gvs, ino, false) {
        let _ = gvs.update_inode(ino, |i| {
            if missing_of(gvs, ino, false) {
                return Err(GvsError::Conflict("missed again".into()));
            }
            i.degraded = false;
            Ok(())
        });
        tracing::info!("volume {ino:#x}: repaired ({copied} chunks copied); in sync");
    }
    Ok(copied)
}

/// Repairs this node's missed commits, every two seconds.
pub fn run(gvs: Arc<Gvs>) {
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let prefix = format!("{}{}/", meta::MISSING_PREFIX, gvs.me);
        for (k, v) in gvs.mirror.range(&prefix) {
            let Some(ino) = meta::ino_of_key(&k, &prefix) else {
                continue;
            };
            match repair_one(&gvs, ino, &k, v.mod_rev) {
                Ok(n) => Stats::add(&gvs.stats.repair_chunks, n),
                Err(e) => tracing::warn!("repair of volume {ino:#x}: {e}"),
            }
        }
    }
}
