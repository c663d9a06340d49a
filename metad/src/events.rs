//! The grid's one event log: what DVM (placements, failovers, crashes),
//! LCM (security breaches) and GVS (repairs, scrubs) report, in one
//! record type under one key prefix, so that `vmctl events`, `lcmd
//! events` and `/gvs/.grid/events` read the same log. It lives in metad's
//! library because every part of the grid depends on it (lcmd does not
//! depend on vmctl).
//!
//! Keys are `events/<ns since the epoch, 20 digits>-<node>-<pid>-<seq>`,
//! so key order is time order (as far as the nodes' clocks agree) and two
//! writers never collide. The log is bounded: every [`TRIM_EVERY`]
//! appends, a writer deletes the oldest events beyond [`RETAIN`], so it
//! holds at most `RETAIN` plus what the writers appended since their last
//! trim.

use crate::client::{Client, ClientError, Watch};
use crate::state::{EventKind, Op, Txn};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The key prefix of every event.
pub const PREFIX: &str = "events/";
/// Events kept; older ones are deleted.
pub const RETAIN: usize = 2000;
/// A writer trims the log after this many of its appends.
pub const TRIM_EVERY: u64 = 64;

/// The service that reported an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The VM manager (vmctl: CLI, agents, scheduler).
    Dvm,
    /// The connection manager (lcmd).
    Lcm,
    /// The volume store (gvsfs).
    Gvs,
}

impl Source {
    /// The lowercase name, as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Dvm => "dvm",
            Source::Lcm => "lcm",
            Source::Gvs => "gvs",
        }
    }
}

/// Structured details some events carry (stored flat beside the common
/// fields, absent when `None`), for scripts that select on them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fields {
    /// Application concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Sending appliance (LCM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_appliance: Option<String>,
    /// Its terminal involved (LCM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_terminal: Option<String>,
    /// Receiving appliance (LCM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_appliance: Option<String>,
    /// Its terminal involved (LCM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_terminal: Option<String>,
    /// IP protocol of the 5-tuple (6 tcp, 17 udp, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<u8>,
    /// Source address of the 5-tuple.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<IpAddr>,
    /// Source port of the 5-tuple.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    /// Destination address of the 5-tuple.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<IpAddr>,
    /// Destination port of the 5-tuple.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// Why (a drop's reason, a refusal's cause), as a short name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Events like this one not reported since the last one (rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    /// Volumes concerned (GVS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<u64>,
    /// Bytes concerned (GVS: copied so far, or in all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// How far along, 0-100 (GVS progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

/// One event, as stored (JSON) under [`PREFIX`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridEvent {
    /// When, ms since the Unix epoch.
    pub time_ms: u64,
    /// The reporting node (or "cli").
    pub node: String,
    /// The reporting service.
    pub source: Source,
    /// What kind of event: "placed", "failover", "drop", "repair-done", ...
    pub kind: String,
    /// What it is about: an application, a VM, a volume, a node.
    pub subject: String,
    /// What happened, for people.
    pub message: String,
    /// Structured details.
    #[serde(flatten)]
    pub fields: Fields,
}

impl GridEvent {
    /// An event happening now, without structured details.
    pub fn new(
        node: &str,
        source: Source,
        kind: &str,
        subject: &str,
        message: impl Into<String>,
    ) -> GridEvent {
        GridEvent {
            time_ms: now_ms(),
            node: node.into(),
            source,
            kind: kind.into(),
            subject: subject.into(),
            message: message.into(),
            fields: Fields::default(),
        }
    }

    /// The same event with structured details.
    pub fn with(mut self, fields: Fields) -> GridEvent {
        self.fields = fields;
        self
    }

    /// The event as one line of text (no newline), as the CLIs and the
    /// events control file show it.
    pub fn line(&self) -> String {
        format!(
            "{} {:<6} {} {:<12} {:<12} {}",
            clock(self.time_ms),
            self.node,
            self.source.as_str(),
            self.kind,
            self.subject,
            self.message
        )
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `HH:MM:SS.mmm` (UTC) of a timestamp in ms, as event lines show time.
pub fn clock(ts_ms: u64) -> String {
    let secs = ts_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ts_ms % 1000
    )
}

/// This process's appends, for unique keys and the trim cadence.
static APPENDS: AtomicU64 = AtomicU64::new(0);

/// Appends an event; every [`TRIM_EVERY`] appends of this process (the
/// first included) also trims the log to [`RETAIN`] events.
pub async fn append(client: &Client, ev: &GridEvent) -> Result<(), ClientError> {
    let seq = APPENDS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = format!(
        "{PREFIX}{nanos:020}-{}-{}-{seq}",
        ev.node,
        std::process::id()
    );
    let value = serde_json::to_vec(ev).expect("events serialize");
    client.put(key, value).await?;
    if seq % TRIM_EVERY == 0 {
        trim(client, RETAIN).await?;
    }
    Ok(())
}

/// Deletes the oldest events beyond `keep`; returns how many it deleted.
pub async fn trim(client: &Client, keep: usize) -> Result<usize, ClientError> {
    let (kvs, _) = client.get_prefix(PREFIX).await?;
    let excess = kvs.len().saturating_sub(keep);
    if excess == 0 {
        return Ok(0);
    }
    let ops: Vec<Op> = kvs
        .into_iter()
        .take(excess)
        .map(|kv| Op::Delete { key: kv.key })
        .collect();
    client
        .txn(Txn {
            success: ops,
            ..Txn::default()
        })
        .await?;
    Ok(excess)
}

/// Every event in the log, oldest first, and the store revision of the
/// read (to [`follow`] from). Records that do not parse (from an older
/// version) are skipped.
pub async fn list(client: &Client) -> Result<(Vec<GridEvent>, u64), ClientError> {
    let (kvs, rev) = client.get_prefix(PREFIX).await?;
    let evs = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    Ok((evs, rev))
}

/// New events as they are appended.
pub struct Follow {
    watch: Watch,
}

/// Follows the log from store revision `from_rev` (a [`list`]'s revision
/// plus one: no event is missed or repeated between the two).
pub async fn follow(client: &Client, from_rev: u64) -> Result<Follow, ClientError> {
    Ok(Follow {
        watch: client.watch(PREFIX, from_rev).await?,
    })
}

impl Follow {
    /// The next event appended (trims and unparsable records skipped);
    /// `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<GridEvent, ClientError>> {
        loop {
            match self.watch.next().await? {
                Err(e) => return Some(Err(e)),
                Ok(w) if w.kind == EventKind::Put => {
                    if let Ok(ev) = serde_json::from_slice(&w.kv.value) {
                        return Some(Ok(ev));
                    }
                }
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_flat_and_absent_when_unset() {
        let ev = GridEvent::new("node1", Source::Lcm, "drop", "shop", "x").with(Fields {
            src_appliance: Some("web".into()),
            dst_port: Some(81),
            reason: Some("wrong-port".into()),
            ..Fields::default()
        });
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["source"], "lcm");
        assert_eq!(v["src_appliance"], "web");
        assert_eq!(v["dst_port"], 81);
        assert!(v.get("app").is_none(), "{v}");
        let back: GridEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
        assert!(ev.line().contains("node1  lcm drop"), "{}", ev.line());
    }
}
