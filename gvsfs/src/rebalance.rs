//! Rebalancing: moving mirrors off nodes that are fuller than the rest.
//! Optional (off until `gvs.rebalance.threshold` is set, e.g. by
//! `gvsfs rebalance start`) and throttled (`gvs.rebalance.rate_mb`).
//!
//! A node's fill is the bytes its chunk store uses over its capacity;
//! every node publishes its store's size (`gvs/fill/<node>`), so each one
//! knows the grid's mean fill (capacity-weighted). As Ceph's
//! `reweight-by-utilization` does, the threshold is a percentage of that
//! mean: at 120, a node more than 1.2 times as full as the grid is "full".
//!
//! A full node moves one mirror at a time, of a volume it is the fullest
//! replica of, to the first node in the volume's placement order
//! ([`crate::placement`]) that is not a replica and would stay at or
//! under the mean with the volume on it. The move reuses the
//! re-mirroring path: one transaction adds the new node to the replica
//! set with a missed-commit record reading [`REBALANCING`] (the volume
//! is degraded meanwhile), the new node copies the volume through the
//! ordinary repair ([`crate::repair`], at the rebalance rate; its events
//! read `rebalance-started`, `-progress`, `-done`), and once the volume
//! is in sync the full node drops itself from the replica set in a second
//! transaction (compared against the record it read) and asks its
//! collector for a round, which frees the space ([`crate::gc`]: a node
//! keeps only the volumes it holds). The full node posts
//! `rebalance-moving` and `rebalance-moved` in the event log.
//!
//! Nothing is lost if a node dies during a move: until the switch the old
//! replicas stay and keep every chunk (every node keeps a degraded
//! volume's chunks); a new node that dies resumes its copy when it comes
//! back (its record stays), or re-mirroring replaces it. A volume in sync
//! with more replicas than its mirror count (a move whose mover died) is
//! trimmed by its fullest replica. Stopping (`threshold` 0) starts no new
//! move; one under way completes.
//!
//! Not moved: the chunks only a snapshot names stay on the nodes that
//! held the volume when it was taken.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metad::events::Fields;
use metad::Txn;

use crate::error::{GvsError, Result};
use crate::events::{mib, post};
use crate::gvs::{conf, put, unchanged, Gvs};
use crate::meta::{self, Inode};
use crate::placement::{place, Candidate};
use crate::repair::{missing_of, REBALANCING};

/// Default threshold (`gvs/conf/rebalance_threshold`): 0, off.
pub const DEFAULT_THRESHOLD_PCT: u64 = 0;
/// Default copy rate of a move, MiB/s per node
/// (`gvs/conf/rebalance_rate_mb`; 0: no limit): below the repair's, as
/// a rebalance is never urgent.
pub const DEFAULT_RATE_MB: u64 = 20;
/// How often a node publishes its fill and looks for work.
const EVERY: Duration = Duration::from_secs(2);

/// Refuses thresholds that would move mirrors back and forth: under 100
/// a node at the mean would count as full (0 switches rebalancing off).
pub fn check_threshold(pct: u64) -> Result<()> {
    if pct != 0 && pct < 100 {
        return Err(GvsError::Invalid(format!(
            "rebalance threshold {pct}: must be 0 (off) or at least 100 (percent of the grid's mean fill)"
        )));
    }
    Ok(())
}

/// How full a node is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fill {
    /// Bytes its chunk store uses.
    pub used: u64,
    /// Bytes of its data file system.
    pub capacity: u64,
}

impl Fill {
    fn ratio(&self) -> f64 {
        self.used as f64 / self.capacity.max(1) as f64
    }
}

/// The grid's mean fill, capacity-weighted.
fn mean(fills: &HashMap<String, Fill>) -> f64 {
    let (u, c) = fills
        .values()
        .fold((0u64, 0u64), |(u, c), f| (u + f.used, c + f.capacity));
    u as f64 / c.max(1) as f64
}

/// A volume as the planner sees it.
#[derive(Clone, Debug)]
pub struct Vol {
    /// Its inode number.
    pub ino: u64,
    /// Its record.
    pub rec: Inode,
    /// Every replica holds its current root (not degraded, no record).
    pub in_sync: bool,
}

impl Vol {
    fn bytes(&self) -> u64 {
        self.rec.written * self.rec.block_size as u64
    }
}

/// What a node does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Leave the replica set of `ino`: the volume is in sync with more
    /// replicas than its mirror count, and this node is the fullest.
    Leave {
        /// The volume.
        ino: u64,
    },
    /// Add `to` as a new mirror of `ino`, which this node leaves once
    /// `to` is in sync.
    Move {
        /// The volume.
        ino: u64,
        /// The new mirror.
        to: String,
    },
}

