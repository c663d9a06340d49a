//! Connection tracking: the flows a declared connection has opened, so
//! that their replies pass and nothing else does.

use crate::http::RequestStream;
use crate::model::Connection;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// A flow in the direction it was opened (output side to input side).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Application id.
    pub app: u64,
    /// IP protocol.
    pub proto: u8,
    /// Source address and port.
    pub src: (Ipv4Addr, u16),
    /// Destination address and port.
    pub dst: (Ipv4Addr, u16),
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            app: self.app,
            proto: self.proto,
            src: self.dst,
            dst: self.src,
        }
    }
}

/// Which way a packet goes in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the side that opened it.
    Orig,
    /// A reply.
    Reply,
}

/// Where a flow on an `http` connection is in its check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpState {
    /// Not an HTTP connection.
    NotChecked,
    /// Every byte the client sends is checked (see [`crate::http`]).
    Checking(Box<RequestStream>),
    /// A request was not well formed: the flow is dead.
    Failed,
}

/// One tracked flow.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The connection that admits it.
    pub conn: Connection,
    /// Its HTTP check.
    pub http: HttpState,
    /// Last packet seen.
    pub last: Instant,
    /// When its SYN left the client's TAP, until the SYN/ACK is seen.
    pub syn_at: Option<Instant>,
}

/// How long an idle flow is remembered.
pub const IDLE: Duration = Duration::from_secs(600);

/// Most flows tracked at once.
pub const MAX_FLOWS: usize = 65536;
/// Most bytes the HTTP checks of all flows may hold.
pub const MAX_HTTP_BYTES: usize = 64 << 20;

/// A flow forgotten to keep the table within its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// The flow, in its opening direction.
    pub key: FlowKey,
    /// The connection that admitted it.
    pub conn: Connection,
}

/// The table, within its limits: at most `max_flows` flows, and at most
/// `max_http_bytes` held by their HTTP checks (an unfinished request head
/// or chunk line each); beyond either, the idlest flows are forgotten
/// (and listed for [`Conntrack::take_evicted`], to be reported), so that
/// no number of flows an appliance opens can exhaust a node's memory.
#[derive(Debug)]
pub struct Conntrack {
    flows: HashMap<FlowKey, Entry>,
    max_flows: usize,
    max_http_bytes: usize,
    /// What the flows' HTTP checks hold, kept in step by every change of
    /// an entry's [`HttpState`] ([`Conntrack::set_http`]).
    http_bytes: usize,
    evicted: Vec<Evicted>,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack::with_limits(MAX_FLOWS, MAX_HTTP_BYTES)
    }
}

fn held(h: &HttpState) -> usize {
    match h {
        HttpState::Checking(s) => s.held(),
        HttpState::NotChecked | HttpState::Failed => 0,
    }
}

impl Conntrack {
    /// A table with other limits than [`MAX_FLOWS`] and [`MAX_HTTP_BYTES`].
    pub fn with_limits(max_flows: usize, max_http_bytes: usize) -> Conntrack {
        Conntrack {
            flows: HashMap::new(),
            max_flows: max_flows.max(1),
            max_http_bytes,
            http_bytes: 0,
            evicted: Vec::new(),
        }
    }

    /// The flows evicted since the last call.
    pub fn take_evicted(&mut self) -> Vec<Evicted> {
        std::mem::take(&mut self.evicted)
    }

    /// Bytes the flows' HTTP checks hold.
    pub fn http_bytes(&self) -> usize {
        self.http_bytes
    }

    /// Sets the HTTP check of flow `k` (given in its opening direction);
    /// the only way an entry's check may change, so that what checks hold
    /// stays counted. Evicts the idlest flows holding check bytes when
    /// they pass the limit.
    pub fn set_http(&mut self, k: &FlowKey, http: HttpState) {
        let Some(e) = self.flows.get_mut(k) else {
            return;
        };
        self.http_bytes = self.http_bytes - held(&e.http) + held(&http);
        e.http = http;
        if self.http_bytes > self.max_http_bytes {
            // Down to 15/16 of the limit, so that one scan makes room for
            // many more bytes.
            let target = self.max_http_bytes - self.max_http_bytes / 16;
            self.evict_idlest(|e| held(&e.http) > 0, |ct| ct.http_bytes <= target);
        }
    }

