//! The inter-node tunnel: an appliance's Ethernet frame carried in one UDP
//! datagram (port 2395), authenticated with its application's key.
//!
//! Wire format (all integers little-endian):
//! `magic "LCM2" | app id u64 | sender node id u64 | seq u64 | vnet[10] |
//! frame | tag[16]` where `vnet` is the frame's `virtio_net_hdr` as the
//! sender's TAP gave it (checksum and GSO offload: the frame may be a TCP
//! segment of up to 62000 bytes that the receiving kernel segments or
//! delivers whole, see [`crate::tap`]), and `tag` is the first 16 bytes of
//! BLAKE3 keyed with the application's 32-byte key over everything before
//! it, padded (not on the wire) when longer than [`PAD`] (see
//! [`mac_len`]). A datagram larger than one underlay packet is sent as
//! pieces (see [`crate::pieces`]) and checked whole (one MAC over the
//! whole segment, not one per piece).
//!
//! Why a BLAKE3 keyed MAC and not an AEAD: what enforcement needs is
//! integrity and authenticity (only a node holding the application's key
//! can inject a frame into it, and nothing in a frame can be altered on
//! the way); BLAKE3 is already a dependency, is fast, and keyed mode is a
//! PRF, so a truncated 128-bit tag is a sound MAC. Confidentiality is not
//! required by the invariant; an AEAD (ChaCha20-Poly1305) can replace the
//! MAC later with the same header, nonce = seq.
//!
//! Replays: each sender keeps one counter that never goes back, not even
//! across a restart after the wall clock stepped back ([`SeqSource`]:
//! a high-water mark stored in metad); receivers keep
//! a sliding window of the last [`WINDOW`] numbers per (application,
//! sender) and drop a number seen before or older than the window.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Magic at the start of every tunnel datagram.
pub const MAGIC: &[u8; 4] = b"LCM3";
/// Header length.
pub const HEADER: usize = 4 + 8 + 8 + 8;
/// Tag length.
pub const TAG: usize = 16;
/// Length of the vnet header in the body.
pub const VNET: usize = crate::tap::VNET_HDR;
/// The MAC input of a datagram longer than this is padded to a multiple
/// of it: BLAKE3 hashes 16 chunks at once only in whole, aligned
/// subtrees, and hashes the rest one block at a time, ten times slower.
/// Measured here: 60,920 bytes (a full TCP segment) in 10.4 us, the same
/// padded to 65,536 in 6.4 us.
pub const PAD: usize = 8192;
/// Replay window, in sequence numbers.
pub const WINDOW: u64 = 128;

/// Why a tunnel datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// Too short or without the magic.
    #[error("not a tunnel packet")]
    NotTunnel,
    /// Its application is unknown here.
    #[error("unknown application id {0:#x}")]
    UnknownApp(u64),
    /// Its sender is not a known node at the source address.
    #[error("unknown sender {0:#x}")]
    UnknownSender(u64),
    /// The tag does not verify.
    #[error("bad MAC")]
    BadMac,
    /// The sequence number was seen before or is too old.
    #[error("replayed sequence number {0}")]
    Replayed(u64),
}

/// The header of a tunnel datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// [`crate::model::app_id`] of the application.
    pub app: u64,
    /// [`crate::model::node_id`] of the sending node.
    pub sender: u64,
    /// The sender's sequence number.
    pub seq: u64,
}

/// How many bytes the MAC covers for `len` bytes of header and body: `len`
/// up to [`PAD`]; beyond, `len` and zeros up to a multiple of [`PAD`] whose
/// last 8 bytes are `len` (little-endian), so that two inputs that differ
/// only in trailing zeros never pad to the same bytes.
pub const fn mac_len(len: usize) -> usize {
    if len <= PAD {
        len
    } else {
        (len + 8).div_ceil(PAD) * PAD
    }
}

