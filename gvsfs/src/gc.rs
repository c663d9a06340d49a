//! Garbage collection: mark and sweep, on every node, of its own chunk
//! store. A node keeps the chunks of the roots it should hold: those of
//! the volumes and snapshot entries whose replica list names it, and those
//! of every degraded volume (see below). A node that lost a mirror to
//! re-mirroring or a rebalance, or that came back after its mirrors were
//! rebuilt elsewhere, gives that volume's space back.
//!
//! A round: (1) read the pins (`gvs/pin*`): none may exist; (2) read every
//! inode record and every snapshot record from metad; (3) read the pins
//! again: still none, and `gvs/pinseq` unchanged, so no clone or snapshot
//! read a root before (2) that it commits after it; (4) mark every chunk
//! the roots this node holds name (index, pages, data; each distinct map
//! once); (5) delete the local chunks that are not marked and were
//! stored before the round started minus a grace period, so that chunks
//! pushed by a commit whose root is not in metad yet are never collected
//! (the store re-reads each time as it deletes, with puts held off:
//! [`crate::chunk::ChunkStore::delete_stale`]); (6) compact, so the space
//! goes back to the file system.
//!
//! Why it never collects a chunk this node must hold. Say a root R names
//! chunk c after the round and this node N is an in-sync replica of R
//! (it holds R's volume and has no missed-commit record
//! `gvs/missing/N/<ino>` for it). Either:
//!
//! - R was in metad at (2) with N in its replicas: c was marked.
//! - R is a commit after (2) to a volume N held at (2): c is in the
//!   previous root (marked, by induction) or was pushed by that commit, so
//!   stored less than a grace period before the round started or after it
//!   (the writer holds the lease, and a clone into a volume takes its
//!   lease first).
//! - R was made after (2) by a clone or snapshot: it copies a root it read
//!   after pinning, and no pin overlapped (1)–(3), so it read that root
//!   after (2): one of these cases applies to it.
//! - N was added to R's replicas after (2) (re-mirroring, a rebalance, a
//!   larger `gvs.mirrors`, a clone of a degraded volume): that change
//!   marked the volume degraded and wrote N a missed-commit record (in the
//!   same transaction; `gvs.mirrors` writes it right after, while the
//!   degraded volume is kept by every node), and so does a commit that
//!   pushed its chunks before N was added; N is in sync only once its
//!   repair has walked the root. The repair copies each chunk N lacks
//!   (stored now: young) and, for each chunk N has, refreshes its store
//!   time ([`keep_held`], a put): the delete of step (5) holds puts off
//!   while it re-reads times, so it either deleted c before the repair
//!   looked (the repair then copies it) or sees it young (and keeps it).
//!   The same holds for a commit that stores bytes an unreferenced old
//!   chunk here already has: stored again, it is young.
//!
//! Degraded volumes: while any replica of a volume misses commits, every
//! node marks its root. The chunks a lagging replica (or a new one) must
//! copy may then be on nodes that are no longer replicas: one the
//! volume's mirrors were just moved off, or one that came back after
//! re-mirroring while the surviving replica itself lagged. They are freed
//! once the volume is in sync. (A snapshot entry of a volume taken while
//! it was degraded stays marked everywhere.)
//!
//! A snapshot entry keeps the replica list the volume had when it was
//! taken: its chunks stay on those nodes, also after the volume's mirrors
//! move (re-mirroring and rebalancing copy the current root only).
//!
//! Walking reads only map chunks, not data: a node's own maps are local;
//! a degraded volume's come from its replicas.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blockmap;
use crate::chunk::ChunkId;
use crate::error::{GvsError, Result};
use crate::gvs::{conf, conf_rev, Gvs};
use crate::meta::{self, Inode, Kind, Snapshot};
use crate::stats::Stats;

/// Default grace period (`gvs/conf/gc_grace_secs`).
pub const DEFAULT_GRACE_SECS: u64 = 600;
/// Default time between rounds (`gvs/conf/gc_interval_secs`).
pub const DEFAULT_INTERVAL_SECS: u64 = 300;

