//! Bringing a replica up to date: a commit that a replica missed (down or
//! cut off) leaves `gvs/missing/<node>/<ino>` and marks the volume
//! degraded. The node, once back, walks the volume's current root, copies
//! every chunk it lacks from the other replicas, and deletes its record;
//! the last record gone, the volume is in sync again. It never wipes
//! anything: it only adds chunks. `gvs.state` reads `repairing` while a
//! live replica has records left.
//!
//! The copy is throttled to `gvs/conf/repair_rate_mb` MiB/s per node
//! (`gvs.repair.rate_mb` on /gvs; 0: no limit) so that the VMs' own I/O
//! goes on, and it is reported in the grid's event log: `repair-started`,
//! `repair-progress`, `repair-done` (see [`crate::events`]).
//!
//! Rebuilding the mirrors of a node that stays down on other nodes
//! ([`crate::remirror`]) reuses this: each new replica gets a record.
//! So does moving a mirror off a full node ([`crate::rebalance`]): its
//! record reads [`REBALANCING`], its copy is throttled to
//! `gvs/conf/rebalance_rate_mb` instead, and a pass that only moves
//! mirrors reports as `rebalance-*` events.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metad::Txn;

use crate::blockmap;
use crate::chunk::ChunkId;
use crate::error::{GvsError, Result};
use crate::events::{mib, Progress};
use crate::gvs::{conf, del, unchanged, Gvs};
use crate::meta::{self, Kind};
use crate::mirror::Versioned;
use crate::stats::Stats;

/// Chunks fetched at a time.
const BATCH: usize = 64;
/// Default repair rate, MiB/s per node (`gvs/conf/repair_rate_mb`).
pub const DEFAULT_RATE_MB: u64 = 50;

/// Paces the copy to the repair rate (or the rebalance rate), read at
/// each step so that a new setting applies to a repair under way.
struct Throttle {
    since: Instant,
    bytes: u64,
    rate_mb: u64,
}

/// The setting that limits a copy, and its default.
type Rate = (&'static str, u64);
const REPAIR_RATE: Rate = ("repair_rate_mb", DEFAULT_RATE_MB);
const REBALANCE_RATE: Rate = ("rebalance_rate_mb", crate::rebalance::DEFAULT_RATE_MB);

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            since: Instant::now(),
            bytes: 0,
            rate_mb: 0,
        }
    }

    /// Accounts `bytes` copied and sleeps as long as `rate` asks.
    fn pace(&mut self, gvs: &Gvs, bytes: u64, (key, default): Rate) {
        let rate = conf(gvs, key, default);
        if rate != self.rate_mb {
            // A new rate counts from now.
            (self.since, self.bytes, self.rate_mb) = (Instant::now(), 0, rate);
        }
        self.bytes += bytes;
        if rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.bytes as f64 / (rate as f64 * 1024.0 * 1024.0));
        if let Some(wait) = due.checked_sub(self.since.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Where a pass is: volume `index` of `total`, for the percentages.
struct Place<'a> {
    progress: &'a mut Progress,
    throttle: &'a mut Throttle,
    index: u64,
    total: u64,
}

/// Whether a missed-commit record's value says a copy is under way.
fn in_progress(value: &[u8]) -> bool {
    value == REPAIRING || value == REBALANCING
}

/// The missed-commit records of volume `ino`, one per lagging replica:
/// (key, record).
pub fn records_of(gvs: &Gvs, ino: u64) -> Vec<(String, Versioned)> {
    let suffix = format!("/{ino:016x}");
    let mut records = gvs.mirror.range(meta::MISSING_PREFIX);
    records.retain(|(k, _)| k.ends_with(&suffix));
    records
}

/// Whether a volume has missed-commit records (`in_progress`: only
/// those a returning node is repairing now).
pub fn missing_of(gvs: &Gvs, ino: u64, in_progress: bool) -> bool {
    records_of(gvs, ino)
        .iter()
        .any(|(_, v)| !in_progress || self::in_progress(&v.value))
}

/// Whether the missed-commit record `key` is a rebalance's copy.
fn rebalancing(gvs: &Gvs, key: &str) -> bool {
    gvs.mirror.get(key).is_some_and(|v| v.value == REBALANCING)
}