/// Pads `buf[..len]` in place for the MAC (see [`mac_len`]); the MAC input.
/// `buf` must hold [`mac_len`]`(len)` bytes.
fn padded(buf: &mut [u8], len: usize) -> &[u8] {
    let m = mac_len(len);
    if m > len {
        buf[len..m - 8].fill(0);
        buf[m - 8..m].copy_from_slice(&(len as u64).to_le_bytes());
    }
    &buf[..m]
}

/// The tag over `input`.
fn tag(key: &[u8; 32], input: &[u8]) -> [u8; TAG] {
    blake3::keyed_hash(key, input).as_bytes()[..TAG]
        .try_into()
        .expect("16 bytes")
}

/// Room a buffer holding a datagram of `len` bytes needs to be opened in
/// place (see [`open`]).
pub const fn open_room(len: usize) -> usize {
    let m = mac_len(len.saturating_sub(TAG));
    if m > len {
        m
    } else {
        len
    }
}

/// The header's bytes on the wire.
pub fn header_bytes(h: Header) -> [u8; HEADER] {
    let mut b = [0u8; HEADER];
    b[..4].copy_from_slice(MAGIC);
    b[4..12].copy_from_slice(&h.app.to_le_bytes());
    b[12..20].copy_from_slice(&h.sender.to_le_bytes());
    b[20..28].copy_from_slice(&h.seq.to_le_bytes());
    b
}

/// A frame read from a NIC, in a buffer with room for the tunnel header
/// in front and the tag behind, so that it is sealed where it lies: the
/// MAC is one pass over one contiguous input (BLAKE3 hashes many chunks
/// at once only within one long input, and a frame hashed after a
/// separate 38-byte header loses most of that) and nothing is copied.
pub struct Outbound {
    buf: Vec<u8>,
    len: usize,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound {
            buf: vec![0; open_room(HEADER + Self::BODY + TAG)],
            len: 0,
        }
    }
}

impl Outbound {
    /// Room for a body: the vnet header and the largest frame a NIC reads.
    pub const BODY: usize = VNET + 65536;

    /// Where a NIC reads the body (vnet header and frame) into.
    pub fn room(&mut self) -> &mut [u8] {
        &mut self.buf[HEADER..HEADER + Self::BODY]
    }

    /// Records that the last read put `len` bytes in [`Outbound::room`].
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(Self::BODY);
    }

    /// The body read: the vnet header (its first [`VNET`] bytes) and the
    /// frame.
    pub fn body(&self) -> &[u8] {
        &self.buf[HEADER..HEADER + self.len]
    }

    /// Seals the body under `key` with header `h`: the whole datagram.
    pub fn seal(&mut self, key: &[u8; 32], h: Header) -> &[u8] {
        let end = HEADER + self.len;
        self.buf[..HEADER].copy_from_slice(&header_bytes(h));
        let t = tag(key, padded(&mut self.buf, end));
        self.buf[end..end + TAG].copy_from_slice(&t);
        &self.buf[..end + TAG]
    }
}

/// Reads the header without verifying anything (to find the key).
pub fn peek(d: &[u8]) -> Result<Header, TunnelError> {
    if d.len() < HEADER + TAG + VNET + 14 || &d[..4] != MAGIC {
        return Err(TunnelError::NotTunnel);
    }
    let u = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes"));
    Ok(Header {
        app: u(4),
        sender: u(12),
        seq: u(20),
    })
}

/// Verifies the tag (in constant time) of the datagram in `buf[..len]`
/// and returns its body: the vnet header (its first [`VNET`] bytes) and
/// the frame. `buf` must hold [`open_room`]`(len)` bytes: the MAC input is
/// padded in place, over the tag and beyond.
pub fn open<'a>(key: &[u8; 32], buf: &'a mut [u8], len: usize) -> Result<&'a [u8], TunnelError> {
    peek(&buf[..len])?;
    let end = len - TAG;
    let t: [u8; TAG] = buf[end..len].try_into().expect("16 bytes");
    let want = tag(key, padded(buf, end));
    let diff = want.iter().zip(t).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(TunnelError::BadMac);
    }
    Ok(&buf[HEADER..end])
}

