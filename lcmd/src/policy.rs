//! Enforcement: whether one IPv4 packet from one appliance to another
//! belongs to a declared connection (in its direction, with its protocol)
//! or to a flow such a connection opened; and if not, why not.

use crate::conntrack::{Conntrack, Dir, Entry, FlowKey, HttpState};
use crate::events::Reason;
use crate::http::{Check, RequestStream};
use crate::model::{self, Appliance, Connection, Protocol};
use crate::packet::{Transport, PROTO_TCP, TCP_ACK, TCP_SYN};
use crate::topology::Topology;
use std::time::Instant;

/// The decision on one packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Deliver it; it belongs to this connection. On an `http` connection,
    /// with what its check makes of the segment's bytes: to be committed
    /// ([`commit`]) once it is on its way, and only then.
    Forward(Connection, Option<Advance>),
    /// Drop it, for this reason; `conn` is the connection it was closest
    /// to, when there is one (for terminals in the event and statistics).
    Drop(Reason, Option<Connection>),
}

/// An `http` check's state after a segment that passed it, not yet
/// committed. Why not at once: bytes count as checked only once the
/// server can have them. A segment dropped after the decision (by a
/// bandwidth limit, a full socket) or by its receiver (a bad checksum)
/// never reached the server, and other bytes may come in its place; had
/// the check moved past them, those would pass unchecked.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    key: FlowKey,
    /// Where the check stood before the segment ([`position`]).
    from: Option<u32>,
    to: HttpState,
}

/// Where a check stands, to tell whether it moved since a decision.
fn position(h: &HttpState) -> Option<u32> {
    match h {
        HttpState::Checking(s) => Some(s.next()),
        HttpState::NotChecked | HttpState::Failed => None,
    }
}

/// Commits the advance of a segment that was forwarded, unless its flow's
/// check moved since the decision (another segment committed first) or
/// the flow is gone.
pub fn commit(ct: &mut Conntrack, a: Advance) {
    let unmoved = match ct.lookup(&a.key) {
        Some((Dir::Orig, e)) => e.http != HttpState::NotChecked && position(&e.http) == a.from,
        _ => false,
    };
    if unmoved {
        ct.set_http(&a.key, a.to);
    }
}

/// Checks the client's segment `t` of flow `key` against its check `h`
/// without changing it: the advance, if the segment moves it, or the
/// reason to drop it. A new SYN starts a new request stream (the old
/// flow's state does not carry over: its checked bytes would be taken as
/// seen in the new one).
fn check(key: &FlowKey, h: &HttpState, t: &Transport) -> Result<Option<Advance>, Reason> {
    let syn = t.flags & TCP_SYN != 0 && t.flags & TCP_ACK == 0;
    let mut s = match h {
        HttpState::NotChecked => return Ok(None),
        _ if syn => Box::new(RequestStream::new(t.seq.wrapping_add(1))),
        HttpState::Failed => return Err(Reason::NotHttp),
        // No bytes to check (a pure ACK, a FIN).
        HttpState::Checking(_) if t.data.is_empty() => return Ok(None),
        HttpState::Checking(s) => s.clone(),
    };
    let advance = |to| Advance {
        key: key.clone(),
        from: position(h),
        to,
    };
    match s.feed(t.seq, t.data) {
        Check::Pass if !syn && position(h) == Some(s.next()) => Ok(None),
        Check::Pass => Ok(Some(advance(HttpState::Checking(s)))),
        Check::Fail(_) => Err(Reason::NotHttp),
        Check::Unordered => Err(Reason::HttpUnordered),
    }
}