/// The next step of node `me`, from the volumes, the live nodes (placement
/// candidates), their fills (nodes that published one) and the threshold.
pub fn plan(
    me: &str,
    vols: &[Vol],
    live: &[Candidate],
    fills: &HashMap<String, Fill>,
    threshold_pct: u64,
) -> Option<Step> {
    let ratio = |n: &String| fills.get(n).map_or(0.0, Fill::ratio);
    let fullest = |v: &Vol| {
        v.rec
            .replicas
            .iter()
            .max_by(|a, b| ratio(a).total_cmp(&ratio(b)).then(a.cmp(b)))
            .is_some_and(|n| n == me)
    };
    let mine: Vec<&Vol> = vols
        .iter()
        .filter(|v| v.rec.replicas.iter().any(|n| n == me))
        .collect();
    let extra = |v: &Vol| v.rec.replicas.len() > v.rec.mirrors as usize;
    if let Some(v) = mine.iter().find(|v| extra(v) && v.in_sync && fullest(v)) {
        return Some(Step::Leave { ino: v.ino });
    }
    // One move at a time: wait for the one under way.
    if threshold_pct == 0 || mine.iter().any(|v| extra(v)) {
        return None;
    }
    let mean = mean(fills);
    let over = fills
        .get(me)
        .is_some_and(|f| f.ratio() > mean * threshold_pct as f64 / 100.0);
    if !over {
        return None;
    }
    let mut movable: Vec<&Vol> = mine
        .into_iter()
        .filter(|v| v.in_sync && v.rec.root.is_some() && fullest(v))
        .collect();
    movable.sort_by_key(|v| std::cmp::Reverse(v.bytes()));
    for v in movable {
        let fits = |n: &String| {
            fills
                .get(n)
                .is_some_and(|f| (f.used + v.bytes()) as f64 / f.capacity.max(1) as f64 <= mean)
        };
        if let Some(to) = place(v.ino, live, live.len())
            .into_iter()
            .find(|n| !v.rec.replicas.contains(n) && fits(n))
        {
            return Some(Step::Move { ino: v.ino, to });
        }
    }
    None
}

/// The live nodes that published their fill.
pub fn fills(gvs: &Gvs, live: &[Candidate]) -> HashMap<String, Fill> {
    live.iter()
        .filter_map(|c| {
            let v = gvs.mirror.get(&meta::fill_key(&c.name))?;
            let used = std::str::from_utf8(&v.value).ok()?.parse().ok()?;
            Some((
                c.name.clone(),
                Fill {
                    used,
                    capacity: c.capacity,
                },
            ))
        })
        .collect()
}

/// Publishes this node's store size when it moved by 1 MiB or 1/64, or
/// when the key went with an old lease.
fn publish(gvs: &Gvs, last: &mut Option<u64>) -> Result<()> {
    let used = gvs.store.used_bytes();
    let gone = gvs.mirror.get(&meta::fill_key(&gvs.me)).is_none();
    let moved = last.is_none_or(|l| l.abs_diff(used) >= (1 << 20).max(l / 64));
    if gone || moved {
        gvs.rt.block_on(gvs.client().put_with_lease(
            meta::fill_key(&gvs.me),
            used.to_string(),
            gvs.lease(),
        ))?;
        *last = Some(used);
    }
    Ok(())
}

/// Publishes this node's fill and takes its next step, every two seconds,
/// for ever.
pub fn run(gvs: Arc<Gvs>) {
    let mut last = None;
    loop {
        std::thread::sleep(EVERY);
        if let Err(e) = publish(&gvs, &mut last).and_then(|()| pass(&gvs)) {
            tracing::warn!("rebalance: {e}");
        }
    }
}

/// The volumes as the planner sees them.
fn vols(gvs: &Gvs) -> Vec<(Vol, u64)> {
    crate::remirror::volumes(gvs)
        .into_iter()
        .map(|(ino, rec, rev)| {
            let in_sync = !rec.degraded && !missing_of(gvs, ino, false);
            (Vol { ino, rec, in_sync }, rev)
        })
        .collect()
}