/// A sliding window over one sender's sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct ReplayWindow {
    top: u64,
    bits: u128,
}

impl ReplayWindow {
    /// Records `seq`; false if it was seen before or is older than the
    /// window (call only after the tag verified).
    pub fn accept(&mut self, seq: u64) -> bool {
        if self.top == 0 && self.bits == 0 {
            self.top = seq;
            self.bits = 1;
            return true;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.bits = if shift >= WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= WINDOW {
            return false;
        }
        let bit = 1u128 << back;
        if self.bits & bit != 0 {
            return false;
        }
        self.bits |= bit;
        true
    }
}

/// Replay windows by (application id, sender id).
#[derive(Debug, Default)]
pub struct Windows(HashMap<(u64, u64), ReplayWindow>);

impl Windows {
    /// Records the header's sequence number in its window.
    pub fn accept(&mut self, h: &Header) -> bool {
        self.0.entry((h.app, h.sender)).or_default().accept(h.seq)
    }
}

/// Sequence numbers reserved at once (see [`SeqSource`]): at any rate a
/// node sends, the next reservation is stored long before this many are
/// used.
pub const SEQ_BLOCK: u64 = 1 << 40;

/// A sender's sequence numbers, increasing across restarts even when the
/// wall clock steps back (receivers' windows, which outlive a sender's
/// restart, refuse numbers below what they saw): every number handed out
/// is below a high-water mark that was stored (in metad) before, and a
/// restart starts at the stored mark, or at the wall clock in
/// nanoseconds if that is later (as before any mark was stored).
#[derive(Debug)]
pub struct SeqSource {
    next: AtomicU64,
    /// Numbers below this may be used: the last mark stored.
    mark: AtomicU64,
}

impl SeqSource {
    /// Numbers for a sender whose stored mark is `mark` (None: never
    /// stored), at wall-clock time `clock_ns`; none may be used until
    /// [`SeqSource::reserved`].
    pub fn start(clock_ns: u64, mark: Option<u64>) -> SeqSource {
        let first = clock_ns.max(mark.unwrap_or(0)).max(1);
        SeqSource {
            next: AtomicU64::new(first),
            mark: AtomicU64::new(first),
        }
    }

