//! The inter-node tunnel: an appliance's Ethernet frame carried in one UDP
//! datagram (port 2395), authenticated with its application's key.
//!
//! Wire format (all integers little-endian):
//! `magic "LCM1" | app id u64 | sender node id u64 | seq u64 | frame | tag[16]`
//! where `tag` is the first 16 bytes of BLAKE3 keyed with the
//! application's 32-byte key over everything before it.
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
pub const MAGIC: &[u8; 4] = b"LCM1";
/// Header length.
pub const HEADER: usize = 4 + 8 + 8 + 8;
/// Tag length.
pub const TAG: usize = 16;
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

fn tag(key: &[u8; 32], data: &[u8]) -> [u8; TAG] {
    blake3::keyed_hash(key, data).as_bytes()[..TAG]
        .try_into()
        .expect("16 bytes")
}

/// Encapsulates `frame`.
pub fn seal(key: &[u8; 32], h: Header, frame: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(HEADER + frame.len() + TAG);
    d.extend_from_slice(MAGIC);
    d.extend_from_slice(&h.app.to_le_bytes());
    d.extend_from_slice(&h.sender.to_le_bytes());
    d.extend_from_slice(&h.seq.to_le_bytes());
    d.extend_from_slice(frame);
    let t = tag(key, &d);
    d.extend_from_slice(&t);
    d
}

/// Reads the header without verifying anything (to find the key).
pub fn peek(d: &[u8]) -> Result<Header, TunnelError> {
    if d.len() < HEADER + TAG + 14 || &d[..4] != MAGIC {
        return Err(TunnelError::NotTunnel);
    }
    let u = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().expect("8 bytes"));
    Ok(Header {
        app: u(4),
        sender: u(12),
        seq: u(20),
    })
}

/// Verifies the tag (in constant time) and returns the frame.
pub fn open<'a>(key: &[u8; 32], d: &'a [u8]) -> Result<&'a [u8], TunnelError> {
    peek(d)?;
    let (body, t) = d.split_at(d.len() - TAG);
    let want = tag(key, body);
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
        let d = seal(&key, h, &frame);
        assert_eq!(peek(&d).unwrap(), h);
        assert_eq!(open(&key, &d).unwrap(), &frame[..]);
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
