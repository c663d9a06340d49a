//! The scrub: walks the local chunk store in key order at a settable rate
//! (`gvs/conf/scrub_rate`, chunks per second; 0 stops it), verifies each
//! chunk against its BLAKE3 id, and replaces a corrupt one by a good copy
//! from another node. `gvs/conf/scrub_now` starts a full pass at once, at
//! full speed. What it found and fixed is logged and counted (see
//! [`crate::stats`]), and published under `gvs/stats/<node>`.

use std::sync::Arc;
use std::time::Duration;

use crate::chunk::{ChunkId, Lookup};
use crate::gvs::{conf, conf_rev, Gvs};
use crate::meta;
use crate::stats::Stats;

/// Default rate (chunks per second).
pub const DEFAULT_RATE: u64 = 100;
const BATCH: usize = 64;

/// Publishes the node's counters under `gvs/stats/<node>` (best effort).
pub fn publish(gvs: &Gvs) {
    let _ = gvs.rt.block_on(
        gvs.client()
            .put(meta::stats_key(&gvs.me), gvs.stats.render().into_bytes()),
    );
}

/// Checks one chunk; a corrupt one is fetched from another node and
/// rewritten. Returns whether it was corrupt.
pub fn check(gvs: &Gvs, id: &ChunkId) -> bool {
    match gvs.store.lookup(id) {
        Ok(Lookup::Good(_)) | Ok(Lookup::Absent) => false,
        Ok(Lookup::Corrupt) => {
            Stats::add(&gvs.stats.scrub_bad, 1);
            tracing::warn!("scrub: chunk {} is corrupt", id.hex());
            let (_, others) = gvs.sources(&[]);
            match gvs.rt.block_on(gvs.fetch_remote(*id, 0, &[], &others)) {
                Ok(d) => match gvs.store.put_many(&[(*id, Arc::new(d))], true) {
                    Ok(()) => {
                        Stats::add(&gvs.stats.scrub_repaired, 1);
                        tracing::info!("scrub: chunk {} rewritten from a good copy", id.hex());
                    }
                    Err(e) => tracing::warn!("scrub: rewriting chunk {}: {e}", id.hex()),
                },
                Err(e) => tracing::warn!("scrub: no good copy of chunk {}: {e}", id.hex()),
            }
            true
        }
        Err(e) => {
            tracing::warn!("scrub: reading chunk {}: {e}", id.hex());
            false
        }
    }
}

/// Scrubs forever.
pub fn run(gvs: Arc<Gvs>) {
    let mut cursor: Option<ChunkId> = None;
    let mut trigger = conf_rev(&gvs, "scrub_now");
    let mut forced = false;
    let mut bad_in_pass = 0;
    let mut published = std::time::Instant::now();
    let mut was_forced = false;
    loop {
        let t = conf_rev(&gvs, "scrub_now");
        if t != trigger {
            trigger = t;
            forced = true;
            was_forced = true;
            cursor = None;
            bad_in_pass = 0;
            tracing::info!("scrub: full pass requested");
        }
        let rate = conf(&gvs, "scrub_rate", DEFAULT_RATE);
        if rate == 0 && !forced {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let batch = match gvs.store.ids_after(cursor.as_ref(), BATCH) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("scrub: listing chunks: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if batch.is_empty() {
            Stats::add(&gvs.stats.scrub_passes, 1);
            if bad_in_pass > 0 || was_forced {
                tracing::info!("scrub: pass done, {bad_in_pass} corrupt chunks found");
            }
            // Published when something was found, asked for, or every 30 s.
            if bad_in_pass > 0 || was_forced || published.elapsed() > Duration::from_secs(30) {
                publish(&gvs);
                published = std::time::Instant::now();
            }
            was_forced = false;
            cursor = None;
            forced = false;
            bad_in_pass = 0;
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        for id in &batch {
            if check(&gvs, id) {
                bad_in_pass += 1;
            }
        }
        Stats::add(&gvs.stats.scrub_checked, batch.len() as u64);
        cursor = batch.last().copied();
        if !forced {
            std::thread::sleep(Duration::from_secs_f64(batch.len() as f64 / rate as f64));
        }
    }
}
