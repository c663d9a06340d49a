//! Garbage collection: mark and sweep, on every node, of its own chunk
//! store. A chunk is live if any volume root or snapshot root names it.
//!
//! A round: (1) read the pins (`gvs/pin*`): none may exist; (2) read every
//! inode record and every snapshot record from metad; (3) read the pins
//! again: still none, and `gvs/pinseq` unchanged, so no clone or snapshot
//! read a root before (2) that it commits after it; (4) mark every chunk
//! the roots name (index, pages, data; each distinct map once); (5) delete
//! the local chunks that are not marked and were stored before the round
//! started minus a grace period, so that chunks pushed by a commit whose
//! root is not in metad yet are never collected; (6) compact, so the
//! space goes back to the file system.
//!
//! Why it never collects a referenced chunk: every root that appears after
//! (2) is made of chunks reachable at (2) or stored since: a commit adds
//! fresh chunks to its own volume's map (the writer holds the lease, and a
//! clone into a volume takes its lease first); a clone or snapshot copies
//! roots it read after pinning, and no pin overlapped (1)–(3).
//!
//! Every node walks every root (not only the volumes it is a replica of):
//! a node may hold chunks of a volume whose replicas moved, and reads
//! fall back to any node. Walking reads only map chunks, not data.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blockmap;
use crate::chunk::ChunkId;
use crate::error::Result;
use crate::gvs::{conf, conf_rev, Gvs};
use crate::meta::{self, Inode, Kind, Snapshot};
use crate::stats::Stats;

/// Default grace period (`gvs/conf/gc_grace_secs`).
pub const DEFAULT_GRACE_SECS: u64 = 600;
/// Default time between rounds (`gvs/conf/gc_interval_secs`).
pub const DEFAULT_INTERVAL_SECS: u64 = 300;

/// What a round did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Skipped: a clone or snapshot was in flight (the reason).
    Skipped(String),
    /// Swept.
    Done {
        /// Chunks deleted.
        deleted: u64,
        /// Chunks kept.
        kept: u64,
    },
}

/// (whether a pin exists, the pin sequence's mod revision).
fn pins(gvs: &Gvs) -> Result<(bool, u64)> {
    let (kvs, _) = gvs.rt.block_on(gvs.client().get_prefix(meta::PIN_PREFIX))?;
    let seq = kvs
        .iter()
        .find(|kv| kv.key == meta::PINSEQ_KEY.as_bytes())
        .map_or(0, |kv| kv.mod_rev);
    let pinned = kvs.iter().any(|kv| kv.key.starts_with(b"gvs/pin/"));
    Ok((pinned, seq))
}

/// Every root in the grid with the replicas to read it from.
fn roots(gvs: &Gvs) -> Result<Vec<(ChunkId, Vec<String>)>> {
    let c = gvs.client();
    let (inos, _) = gvs.rt.block_on(c.get_prefix(meta::INO_PREFIX))?;
    let (snaps, _) = gvs.rt.block_on(c.get_prefix(meta::SNAP_PREFIX))?;
    let mut out = Vec::new();
    let mut add = |i: &Inode| {
        if let (Kind::File, Some(r)) = (i.kind, i.root) {
            out.push((r, i.replicas.clone()));
        }
    };
    for kv in &inos {
        add(&Inode::decode(&kv.value)?);
    }
    // Keys sort by snapshot id, then part: group each record's parts.
    let mut parts: Vec<&[u8]> = Vec::new();
    for (i, kv) in snaps.iter().enumerate() {
        parts.push(&kv.value);
        let id = |kv: &metad::KeyValue| meta::snap_of_key(std::str::from_utf8(&kv.key).ok()?);
        if snaps.get(i + 1).is_none_or(|next| id(next) != id(kv)) {
            for e in Snapshot::decode_parts(parts.drain(..))?.entries {
                add(&e.inode);
            }
        }
    }
    Ok(out)
}

fn now_nanos() -> u64 {
    meta::now().max(0) as u64
}

/// One collection round on this node.
pub fn round(gvs: &Gvs, grace: Duration) -> Result<Outcome> {
    let started = now_nanos();
    let (pinned, seq) = pins(gvs)?;
    if pinned {
        return Ok(Outcome::Skipped("a clone or snapshot is in flight".into()));
    }
    let roots = roots(gvs)?;
    let (pinned2, seq2) = pins(gvs)?;
    if pinned2 || seq2 != seq {
        return Ok(Outcome::Skipped(
            "a clone or snapshot ran while the roots were read".into(),
        ));
    }
    let (mut walked, mut marked) = (HashSet::new(), HashSet::new());
    for (root, replicas) in &roots {
        let fetch = |id: &ChunkId| Ok(gvs.fetch(id, replicas)?.to_vec());
        // A map that cannot be read aborts the round: nothing is swept
        // on an incomplete mark.
        blockmap::mark(*root, &fetch, &mut walked, &mut marked)?;
    }
    let cutoff = started.saturating_sub(grace.as_nanos() as u64);
    let all = gvs.store.times_list()?;
    let victims: Vec<ChunkId> = all
        .iter()
        .filter(|(id, t)| *t < cutoff && !marked.contains(id))
        .map(|(id, _)| *id)
        .collect();
    for part in victims.chunks(1024) {
        gvs.store.delete_many(part)?;
    }
    if !victims.is_empty() {
        gvs.store.reclaim()?;
    }
    let kept = (all.len() - victims.len()) as u64;
    Ok(Outcome::Done {
        deleted: victims.len() as u64,
        kept,
    })
}

/// Runs rounds every `gvs/conf/gc_interval_secs`, and at once when
/// `gvs/conf/gc_now` changes; publishes the counters after each.
pub fn run(gvs: Arc<Gvs>) {
    let mut last = Instant::now();
    let mut trigger = conf_rev(&gvs, "gc_now");
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let every =
            Duration::from_secs(conf(&gvs, "gc_interval_secs", DEFAULT_INTERVAL_SECS).max(1));
        let t = conf_rev(&gvs, "gc_now");
        if t == trigger && last.elapsed() < every {
            continue;
        }
        let grace = Duration::from_secs(conf(&gvs, "gc_grace_secs", DEFAULT_GRACE_SECS));
        match round(&gvs, grace) {
            Ok(Outcome::Done { deleted, kept }) => {
                trigger = t;
                last = Instant::now();
                Stats::add(&gvs.stats.gc_deleted, deleted);
                gvs.stats
                    .gc_kept
                    .store(kept, std::sync::atomic::Ordering::Relaxed);
                Stats::add(&gvs.stats.gc_rounds, 1);
                tracing::info!("gc: {deleted} chunks deleted, {kept} kept");
                crate::scrub::publish(&gvs);
            }
            Ok(Outcome::Skipped(why)) => {
                Stats::add(&gvs.stats.gc_skipped, 1);
                tracing::info!("gc: round skipped: {why}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                tracing::warn!("gc: round failed: {e}");
                last = Instant::now();
                trigger = t;
            }
        }
    }
}
