//! Tunnel datagrams larger than one underlay packet travel as pieces that
//! each fit in one, instead of as one UDP datagram that IP fragments.
//!
//! Why: a TAP hands lcmd whole TCP segments of up to 62 KB (TSO). Sent as
//! one datagram, each is cut by IP into fragments that the receiving
//! kernel reassembles, and that reassembly, not lcmd, was the datapath's
//! bottleneck (measured: 3,990-4,750 Mbit/s at MTU 9000, 7,842 with no
//! fragmentation at all). Pieces are made by the sending kernel from one
//! buffer with UDP GSO (`UDP_SEGMENT`), cross veths and bridges as one
//! packet, and reach the receiving socket coalesced again by UDP GRO: one
//! send and one receive per frame, and no IP reassembly anywhere.
//!
//! A piece: `magic "LCMP" | id u32 | total u32 | piece u16 | index u8 |
//! count u8 | bytes` (little-endian), where `id` numbers the sender's
//! datagrams, `total` is the datagram's length, `piece` the length of
//! every piece's bytes but the last, and piece `index` holds bytes
//! `index * piece ..`. The reassembled datagram is an ordinary tunnel
//! datagram: its MAC, checked after reassembly, covers all of it, so a
//! forged or mixed-up piece makes the whole datagram fail as forged.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// Magic at the start of every piece.
pub const MAGIC: &[u8; 4] = b"LCMP";
/// Bytes of a piece's header.
pub const HEADER: usize = 16;
/// Most pieces of one datagram (the kernel's UDP GSO limit is 64).
pub const MAX_PIECES: usize = 64;
/// The size of a piece on the wire (UDP payload): one packet of a
/// 1500-byte underlay, which every network carries; with GSO and GRO the
/// number of pieces costs almost nothing.
pub const PACKET: usize = 1500 - 20 - 8;
/// Partial datagrams kept at once; the oldest is dropped beyond.
const MAX_PARTIAL: usize = 256;
/// How long the pieces of a datagram may take to arrive.
const PARTIAL_TTL: Duration = Duration::from_millis(500);

/// The pieces of `datagram` (given as consecutive parts), each at most
/// `packet` bytes, written back to back into `out`; the length of every
/// piece but the last (the GSO segment size), or None when the datagram
/// fits in one packet and needs no pieces.
pub fn split(parts: &[&[u8]], id: u32, packet: usize, out: &mut Vec<u8>) -> Option<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total <= packet || packet <= HEADER {
        return None;
    }
    let piece = packet - HEADER;
    let count = total.div_ceil(piece);
    if count > MAX_PIECES || total > u32::MAX as usize || piece > u16::MAX as usize {
        return None;
    }
    out.clear();
    out.reserve(total + count * HEADER);
    // (part, offset in it) of the next byte to copy.
    let (mut part, mut at) = (0, 0);
    for index in 0..count {
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&(piece as u16).to_le_bytes());
        out.push(index as u8);
        out.push(count as u8);
        let mut want = piece;
        while want > 0 && part < parts.len() {
            let take = want.min(parts[part].len() - at);
            out.extend_from_slice(&parts[part][at..at + take]);
            (want, at) = (want - take, at + take);
            if at == parts[part].len() {
                (part, at) = (part + 1, 0);
            }
        }
    }
    Some(packet)
}

/// Why a piece was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// Too short, or a header that does not add up.
    #[error("malformed piece")]
    Malformed,
}

struct Partial {
    buf: Vec<u8>,
    piece: usize,
    count: usize,
    got: u64,
    born: Instant,
}

/// Reassembles datagrams from their pieces, per sender.
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<(SocketAddrV4, u32), Partial>,
    /// Buffers of delivered datagrams, handed back with
    /// [`Reassembler::recycle`], for the next ones.
    spare: Vec<Vec<u8>>,
}

