//! Tunnel datagrams larger than one underlay packet travel as pieces that
//! each fit in one, instead of as one UDP datagram that IP fragments.
//!
//! Why: a TAP hands lcmd whole TCP segments of up to 62 KB (TSO). Sent as
//! one datagram, each is cut by IP into fragments that the receiving
//! kernel reassembles, and that reassembly, not lcmd, was the datapath's
//! bottleneck (measured: 3,990-4,750 Mbit/s at MTU 9000, 7,842 with no
//! fragmentation at all). Pieces are made by the sending kernel from one
//! datagram with UDP GSO (`UDP_SEGMENT`), cross veths and bridges as one
//! packet, and reach the receiving socket coalesced again by UDP GRO: one
//! send and one receive per frame, and no IP reassembly anywhere.
//!
//! A piece: `magic "LCMP" | id u32 | total u32 | piece u16 | index u8 |
//! count u8 | bytes` (little-endian), where `id` numbers the sender's
//! datagrams, `total` is the datagram's length, `piece` the length of
//! every piece's bytes but the last, and piece `index` holds bytes
//! `index * piece ..`. The pieces are sent from the datagram where it lies
//! (the kernel gathers each header and its bytes), and received straight
//! into a layout that puts the headers of [`PACKET`]-sized pieces apart,
//! so that when a message is all the pieces of one datagram in order (GRO
//! hands over a GSO send as it was sent: the common case, see
//! [`in_order`]) the datagram lies whole and is checked and delivered
//! from there; anything else goes through the [`Reassembler`]. Either way
//! the result is an ordinary tunnel datagram: its MAC covers all of it,
//! so a forged or mixed-up piece makes the whole datagram fail as forged.

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

/// A piece's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// The sender's number for the datagram.
    pub id: u32,
    /// The datagram's length.
    pub total: usize,
    /// The length of every piece's bytes but the last.
    pub piece: usize,
    /// Which piece this is.
    pub index: usize,
    /// How many pieces the datagram has.
    pub count: usize,
}

impl Piece {
    /// Parses the header `h` of a piece carrying `len` bytes, and checks
    /// that it adds up.
    pub fn parse(h: &[u8], len: usize) -> Result<Piece, PieceError> {
        if h.len() < HEADER || &h[..4] != MAGIC {
            return Err(PieceError::Malformed);
        }
        let p = Piece {
            id: u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
            total: u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")) as usize,
            piece: u16::from_le_bytes(h[12..14].try_into().expect("2 bytes")) as usize,
            index: h[14] as usize,
            count: h[15] as usize,
        };
        let ok = p.piece > 0
            && (1..=MAX_PIECES).contains(&p.count)
            && p.index < p.count
            && p.total.div_ceil(p.piece) == p.count
            && len == p.piece.min(p.total.saturating_sub(p.offset()));
        if !ok {
            return Err(PieceError::Malformed);
        }
        Ok(p)
    }

    /// Where its bytes start in the datagram.
    pub fn offset(&self) -> usize {
        self.index * self.piece
    }

    /// The header on the wire.
    pub fn bytes(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..12].copy_from_slice(&(self.total as u32).to_le_bytes());
        b[12..14].copy_from_slice(&(self.piece as u16).to_le_bytes());
        b[14] = self.index as u8;
        b[15] = self.count as u8;
        b
    }
}

/// How datagram `id` of `total` bytes is cut into pieces of at most
/// `packet` bytes: the header of each (the length of its bytes is the
/// GSO segment size less [`HEADER`]); None when it fits in one packet
/// and needs no pieces.
pub fn plan(total: usize, id: u32, packet: usize) -> Option<impl Iterator<Item = Piece>> {
    if total <= packet || packet <= HEADER {
        return None;
    }
    let piece = packet - HEADER;
    let count = total.div_ceil(piece);
    if count > MAX_PIECES || total > u32::MAX as usize || piece > u16::MAX as usize {
        return None;
    }
    Some((0..count).map(move |index| Piece {
        id,
        total,
        piece,
        index,
        count,
    }))
}

