//! The datapath of one node: frames from local appliance NICs (TAPs and
//! VM sockets, see [`crate::nic`]) and datagrams from tunnels go through
//! the same enforcement, then to a local NIC or into a
//! tunnel to the destination appliance's node; drops become events.
//!
//! Threads: one reader per NIC (poll with a timeout, so it stops when its
//! appliance leaves), one tunnel receiver (batched with `recvmmsg`). Large
//! tunnel datagrams travel as pieces (see [`crate::pieces`]). The
//! topology is an `Arc` swapped whole on every change of the model.

use crate::bandwidth::TokenBucket;
use crate::conntrack::{Conntrack, Evicted, FlowKey};
use crate::events::{RateLimiter, Reason, SecurityEvent};
use crate::model::{self, Appliance, Connection, NicKind, GATEWAY_MAC};
use crate::nic::Nic;
use crate::packet::{
    self, Arp, Eth, Ipv4, Transport, ETH_ARP, ETH_IPV4, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN,
};
use crate::pieces;
use crate::policy::{self, Verdict};
use crate::responder;
use crate::stats::{ConnStats, NodeStats};
use crate::tap::VNET_HDR;
use crate::topology::Topology;
use crate::tunnel::{self, Header, Outbound, SeqSource, TunnelError, Windows};
use crate::udp::{self, Message};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

type Key = (String, String);

/// A local appliance's NIC and what its reader thread needs.
struct NicHandle {
    nic: Nic,
    mac: model::Mac,
    kind: NicKind,
    stop: AtomicBool,
}

