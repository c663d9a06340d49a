//! Every parser of what arrives from appliances or the underlay, fed
//! random bytes and every truncation and bit flip of well-formed input:
//! each answers (an error is fine), none panics.

use lcmd::http::RequestStream;
use lcmd::packet::{self, Arp, Eth, Ipv4, Transport};
use lcmd::pieces::{self, Piece, Reassembler};
use lcmd::responder;
use lcmd::tunnel::{self, Header, Outbound};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

/// A tiny deterministic PRNG (xorshift64*), so that a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Random inputs, then every truncation of each sample and, per sample,
/// a few hundred copies with random bytes changed.
fn inputs(rng: &mut Rng, samples: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..20_000)
        .map(|_| {
            let len = rng.below(200);
            rng.bytes(len)
        })
        .collect();
    for s in samples {
        out.extend((0..=s.len()).map(|n| s[..n].to_vec()));
        for _ in 0..3000 {
            let mut m = s.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            out.push(m);
        }
    }
    out
}

fn tcp_frame(data: &[u8]) -> Vec<u8> {
    let mut f = packet::udp_frame(
        [1; 6],
        [2; 6],
        (Ipv4Addr::new(10, 0, 0, 1), 1000),
        (Ipv4Addr::new(10, 0, 0, 2), 80),
        b"",
    );
    f.truncate(14 + 20);
    f[14 + 9] = packet::PROTO_TCP;
    let total = (20 + 20 + data.len()) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    let mut tcp = [0u8; 20];
    tcp[12] = 5 << 4;
    tcp[13] = packet::TCP_ACK;
    f.extend_from_slice(&tcp);
    f.extend_from_slice(data);
    f
}

fn dns_query() -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["db", "shop"] {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

#[test]
fn frame_parsers_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let arp = Arp {
        op: 1,
        sha: [2; 6],
        spa: Ipv4Addr::new(10, 0, 0, 1),
        tha: [0; 6],
        tpa: Ipv4Addr::new(10, 0, 0, 2),
    }
    .to_frame([0xff; 6]);
    let udp = packet::udp_frame(
        [1; 6],
        [2; 6],
        (Ipv4Addr::new(10, 0, 0, 1), 53),
        (Ipv4Addr::new(10, 0, 0, 2), 999),
        &dns_query(),
    );
    let tcp = tcp_frame(b"GET / HTTP/1.1\r\n\r\n");
    let vnet = [1u8, 0, 0, 0, 0, 0, 34, 0, 16, 0];
    for f in inputs(&mut rng, &[arp, udp, tcp]) {
        let Ok(eth) = Eth::parse(&f) else { continue };
        let _ = (eth.src(), eth.dst(), eth.ethertype());
        let _ = Arp::parse(eth.payload());
        let Ok(ip) = Ipv4::parse(eth.payload()) else {
            continue;
        };
        let _ = (ip.src(), ip.dst(), ip.proto(), ip.payload());
        let _ = packet::tcp_checksum_ok(&vnet, &ip);
        let _ = packet::tcp_checksum_ok(&[0; 10], &ip);
        if let Ok(t) = Transport::parse(&ip) {
            if let Some(q) = responder::parse_query(t.data) {
                let _ = responder::dns_answer(t.data, &q, Some(ip.src()));
            }
        }
    }
}

#[test]
fn dns_and_http_parsers_never_panic() {
    let mut rng = Rng(0x0bad_cafe_f00d_0001);
    for m in inputs(&mut rng, &[dns_query()]) {
        if let Some(q) = responder::parse_query(&m) {
            let _ = responder::dns_answer(&m, &q, None);
        }
    }
    let requests = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
        PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    for m in inputs(&mut rng, &[requests.to_vec()]) {
        let mut s = RequestStream::new(7);
        let mut seq = 7u32;
        for seg in m.chunks(1 + rng.below(40)) {
            let _ = s.feed(seq, seg);
            seq = seq.wrapping_add(rng.below(2 * seg.len() + 1) as u32);
        }
    }
}

#[test]
fn tunnel_and_piece_parsers_never_panic() {
    let mut rng = Rng(0x5eed_0000_0000_0042);
    let key = [3u8; 32];
    let mut out = Outbound::default();
    out.room()[..300].fill(0x42);
    out.set_len(300);
    let h = Header {
        app: 1,
        sender: 2,
        seq: 3,
    };
    let sealed = out.seal(&key, h).to_vec();
    for d in inputs(&mut rng, &[sealed]) {
        let _ = tunnel::peek(&d);
        let mut buf = d.clone();
        buf.resize(tunnel::open_room(d.len()), 0);
        let _ = tunnel::open(&key, &mut buf, d.len());
    }
    let big: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
    let ps: Vec<Vec<u8>> = pieces::plan(big.len(), 5, pieces::PACKET)
        .unwrap()
        .map(|p| {
            let end = (p.offset() + p.piece).min(p.total);
            [&p.bytes()[..], &big[p.offset()..end]].concat()
        })
        .collect();
    let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2395);
    let mut r = Reassembler::default();
    let now = Instant::now();
    for d in inputs(&mut rng, &ps) {
        let _ = r.push(from, &d, now);
        if d.len() >= pieces::HEADER {
            let _ = Piece::parse(&d[..pieces::HEADER], d.len() - pieces::HEADER);
        }
        assert!(r.held() <= 64 << 20, "held {}", r.held());
    }
    for _ in 0..2000 {
        let heads: Vec<[u8; pieces::HEADER]> = (0..rng.below(50))
            .map(|i| match ps.get(i) {
                Some(p) if rng.below(4) > 0 => p[..pieces::HEADER].try_into().unwrap(),
                _ => rng.bytes(pieces::HEADER).try_into().unwrap(),
            })
            .collect();
        let len = rng.below(70_000);
        let seg = [None, Some(pieces::PACKET), Some(rng.below(3000))][rng.below(3)];
        let _ = pieces::in_order(&heads, len, seg);
    }
}