/// Methods accepted at the start of an HTTP request.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Whether `data` starts with a well-formed HTTP/1.x request line
/// (`METHOD SP TARGET SP HTTP/1.x CRLF`).
pub fn is_http_request(data: &[u8]) -> bool {
    let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let Ok(line) = std::str::from_utf8(&data[..end]) else {
        return false;
    };
    let mut parts = line.split(' ');
    let (Some(m), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    METHODS.contains(&m)
        && !target.is_empty()
        && target.bytes().all(|b| b.is_ascii_graphic())
        && (version == "HTTP/1.1" || version == "HTTP/1.0")
}

/// Decides on a packet from `src` to `dst` (both of the same application),
/// tracking the flows it opens.
pub fn decide(
    topo: &Topology,
    ct: &mut Conntrack,
    src: &Appliance,
    dst: &Appliance,
    proto: u8,
    t: &Transport,
    now: Instant,
) -> Verdict {
    let key = FlowKey {
        app: model::app_id(&src.app),
        proto,
        src: (src.ip, t.sport),
        dst: (dst.ip, t.dport),
    };
    if let Some((dir, e)) = ct.lookup(&key) {
        if topo.has_connection(&e.conn) {
            e.last = now;
            let conn = e.conn.clone();
            if dir == Dir::Reply {
                return Verdict::Forward(conn, None);
            }
            return match check(&key, &e.http, t) {
                Ok(advance) => Verdict::Forward(conn, advance),
                Err(r) => {
                    if r == Reason::NotHttp {
                        ct.set_http(&key, HttpState::Failed);
                    }
                    Verdict::Drop(r, Some(conn))
                }
            };
        }
        ct.remove(&key);
    }
    let conns = topo.connections(&src.app);
    let mut forward = conns
        .iter()
        .filter(|c| c.from.appliance == src.name && c.to.appliance == dst.name)
        .peekable();
    if forward.peek().is_none() {
        let backward = conns
            .iter()
            .find(|c| c.from.appliance == dst.name && c.to.appliance == src.name);
        return match backward {
            Some(c) => Verdict::Drop(Reason::InputSideOpen, Some(c.clone())),
            None => Verdict::Drop(Reason::UndeclaredPeer, None),
        };
    }
    let candidates: Vec<&Connection> = forward.collect();
    let Some(c) = candidates
        .iter()
        .find(|c| c.protocol.ip_proto_port() == (proto, t.dport))
    else {
        return Verdict::Drop(Reason::WrongPort, Some(candidates[0].clone()));
    };
    let syn = proto == PROTO_TCP && t.flags & TCP_SYN != 0 && t.flags & TCP_ACK == 0;
    // A TCP segment without SYN from the output side is picked up as a
    // flow in progress (it may be one whose appliance just moved here, or
    // one idle past the table's memory); the server drops it unless it
    // knows the connection. On an `http` connection its check starts with
    // that segment, as at a request's start: a flow caught mid-request
    // ends, rather than one left unchecked.
    let http = match c.protocol {
        Protocol::Http => {
            let first = if syn { t.seq.wrapping_add(1) } else { t.seq };
            HttpState::Checking(Box::new(RequestStream::new(first)))
        }
        _ => HttpState::NotChecked,
    };
    let conn = (*c).clone();
    let e = Entry {
        conn: conn.clone(),
        http,
        last: now,
        syn_at: None,
    };
    // A SYN's fresh stream is the one just made.
    let t_new = Transport {
        flags: t.flags & !TCP_SYN,
        ..*t
    };
    let advance = match check(&key, &e.http, &t_new) {
        Ok(a) => a,
        Err(_) => return Verdict::Drop(Reason::NotHttp, Some(conn)),
    };
    ct.insert(key, e);
    Verdict::Forward(conn, advance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AppSpec;
    use metad::KeyValue;

    fn topo() -> Topology {
        let spec = AppSpec::from_toml(
            r#"
            name = "shop"
            range = "10.200.1.0/24"
            [appliances.web]
            node = "node1"
            outputs = ["db"]
            [appliances.db]
            node = "node2"
            inputs = { http = "http" }
            [appliances.other]
            node = "node2"
            inputs = { x = "tcp/80" }
            [[connections]]
            from = "web.db"
            to = "db.http"
            "#,
        )
        .unwrap();
        let r = spec.resolve().unwrap();
        let mut kvs = vec![];
        let kv = |k: String, v: Vec<u8>| KeyValue {
            key: k.into_bytes(),
            value: v,
            create_rev: 1,
            mod_rev: 1,
            version: 1,
            lease: 0,
        };
        kvs.push(kv(
            model::app_key("shop"),
            serde_json::to_vec(&r.app).unwrap(),
        ));
        for a in &r.appliances {
            kvs.push(kv(
                model::appliance_key("shop", &a.name),
                serde_json::to_vec(a).unwrap(),
            ));
        }
        for c in &r.connections {
            kvs.push(kv(
                model::connection_key("shop", c),
                serde_json::to_vec(c).unwrap(),
            ));
        }
        Topology::from_kvs(&kvs).0
    }

    /// A TCP segment; a SYN's sequence number is one before the data's.
    fn tcp(sport: u16, dport: u16, flags: u8, data: &[u8]) -> Transport<'_> {
        Transport {
            sport,
            dport,
            flags,
            seq: if flags & TCP_SYN != 0 { u32::MAX } else { 0 },
            data,
        }
    }

    #[test]
    fn declared_flows_pass_and_the_rest_is_dropped_with_its_reason() {
        let t = topo();
        let mut ct = Conntrack::default();
        let now = Instant::now();
        let web = t.appliance("shop", "web").unwrap().clone();
        let db = t.appliance("shop", "db").unwrap().clone();
        let other = t.appliance("shop", "other").unwrap().clone();
        assert_eq!(t.resolve(&web, "db"), Some(db.ip));
        assert!(matches!(
            decide(&t, &mut ct, &web, &db, 6, &tcp(5000, 80, TCP_SYN, b""), now),
            Verdict::Forward(..)
        ));
        assert!(matches!(
            decide(
                &t,
                &mut ct,
                &db,
                &web,
                6,
                &tcp(80, 5000, TCP_SYN | TCP_ACK, b""),
                now
            ),
            Verdict::Forward(..)
        ));
        let get = tcp(5000, 80, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n");
        let Verdict::Forward(_, Some(a)) = decide(&t, &mut ct, &web, &db, 6, &get, now) else {
            panic!("a request did not pass");
        };
        commit(&mut ct, a);
        // The flow's next bytes are checked too: a second request that is
        // not HTTP kills it, and a segment past the checked bytes is refused.
        let next = |seq, data| Transport {
            seq,
            ..tcp(5000, 80, TCP_ACK, data)
        };
        assert!(matches!(
            decide(&t, &mut ct, &web, &db, 6, &next(40, b"x"), now),
            Verdict::Drop(Reason::HttpUnordered, Some(_))
        ));
        assert!(matches!(
            decide(&t, &mut ct, &web, &db, 6, &next(18, b"SSH-2.0-x\r\n"), now),
            Verdict::Drop(Reason::NotHttp, Some(_))
        ));
        assert_eq!(
            decide(
                &t,
                &mut ct,
                &web,
                &other,
                6,
                &tcp(5001, 80, TCP_SYN, b""),
                now
            ),
            Verdict::Drop(Reason::UndeclaredPeer, None)
        );
        assert!(matches!(
            decide(&t, &mut ct, &web, &db, 6, &tcp(5002, 81, TCP_SYN, b""), now),
            Verdict::Drop(Reason::WrongPort, Some(_))
        ));
        assert!(matches!(
            decide(&t, &mut ct, &db, &web, 6, &tcp(5003, 80, TCP_SYN, b""), now),
            Verdict::Drop(Reason::InputSideOpen, Some(_))
        ));
        assert!(matches!(
            decide(&t, &mut ct, &web, &db, 6, &tcp(5004, 80, TCP_SYN, b""), now),
            Verdict::Forward(..)
        ));
        assert!(matches!(
            decide(
                &t,
                &mut ct,
                &web,
                &db,
                6,
                &tcp(5004, 80, TCP_ACK, b"HELLO\r\n"),
                now
            ),
            Verdict::Drop(Reason::NotHttp, Some(_))
        ));
        assert!(matches!(
            decide(&t, &mut ct, &web, &db, 17, &tcp(5005, 80, 0, b""), now),
            Verdict::Drop(Reason::WrongPort, Some(_))
        ));
    }

    /// The client's segment of flow `sport` at `seq`.
    fn at(sport: u16, seq: u32, data: &[u8]) -> Transport<'_> {
        Transport {
            seq,
            ..tcp(sport, 80, TCP_ACK, data)
        }
    }

    #[test]
    fn a_new_syn_on_a_flow_starts_a_fresh_request_stream() {
        let t = topo();
        let mut ct = Conntrack::default();
        let now = Instant::now();
        let web = t.appliance("shop", "web").unwrap().clone();
        let db = t.appliance("shop", "db").unwrap().clone();
        let get = b"GET / HTTP/1.1\r\n\r\n";
        // Forwarded: their advances committed.
        let mut pass = |seg: &Transport| match decide(&t, &mut ct, &web, &db, 6, seg, now) {
            Verdict::Forward(_, a) => a.into_iter().for_each(|a| commit(&mut ct, a)),
            v => panic!("{v:?}"),
        };
        pass(&tcp(5000, 80, TCP_SYN, b""));
        pass(&at(5000, 0, get));
        // The same 4-tuple again, its first byte at 0 again: not bytes
        // the old flow's check saw.
        pass(&tcp(5000, 80, TCP_SYN, b""));
        assert!(matches!(
            decide(
                &t,
                &mut ct,
                &web,
                &db,
                6,
                &at(5000, 0, b"SSH-2.0-x\r\n"),
                now
            ),
            Verdict::Drop(Reason::NotHttp, Some(_))
        ));
    }

    #[test]
    fn bytes_count_as_checked_only_once_their_segment_is_forwarded() {
        let t = topo();
        let mut ct = Conntrack::default();
        let now = Instant::now();
        let web = t.appliance("shop", "web").unwrap().clone();
        let db = t.appliance("shop", "db").unwrap().clone();
        let get = b"GET / HTTP/1.1\r\n\r\n";
        let v = decide(&t, &mut ct, &web, &db, 6, &tcp(5000, 80, TCP_SYN, b""), now);
        assert!(matches!(v, Verdict::Forward(..)), "{v:?}");
        // Passed, then dropped on the way (shaped, a bad checksum, a full
        // socket): not committed, so other bytes at the same place are
        // checked in their own right.
        let v = decide(&t, &mut ct, &web, &db, 6, &at(5000, 0, get), now);
        assert!(matches!(v, Verdict::Forward(..)), "{v:?}");
        assert!(matches!(
            decide(
                &t,
                &mut ct,
                &web,
                &db,
                6,
                &at(5000, 0, b"SSH-2.0-x\r\n"),
                now
            ),
            Verdict::Drop(Reason::NotHttp, Some(_))
        ));
        // Forwarded and committed, they count: the retransmission passes,
        // bytes beyond them are checked, and a stale advance (decided
        // before another was committed) is not committed over it.
        let v = decide(&t, &mut ct, &web, &db, 6, &tcp(5001, 80, TCP_SYN, b""), now);
        assert!(matches!(v, Verdict::Forward(..)), "{v:?}");
        let first =
            |ct: &mut Conntrack, data| decide(&t, ct, &web, &db, 6, &at(5001, 0, data), now);
        let Verdict::Forward(_, Some(stale)) = first(&mut ct, b"GET / HTTP/1.1\r\n") else {
            panic!("a request did not pass");
        };
        let Verdict::Forward(_, Some(a)) = first(&mut ct, get) else {
            panic!("a request did not pass");
        };
        commit(&mut ct, a);
        commit(&mut ct, stale);
        assert!(matches!(first(&mut ct, get), Verdict::Forward(_, None)));
        assert!(matches!(
            decide(
                &t,
                &mut ct,
                &web,
                &db,
                6,
                &at(5001, 18, b"SSH-2.0-x\r\n"),
                now
            ),
            Verdict::Drop(Reason::NotHttp, Some(_))
        ));
    }

    #[test]
    fn http_request_lines() {
        assert!(is_http_request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!is_http_request(b"GET /x\r\n"));
        assert!(!is_http_request(b"HELLO NOT HTTP\r\n"));
        assert!(!is_http_request(b"GET / HTTP/1.1"));
    }
}