    /// Forgets the least recently used flows that `eligible` picks until
    /// `done`, recording each.
    fn evict_idlest(
        &mut self,
        eligible: impl Fn(&Entry) -> bool,
        done: impl Fn(&Conntrack) -> bool,
    ) {
        let mut by_age: Vec<(Instant, FlowKey)> = self
            .flows
            .iter()
            .filter(|(_, e)| eligible(e))
            .map(|(k, e)| (e.last, k.clone()))
            .collect();
        by_age.sort_unstable_by_key(|(last, _)| *last);
        for (_, k) in by_age {
            if done(self) {
                break;
            }
            if let Some(e) = self.take(&k) {
                self.evicted.push(Evicted {
                    key: k,
                    conn: e.conn,
                });
            }
        }
    }

    /// Removes one entry, keeping the byte count.
    fn take(&mut self, k: &FlowKey) -> Option<Entry> {
        let e = self.flows.remove(k)?;
        self.http_bytes -= held(&e.http);
        Some(e)
    }

    /// The flow `k` belongs to, and which way it goes.
    pub fn lookup(&mut self, k: &FlowKey) -> Option<(Dir, &mut Entry)> {
        if self.flows.contains_key(k) {
            return self.flows.get_mut(k).map(|e| (Dir::Orig, e));
        }
        self.flows.get_mut(&k.reversed()).map(|e| (Dir::Reply, e))
    }

    /// Tracks a new flow, evicting the idlest when the table is full.
    pub fn insert(&mut self, k: FlowKey, e: Entry) {
        if !self.flows.contains_key(&k) && self.flows.len() >= self.max_flows {
            // A sixteenth at once, so that a full table is not scanned
            // for every new flow.
            let target = self.max_flows - (self.max_flows / 16).max(1);
            self.evict_idlest(|_| true, |ct| ct.flows.len() <= target);
        }
        self.http_bytes += held(&e.http);
        if let Some(old) = self.flows.insert(k, e) {
            self.http_bytes -= held(&old.http);
        }
    }

    /// Forgets a flow.
    pub fn remove(&mut self, k: &FlowKey) {
        self.take(k);
        self.take(&k.reversed());
    }

    /// Forgets flows idle for longer than [`IDLE`].
    pub fn expire(&mut self, now: Instant) {
        let mut freed = 0;
        self.flows.retain(|_, e| {
            let keep = now.duration_since(e.last) < IDLE;
            if !keep {
                freed += held(&e.http);
            }
            keep
        });
        self.http_bytes -= freed;
    }

    /// Records that flow `k` (given in its opening direction) sent its SYN
    /// from a local TAP at `now`.
    pub fn syn_sent(&mut self, k: &FlowKey, now: Instant) {
        if let Some(e) = self.flows.get_mut(k) {
            e.syn_at = Some(now);
        }
    }

    /// A SYN/ACK seen as `k` (the reply direction) at `now`: the round trip
    /// since its flow's SYN, once per SYN.
    pub fn syn_ack_seen(&mut self, k: &FlowKey, now: Instant) -> Option<(Connection, Duration)> {
        let e = self.flows.get_mut(&k.reversed())?;
        let t = e.syn_at.take()?;
        Some((e.conn.clone(), now.saturating_duration_since(t)))
    }

    /// Number of tracked flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, TerminalRef};

    fn conn() -> Connection {
        Connection {
            app: "a".into(),
            from: TerminalRef {
                appliance: "c".into(),
                terminal: "s".into(),
            },
            to: TerminalRef {
                appliance: "s".into(),
                terminal: "in".into(),
            },
            protocol: Protocol::Tcp(80),
        }
    }

    /// Flow `n` of client 10.0.0.10.
    fn flow(n: u16) -> FlowKey {
        FlowKey {
            app: 1,
            proto: 6,
            src: (Ipv4Addr::new(10, 0, 0, 10), 40000 + n),
            dst: (Ipv4Addr::new(10, 0, 0, 20), 80),
        }
    }

