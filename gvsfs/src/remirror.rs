//! Self-healing: rebuilding, on other nodes, the mirrors of a node that
//! stays down. Every live node checks every two seconds which nodes named
//! in replica sets are no longer registered (`gvs/nodes/`); once one has
//! been gone longer than the grace period (`gvs/conf/repair_grace_secs`,
//! `gvs.repair.grace_secs` on /gvs), each volume it held gets a new
//! replica set: its live replicas plus the next live nodes in placement
//! order, up to its mirror count (or the live node count). The first new
//! node (or, if none is needed, the first live replica) commits that in
//! one transaction with the inode record marked degraded and a
//! missed-commit record `gvs/missing/<new>/<ino>` for each new node, and
//! drops the gone node's records. Each new node then copies the volume's
//! chunks from the others through the ordinary catch-up ([`crate::repair`],
//! throttled); `gvs.state` reads `repairing` from the commit on (the new
//! records are written as being repaired), and `in-sync` once every new
//! node has all chunks (or at once, when no node is added and only the
//! gone node lagged). The acting node posts `remirror-started` (volumes
//! and bytes to copy) in the event log; the copies show as the new nodes'
//! `repair-*` events.
//!
//! A node that comes back after that is no longer a replica of those
//! volumes: nothing is copied to it, and its collector frees their chunks
//! once the volumes are in sync again (see [`crate::gc`]).
//!
//! Not done: the chunks only a snapshot still references are not
//! re-mirrored (snapshot records keep their own replica lists), and
//! every node keeps its own idea of when a node went down (the grace
//! period counts from when this node first saw it gone).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metad::events::Fields;
use metad::Txn;

use crate::error::Result;
use crate::events::{mib, post};
use crate::gvs::{conf, del, put, unchanged, Gvs};
use crate::meta::{self, Inode, Kind};
use crate::placement::{place, Candidate};
use crate::repair::REPAIRING;

/// Default grace period before a gone node's mirrors are rebuilt (s).
pub const DEFAULT_GRACE_SECS: u64 = 300;

/// Rebuilds the mirrors of nodes gone past the grace period, every two
/// seconds, for ever.
pub fn run(gvs: Arc<Gvs>) {
    let mut gone_since = HashMap::new();
    loop {
        std::thread::sleep(Duration::from_secs(2));
        if let Err(e) = pass(&gvs, &mut gone_since) {
            tracing::warn!("re-mirroring: {e}");
        }
    }
}

/// The new replica set of a volume, when some of `rec`'s replicas are in
/// `expired`: the others, then live nodes in placement order. `None`
/// when no replica is left to copy from.
pub fn replace(
    ino: u64,
    rec: &Inode,
    expired: &HashSet<String>,
    live: &[Candidate],
) -> Option<(Vec<String>, Vec<String>)> {
    let keep: Vec<String> = rec
        .replicas
        .iter()
        .filter(|n| !expired.contains(*n))
        .cloned()
        .collect();
    if keep.is_empty() {
        return None;
    }
    let want = (rec.mirrors as usize).min(live.len()).max(keep.len());
    let mut added = Vec::new();
    for n in place(ino, live, live.len()) {
        if keep.len() + added.len() >= want {
            break;
        }
        if !keep.contains(&n) {
            added.push(n);
        }
    }
    Some((keep, added))
}

/// Every volume in the local copy of the namespace: (ino, record, mod
/// revision), for a transaction that changes its replicas.
pub fn volumes(gvs: &Gvs) -> Vec<(u64, Inode, u64)> {
    let mut vols = Vec::new();
    for (k, v) in gvs.mirror.range(meta::INO_PREFIX) {
        let Some(ino) = meta::ino_of_key(&k, meta::INO_PREFIX) else {
            continue;
        };
        let Ok(rec) = Inode::decode(&v.value) else {
            continue;
        };
        if rec.kind == Kind::File {
            vols.push((ino, rec, v.mod_rev));
        }
    }
    vols
}