/// Plans and takes one step.
fn pass(gvs: &Gvs) -> Result<()> {
    let live = gvs.candidates();
    let fills = fills(gvs, &live);
    let threshold = conf(gvs, "rebalance_threshold", DEFAULT_THRESHOLD_PCT);
    let all = vols(gvs);
    let planned: Vec<Vol> = all.iter().map(|(v, _)| v.clone()).collect();
    let Some(step) = plan(&gvs.me, &planned, &live, &fills, threshold) else {
        return Ok(());
    };
    let ino = match &step {
        Step::Leave { ino } | Step::Move { ino, .. } => *ino,
    };
    let Some((vol, rev)) = all.into_iter().find(|(v, _)| v.ino == ino) else {
        return Ok(());
    };
    let key = meta::ino_key(ino);
    let mut new = vol.rec.clone();
    let mut success = Vec::new();
    match &step {
        Step::Leave { .. } => new.replicas.retain(|n| *n != gvs.me),
        Step::Move { to, .. } => {
            new.replicas.push(to.clone());
            new.degraded = true;
            success.push(put(&meta::missing_key(to, ino), REBALANCING.to_vec()));
        }
    }
    success.push(put(&key, new.encode()));
    if !gvs.txn(Txn {
        compare: vec![unchanged(&key, rev)],
        success,
        failure: vec![],
    })? {
        return Ok(()); // It changed meanwhile: the next pass looks again.
    }
    let fields = Fields {
        volumes: Some(1),
        bytes: Some(vol.bytes()),
        ..Fields::default()
    };
    let what = format!("volume {ino:#x} ({})", mib(vol.bytes()));
    match step {
        Step::Leave { .. } => {
            post(
                gvs,
                "rebalance-moved",
                &gvs.me,
                format!(
                    "{what} moved off {}: replicas {} -> {}",
                    gvs.me,
                    vol.rec.replicas.join(","),
                    new.replicas.join(",")
                ),
                fields,
            );
            crate::gc::soon();
        }
        Step::Move { to, .. } => {
            let pct = |f: Option<&Fill>| 100.0 * f.map_or(0.0, Fill::ratio);
            post(
                gvs,
                "rebalance-moving",
                &gvs.me,
                format!(
                    "{} is {:.3}% full against a grid mean of {:.3}% (threshold {threshold}%): \
                     copying {what} to {to}",
                    gvs.me,
                    pct(fills.get(&gvs.me)),
                    100.0 * mean(&fills)
                ),
                fields,
            );
        }
    }
    Ok(())
}

/// What `gvsfs rebalance status` prints (`gvs.rebalance.status` on /gvs):
/// the settings, each node's fill, and the moves under way.
pub fn status(gvs: &Gvs) -> String {
    let live = gvs.candidates();
    let fills = fills(gvs, &live);
    let threshold = conf(gvs, "rebalance_threshold", DEFAULT_THRESHOLD_PCT);
    let mean = mean(&fills);
    let mut out = if threshold == 0 {
        "rebalance: off\n".to_string()
    } else {
        format!(
            "rebalance: on, threshold {threshold}% of the mean fill, copies at {} MiB/s per node\n",
            conf(gvs, "rebalance_rate_mb", DEFAULT_RATE_MB)
        )
    };
    out.push_str(&format!("mean fill {:.3}%\n", 100.0 * mean));
    let mut names: Vec<&String> = fills.keys().collect();
    names.sort();
    for n in names {
        let f = fills[n];
        let full = threshold > 0 && f.ratio() > mean * threshold as f64 / 100.0;
        out.push_str(&format!(
            "{n}: {:.3}% ({} of {}){}\n",
            100.0 * f.ratio(),
            mib(f.used),
            mib(f.capacity),
            if full { " full" } else { "" }
        ));
    }
    for (v, _) in vols(gvs) {
        if v.rec.replicas.len() > v.rec.mirrors as usize {
            out.push_str(&format!(
                "volume {:#x} ({}): replicas {} for {} mirrors, {}\n",
                v.ino,
                mib(v.bytes()),
                v.rec.replicas.join(","),
                v.rec.mirrors,
                if v.in_sync { "switching" } else { "copying" }
            ));
        }
    }
    out
}

/// `gvsfs rebalance ...`: what an operator asks for.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Start moving mirrors off nodes fuller than THRESHOLD percent of the
    /// grid's mean fill (sets gvs.rebalance.threshold and, if given,
    /// gvs.rebalance.rate_mb on /gvs; every node acts on its own).
    Start {
        /// Percent of the grid's mean fill (capacity-weighted) above which
        /// a node moves mirrors off; at least 100.
        #[arg(long, value_name = "PCT", default_value_t = 120)]
        threshold: u64,
        /// MiB/s per node for the copies (0: no limit); default: as set
        /// (20 unless changed).
        #[arg(long, value_name = "MB")]
        rate: Option<u64>,
    },
    /// Start no new move (one under way completes).
    Stop,
    /// Print the settings, each node's fill, and the moves under way.
    Status,
}

