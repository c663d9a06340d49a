//! The answers lcmd gives an appliance itself, so that no appliance ever
//! needs a physical address: ARP (every other address of its range is
//! behind lcmd's gateway MAC) and DNS (a terminal name resolves to the
//! peer at the other end of that terminal's connection).

use crate::model::{Range, GATEWAY_MAC};
use crate::packet::Arp;
use std::net::Ipv4Addr;

/// The ARP reply to `req` from an appliance at `own` in `range`, if lcmd
/// should answer: a request for any other host address of the range gets
/// the gateway MAC (lcmd routes; whether traffic may then flow is decided
/// per packet). Requests for the appliance's own address (duplicate
/// address detection) and for addresses outside the range get none.
pub fn arp_reply(req: &Arp, own: Ipv4Addr, range: &Range) -> Option<Vec<u8>> {
    if req.op != 1 || req.tpa == own || !range.contains(req.tpa) || req.tpa == range.net {
        return None;
    }
    let reply = Arp {
        op: 2,
        sha: GATEWAY_MAC.0,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
    };
    Some(reply.to_frame(req.sha))
}

/// A parsed DNS question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Query id.
    pub id: u16,
    /// Flags of the query (RD is echoed).
    pub flags: u16,
    /// The name, lower case, without the trailing dot.
    pub name: String,
    /// Query type (1: A).
    pub qtype: u16,
    /// End of the question section in the message.
    pub end: usize,
}

/// Parses the first question of a DNS query; `None` if it is not one.
pub fn parse_query(m: &[u8]) -> Option<Question> {
    if m.len() < 12 {
        return None;
    }
    let flags = u16::from_be_bytes([m[2], m[3]]);
    if flags & 0x8000 != 0 || u16::from_be_bytes([m[4], m[5]]) == 0 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let l = *m.get(i)? as usize;
        i += 1;
        if l == 0 {
            break;
        }
        if l > 63 || labels.len() > 16 {
            return None;
        }
        labels.push(String::from_utf8_lossy(m.get(i..i + l)?).to_ascii_lowercase());
        i += l;
    }
    let qtype = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
    m.get(i + 3)?;
    Some(Question {
        id: u16::from_be_bytes([m[0], m[1]]),
        flags,
        name: labels.join("."),
        qtype,
        end: i + 4,
    })
}

/// The answer to `q` (whose message is `m`): an A record for `addr`,
/// NODATA for other types of a known name, NXDOMAIN otherwise.
pub fn dns_answer(m: &[u8], q: &Question, addr: Option<Ipv4Addr>) -> Vec<u8> {
    let rcode = if addr.is_some() { 0 } else { 3 };
    let answer = addr.filter(|_| q.qtype == 1);
    let mut r = Vec::with_capacity(q.end + 16);
    r.extend_from_slice(&q.id.to_be_bytes());
    let flags = 0x8000 | 0x0400 | (q.flags & 0x0100) | 0x0080 | rcode;
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(answer.is_some() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&m[12..q.end]);
    if let Some(a) = answer {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        r.extend_from_slice(&5u32.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&a.octets());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    #[test]
    fn terminal_names_resolve() {
        let m = query("DB");
        let q = parse_query(&m).unwrap();
        assert_eq!(q.name, "db");
        let a = dns_answer(&m, &q, Some(Ipv4Addr::new(10, 200, 1, 20)));
        assert_eq!(&a[a.len() - 4..], &[10, 200, 1, 20]);
        assert_eq!(a[3] & 0xf, 0);
        let nx = dns_answer(&m, &q, None);
        assert_eq!(nx[3] & 0xf, 3);
    }

    #[test]
    fn arp_is_answered_inside_the_range_only() {
        let range: Range = "10.200.1.0/24".parse().unwrap();
        let own = Ipv4Addr::new(10, 200, 1, 10);
        let req = Arp {
            op: 1,
            sha: [2; 6],
            spa: own,
            tha: [0; 6],
            tpa: Ipv4Addr::new(10, 200, 1, 20),
        };
        let f = arp_reply(&req, own, &range).unwrap();
        let a = Arp::parse(&f[14..]).unwrap();
        assert_eq!((a.op, a.sha, a.spa), (2, GATEWAY_MAC.0, req.tpa));
        assert!(arp_reply(&Arp { tpa: own, ..req }, own, &range).is_none());
        assert!(arp_reply(
            &Arp {
                tpa: Ipv4Addr::new(8, 8, 8, 8),
                ..req
            },
            own,
            &range
        )
        .is_none());
    }
}