/// The length of the datagram a received message holds as pieces, when
/// it holds exactly all of one datagram's pieces, in order, each cut at
/// [`PACKET`], so that with their `headers` put apart their bytes lie
/// back to back (the receive layout of [`crate::udp::RecvBatch`]): the
/// common case, a GRO message that is one sender's GSO send. `len` is the
/// message's length and `seg` its GRO segment size. None for anything
/// else (single datagrams, other cuts, a piece missing or out of place),
/// which goes through the [`Reassembler`].
pub fn in_order(headers: &[[u8; HEADER]], len: usize, seg: Option<usize>) -> Option<usize> {
    if seg != Some(PACKET) || len <= PACKET {
        return None;
    }
    let count = len.div_ceil(PACKET);
    let first = Piece::parse(headers.first()?, PACKET - HEADER).ok()?;
    let whole = first.index == 0
        && first.count == count
        && first.piece == PACKET - HEADER
        && first.total + count * HEADER == len
        && headers.len() >= count;
    if !whole {
        return None;
    }
    for (index, h) in headers[..count].iter().enumerate().skip(1) {
        let bytes = (len - index * PACKET).min(PACKET) - HEADER;
        if Piece::parse(h, bytes).ok()? != (Piece { index, ..first }) {
            return None;
        }
    }
    Some(first.total)
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
        if d.len() < HEADER {
            return Err(PieceError::Malformed);
        }
        let (head, body) = d.split_at(HEADER);
        let pc = Piece::parse(head, body.len())?;
        let Piece {
            id,
            total,
            piece,
            index,
            count,
        } = pc;
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
        p.buf[pc.offset()..pc.offset() + body.len()].copy_from_slice(body);
        p.got |= 1 << index;
        if p.got.count_ones() as usize == p.count {
            return Ok(self.partial.remove(&(from, id)).map(|p| p.buf));
        }
        Ok(None)
    }

    /// Bytes held for partial datagrams: what forged or lost pieces cost.
    pub fn held(&self) -> usize {
        self.partial.values().map(|p| p.buf.capacity()).sum()
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

    /// The pieces of `data`, each header followed by its bytes.
    fn cut(data: &[u8], id: u32, packet: usize) -> Vec<Vec<u8>> {
        plan(data.len(), id, packet)
            .expect("large enough for pieces")
            .map(|p| {
                let end = (p.offset() + p.piece).min(p.total);
                [&p.bytes()[..], &data[p.offset()..end]].concat()
            })
            .collect()
    }

    #[test]
    fn small_datagrams_need_no_pieces() {
        assert!(plan(10, 1, 1472).is_none());
        assert!(plan(1472, 1, 1472).is_none());
        assert!(plan(1473, 1, 1472).is_some());
    }

    #[test]
    fn pieces_reassemble_in_any_order_and_only_once() {
        let data: Vec<u8> = (0..62_000u32).map(|i| (i * 7) as u8).collect();
        let ps = cut(&data, 9, 1472);
        assert_eq!(ps.len(), 62_000usize.div_ceil(1472 - HEADER));
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut order: Vec<usize> = (0..ps.len()).rev().collect();
        order.swap(0, 3);
        let last = order.pop().unwrap();
        for i in order {
            assert_eq!(r.push(from(), &ps[i], now).unwrap(), None);
        }
        assert_eq!(r.push(from(), &ps[last], now).unwrap(), Some(data));
        // The same pieces again start a new datagram (the MAC's replay
        // check drops it once complete); nothing is left behind.
        assert!(r.partial.is_empty());
    }

    #[test]
    fn only_one_whole_datagram_in_order_is_taken_as_it_lies() {
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let ps = cut(&data, 5, PACKET);
        let heads = |ps: &[Vec<u8>]| -> Vec<[u8; HEADER]> {
            ps.iter().map(|p| p[..HEADER].try_into().unwrap()).collect()
        };
        let len: usize = ps.iter().map(|p| p.len()).sum();
        let seg = Some(PACKET);
        assert_eq!(in_order(&heads(&ps), len, seg), Some(data.len()));
        // Cut elsewhere, not coalesced, one piece short, two swapped,
        // one of another datagram: none of them.
        assert_eq!(in_order(&heads(&ps), len, Some(1000)), None);
        assert_eq!(in_order(&heads(&ps), len, None), None);
        let short = &ps[..ps.len() - 1];
        let short_len = short.iter().map(|p| p.len()).sum();
        assert_eq!(in_order(&heads(short), short_len, seg), None);
        let mut swapped = ps.clone();
        swapped.swap(1, 2);
        assert_eq!(in_order(&heads(&swapped), len, seg), None);
        let mut mixed = ps.clone();
        mixed[3] = cut(&data, 6, PACKET)[3].clone();
        assert_eq!(in_order(&heads(&mixed), len, seg), None);
    }

    #[test]
    fn bad_and_stale_pieces_are_refused_or_forgotten() {
        let data = vec![1u8; 5000];
        let ps = cut(&data, 3, 1000);
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
        assert_eq!(r.push(from(), &ps[0], t0).unwrap(), None);
        let later = t0 + PARTIAL_TTL * 2;
        for p in &ps[1..] {
            assert_eq!(r.push(from(), p, later).unwrap(), None);
        }
        assert_eq!(r.partial.len(), 1);
        // A piece claiming another length under the same id spoils it.
        let other = cut(&[2u8; 3000], 3, 1000);
        assert!(r.push(from(), &other[0], later).is_err());
        assert!(r.partial.is_empty());
    }
}
