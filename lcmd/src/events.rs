//! Security events: what lcmd reports when it drops traffic that no
//! declared connection admits, rate-limited so that a flood cannot flood
//! metad, and counted so that nothing suppressed goes unnoticed. They are
//! stored in the grid's one event log ([`metad::events`]) as `lcm` events
//! of kind `drop`, with the 5-tuple, appliances, terminals and reason as
//! structured fields.

use metad::events::{Fields, GridEvent, Source};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// To an address no connection of the sender leads to.
    UndeclaredPeer,
    /// To a declared peer, but not with the declared protocol or port.
    WrongPort,
    /// A new flow opened from the input side of a connection.
    InputSideOpen,
    /// A source IP address that is not the appliance's.
    SpoofedIp,
    /// A source MAC address that is not the appliance's.
    SpoofedMac,
    /// A non-HTTP payload on a connection declared `http`.
    NotHttp,
    /// A segment of an `http` connection beyond the bytes checked so far
    /// (it could carry unchecked bytes; TCP resends it in order).
    HttpUnordered,
    /// A tunnel packet whose MAC does not verify (or from an unknown sender).
    ForgedTunnelPacket,
    /// A tunnel packet already received (or too old for the window).
    ReplayedTunnelPacket,
    /// A frame lcmd cannot parse.
    Malformed,
    /// Not a packet: a tracked flow forgotten because the flow table (or
    /// what its HTTP checks hold) was full; the flow's next packets are
    /// decided as a new flow's.
    FlowEvicted,
}

impl Reason {
    /// The kebab-case name, as in the stored events.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::UndeclaredPeer => "undeclared-peer",
            Reason::WrongPort => "wrong-port",
            Reason::InputSideOpen => "input-side-open",
            Reason::SpoofedIp => "spoofed-ip",
            Reason::SpoofedMac => "spoofed-mac",
            Reason::NotHttp => "not-http",
            Reason::HttpUnordered => "http-unordered",
            Reason::ForgedTunnelPacket => "forged-tunnel-packet",
            Reason::ReplayedTunnelPacket => "replayed-tunnel-packet",
            Reason::Malformed => "malformed",
            Reason::FlowEvicted => "flow-evicted",
        }
    }
}

/// One breach as the engine sees it (typed, for the rate limit); stored
/// as a [`GridEvent`] ([`SecurityEvent::to_event`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node that dropped the packet.
    pub node: String,
    /// Application, when known.
    pub app: Option<String>,
    /// Sending appliance, when known.
    pub src_appliance: Option<String>,
    /// Its terminal involved, when known.
    pub src_terminal: Option<String>,
    /// Receiving appliance, when known.
    pub dst_appliance: Option<String>,
    /// Its terminal involved, when known.
    pub dst_terminal: Option<String>,
    /// IP protocol (6 tcp, 17 udp, ...).
    pub proto: u8,
    /// Source address.
    pub src_ip: Ipv4Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination address.
    pub dst_ip: Ipv4Addr,
    /// Destination port.
    pub dst_port: u16,
    /// Why it was dropped.
    pub reason: Reason,
    /// Events of the same kind suppressed by the rate limit since the last
    /// one reported.
    pub suppressed: u64,
}

impl SecurityEvent {
    /// An event of `reason` at the current time, with the rest filled by
    /// the caller.
    pub fn new(
        node: &str,
        reason: Reason,
        proto: u8,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
    ) -> SecurityEvent {
        SecurityEvent {
            time_ms: now_ms(),
            node: node.into(),
            app: None,
            src_appliance: None,
            src_terminal: None,
            dst_appliance: None,
            dst_terminal: None,
            proto,
            src_ip: src.0,
            src_port: src.1,
            dst_ip: dst.0,
            dst_port: dst.1,
            reason,
            suppressed: 0,
        }
    }

