//! The scrub: walks the local chunk store in key order at a settable rate
//! (`gvs/conf/scrub_rate`, chunks per second; 0 stops it), verifies each
//! chunk against its BLAKE3 id, and replaces a corrupt one by a good copy
//! from another node. `gvs/conf/scrub_now` starts a full pass at once, at
//! full speed. What it found and fixed is logged and counted (see
//! [`crate::stats`]), and published under `gvs/stats/<node>`. A requested
//! pass, and any pass that found a corrupt chunk, is reported in the
//! grid's event log (`scrub-started`, `scrub-progress`, `scrub-done`).

use std::sync::Arc;
use std::time::Duration;

use metad::events::Fields;

use crate::chunk::{ChunkId, Lookup};
use crate::events::{post, Progress};
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

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Good, or absent (deleted meanwhile), or unreadable (logged).
    Good,
    /// Corrupt, and rewritten from a good copy.
    Repaired,
    /// Corrupt, and no good copy could be had (yet).
    Corrupt,
}

/// Checks one chunk; a corrupt one is fetched from another node and
/// rewritten.
pub fn check(gvs: &Gvs, id: &ChunkId) -> Verdict {
    match gvs.store.lookup(id) {
        Ok(Lookup::Good(_)) | Ok(Lookup::Absent) => Verdict::Good,
        Ok(Lookup::Corrupt) => {
            Stats::add(&gvs.stats.scrub_bad, 1);
            tracing::warn!("scrub: chunk {} is corrupt", id.hex());
            let (_, others) = gvs.sources(&[]);
            match gvs.rt.block_on(gvs.fetch_remote(*id, 0, &[], &others)) {
                Ok(d) => match gvs.store.put_many(&[(*id, Arc::new(d))], true) {
                    Ok(()) => {
                        Stats::add(&gvs.stats.scrub_repaired, 1);
                        tracing::info!("scrub: chunk {} rewritten from a good copy", id.hex());
                        return Verdict::Repaired;
                    }
                    Err(e) => tracing::warn!("scrub: rewriting chunk {}: {e}", id.hex()),
                },
                Err(e) => tracing::warn!("scrub: no good copy of chunk {}: {e}", id.hex()),
            }
            Verdict::Corrupt
        }
        Err(e) => {
            tracing::warn!("scrub: reading chunk {}: {e}", id.hex());
            Verdict::Good
        }
    }
}

/// One pass's findings, and its progress events when it was asked for.
#[derive(Default)]
struct Pass {
    checked: u64,
    corrupt: u64,
    repaired: u64,
    /// Set for a requested pass (`scrub_now`): reported from its start.
    progress: Option<Progress>,
}

/// Scrubs forever.
pub fn run(gvs: Arc<Gvs>) {
    let mut cursor: Option<ChunkId> = None;
    let mut trigger = conf_rev(&gvs, "scrub_now");
    let mut pass = Pass::default();
    let mut published = std::time::Instant::now();
    loop {
        let t = conf_rev(&gvs, "scrub_now");
        if t != trigger {
            trigger = t;
            cursor = None;
            let chunks = gvs.store.count();
            pass = Pass {
                progress: Some(Progress::start(
                    &gvs,
                    "scrub",
                    &gvs.me,
                    0,
                    format!("full pass requested: {chunks} chunks to verify"),
                    false,
                )),
                ..Pass::default()
            };
        }
        let forced = pass.progress.is_some();
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
            let p = std::mem::take(&mut pass);
            let found = p.corrupt + p.repaired;
            if found > 0 || forced {
                let message = format!(
                    "pass done: {} chunks verified, {found} corrupt, {} rewritten from a good copy",
                    p.checked, p.repaired
                );
                match p.progress {
                    Some(progress) => progress.done(&gvs, message),
                    None => post(&gvs, "scrub-done", &gvs.me, message, Fields::default()),
                }
            }
            // Published when something was found, asked for, or every 30 s.
            if found > 0 || forced || published.elapsed() > Duration::from_secs(30) {
                publish(&gvs);
                published = std::time::Instant::now();
            }
            cursor = None;
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        for id in &batch {
            match check(&gvs, id) {
                Verdict::Good => {}
                Verdict::Repaired => pass.repaired += 1,
                Verdict::Corrupt => pass.corrupt += 1,
            }
        }
        pass.checked += batch.len() as u64;
        if let Some(p) = &mut pass.progress {
            let total = gvs.store.count().max(pass.checked);
            p.advance(&gvs, 0, (100 * pass.checked / total.max(1)) as u8);
        }
        Stats::add(&gvs.stats.scrub_checked, batch.len() as u64);
        cursor = batch.last().copied();
        if !forced {
            std::thread::sleep(Duration::from_secs_f64(batch.len() as f64 / rate as f64));
        }
    }
}
