//! Per-connection statistics and per-node counters, as each lcmd publishes
//! them under `lcm/stats/<node>` and `lcmd conn list` sums them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

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
    /// Of the drops, those by an appliance's bandwidth limit (`bw.max`).
    #[serde(default)]
    pub shaped: u64,
    /// Smoothed round-trip time in microseconds (7/8 old + 1/8 new, as
    /// TCP's SRTT), from each new TCP flow's SYN leaving the client's TAP
    /// to its SYN/ACK coming back to the client's node: the tunnel both
    /// ways plus the server's stack. 0 before the first sample.
    #[serde(default)]
    pub rtt_us: u64,
    /// How many round trips `rtt_us` is made of.
    #[serde(default)]
    pub rtt_samples: u64,
}

impl ConnStats {
    /// Adds another node's counters (round-trip times weighted by their
    /// number of samples).
    pub fn add(&mut self, o: &ConnStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.drops += o.drops;
        self.shaped += o.shaped;
        let n = self.rtt_samples + o.rtt_samples;
        if let Some(avg) =
            (self.rtt_us * self.rtt_samples + o.rtt_us * o.rtt_samples).checked_div(n)
        {
            self.rtt_us = avg;
        }
        self.rtt_samples = n;
    }

    /// Adds one round-trip sample.
    pub fn add_rtt(&mut self, sample: Duration) {
        let us = sample.as_micros().min(u64::MAX as u128) as u64;
        self.rtt_us = if self.rtt_samples == 0 {
            us
        } else {
            (7 * self.rtt_us + us) / 8
        };
        self.rtt_samples += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_smoothed_and_summed_by_weight() {
        let mut a = ConnStats::default();
        a.add_rtt(Duration::from_micros(800));
        assert_eq!((a.rtt_us, a.rtt_samples), (800, 1));
        a.add_rtt(Duration::from_micros(1600));
        assert_eq!((a.rtt_us, a.rtt_samples), (900, 2));
        let mut b = ConnStats::default();
        b.add(&a);
        assert_eq!((b.rtt_us, b.rtt_samples), (900, 2));
        let mut c = ConnStats::default();
        c.add_rtt(Duration::from_micros(300));
        c.add_rtt(Duration::from_micros(300));
        b.add(&c);
        assert_eq!((b.rtt_us, b.rtt_samples), (600, 4));
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
