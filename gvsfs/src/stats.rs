//! The node's counters: what it moved (bytes stored, pushed, fetched),
//! what it wrote to metad, and what its collector and scrub found. Read
//! live with `getfattr -n gvs.stats /gvs` (this node, then the last
//! report of every node) and published under `gvs/stats/<node>`.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The node's counters, all monotonic since the daemon started.
        #[derive(Default, Debug)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Stats {
            /// `key=value` pairs, space separated, in a fixed order.
            pub fn render(&self) -> String {
                let mut out = Vec::new();
                $(out.push(format!("{}={}", stringify!($name), self.$name.load(Ordering::Relaxed)));)*
                out.join(" ")
            }
        }
    };
}

counters! {
    /// Keys written (put or deleted) by metad transactions of this node.
    metad_ops,
    /// Chunk bytes sent to other nodes' stores.
    pushed_bytes,
    /// Chunk bytes read from other nodes.
    fetched_bytes,
    /// Clones made here.
    clones,
    /// Snapshots taken here.
    snapshots,
    /// Collector rounds completed.
    gc_rounds,
    /// Collector rounds skipped (a clone or snapshot was in flight).
    gc_skipped,
    /// Chunks the collector deleted.
    gc_deleted,
    /// Chunks in the store at the last collector round.
    gc_kept,
    /// Chunks the scrub verified.
    scrub_checked,
    /// Corrupt chunks the scrub found.
    scrub_bad,
    /// Corrupt chunks the scrub rewrote from a good copy.
    scrub_repaired,
    /// Full passes of the scrub over the store.
    scrub_passes,
    /// Corrupt local chunks replaced by a good copy while reading.
    read_repaired,
    /// Chunks copied here by repairs of missed commits.
    repair_chunks,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