impl Reassembler {
    /// Takes one piece from `from`; the whole datagram once its last
    /// piece is in.
    pub fn push(
        &mut self,
        from: SocketAddrV4,
        d: &[u8],
        now: Instant,
    ) -> Result<Option<Vec<u8>>, PieceError> {
        if d.len() < HEADER || &d[..4] != MAGIC {
            return Err(PieceError::Malformed);
        }
        let id = u32::from_le_bytes(d[4..8].try_into().expect("4 bytes"));
        let total = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes")) as usize;
        let piece = u16::from_le_bytes(d[12..14].try_into().expect("2 bytes")) as usize;
        let (index, count) = (d[14] as usize, d[15] as usize);
        let body = &d[HEADER..];
        let offset = index * piece;
        let ok = piece > 0
            && (1..=MAX_PIECES).contains(&count)
            && index < count
            && total.div_ceil(piece) == count
            && body.len() == piece.min(total.saturating_sub(offset));
        if !ok {
            return Err(PieceError::Malformed);
        }
        self.expire(now);
        let spare = &mut self.spare;
        let p = self.partial.entry((from, id)).or_insert_with(|| {
            let mut buf = spare.pop().unwrap_or_default();
            buf.resize(total, 0);
            Partial {
                buf,
                piece,
                count,
                got: 0,
                born: now,
            }
        });
        if p.buf.len() != total || p.piece != piece || p.count != count {
            // Pieces of two datagrams under one id: keep neither.
            self.partial.remove(&(from, id));
            return Err(PieceError::Malformed);
        }
        p.buf[offset..offset + body.len()].copy_from_slice(body);
        p.got |= 1 << index;
        if p.got.count_ones() as usize == p.count {
            return Ok(self.partial.remove(&(from, id)).map(|p| p.buf));
        }
        Ok(None)
    }

    /// Takes back the buffer of a datagram [`Reassembler::push`] returned.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 8 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Drops partial datagrams too old to complete, and the oldest when
    /// there are too many (lost pieces must not hold memory).
    fn expire(&mut self, now: Instant) {
        self.partial
            .retain(|_, p| now.duration_since(p.born) < PARTIAL_TTL);
        while self.partial.len() >= MAX_PARTIAL {
            let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.born)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.partial.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> SocketAddrV4 {
        "10.0.0.1:2395".parse().unwrap()
    }

    fn pieces(buf: &[u8], seg: usize) -> Vec<&[u8]> {
        buf.chunks(seg).collect()
    }

    #[test]
    fn small_datagrams_need_no_pieces() {
        let mut out = Vec::new();
        assert_eq!(split(&[b"hello", b"world"], 1, 1472, &mut out), None);
    }

    #[test]
    fn pieces_reassemble_in_any_order_and_only_once() {
        let data: Vec<u8> = (0..62_000u32).map(|i| (i * 7) as u8).collect();
        let (a, b) = data.split_at(1000);
        let mut out = Vec::new();
        let seg = split(&[a, b], 9, 1472, &mut out).unwrap();
        let ps = pieces(&out, seg);
        assert_eq!(ps.len(), 62_000usize.div_ceil(1472 - HEADER));
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut order: Vec<usize> = (0..ps.len()).rev().collect();
        order.swap(0, 3);
        let last = order.pop().unwrap();
        for i in order {
            assert_eq!(r.push(from(), ps[i], now).unwrap(), None);
        }
        assert_eq!(r.push(from(), ps[last], now).unwrap(), Some(data));
        // The same pieces again start a new datagram (the MAC's replay
        // check drops it once complete); nothing is left behind.
        assert!(r.partial.is_empty());
    }

    #[test]
    fn bad_and_stale_pieces_are_refused_or_forgotten() {
        let data = vec![1u8; 5000];
        let mut out = Vec::new();
        let seg = split(&[&data], 3, 1000, &mut out).unwrap();
        let ps = pieces(&out, seg);
        let mut r = Reassembler::default();
        let t0 = Instant::now();
        // Too short, wrong magic, an index past the count, a short body.
        assert!(r.push(from(), b"LCMP", t0).is_err());
        let mut bad = ps[0].to_vec();
        bad[0] = b'X';
        assert!(r.push(from(), &bad, t0).is_err());
        let mut bad = ps[0].to_vec();
        bad[14] = 99;
        assert!(r.push(from(), &bad, t0).is_err());
        assert!(r.push(from(), &ps[0][..100], t0).is_err());
        // A piece whose datagram never completes is forgotten.
        assert_eq!(r.push(from(), ps[0], t0).unwrap(), None);
        let later = t0 + PARTIAL_TTL * 2;
        for p in &ps[1..] {
            assert_eq!(r.push(from(), p, later).unwrap(), None);
        }
        assert_eq!(r.partial.len(), 1);
        // A piece claiming another length under the same id spoils it.
        let mut other = Vec::new();
        let s2 = split(&[&[2u8; 3000]], 3, 1000, &mut other).unwrap();
        assert!(r.push(from(), pieces(&other, s2)[0], later).is_err());
        assert!(r.partial.is_empty());
    }
}