    /// The event as the grid's log stores it.
    pub fn to_event(&self) -> GridEvent {
        let side = |a: &Option<String>, t: &Option<String>| {
            format!(
                "{}.{}",
                a.as_deref().unwrap_or("-"),
                t.as_deref().unwrap_or("-")
            )
        };
        let mut message = format!(
            "{}:{} -> {}:{} proto {} ({} -> {}): {}",
            self.src_ip,
            self.src_port,
            self.dst_ip,
            self.dst_port,
            self.proto,
            side(&self.src_appliance, &self.src_terminal),
            side(&self.dst_appliance, &self.dst_terminal),
            self.reason.as_str()
        );
        if self.suppressed > 0 {
            message.push_str(&format!(" ({} like it suppressed)", self.suppressed));
        }
        GridEvent {
            time_ms: self.time_ms,
            node: self.node.clone(),
            source: Source::Lcm,
            kind: "drop".into(),
            subject: self.app.clone().unwrap_or_else(|| "-".into()),
            message,
            fields: Fields {
                app: self.app.clone(),
                src_appliance: self.src_appliance.clone(),
                src_terminal: self.src_terminal.clone(),
                dst_appliance: self.dst_appliance.clone(),
                dst_terminal: self.dst_terminal.clone(),
                proto: Some(self.proto),
                src_ip: Some(self.src_ip.into()),
                src_port: Some(self.src_port),
                dst_ip: Some(self.dst_ip.into()),
                dst_port: Some(self.dst_port),
                reason: Some(self.reason.as_str().into()),
                suppressed: Some(self.suppressed),
                ..Fields::default()
            },
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A token bucket per (application, sender, reason): `BURST` events at
/// once, then `RATE` per second; the rest are counted and the count is
/// carried by the next event reported.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<(Option<String>, Option<String>, Reason), Bucket>,
    counts: BTreeMap<Reason, u64>,
    suppressed_total: u64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

/// Events reported at once before the rate limit applies.
pub const BURST: f64 = 10.0;
/// Events per second reported after the burst.
pub const RATE: f64 = 2.0;

impl RateLimiter {
    /// Counts `ev` and returns it if the rate limit lets it through, with
    /// the number suppressed before it.
    pub fn admit(&mut self, mut ev: SecurityEvent) -> Option<SecurityEvent> {
        *self.counts.entry(ev.reason).or_default() += 1;
        let now = Instant::now();
        let b = self
            .buckets
            .entry((ev.app.clone(), ev.src_appliance.clone(), ev.reason))
            .or_insert(Bucket {
                tokens: BURST,
                at: now,
                suppressed: 0,
            });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * RATE).min(BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            ev.suppressed = std::mem::take(&mut b.suppressed);
            Some(ev)
        } else {
            b.suppressed += 1;
            self.suppressed_total += 1;
            None
        }
    }

    /// Drops seen per reason since start.
    pub fn counts(&self) -> &BTreeMap<Reason, u64> {
        &self.counts
    }

    /// Events not reported because of the rate limit, since start.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_limited_and_counted() {
        let mut r = RateLimiter::default();
        let ev = SecurityEvent::new(
            "n",
            Reason::WrongPort,
            6,
            (Ipv4Addr::LOCALHOST, 1),
            (Ipv4Addr::LOCALHOST, 2),
        );
        let passed = (0..100).filter_map(|_| r.admit(ev.clone())).count();
        assert_eq!(passed, BURST as usize);
        assert_eq!(r.counts()[&Reason::WrongPort], 100);
        assert_eq!(r.suppressed_total(), 90);
        assert_eq!(
            serde_json::to_string(&Reason::SpoofedIp).unwrap(),
            "\"spoofed-ip\""
        );
        let stored = serde_json::to_value(ev.to_event()).unwrap();
        assert_eq!(
            (&stored["source"], &stored["kind"], &stored["reason"]),
            (&"lcm".into(), &"drop".into(), &"wrong-port".into())
        );
        assert_eq!(stored["dst_port"], 2);
    }
}
