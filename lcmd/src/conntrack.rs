//! Connection tracking: the flows a declared connection has opened, so
//! that their replies pass and nothing else does.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpState {
    /// Not an HTTP connection.
    NotChecked,
    /// Waiting for the client's first data.
    Pending,
    /// The first request was well formed.
    Passed,
    /// It was not: the flow is dead.
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

    /// Number of tracked flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}