/// The value of a missed-commit record whose node is repairing it (or,
/// written by [`crate::remirror`], is about to).
pub const REPAIRING: &[u8] = b"repairing";

/// The value of the record of a node that a rebalance added as a new
/// mirror of a volume (see [`crate::rebalance`]): it copies the volume
/// at the rebalance rate.
pub const REBALANCING: &[u8] = b"rebalancing";

/// Repairs this node's copy of `ino` and drops its record (if it did not
/// change meanwhile). Returns the chunks copied.
fn repair_one(gvs: &Gvs, ino: u64, key: &str, rev: u64, at: &mut Place) -> Result<u64> {
    let mut copied = 0;
    let (marker, rate) = if rebalancing(gvs, key) {
        (REBALANCING, REBALANCE_RATE)
    } else {
        (REPAIRING, REPAIR_RATE)
    };
    // Marked as being repaired (gvs.state reads `repairing`); a commit
    // missed meanwhile rewrites the record, and the final delete fails.
    if !gvs.txn(Txn {
        compare: vec![unchanged(key, rev)],
        success: vec![crate::gvs::put(key, marker.to_vec())],
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
                // What is here already is kept young: a collector round
                // that read the roots before this node was a replica
                // must not delete it (see crate::gc).
                let ids: Vec<ChunkId> = ids.into_iter().collect();
                let lacking = crate::gc::keep_held(gvs, &ids)?;
                let n = lacking.len().max(1) as u64;
                for part in lacking.chunks(BATCH) {
                    let data = gvs.fetch_many(part, &rec.replicas)?;
                    let bytes: u64 = data.iter().map(|d| d.len() as u64).sum();
                    let chunks: Vec<_> = part.iter().copied().zip(data).collect();
                    gvs.store.put_many(&chunks, true)?;
                    copied += chunks.len() as u64;
                    let percent = (100 * (at.index * n + copied) / (at.total * n)) as u8;
                    at.progress.advance(gvs, bytes, percent);
                    at.throttle.pace(gvs, bytes, rate);
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

/// Repairs this node's missed commits, every two seconds. A pass with
/// work reports it as events, unless it only retries volumes whose repair
/// failed in the pass before (so a failing repair does not flood the log).
pub fn run(gvs: Arc<Gvs>) {
    let mut failing: HashSet<u64> = HashSet::new();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let prefix = format!("{}{}/", meta::MISSING_PREFIX, gvs.me);
        let todo: Vec<(u64, String, u64)> = gvs
            .mirror
            .range(&prefix)
            .into_iter()
            .filter_map(|(k, v)| Some((meta::ino_of_key(&k, &prefix)?, k, v.mod_rev)))
            .collect();
        if todo.is_empty() {
            failing.clear();
            continue;
        }
        let quiet = todo.iter().all(|(ino, _, _)| failing.contains(ino));
        let total = todo.len() as u64;
        // Only mirrors a rebalance moves here: reported as such.
        let moves = todo.iter().all(|(_, k, _)| rebalancing(&gvs, k));
        let (work, what) = if moves {
            ("rebalance", "copying the mirrors of")
        } else {
            ("repair", "bringing in sync")
        };
        let mut progress = Progress::start(
            &gvs,
            work,
            &gvs.me,
            total,
            format!("{what} {total} volumes on {}", gvs.me),
            quiet,
        );
        let (mut throttle, started) = (Throttle::new(), Instant::now());
        let (mut chunks, mut failed) = (0, HashSet::new());
        for (index, (ino, key, rev)) in todo.into_iter().enumerate() {
            let mut at = Place {
                progress: &mut progress,
                throttle: &mut throttle,
                index: index as u64,
                total,
            };
            match repair_one(&gvs, ino, &key, rev, &mut at) {
                Ok(n) => {
                    Stats::add(&gvs.stats.repair_chunks, n);
                    chunks += n;
                }
                Err(e) => {
                    tracing::warn!("repair of volume {ino:#x}: {e}");
                    failed.insert(ino);
                }
            }
        }
        let bytes = progress.bytes;
        progress.done(
            &gvs,
            format!(
                "{} of {total} volumes repaired: {chunks} chunks, {} copied in {:.1} s",
                total - failed.len() as u64,
                mib(bytes),
                started.elapsed().as_secs_f64()
            ),
        );
        failing = failed;
    }
}
