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

/// The table.
#[derive(Debug, Default)]
pub struct Conntrack {
    flows: HashMap<FlowKey, Entry>,
}

impl Conntrack {
    /// The flow `k` belongs to, and which way it goes.
    pub fn lookup(&mut self, k: &FlowKey) -> Option<(Dir, &mut Entry)> {
        if self.flows.contains_key(k) {
            return self.flows.get_mut(k).map(|e| (Dir::Orig, e));
        }
        self.flows.get_mut(&k.reversed()).map(|e| (Dir::Reply, e))
    }

    /// Tracks a new flow.
    pub fn insert(&mut self, k: FlowKey, e: Entry) {
        self.flows.insert(k, e);
    }

    /// Forgets a flow.
    pub fn remove(&mut self, k: &FlowKey) {
        self.flows.remove(k);
        self.flows.remove(&k.reversed());
    }

    /// Forgets flows idle for longer than [`IDLE`].
    pub fn expire(&mut self, now: Instant) {
        self.flows.retain(|_, e| now.duration_since(e.last) < IDLE);
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

    #[test]
    fn a_syn_ack_gives_one_round_trip_per_syn() {
        let conn = Connection {
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
        };
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