/// The least grace period `gvs.gc.grace_secs` takes. The grace period is
/// what keeps an in-flight commit's chunks (pushed, their root not yet in
/// metad) from being swept; a commit's root lands within the writer's
/// metad silence bound (10 s, after which its fsync fails) or not at all,
/// so three times that leaves room for a slow push under load.
pub const MIN_GRACE_SECS: u64 = 30;

/// Refuses a grace period too short to protect in-flight commits.
pub fn check_grace(secs: u64) -> Result<()> {
    if secs < MIN_GRACE_SECS {
        return Err(GvsError::Invalid(format!(
            "gc grace period {secs} s: must be at least {MIN_GRACE_SECS} s (an in-flight commit's chunks must outlive it)"
        )));
    }
    Ok(())
}

/// Holds sweeping off after the wall clock steps forward. Store times are
/// wall-clock stamps (they must survive a restart), so a step forward by D
/// makes every chunk look D older, and one pushed by an in-flight commit
/// could pass the grace period at once. Measured against the monotonic
/// clock, a step is seen between two observations; sweeping then waits a
/// whole grace period of monotonic time, after which every commit in
/// flight at the step has landed its root or failed.
#[derive(Debug, Default)]
pub struct ClockStepGuard {
    last: Option<(Instant, u64)>,
    hold_until: Option<Instant>,
}

impl ClockStepGuard {
    /// How far the wall clock may run ahead of the monotonic clock between
    /// two observations before it counts as a step (NTP slews far less).
    const TOLERANCE: Duration = Duration::from_secs(1);

    /// Records the clocks at `mono`/`wall` (nanoseconds since the epoch)
    /// and says why sweeping must wait, if it must.
    pub fn check(&mut self, mono: Instant, wall: u64, grace: Duration) -> Option<String> {
        if let Some((m0, w0)) = self.last {
            let mono_ns = mono.saturating_duration_since(m0).as_nanos() as u64;
            let ahead = wall.saturating_sub(w0).saturating_sub(mono_ns);
            if ahead > Self::TOLERANCE.as_nanos() as u64 {
                self.hold_until = Some(mono + grace);
                tracing::warn!(
                    "gc: the wall clock stepped forward by {:.1} s; no sweep for {} s",
                    ahead as f64 / 1e9,
                    grace.as_secs()
                );
            }
        }
        self.last = Some((mono, wall));
        match self.hold_until {
            Some(t) if mono < t => Some(format!(
                "the wall clock stepped forward; sweeping resumes in {} s",
                t.saturating_duration_since(mono).as_secs()
            )),
            _ => {
                self.hold_until = None;
                None
            }
        }
    }
}

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

/// Whether this node keeps the chunks of `i`'s root: it is one of its
/// replicas, or the volume is degraded (see the module doc).
fn held_here(me: &str, i: &Inode) -> bool {
    i.kind == Kind::File && (i.degraded || i.replicas.iter().any(|r| r == me))
}