/// One node's datapath.
pub struct Engine {
    node: String,
    node_id: u64,
    topo: RwLock<Arc<Topology>>,
    nics: RwLock<HashMap<Key, Arc<NicHandle>>>,
    ct: Mutex<Conntrack>,
    windows: Mutex<Windows>,
    stats: Mutex<BTreeMap<String, ConnStats>>,
    limiter: Mutex<RateLimiter>,
    buckets: Mutex<HashMap<(String, String, bool), TokenBucket>>,
    events: tokio::sync::mpsc::UnboundedSender<SecurityEvent>,
    udp: UdpSocket,
    local_addr: Ipv4Addr,
    nic_dir: PathBuf,
    seq: SeqSource,
    tunnel_tx: AtomicU64,
    tunnel_rx: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// A datapath for `node`, sending tunnel datagrams from `udp` (bound to
    /// the tunnel port) numbered by `seq`, keeping VM NIC sockets in
    /// `nic_dir`, reporting drops on `events`.
    pub fn new(
        node: &str,
        local_addr: Ipv4Addr,
        nic_dir: &Path,
        udp: UdpSocket,
        seq: SeqSource,
        events: tokio::sync::mpsc::UnboundedSender<SecurityEvent>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            node: node.into(),
            node_id: model::node_id(node),
            topo: RwLock::new(Arc::new(Topology::default())),
            nics: RwLock::default(),
            ct: Mutex::default(),
            windows: Mutex::default(),
            stats: Mutex::default(),
            limiter: Mutex::default(),
            buckets: Mutex::default(),
            events,
            udp,
            local_addr,
            nic_dir: nic_dir.to_path_buf(),
            seq,
            tunnel_tx: AtomicU64::new(0),
            tunnel_rx: AtomicU64::new(0),
        })
    }

    /// The tunnel's sequence numbers, whose reservations the daemon stores.
    pub fn seq(&self) -> &SeqSource {
        &self.seq
    }

    fn topo(&self) -> Arc<Topology> {
        self.topo.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs a new version of the model and makes the local NICs match
    /// it: a NIC for every appliance of this node, none for the others.
    pub fn install(self: &Arc<Self>, t: Topology) {
        let t = Arc::new(t);
        *self.topo.write().unwrap_or_else(|e| e.into_inner()) = t.clone();
        let mut nics = self.nics.write().unwrap_or_else(|e| e.into_inner());
        nics.retain(|k, h| {
            let keep = t
                .appliance(&k.0, &k.1)
                .is_some_and(|a| a.node == self.node && a.mac == h.mac && a.nic == h.kind);
            if !keep {
                h.stop.store(true, Ordering::SeqCst);
                tracing::info!(
                    "appliance {}/{} left this node (or changed): closing NIC {}",
                    k.0,
                    k.1,
                    h.nic.name()
                );
            }
            keep
        });
        for a in t.local(&self.node) {
            let k = (a.app.clone(), a.name.clone());
            if nics.contains_key(&k) {
                continue;
            }
            match Nic::open(a, &self.nic_dir) {
                Ok(nic) => {
                    tracing::info!(
                        "appliance {}/{} ({}, {}): NIC {}",
                        a.app,
                        a.name,
                        a.ip,
                        a.mac,
                        nic.name()
                    );
                    let h = Arc::new(NicHandle {
                        nic,
                        mac: a.mac,
                        kind: a.nic,
                        stop: AtomicBool::new(false),
                    });
                    nics.insert(k.clone(), h.clone());
                    let me = self.clone();
                    std::thread::Builder::new()
                        .name(format!("nic-{}", a.name))
                        .spawn(move || me.nic_reader(k, h))
                        .expect("spawning a thread");
                }
                Err(e) => tracing::error!("appliance {}/{}: {e}", a.app, a.name),
            }
        }
    }

    fn nic_reader(self: Arc<Self>, k: Key, h: Arc<NicHandle>) {
        let mut out = Outbound::default();
        while !h.stop.load(Ordering::SeqCst) {
            match h.nic.recv(out.room()) {
                Ok(n) if n >= VNET_HDR => {
                    out.set_len(n);
                    self.on_nic_frame(&k, &h, &mut out)
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    h.nic.readable(Duration::from_millis(100));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("NIC {}: {e}", h.nic.name());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn on_nic_frame(&self, k: &Key, h: &NicHandle, out: &mut Outbound) {
        let topo = self.topo();
        let Some(a) = topo.appliance(&k.0, &k.1) else {
            return;
        };
        let Some(app) = topo.apps.get(&a.app) else {
            return;
        };
        let Ok(eth) = Eth::parse(&out.body()[VNET_HDR..]) else {
            return;
        };
        match eth.ethertype() {
            ETH_ARP => {
                if let Ok(req) = Arp::parse(eth.payload()) {
                    if let Some(reply) = responder::arp_reply(&req, a.ip, &app.app.range) {
                        let _ = h.nic.send(&reply);
                    }
                }
            }
            ETH_IPV4 => self.ipv4_from_tap(&topo, a, h, out),
            // IPv6 (neighbour discovery, router solicitations) and other
            // link protocols are not routed; dropped without a report.
            _ => {}
        }
    }

    fn ipv4_from_tap(&self, topo: &Topology, a: &Appliance, h: &NicHandle, out: &mut Outbound) {
        let (vnet, frame) = out.body().split_at(VNET_HDR);
        let eth = Eth::parse(frame).expect("parsed before");
        let Ok(ip) = Ipv4::parse(eth.payload()) else {
            return self.report(
                Reason::Malformed,
                Some(a),
                None,
                None,
                0,
                (a.ip, 0),
                (Ipv4Addr::UNSPECIFIED, 0),
            );
        };
        let t = match Transport::parse(&ip) {
            Ok(t) => t,
            Err(_) => {
                return self.report(
                    Reason::Malformed,
                    Some(a),
                    None,
                    None,
                    ip.proto(),
                    (ip.src(), 0),
                    (ip.dst(), 0),
                )
            }
        };
        let (src, dst) = ((ip.src(), t.sport), (ip.dst(), t.dport));
        if eth.src() != a.mac.0 {
            return self.report(
                Reason::SpoofedMac,
                Some(a),
                None,
                None,
                ip.proto(),
                src,
                dst,
            );
        }
        if ip.src() != a.ip {
            return self.report(Reason::SpoofedIp, Some(a), None, None, ip.proto(), src, dst);
        }
        let Some(app) = topo.apps.get(&a.app) else {
            return;
        };
        let range = app.app.range;
        if ip.dst() == range.gateway() && ip.proto() == PROTO_UDP && t.dport == 53 {
            if let Some(q) = responder::parse_query(t.data) {
                let first = q.name.split('.').next().unwrap_or("");
                let addr = topo
                    .resolve(a, first)
                    .filter(|_| !q.name.contains('.') || q.name.ends_with(&format!(".{}", a.app)));
                let answer = responder::dns_answer(t.data, &q, addr);
                let reply = packet::udp_frame(
                    GATEWAY_MAC.0,
                    a.mac.0,
                    (range.gateway(), 53),
                    (a.ip, t.sport),
                    &answer,
                );
                let _ = h.nic.send(&reply);
            }
            return;
        }
        if ip.dst().is_multicast()
            || ip.dst().is_broadcast()
            || ip.dst() == range.host(range.size() - 1)
        {
            return;
        }
        let Some(peer) = topo.at(&a.app, ip.dst()) else {
            return self.report(
                Reason::UndeclaredPeer,
                Some(a),
                None,
                None,
                ip.proto(),
                src,
                dst,
            );
        };
        let now = Instant::now();
        match self.decide(topo, a, peer, ip.proto(), &t, now) {
            Verdict::Forward(c, advance) => {
                if !self.admit_bw(a, false, frame.len(), now) {
                    return self.count_shaped(&c);
                }
                self.track_rtt(&a.app, ip.proto(), &t, src, dst, true, now);
                {
                    let mut s = lock(&self.stats);
                    let e = s.entry(c.id()).or_default();
                    e.packets += 1;
                    e.bytes += frame.len() as u64;
                }
                let advance = advance.filter(|_| packet::tcp_checksum_ok(vnet, &ip));
                let sent = if peer.node == self.node {
                    self.deliver(peer, &c, vnet, frame)
                } else {
                    self.send_tunnel(topo, peer, &c, out)
                };
                self.commit(sent, advance);
            }
            Verdict::Drop(r, c) => {
                if let Some(c) = &c {
                    lock(&self.stats).entry(c.id()).or_default().drops += 1;
                }
                self.report(r, Some(a), Some(peer), c.as_ref(), ip.proto(), src, dst);
            }
        }
    }

    /// Decides on a packet (see [`policy::decide`]) and reports the flows
    /// the table evicted to make room, if it had to.
    fn decide(
        &self,
        topo: &Topology,
        src: &Appliance,
        dst: &Appliance,
        proto: u8,
        t: &packet::Transport,
        now: Instant,
    ) -> Verdict {
        let (verdict, evicted) = {
            let mut ct = lock(&self.ct);
            let v = policy::decide(topo, &mut ct, src, dst, proto, t, now);
            (v, ct.take_evicted())
        };
        for ev in evicted {
            self.report_evicted(ev);
        }
        verdict
    }

    /// Commits an `http` check's advance once its segment was `sent` (see
    /// [`policy::Advance`]).
    fn commit(&self, sent: bool, advance: Option<policy::Advance>) {
        if let (true, Some(a)) = (sent, advance) {
            policy::commit(&mut lock(&self.ct), a);
        }
    }

    fn report_evicted(&self, ev: Evicted) {
        let Evicted { key, conn } = ev;
        let mut e =
            SecurityEvent::new(&self.node, Reason::FlowEvicted, key.proto, key.src, key.dst);
        e.app = Some(conn.app.clone());
        e.src_appliance = Some(conn.from.appliance);
        e.src_terminal = Some(conn.from.terminal);
        e.dst_appliance = Some(conn.to.appliance);
        e.dst_terminal = Some(conn.to.terminal);
        self.emit(e);
    }

    /// Writes a frame to local appliance `dst`; whether it was written.
    fn deliver(&self, dst: &Appliance, c: &Connection, vnet: &[u8], frame: &[u8]) -> bool {
        let nic = self
            .nics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(dst.app.clone(), dst.name.clone()))
            .cloned();
        let Some(h) = nic else { return false };
        if !self.admit_bw(dst, true, frame.len(), Instant::now()) {
            self.count_shaped(c);
            return false;
        }
        let mut macs = [0u8; 12];
        packet::set_macs(&mut macs, GATEWAY_MAC.0, dst.mac.0);
        if h.nic.send_parts(vnet, &[&macs, &frame[12..]]).is_err() {
            lock(&self.stats).entry(c.id()).or_default().drops += 1;
            return false;
        }
        true
    }

    /// Seals the frame in `out` and sends it to the node of appliance
    /// `dst`; whether it was sent.
    fn send_tunnel(
        &self,
        topo: &Topology,
        dst: &Appliance,
        c: &Connection,
        out: &mut Outbound,
    ) -> bool {
        let (Some(node), Some(key), Some(seq)) = (
            topo.nodes.get(&dst.node),
            topo.apps.get(&dst.app).and_then(|a| a.key),
            self.seq.next(),
        ) else {
            lock(&self.stats).entry(c.id()).or_default().drops += 1;
            return false;
        };
        let h = Header {
            app: model::app_id(&dst.app),
            sender: self.node_id,
            seq,
        };
        let to = SocketAddrV4::new(node.addr, node.port);
        // The sequence number tells a sender's datagrams apart, so it
        // numbers their pieces too.
        if udp::send_datagram(&self.udp, to, out.seal(&key, h), h.seq as u32).is_ok() {
            self.tunnel_tx.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            lock(&self.stats).entry(c.id()).or_default().drops += 1;
            false
        }
    }

    /// Handles the tunnel datagram in `buf[..len]` from `from`; `buf` has
    /// room to open it in place (see [`tunnel::open`]).
    fn on_tunnel_datagram(&self, buf: &mut [u8], len: usize, from: SocketAddrV4) {
        let topo = self.topo();
        let outer = (*from.ip(), from.port());
        let me = (self.local_addr, model::TUNNEL_PORT);
        let forged = |app: Option<&str>, e: TunnelError| {
            tracing::debug!("tunnel packet from {from}: {e}");
            let mut ev =
                SecurityEvent::new(&self.node, Reason::ForgedTunnelPacket, PROTO_UDP, outer, me);
            ev.app = app.map(String::from);
            self.emit(ev);
        };
        let h = match tunnel::peek(&buf[..len]) {
            Ok(h) => h,
            Err(e) => return forged(None, e),
        };
        let Some(app) = topo.app_by_id.get(&h.app) else {
            return forged(None, TunnelError::UnknownApp(h.app));
        };
        let Some(key) = topo.apps.get(app).and_then(|a| a.key) else {
            return forged(Some(app), TunnelError::UnknownApp(h.app));
        };
        let sender = topo
            .node_by_id
            .get(&h.sender)
            .and_then(|n| topo.nodes.get(n))
            .filter(|n| n.addr == *from.ip());
        let Some(sender) = sender else {
            return forged(Some(app), TunnelError::UnknownSender(h.sender));
        };
        let (vnet, frame) = match tunnel::open(&key, buf, len) {
            Ok(body) => body.split_at(tunnel::VNET),
            Err(e) => return forged(Some(app), e),
        };
        if !lock(&self.windows).accept(&h) {
            let mut ev = SecurityEvent::new(
                &self.node,
                Reason::ReplayedTunnelPacket,
                PROTO_UDP,
                outer,
                me,
            );
            ev.app = Some(app.clone());
            return self.emit(ev);
        }
        self.tunnel_rx.fetch_add(1, Ordering::Relaxed);
        let Ok(eth) = Eth::parse(frame) else { return };
        let Ok(ip) = Ipv4::parse(eth.payload()) else {
            return;
        };
        let Ok(t) = Transport::parse(&ip) else { return };
        let (src, dst) = ((ip.src(), t.sport), (ip.dst(), t.dport));
        let Some(sa) = topo.at(app, ip.src()).filter(|a| a.node == sender.name) else {
            let mut ev = SecurityEvent::new(&self.node, Reason::SpoofedIp, ip.proto(), src, dst);
            ev.app = Some(app.clone());
            return self.emit(ev);
        };
        // A frame for an appliance that is not (or no longer) here: a
        // sender with an older view of a move; dropped without a report.
        let Some(da) = topo.at(app, ip.dst()).filter(|a| a.node == self.node) else {
            return;
        };
        let now = Instant::now();
        // The conntrack lock is released before the verdict is acted on.
        match self.decide(&topo, sa, da, ip.proto(), &t, now) {
            Verdict::Forward(c, advance) => {
                self.track_rtt(app, ip.proto(), &t, src, dst, false, now);
                let advance = advance.filter(|_| packet::tcp_checksum_ok(vnet, &ip));
                let sent = self.deliver(da, &c, vnet, frame);
                self.commit(sent, advance);
            }
            Verdict::Drop(r, c) => {
                if let Some(c) = &c {
                    lock(&self.stats).entry(c.id()).or_default().drops += 1;
                }
                self.report(r, Some(sa), Some(da), c.as_ref(), ip.proto(), src, dst);
            }
        }
    }

    /// Whether appliance `a` may send (`ingress` false) or receive
    /// `bytes` more now under its `bw.max` (see [`crate::bandwidth`]).
    fn admit_bw(&self, a: &Appliance, ingress: bool, bytes: usize, now: Instant) -> bool {
        let Some(max) = a.bw.max else { return true };
        let mut b = lock(&self.buckets);
        let k = (a.app.clone(), a.name.clone(), ingress);
        let bucket = b.entry(k).or_insert_with(|| TokenBucket::new(max, now));
        if bucket.rate() != max {
            *bucket = TokenBucket::new(max, now);
        }
        bucket.admit(bytes, now)
    }

    fn count_shaped(&self, c: &Connection) {
        let mut s = lock(&self.stats);
        let e = s.entry(c.id()).or_default();
        e.drops += 1;
        e.shaped += 1;
    }

    /// Round trips of new TCP flows: a SYN leaving a local TAP starts the
    /// clock, its SYN/ACK coming back (from the tunnel, or from a local
    /// TAP when both ends are here) stops it.
    #[allow(clippy::too_many_arguments)]
    fn track_rtt(
        &self,
        app: &str,
        proto: u8,
        t: &Transport,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        from_tap: bool,
        now: Instant,
    ) {
        if proto != PROTO_TCP || t.flags & TCP_SYN == 0 {
            return;
        }
        let key = FlowKey {
            app: model::app_id(app),
            proto,
            src,
            dst,
        };
        if t.flags & TCP_ACK == 0 {
            if from_tap {
                lock(&self.ct).syn_sent(&key, now);
            }
        } else {
            // One lock at a time: `stats()` takes them in the other order.
            let sample = lock(&self.ct).syn_ack_seen(&key, now);
            if let Some((c, rtt)) = sample {
                lock(&self.stats).entry(c.id()).or_default().add_rtt(rtt);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        r: Reason,
        src: Option<&Appliance>,
        dst: Option<&Appliance>,
        c: Option<&Connection>,
        proto: u8,
        s: (Ipv4Addr, u16),
        d: (Ipv4Addr, u16),
    ) {
        let mut ev = SecurityEvent::new(&self.node, r, proto, s, d);
        ev.app = src.or(dst).map(|a| a.app.clone());
        ev.src_appliance = src.map(|a| a.name.clone());
        ev.dst_appliance = dst.map(|a| a.name.clone());
        if let (Some(c), Some(sa)) = (c, src) {
            if c.from.appliance == sa.name {
                ev.src_terminal = Some(c.from.terminal.clone());
                ev.dst_terminal = Some(c.to.terminal.clone());
            } else {
                ev.src_terminal = Some(c.to.terminal.clone());
                ev.dst_terminal = Some(c.from.terminal.clone());
            }
        }
        self.emit(ev);
    }

    fn emit(&self, ev: SecurityEvent) {
        if let Some(ev) = lock(&self.limiter).admit(ev) {
            tracing::warn!(
                "drop: {} {:?}/{:?} {}:{} -> {}:{} proto {}",
                ev.reason.as_str(),
                ev.app,
                ev.src_appliance,
                ev.src_ip,
                ev.src_port,
                ev.dst_ip,
                ev.dst_port,
                ev.proto
            );
            let _ = self.events.send(ev);
        }
    }

    /// Receives tunnel datagrams until the process ends, in batches.
    pub fn tunnel_receiver(self: Arc<Self>) {
        let mut rx = Receiver::default();
        loop {
            if self.receive(&mut rx) == 0 {
                let mut p = libc::pollfd {
                    fd: self.udp.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1000) };
            }
        }
    }

    /// Receives and handles one batch of what is queued on the tunnel
    /// socket, without waiting; how many messages.
    fn receive(&self, rx: &mut Receiver) -> usize {
        let n = rx.batch.recv(&self.udp);
        for i in 0..n {
            match rx.batch.get(i) {
                (Message::Whole { buf, len }, from) => self.on_tunnel_datagram(buf, len, from),
                (Message::Parts(parts), from) => {
                    for d in parts {
                        self.on_tunnel_part(d, from, &mut rx.reassembler, &mut rx.spare);
                    }
                }
            }
        }
        n
    }

    /// Handles one datagram, or piece of one, from `from`; `spare` is a
    /// buffer to open a datagram in.
    fn on_tunnel_part(
        &self,
        d: &[u8],
        from: SocketAddrV4,
        reassembler: &mut pieces::Reassembler,
        spare: &mut Vec<u8>,
    ) {
        let mut open_copy = |d: &[u8]| {
            spare.clear();
            spare.extend_from_slice(d);
            spare.resize(tunnel::open_room(d.len()), 0);
            self.on_tunnel_datagram(spare, d.len(), from)
        };
        if !d.starts_with(pieces::MAGIC) {
            return open_copy(d);
        }
        match reassembler.push(from, d, Instant::now()) {
            Ok(Some(mut whole)) => {
                let len = whole.len();
                whole.resize(tunnel::open_room(len), 0);
                self.on_tunnel_datagram(&mut whole, len, from);
                reassembler.recycle(whole);
            }
            Ok(None) => {}
            // Reported like any datagram that is no tunnel packet.
            Err(_) => open_copy(d),
        }
    }

    /// Forgets idle flows.
    pub fn expire(&self) {
        lock(&self.ct).expire(Instant::now());
    }

    /// This node's statistics now.
    pub fn stats(&self) -> NodeStats {
        let flows = lock(&self.ct).len() as u64;
        let conns = lock(&self.stats).clone();
        let l = lock(&self.limiter);
        NodeStats {
            node: self.node.clone(),
            conns,
            drops: l
                .counts()
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), *n))
                .collect(),
            suppressed: l.suppressed_total(),
            tunnel_tx: self.tunnel_tx.load(Ordering::Relaxed),
            tunnel_rx: self.tunnel_rx.load(Ordering::Relaxed),
            flows,
        }
    }
}

/// What the tunnel receiver keeps between batches.
#[derive(Default)]
struct Receiver {
    batch: udp::RecvBatch,
    reassembler: pieces::Reassembler,
    /// A buffer to open datagrams that do not arrive whole in.
    spare: Vec<u8>,
}

/// Binds the tunnel socket (see [`udp::bind`]).
pub fn bind_tunnel(port: u16) -> std::io::Result<UdpSocket> {
    udp::bind(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Application, NodeRecord};
    use crate::topology::AppView;

    const KEY: [u8; 32] = [5; 32];

    /// An engine on node `here` that knows application `shop` and node
    /// `there`, both nodes on the loopback; its tunnel address and events.
    fn engine() -> (
        Arc<Engine>,
        SocketAddrV4,
        tokio::sync::mpsc::UnboundedReceiver<SecurityEvent>,
    ) {
        let sock = udp::bind(0).unwrap();
        let at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, sock.local_addr().unwrap().port());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let seq = SeqSource::start(1, None);
        seq.reserved(u64::MAX);
        let e = Engine::new(
            "here",
            Ipv4Addr::LOCALHOST,
            Path::new("/nonexistent"),
            sock,
            seq,
            tx,
        );
        let mut t = Topology::default();
        let app = Application {
            name: "shop".into(),
            range: "10.200.1.0/24".parse().unwrap(),
        };
        t.apps.insert(
            "shop".into(),
            AppView {
                app,
                key: Some(KEY),
            },
        );
        t.app_by_id.insert(model::app_id("shop"), "shop".into());
        for (name, port) in [("here", at.port()), ("there", 1)] {
            let n = NodeRecord {
                name: name.into(),
                addr: Ipv4Addr::LOCALHOST,
                port,
            };
            t.node_by_id.insert(model::node_id(name), name.into());
            t.nodes.insert(name.into(), n);
        }
        e.install(t);
        (e, at, rx)
    }

    /// A sealed datagram from `there` of a 20000-byte body.
    fn sealed(seq: u64) -> Vec<u8> {
        let mut out = Outbound::default();
        out.room()[..20_000].fill(0x5a);
        out.set_len(20_000);
        let h = Header {
            app: model::app_id("shop"),
            sender: model::node_id("there"),
            seq,
        };
        out.seal(&KEY, h).to_vec()
    }

    /// Sends `d` as pieces and has the engine take one batch.
    fn deliver_one(e: &Engine, to: SocketAddrV4, d: &[u8]) {
        let tx = udp::bind(0).unwrap();
        udp::send_datagram(&tx, to, d, 1).unwrap();
        let mut rx = Receiver::default();
        let end = Instant::now() + Duration::from_secs(1);
        while e.receive(&mut rx) == 0 {
            assert!(Instant::now() < end, "nothing received");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_tampered_piece_fails_the_whole_datagram_and_nothing_gets_through() {
        let (e, at, mut events) = engine();
        let mut forged = sealed(100);
        // One byte of the frame, in piece 8 of 14.
        forged[8 * pieces::PACKET] ^= 1;
        deliver_one(&e, at, &forged);
        assert_eq!(e.stats().tunnel_rx, 0, "a forged datagram got through");
        let ev = events.try_recv().expect("the forgery is reported");
        assert_eq!(ev.reason, Reason::ForgedTunnelPacket);
        assert_eq!(ev.app.as_deref(), Some("shop"));
        // The genuine datagram passes (and then finds no appliance here:
        // dropped unreported), once; again, it is a replay.
        let genuine = sealed(101);
        deliver_one(&e, at, &genuine);
        assert_eq!(e.stats().tunnel_rx, 1);
        assert!(events.try_recv().is_err());
        deliver_one(&e, at, &genuine);
        assert_eq!(e.stats().tunnel_rx, 1);
        let ev = events.try_recv().expect("the replay is reported");
        assert_eq!(ev.reason, Reason::ReplayedTunnelPacket);
    }

    /// An engine on node `here` holding VM appliance `db` (input `http`,
    /// its NIC sockets in a fresh directory) of an application whose
    /// `web`, on node `there`, may reach it; its tunnel address, events
    /// and NIC directory.
    fn http_engine() -> (
        Arc<Engine>,
        SocketAddrV4,
        tokio::sync::mpsc::UnboundedReceiver<SecurityEvent>,
        PathBuf,
    ) {
        use crate::model::AppSpec;
        use metad::KeyValue;
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lcmd-engine-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let sock = udp::bind(0).unwrap();
        let at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, sock.local_addr().unwrap().port());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let seq = SeqSource::start(1, None);
        seq.reserved(u64::MAX);
        let e = Engine::new("here", Ipv4Addr::LOCALHOST, &dir, sock, seq, tx);
        let spec = AppSpec::from_toml(
            r#"
            name = "shop"
            range = "10.200.1.0/24"
            [appliances.web]
            node = "there"
            outputs = ["db"]
            [appliances.db]
            node = "here"
            nic = "vm"
            inputs = { http = "http" }
            [[connections]]
            from = "web.db"
            to = "db.http"
            "#,
        )
        .unwrap();
        let r = spec.resolve().unwrap();
        let kv = |k: String, v: Vec<u8>| KeyValue {
            key: k.into_bytes(),
            value: v,
            create_rev: 1,
            mod_rev: 1,
            version: 1,
            lease: 0,
        };
        let mut kvs = vec![kv(
            model::app_key("shop"),
            serde_json::to_vec(&r.app).unwrap(),
        )];
        for a in &r.appliances {
            let k = model::appliance_key("shop", &a.name);
            kvs.push(kv(k, serde_json::to_vec(a).unwrap()));
        }
        for c in &r.connections {
            let k = model::connection_key("shop", c);
            kvs.push(kv(k, serde_json::to_vec(c).unwrap()));
        }
        kvs.push(kv(
            model::tunnel_key_key("shop"),
            "05".repeat(32).into_bytes(),
        ));
        for (name, port) in [("here", at.port()), ("there", 1)] {
            let n = NodeRecord {
                name: name.into(),
                addr: Ipv4Addr::LOCALHOST,
                port,
            };
            kvs.push(kv(model::node_key(name), serde_json::to_vec(&n).unwrap()));
        }
        let (t, errors) = Topology::from_kvs(&kvs);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(t.apps["shop"].key, Some(KEY));
        e.install(t);
        (e, at, rx, dir)
    }

    /// A tunnel datagram from `there` (number `n`) carrying web's TCP
    /// segment from `sport` to db:80 at `seq` with `data`, its checksum
    /// right or not.
    fn segment(n: u64, sport: u16, seq: u32, data: &[u8], good_sum: bool) -> Vec<u8> {
        let (web, db) = ([10, 200, 1, 11], [10, 200, 1, 10]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0];
        ip[2..4].copy_from_slice(&((40 + data.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&web);
        ip.extend_from_slice(&db);
        let mut tcp = [sport.to_be_bytes(), 80u16.to_be_bytes()].concat();
        tcp.extend_from_slice(&seq.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 1, 0x50, TCP_ACK, 0xff, 0xff, 0, 0, 0, 0]);
        tcp.extend_from_slice(data);
        let mut pseudo = [&web[..], &db[..], &[0, PROTO_TCP]].concat();
        pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
        let sum = packet::checksum(&[&pseudo[..], &tcp].concat()) ^ !good_sum as u16;
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        let mut frame = [GATEWAY_MAC.0, [2; 6]].concat();
        frame.extend_from_slice(&ETH_IPV4.to_be_bytes());
        let frame = [frame, ip, tcp].concat();
        let mut out = Outbound::default();
        out.room()[..VNET_HDR + frame.len()]
            .copy_from_slice(&[&[0; VNET_HDR][..], &frame].concat());
        out.set_len(VNET_HDR + frame.len());
        let h = Header {
            app: model::app_id("shop"),
            sender: model::node_id("there"),
            seq: n,
        };
        out.seal(&KEY, h).to_vec()
    }

    #[test]
    fn http_bytes_count_as_checked_only_once_delivered_with_a_good_checksum() {
        let (e, at, mut events, dir) = http_engine();
        let ip_of = |name| e.topo().appliance("shop", name).unwrap().ip;
        assert_eq!(
            (ip_of("web"), ip_of("db")),
            (Ipv4Addr::new(10, 200, 1, 11), Ipv4Addr::new(10, 200, 1, 10))
        );
        let get = b"GET / HTTP/1.1\r\n\r\n";
        let junk = b"SSH-2.0-x\r\n";
        let not_http = |events: &mut tokio::sync::mpsc::UnboundedReceiver<SecurityEvent>| {
            std::iter::from_fn(|| events.try_recv().ok()).any(|ev| ev.reason == Reason::NotHttp)
        };
        // No guest bound yet: the request passes the check but is not
        // delivered, so other bytes in its place are checked.
        deliver_one(&e, at, &segment(1, 40000, 1000, get, true));
        assert!(!not_http(&mut events));
        deliver_one(&e, at, &segment(2, 40000, 1000, junk, true));
        assert!(
            not_http(&mut events),
            "unchecked bytes passed where undelivered ones were"
        );
        // Another flow, with the guest there: delivered with a bad
        // checksum (its stack drops it) does not count either.
        let guest =
            std::os::unix::net::UnixDatagram::bind(crate::vmnic::guest_socket(&dir, "shop", "db"))
                .unwrap();
        guest.set_nonblocking(true).unwrap();
        deliver_one(&e, at, &segment(3, 40001, 5000, get, false));
        assert!(guest.recv(&mut [0; 2048]).is_ok(), "not delivered");
        deliver_one(&e, at, &segment(4, 40001, 5000, junk, true));
        assert!(
            not_http(&mut events),
            "unchecked bytes passed where a bad checksum was"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