    fn entry(http: HttpState, last: Instant) -> Entry {
        Entry {
            conn: conn(),
            http,
            last,
            syn_at: None,
        }
    }

    #[test]
    fn the_table_keeps_its_flow_cap_by_evicting_the_idlest_and_says_so() {
        let t0 = Instant::now();
        let mut ct = Conntrack::with_limits(4, MAX_HTTP_BYTES);
        for n in 0..4 {
            let at = t0 + Duration::from_secs(n as u64);
            ct.insert(flow(n), entry(HttpState::NotChecked, at));
        }
        // Flow 0 is the oldest but was just used: flow 1 is the idlest.
        ct.lookup(&flow(0)).unwrap().1.last = t0 + Duration::from_secs(10);
        assert!(ct.take_evicted().is_empty());
        ct.insert(
            flow(9),
            entry(HttpState::NotChecked, t0 + Duration::from_secs(11)),
        );
        assert_eq!(ct.len(), 4);
        assert!(ct.lookup(&flow(1)).is_none(), "the idlest flow was kept");
        assert!(ct.lookup(&flow(0)).is_some() && ct.lookup(&flow(9)).is_some());
        let ev = ct.take_evicted();
        assert_eq!(ev.len(), 1);
        assert_eq!((&ev[0].key, &ev[0].conn), (&flow(1), &conn()));
        for n in 100..1000 {
            ct.insert(
                flow(n),
                entry(HttpState::NotChecked, t0 + Duration::from_secs(20)),
            );
            assert!(ct.len() <= 4);
        }
        assert_eq!(ct.take_evicted().len(), 900);
    }

    #[test]
    fn http_buffers_keep_their_byte_cap_by_evicting_the_idlest_flow() {
        let t0 = Instant::now();
        let cap = 40_000;
        let mut ct = Conntrack::with_limits(MAX_FLOWS, cap);
        // Flows that each hold an unfinished request head of 10,000 bytes.
        let head = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 9_980]].concat();
        for n in 0..10 {
            let at = t0 + Duration::from_secs(n as u64);
            ct.insert(flow(n), entry(HttpState::NotChecked, at));
            let mut s = RequestStream::new(0);
            assert_eq!(s.feed(0, &head), crate::http::Check::Pass);
            ct.set_http(&flow(n), HttpState::Checking(Box::new(s)));
            assert!(ct.http_bytes() <= cap, "{} bytes held", ct.http_bytes());
        }
        assert!(ct.http_bytes() > 0);
        let ev = ct.take_evicted();
        assert!(!ev.is_empty());
        assert_eq!(ev[0].key, flow(0), "the idlest goes first");
        assert!(ct.lookup(&flow(9)).is_some(), "the newest was evicted");
        // Forgetting a flow gives its bytes back.
        for n in 0..10 {
            ct.remove(&flow(n));
        }
        assert_eq!(ct.http_bytes(), 0);
    }

    #[test]
    fn a_syn_ack_gives_one_round_trip_per_syn() {
        let conn = conn();
        let k = FlowKey {
            app: 1,
            proto: 6,
            src: (Ipv4Addr::new(10, 0, 0, 10), 40000),
            dst: (Ipv4Addr::new(10, 0, 0, 20), 80),
        };
        let t0 = Instant::now();
        let mut ct = Conntrack::default();
        ct.insert(
            k.clone(),
            Entry {
                conn: conn.clone(),
                http: HttpState::NotChecked,
                last: t0,
                syn_at: None,
            },
        );
        assert!(ct.syn_ack_seen(&k.reversed(), t0).is_none(), "no SYN yet");
        ct.syn_sent(&k, t0);
        assert!(ct.syn_ack_seen(&k, t0).is_none(), "wrong direction");
        let (c, rtt) = ct
            .syn_ack_seen(&k.reversed(), t0 + Duration::from_micros(750))
            .unwrap();
        assert_eq!((c, rtt), (conn, Duration::from_micros(750)));
        assert!(ct.syn_ack_seen(&k.reversed(), t0).is_none(), "once");
    }
}
