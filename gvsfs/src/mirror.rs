//! The node's copy of everything under `gvs/` in metad, kept current by a
//! watch. Lookups, getattr and readdir are served from it (no round trip);
//! after a change of its own, a node waits until its copy has seen the
//! change's revision, so it reads its own writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use metad::{Client, Event, EventKind, KeyValue};

use crate::error::Result;

/// A value with the revision of its last write.
#[derive(Clone, Debug)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// The revision that wrote it.
    pub mod_rev: u64,
}

#[derive(Default)]
struct Inner {
    kvs: BTreeMap<String, Versioned>,
    rev: u64,
}

/// The watched copy of `gvs/`.
#[derive(Default)]
pub struct Mirror {
    inner: Mutex<Inner>,
    moved: Condvar,
    /// Set by [`Mirror::hold`]: the watch's events wait.
    held: AtomicBool,
}

impl Mirror {
    /// Replaces the whole copy with a fresh read at `rev`; returns the
    /// events that turn the old copy into the new one (for invalidation).
    pub fn reset(&self, kvs: Vec<KeyValue>, rev: u64) -> Vec<Event> {
        let fresh: BTreeMap<String, Versioned> = kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    Versioned {
                        value: kv.value,
                        mod_rev: kv.mod_rev,
                    },
                )
            })
            .collect();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut evs = Vec::new();
        for (k, v) in &g.kvs {
            if !fresh.contains_key(k) {
                evs.push(Event {
                    rev,
                    kind: EventKind::Delete,
                    kv: kv(k, &[], v.mod_rev),
                });
            }
        }
        for (k, v) in &fresh {
            if g.kvs.get(k).is_none_or(|o| o.mod_rev != v.mod_rev) {
                evs.push(Event {
                    rev,
                    kind: EventKind::Put,
                    kv: kv(k, &v.value, v.mod_rev),
                });
            }
        }
        g.kvs = fresh;
        g.rev = g.rev.max(rev);
        self.moved.notify_all();
        evs
    }

    /// Applies one watch event.
    pub fn apply(&self, e: &Event) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = String::from_utf8_lossy(&e.kv.key).into_owned();
        match e.kind {
            EventKind::Put => {
                g.kvs.insert(
                    k,
                    Versioned {
                        value: e.kv.value.clone(),
                        mod_rev: e.kv.mod_rev,
                    },
                );
            }
            EventKind::Delete => {
                g.kvs.remove(&k);
            }
        }
        g.rev = g.rev.max(e.rev);
        self.moved.notify_all();
    }

    /// Debugging aid (root only, through `gvs.debug.watch_hold` on /gvs):
    /// while held, the watch's events wait instead of being applied, as
    /// when a node's watch lags behind metad; released, they are applied
    /// in order.
    pub fn hold(&self, on: bool) {
        self.held.store(on, Ordering::SeqCst);
    }

    /// Whether the watch's events wait (see [`Mirror::hold`]).
    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// The revision the copy is at.
    pub fn rev(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).rev
    }

    /// Waits until the copy is at `rev` or later; false on timeout.
    pub fn wait_rev(&self, rev: u64, timeout: Duration) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .moved
            .wait_timeout_while(g, timeout, |g| g.rev < rev)
            .unwrap_or_else(|e| e.into_inner());
        g.rev >= rev
    }

    /// Waits until the copy moves past `rev` (any change), or the timeout.
    pub fn wait_change(&self, rev: u64, timeout: Duration) {
        self.wait_rev(rev + 1, timeout);
    }

    /// One key.
    pub fn get(&self, key: &str) -> Option<Versioned> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kvs
            .get(key)
            .cloned()
    }

    /// Every key under `prefix`, in order.
    pub fn range(&self, prefix: &str) -> Vec<(String, Versioned)> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether any key starts with `prefix`.
    pub fn any_under(&self, prefix: &str) -> bool {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.kvs
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }
}

fn kv(k: &str, v: &[u8], mod_rev: u64) -> KeyValue {
    KeyValue {
        key: k.as_bytes().to_vec(),
        value: v.to_vec(),
        create_rev: 0,
        mod_rev,
        version: 0,
        lease: 0,
    }
}

/// Loads the copy and keeps it current, calling `on_event` for every
/// change after the mirror applied it (from the watch task), until
/// `stop()` (checked twice a second) says the client is no longer the one
/// to use.
pub async fn follow(
    client: &Client,
    mirror: &Mirror,
    on_event: &(dyn Fn(&Event) + Send + Sync),
    stop: &(dyn Fn() -> bool + Send + Sync),
) -> Result<()> {
    while !stop() {
        let (kvs, rev) = client.get_prefix(crate::meta::PREFIX).await?;
        for e in mirror.reset(kvs, rev) {
            on_event(&e);
        }
        let mut w = client.watch(crate::meta::PREFIX, rev + 1).await?;
        // Events that wait while the mirror is held.
        let mut late: Vec<Event> = Vec::new();
        let deliver = |late: &mut Vec<Event>| {
            if !mirror.held() {
                for e in late.drain(..) {
                    mirror.apply(&e);
                    on_event(&e);
                }
            }
        };
        loop {
            let ev = tokio::select! {
                ev = w.next() => ev,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if stop() {
                        return Ok(());
                    }
                    deliver(&mut late);
                    continue;
                }
            };
            match ev {
                Some(Ok(e)) => {
                    late.push(e);
                    deliver(&mut late);
                }
                Some(Err(e)) => {
                    tracing::warn!("watch of gvs/ ended ({e}); reloading");
                    break;
                }
                None => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits until the mirror holds the state after revision `rev`; used after
/// a transaction so the node reads its own writes.
pub fn settle(mirror: &Mirror, rev: u64) {
    if !mirror.wait_rev(rev, Duration::from_secs(10)) {
        tracing::warn!("watch did not reach revision {rev} within 10 s");
    }
}