/// Whether a replica of `ino` other than the `expired` ones has a
/// missed-commit record.
fn lagging(gvs: &Gvs, ino: u64, expired: &HashSet<String>) -> bool {
    let gone: HashSet<String> = expired.iter().map(|n| meta::missing_key(n, ino)).collect();
    crate::repair::records_of(gvs, ino)
        .iter()
        .any(|(k, _)| !gone.contains(k))
}

/// One pass over every volume.
fn pass(gvs: &Gvs, gone_since: &mut HashMap<String, Instant>) -> Result<()> {
    let live = gvs.candidates();
    let live_names: HashSet<&str> = live.iter().map(|c| c.name.as_str()).collect();
    let vols = volumes(gvs);
    let gone: HashSet<String> = vols
        .iter()
        .flat_map(|(_, r, _)| r.replicas.iter())
        .filter(|n| !live_names.contains(n.as_str()))
        .cloned()
        .collect();
    gone_since.retain(|n, _| gone.contains(n));
    let now = Instant::now();
    for n in &gone {
        gone_since.entry(n.clone()).or_insert(now);
    }
    let grace = Duration::from_secs(conf(gvs, "repair_grace_secs", DEFAULT_GRACE_SECS));
    let expired: HashSet<String> = gone_since
        .iter()
        .filter(|(_, t)| now.duration_since(**t) >= grace)
        .map(|(n, _)| n.clone())
        .collect();
    if expired.is_empty() || live.is_empty() {
        return Ok(());
    }
    // What this node committed: volumes, their bytes, the new nodes.
    let (mut moved, mut bytes, mut onto) = (0u64, 0u64, Vec::<String>::new());
    for (ino, rec, rev) in vols {
        if !rec.replicas.iter().any(|n| expired.contains(n)) {
            continue;
        }
        let Some((keep, added)) = replace(ino, &rec, &expired, &live) else {
            tracing::warn!("volume {ino:#x}: every replica is gone; nothing to copy from");
            continue;
        };
        // One node acts for the volume: the first new one.
        let actor = added.first().unwrap_or(&keep[0]);
        if *actor != gvs.me {
            continue;
        }
        let mut new = rec.clone();
        new.replicas = keep.iter().chain(added.iter()).cloned().collect();
        if !added.is_empty() && rec.root.is_some() {
            new.degraded = true;
        } else if added.is_empty() && !lagging(gvs, ino, &expired) {
            // Only the gone node lagged: the others hold every chunk.
            new.degraded = false;
        }
        let key = meta::ino_key(ino);
        let mut success = vec![put(&key, new.encode())];
        if rec.root.is_some() {
            for n in &added {
                success.push(put(&meta::missing_key(n, ino), REPAIRING.to_vec()));
            }
        }
        for n in rec.replicas.iter().filter(|n| expired.contains(*n)) {
            success.push(del(&meta::missing_key(n, ino)));
        }
        if gvs.txn(Txn {
            compare: vec![unchanged(&key, rev)],
            success,
            failure: vec![],
        })? {
            tracing::info!(
                "volume {ino:#x}: replicas {:?} -> {:?} (re-mirroring)",
                rec.replicas,
                new.replicas
            );
            if !added.is_empty() {
                moved += 1;
                bytes += rec.size;
                for n in &added {
                    if !onto.contains(n) {
                        onto.push(n.clone());
                    }
                }
            }
        }
    }
    if moved > 0 {
        let mut gone: Vec<&str> = expired.iter().map(String::as_str).collect();
        gone.sort_unstable();
        post(
            gvs,
            "remirror-started",
            &gone.join(","),
            format!(
                "{} gone past the grace period ({} s): {moved} volumes ({}) get new mirrors on {}",
                gone.join(", "),
                grace.as_secs(),
                mib(bytes),
                onto.join(", ")
            ),
            Fields {
                volumes: Some(moved),
                bytes: Some(bytes),
                ..Fields::default()
            },
        );
    }
    Ok(())
}