    /// The next number, or None when the reservation is used up (the
    /// datagram is dropped until the next one is stored).
    pub fn next(&self) -> Option<u64> {
        let mark = self.mark.load(Ordering::Acquire);
        self.next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < mark).then_some(n + 1)
            })
            .ok()
    }

    /// The mark to store when less than half a block is left: a block past
    /// the next number. Once stored, pass it to [`SeqSource::reserved`].
    pub fn wanted_mark(&self) -> Option<u64> {
        let next = self.next.load(Ordering::Relaxed);
        let left = self.mark.load(Ordering::Acquire).saturating_sub(next);
        (left < SEQ_BLOCK / 2).then(|| next.saturating_add(SEQ_BLOCK))
    }

    /// Records that `mark` is stored: numbers below it may be used.
    pub fn reserved(&self, mark: u64) {
        self.mark.fetch_max(mark, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_frames_open_and_forgeries_do_not() {
        let key = [7u8; 32];
        let h = Header {
            app: 1,
            sender: 2,
            seq: 3,
        };
        let frame = [9u8; 60];
        let vnet = [1u8; VNET];
        let mut out = Outbound::default();
        out.room()[..VNET].copy_from_slice(&vnet);
        out.room()[VNET..VNET + frame.len()].copy_from_slice(&frame);
        out.set_len(VNET + frame.len());
        assert_eq!(out.body(), [&vnet[..], &frame].concat());
        let d = out.seal(&key, h).to_vec();
        assert_eq!(peek(&d).unwrap(), h);
        let open_copy = |key: &[u8; 32], d: &[u8]| {
            let mut buf = d.to_vec();
            buf.resize(open_room(d.len()), 0xee);
            open(key, &mut buf, d.len()).map(|b| b.to_vec())
        };
        let body = open_copy(&key, &d).unwrap();
        assert_eq!(&body[..VNET], &vnet[..]);
        assert_eq!(&body[VNET..], &frame[..]);
        let mut bad = d.clone();
        bad[HEADER + 5] ^= 1;
        assert_eq!(open_copy(&key, &bad), Err(TunnelError::BadMac));
        assert_eq!(open_copy(&[8u8; 32], &d), Err(TunnelError::BadMac));
        let mut bad_seq = d.clone();
        bad_seq[20] ^= 1;
        assert_eq!(open_copy(&key, &bad_seq), Err(TunnelError::BadMac));
    }

    #[test]
    fn long_datagrams_are_padded_for_the_mac_and_their_length_counts() {
        assert_eq!(mac_len(100), 100);
        assert_eq!(mac_len(PAD), PAD);
        assert_eq!(mac_len(PAD + 1), 2 * PAD);
        assert_eq!(mac_len(2 * PAD - 8), 2 * PAD);
        assert_eq!(mac_len(2 * PAD - 7), 3 * PAD);
        let key = [7u8; 32];
        let h = Header {
            app: 1,
            sender: 2,
            seq: 3,
        };
        let sealed = |body: &[u8]| {
            let mut out = Outbound::default();
            out.room()[..body.len()].copy_from_slice(body);
            out.set_len(body.len());
            out.seal(&key, h).to_vec()
        };
        let body = vec![0u8; 20_000];
        let d = sealed(&body);
        // Opened in a buffer with stale bytes past the datagram.
        let mut buf = d.clone();
        buf.resize(open_room(d.len()), 0xee);
        assert_eq!(open(&key, &mut buf, d.len()).unwrap(), &body[..]);
        // One more zero byte: the same bytes once padded but for the
        // length, so another tag.
        let longer = sealed(&vec![0u8; 20_001]);
        assert_ne!(d[d.len() - TAG..], longer[longer.len() - TAG..]);
        let mut forged = d[..d.len() - TAG].to_vec();
        forged.push(0);
        forged.extend_from_slice(&d[d.len() - TAG..]);
        let len = forged.len();
        forged.resize(open_room(len), 0);
        assert_eq!(open(&key, &mut forged, len), Err(TunnelError::BadMac));
    }

    #[test]
    fn the_window_refuses_replays_and_old_numbers() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(1000));
        assert!(w.accept(1002));
        assert!(w.accept(1001));
        assert!(!w.accept(1001));
        assert!(!w.accept(1002));
        assert!(w.accept(1000 + WINDOW + 5));
        assert!(!w.accept(1000));
        assert!(w.accept(1000 + WINDOW + 4));
    }

    #[test]
    fn a_restart_after_the_clock_stepped_back_never_reuses_numbers() {
        let t = 1_800_000_000_000_000_000u64;
        let run1 = SeqSource::start(t, None);
        let mark = run1.wanted_mark().expect("a first reservation");
        run1.reserved(mark);
        let mut used = vec![];
        for _ in 0..1000 {
            used.push(run1.next().unwrap());
        }
        assert!(used.windows(2).all(|w| w[0] < w[1]));
        // The stored mark is what survives; the clock is an hour behind.
        let hour = 3_600_000_000_000;
        let run2 = SeqSource::start(t - hour, Some(mark));
        run2.reserved(run2.wanted_mark().unwrap());
        let first = run2.next().unwrap();
        assert!(first > *used.last().unwrap(), "{first} was used before");
        // A receiver that saw run 1 takes run 2's numbers.
        let mut w = ReplayWindow::default();
        assert!(w.accept(*used.last().unwrap()));
        assert!(w.accept(first));
        // Numbers stop at the reservation until the next is stored.
        let run3 = SeqSource::start(0, Some(mark));
        assert_eq!(run3.next(), None, "a number used before it was reserved");
        run3.reserved(mark + 2);
        assert_eq!(
            (run3.next(), run3.next(), run3.next()),
            (Some(mark), Some(mark + 1), None)
        );
        assert!(run3.wanted_mark().unwrap() > mark + 2);
    }
}
