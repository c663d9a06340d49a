//! Per-connection statistics and per-node counters, as each lcmd publishes
//! them under `lcm/stats/<node>` and `lcmd conn list` sums them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Counters of one connection on one node. Packets and bytes are counted
/// where a packet enters the grid (at its sender's TAP), drops wherever
/// they happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStats {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (Ethernet frames).
    pub bytes: u64,
    /// Packets dropped that were closest to this connection.
    pub drops: u64,
}

impl ConnStats {
    /// Adds another node's counters.
    pub fn add(&mut self, o: &ConnStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.drops += o.drops;
    }
}

/// What one node publishes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Node name.
    pub node: String,
    /// Connections by id (`app/from->to`).
    pub conns: BTreeMap<String, ConnStats>,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
    /// Security events suppressed by the rate limit.
    pub suppressed: u64,
    /// Tunnel datagrams sent.
    pub tunnel_tx: u64,
    /// Tunnel datagrams received and accepted.
    pub tunnel_rx: u64,
    /// Flows tracked now.
    pub flows: u64,
}