/// The roots this node holds, with the replicas to read them from.
fn roots(gvs: &Gvs) -> Result<Vec<(ChunkId, Vec<String>)>> {
    let c = gvs.client();
    let (inos, _) = gvs.rt.block_on(c.get_prefix(meta::INO_PREFIX))?;
    let (snaps, _) = gvs.rt.block_on(c.get_prefix(meta::SNAP_PREFIX))?;
    let mut out = Vec::new();
    let mut add = |i: &Inode| {
        if let (true, Some(r)) = (held_here(&gvs.me, i), i.root) {
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

/// Of `ids`, makes those held here young again (store time now), so that
/// no sweep running or to come deletes them within the grace period, and
/// returns the others. The repair calls it for the chunks of a volume this
/// node just became a replica of: a chunk it finds here and does not copy
/// must survive a round that read the roots before this node was a
/// replica (see the module doc).
pub fn keep_held(gvs: &Gvs, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
    gvs.store.keep_held(ids)
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
    // The store re-reads each victim's time as it deletes: one stored
    // again since the listing (a commit, a repair) stays.
    let mut deleted = 0;
    for part in victims.chunks(1024) {
        deleted += gvs.store.delete_stale(part, cutoff)?;
    }
    if deleted > 0 {
        gvs.store.reclaim()?;
    }
    Ok(Outcome::Done {
        deleted,
        kept: all.len() as u64 - deleted,
    })
}

/// Set by [`soon`], taken by [`run`].
static SOON: AtomicBool = AtomicBool::new(false);

/// Asks this node's collector for a round now, not at the next interval:
/// a rebalance moved a mirror off this node and wants to see the space
/// back before it moves another.
pub fn soon() {
    SOON.store(true, Ordering::Relaxed);
}

/// Runs rounds every `gvs/conf/gc_interval_secs`, and at once when
/// `gvs/conf/gc_now` changes or [`soon`] asks; publishes the counters
/// after each.
pub fn run(gvs: Arc<Gvs>) {
    let mut last = Instant::now();
    let mut trigger = conf_rev(&gvs, "gc_now");
    let mut asked = false;
    let mut clock = ClockStepGuard::default();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let every =
            Duration::from_secs(conf(&gvs, "gc_interval_secs", DEFAULT_INTERVAL_SECS).max(1));
        let t = conf_rev(&gvs, "gc_now");
        asked |= SOON.swap(false, Ordering::Relaxed);
        if t == trigger && !asked && last.elapsed() < every {
            continue;
        }
        let grace = Duration::from_secs(conf(&gvs, "gc_grace_secs", DEFAULT_GRACE_SECS));
        let outcome = match clock.check(Instant::now(), now_nanos(), grace) {
            Some(why) => Ok(Outcome::Skipped(why)),
            None => round(&gvs, grace),
        };
        match outcome {
            Ok(Outcome::Done { deleted, kept }) => {
                (trigger, asked) = (t, false);
                last = Instant::now();
                Stats::add(&gvs.stats.gc_deleted, deleted);
                gvs.stats.gc_kept.store(kept, Ordering::Relaxed);
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
                (trigger, asked) = (t, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_grace_period_under_the_floor_is_refused() {
        let e = check_grace(1).unwrap_err().to_string();
        assert!(e.contains("at least 30"), "{e}");
        check_grace(MIN_GRACE_SECS).unwrap();
    }

    #[test]
    fn a_forward_step_of_the_wall_clock_holds_sweeping_for_a_grace_period() {
        let grace = Duration::from_secs(60);
        let mut g = ClockStepGuard::default();
        let t0 = Instant::now();
        let w0 = 1_000_000 * SEC;
        assert_eq!(g.check(t0, w0, grace), None);
        // Both clocks advance alike: no hold.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(g.check(t1, w0 + 10 * SEC, grace), None);
        // The wall clock jumps an hour ahead in 10 s of real time.
        let t2 = t1 + Duration::from_secs(10);
        let w2 = w0 + 3620 * SEC;
        assert!(g.check(t2, w2, grace).is_some());
        // Still held just before a grace period of real time has passed...
        let t3 = t2 + Duration::from_secs(59);
        assert!(g.check(t3, w2 + 59 * SEC, grace).is_some());
        // ...and free after it.
        let t4 = t2 + Duration::from_secs(61);
        assert_eq!(g.check(t4, w2 + 61 * SEC, grace), None);
    }

    #[test]
    fn a_backward_step_holds_nothing() {
        // A step back only makes chunks look younger: they are kept longer.
        let grace = Duration::from_secs(60);
        let mut g = ClockStepGuard::default();
        let t0 = Instant::now();
        assert_eq!(g.check(t0, 1_000_000 * SEC, grace), None);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(g.check(t1, 999_000 * SEC, grace), None);
    }
}