/// Sets a `gvs.rebalance.*` setting on the mount, or says why not.
fn set(mountpoint: &std::path::Path, name: &str, value: &str) -> anyhow::Result<()> {
    crate::xattr::set(mountpoint, name, value)
        .map_err(|e| anyhow::anyhow!("setting {name}={value} on {}: {e}", mountpoint.display()))
}

/// Runs `gvsfs rebalance ACTION` through the mount at `mountpoint`.
pub fn command(mountpoint: &std::path::Path, action: &Action) -> anyhow::Result<()> {
    match action {
        Action::Start { threshold, rate } => {
            check_threshold(*threshold)?;
            if *threshold == 0 {
                anyhow::bail!(
                    "--threshold 0 would not start anything (use `gvsfs rebalance stop`)"
                );
            }
            if let Some(r) = rate {
                set(mountpoint, "gvs.rebalance.rate_mb", &r.to_string())?;
            }
            set(
                mountpoint,
                "gvs.rebalance.threshold",
                &threshold.to_string(),
            )
        }
        Action::Stop => set(mountpoint, "gvs.rebalance.threshold", "0"),
        Action::Status => {
            print!("{}", crate::xattr::get(mountpoint, "gvs.rebalance.status")?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Kind;

    fn vol(ino: u64, replicas: &[&str], mib: u64, in_sync: bool) -> Vol {
        let mut rec = Inode::new(Kind::File, 0o644, 0, 0);
        rec.mirrors = 2;
        rec.block_size = 1 << 20;
        rec.written = mib;
        rec.root = Some(crate::chunk::ChunkId::of(&ino.to_le_bytes()));
        rec.replicas = replicas.iter().map(|s| s.to_string()).collect();
        Vol { ino, rec, in_sync }
    }

    fn grid(used_mib: &[(&str, u64)]) -> (Vec<Candidate>, HashMap<String, Fill>) {
        let cap = 1 << 30;
        let live = used_mib
            .iter()
            .map(|(n, _)| Candidate {
                name: n.to_string(),
                capacity: cap,
            })
            .collect();
        let fills = used_mib
            .iter()
            .map(|(n, u)| {
                (
                    n.to_string(),
                    Fill {
                        used: u << 20,
                        capacity: cap,
                    },
                )
            })
            .collect();
        (live, fills)
    }

    #[test]
    fn a_full_node_moves_its_largest_volume_to_an_emptier_node() {
        let (live, fills) = grid(&[("node1", 17), ("node2", 16), ("node3", 0)]);
        let vols = [
            vol(1, &["node1", "node2"], 4, true),
            vol(2, &["node1", "node2"], 8, true),
        ];
        assert_eq!(
            plan("node1", &vols, &live, &fills, 120),
            Some(Step::Move {
                ino: 2,
                to: "node3".into()
            })
        );
        // node2 is not the fullest replica of either: node1 moves them.
        assert_eq!(plan("node2", &vols, &live, &fills, 120), None);
        // Off, or under the threshold: nothing.
        assert_eq!(plan("node1", &vols, &live, &fills, 0), None);
        assert_eq!(plan("node1", &vols, &live, &fills, 200), None);
    }

    #[test]
    fn no_target_that_would_end_above_the_mean() {
        // The mean is 11 MiB: node3 at 8 cannot take 8 more.
        let (live, fills) = grid(&[("node1", 17), ("node2", 8), ("node3", 8)]);
        let vols = [vol(1, &["node1", "node2"], 8, true)];
        assert_eq!(plan("node1", &vols, &live, &fills, 120), None);
    }

    #[test]
    fn one_move_at_a_time_then_the_fullest_leaves_once_in_sync() {
        let (live, fills) = grid(&[("node1", 17), ("node2", 16), ("node3", 0)]);
        let copying = [
            vol(1, &["node1", "node2", "node3"], 4, false),
            vol(2, &["node1", "node2"], 8, true),
        ];
        assert_eq!(plan("node1", &copying, &live, &fills, 120), None);
        let synced = [
            vol(1, &["node1", "node2", "node3"], 4, true),
            vol(2, &["node1", "node2"], 8, true),
        ];
        assert_eq!(
            plan("node1", &synced, &live, &fills, 120),
            Some(Step::Leave { ino: 1 })
        );
        assert_eq!(plan("node2", &synced, &live, &fills, 120), None);
        // A stopped rebalance still completes the move under way.
        assert_eq!(
            plan("node1", &synced, &live, &fills, 0),
            Some(Step::Leave { ino: 1 })
        );
    }

    #[test]
    fn thresholds_under_100_are_refused() {
        assert!(check_threshold(0).is_ok());
        assert!(check_threshold(100).is_ok());
        assert!(check_threshold(120).is_ok());
        assert!(check_threshold(99).is_err());
    }
}
