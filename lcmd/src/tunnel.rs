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
//! it. A datagram larger than one underlay packet is sent as pieces (see
//! [`crate::pieces`]) and checked whole once reassembled (one MAC over the
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
//! Replays: each sender keeps one counter, started at its boot time in
//! nanoseconds (so a restarted sender never reuses numbers); receivers keep
//! a sliding window of the last [`WINDOW`] numbers per (application,
//! sender) and drop a number seen before or older than the window.

use std::collections::HashMap;

/// Magic at the start of every tunnel datagram.
pub const MAGIC: &[u8; 4] = b"LCM2";
/// Header length.
pub const HEADER: usize = 4 + 8 + 8 + 8;
/// Tag length.
pub const TAG: usize = 16;
/// Length of the vnet header in the body.
pub const VNET: usize = crate::tap::VNET_HDR;
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

/// The tag over `parts`, concatenated.
pub fn tag(key: &[u8; 32], parts: &[&[u8]]) -> [u8; TAG] {
    let mut h = blake3::Hasher::new_keyed(key);
    for p in parts {
        h.update(p);
    }
    h.finalize().as_bytes()[..TAG].try_into().expect("16 bytes")
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
            buf: vec![0; HEADER + Self::BODY + TAG],
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
        let t = tag(key, &[&self.buf[..end]]);
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

/// Verifies the tag (in constant time) and returns the body: the vnet
/// header (its first [`VNET`] bytes) and the frame.
pub fn open<'a>(key: &[u8; 32], d: &'a [u8]) -> Result<&'a [u8], TunnelError> {
    peek(d)?;
    let (body, t) = d.split_at(d.len() - TAG);
    let want = tag(key, &[body]);
    let diff = want.iter().zip(t).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(TunnelError::BadMac);
    }
    Ok(&body[HEADER..])
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
        let body = open(&key, &d).unwrap();
        assert_eq!(&body[..VNET], &vnet[..]);
        assert_eq!(&body[VNET..], &frame[..]);
        let split = [header_bytes(h).as_slice(), &vnet, &frame].concat();
        assert_eq!(tag(&key, &[&split]), tag(&key, &[&split[..7], &split[7..]]));
        let mut bad = d.clone();
        bad[HEADER + 5] ^= 1;
        assert_eq!(open(&key, &bad), Err(TunnelError::BadMac));
        assert_eq!(open(&[8u8; 32], &d), Err(TunnelError::BadMac));
        let mut bad_seq = d.clone();
        bad_seq[20] ^= 1;
        assert_eq!(open(&key, &bad_seq), Err(TunnelError::BadMac));
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
}
