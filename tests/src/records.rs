//! Self-describing fixed-size records and the checker of the nemesis test
//! (`tests/nemesis.rs`): a writer puts record `seq` of volume `vol` at
//! offset `seq * REC`; afterwards every acknowledged record must read back
//! byte for byte and no slot may hold anything but zeros or its own whole
//! record. Each record names its run, volume and sequence number and ends
//! with a BLAKE3 checksum, so a torn record (half old, half new), a record
//! at the wrong offset and one left by another run all show as such.

use std::collections::BTreeMap;
use std::fmt;

/// Bytes per record: a quarter of a page, so a record never straddles a
/// page (a write of one is one request to gvsfs) while four records share
/// each page and many a 64 KiB block, whose partial rewrites are the
/// delta path where stale or lost bytes would show.
pub const REC: usize = 1024;

const MAGIC: &[u8; 8] = b"GVSNEMR1";
const HEADER: usize = 8 + 8 + 4 + 8; // magic, run, vol, seq
const SUM: usize = 16;

/// The record `seq` of volume `vol` in run `run`: header, a payload
/// derived from the three (so every byte is predictable), checksum.
pub fn encode(run: u64, vol: u32, seq: u64) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[..8].copy_from_slice(MAGIC);
    r[8..16].copy_from_slice(&run.to_le_bytes());
    r[16..20].copy_from_slice(&vol.to_le_bytes());
    r[20..28].copy_from_slice(&seq.to_le_bytes());
    let mut xof = blake3::Hasher::new();
    xof.update(&r[..HEADER]);
    xof.finalize_xof().fill(&mut r[HEADER..REC - SUM]);
    let sum = blake3::hash(&r[..REC - SUM]);
    r[REC - SUM..].copy_from_slice(&sum.as_bytes()[..SUM]);
    r
}

/// What a slot of a volume holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// All zeros: never written (or a write that did not land).
    Empty,
    /// Exactly the record this slot should hold.
    Whole,
    /// A whole record, but of another run, volume or slot: stale or
    /// misplaced bytes.
    Foreign { run: u64, vol: u32, seq: u64 },
    /// Neither zeros nor a whole record: a torn or corrupted write.
    Torn,
}

/// Classifies `bytes`, the slot `seq` of volume `vol` in run `run` (short
/// when the file ends inside it; missing bytes read as zeros would).
pub fn classify(bytes: &[u8], run: u64, vol: u32, seq: u64) -> Slot {
    if bytes.iter().all(|&b| b == 0) {
        return Slot::Empty;
    }
    if bytes.len() != REC {
        return Slot::Torn;
    }
    if bytes == encode(run, vol, seq) {
        return Slot::Whole;
    }
    let field = |at: usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&bytes[at..at + n]);
        u64::from_le_bytes(b)
    };
    let (r, v, s) = (field(8, 8), field(16, 4) as u32, field(20, 8));
    if &bytes[..8] == MAGIC && bytes == encode(r, v, s) {
        Slot::Foreign {
            run: r,
            vol: v,
            seq: s,
        }
    } else {
        Slot::Torn
    }
}

/// What the writers learned of a record they tried to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its write and fsync returned success: it must be there, whole.
    Acked,
    /// Its write or fsync failed or never answered: it may be there or
    /// not, but if it is, it must be whole.
    Unknown,
}

/// How one node's copy of one volume measured up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged records found whole.
    pub acked_ok: u64,
    /// Acknowledged records missing or damaged, by sequence number.
    pub lost: Vec<u64>,
    /// Slots holding anything but zeros or their own whole record
    /// (whether their record was acknowledged, unknown or never tried).
    pub torn: Vec<(u64, Slot)>,
    /// Unknown records that landed whole.
    pub unknown_present: u64,
    /// Unknown records that are not there.
    pub unknown_absent: u64,
}

impl Verdict {
    /// Whether nothing was lost or damaged.
    pub fn clean(&self) -> bool {
        self.lost.is_empty() && self.torn.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 10;
        write!(
            f,
            "acked ok {}, lost {}, torn {}, unknown present {} / absent {}",
            self.acked_ok,
            self.lost.len(),
            self.torn.len(),
            self.unknown_present,
            self.unknown_absent
        )?;
        if !self.lost.is_empty() {
            write!(
                f,
                "; lost seqs {:?}",
                &self.lost[..self.lost.len().min(SHOWN)]
            )?;
        }
        if !self.torn.is_empty() {
            write!(
                f,
                "; bad slots {:?}",
                &self.torn[..self.torn.len().min(SHOWN)]
            )?;
        }
        Ok(())
    }
}

/// Checks `image`, a volume's bytes as one node reads them, against what
/// the writers of volume `vol` in run `run` learned (`outcomes`, by
/// sequence number). Slots past the last record tried must be zeros too.
pub fn check(image: &[u8], run: u64, vol: u32, outcomes: &BTreeMap<u64, Outcome>) -> Verdict {
    let mut v = Verdict::default();
    let tried = outcomes.keys().next_back().map_or(0, |&s| s + 1);
    let slots = tried.max(image.len().div_ceil(REC) as u64);
    for seq in 0..slots {
        let at = (seq as usize).saturating_mul(REC).min(image.len());
        let bytes = &image[at..(at + REC).min(image.len())];
        let slot = classify(bytes, run, vol, seq);
        if matches!(slot, Slot::Foreign { .. } | Slot::Torn) {
            v.torn.push((seq, slot));
        }
        match (outcomes.get(&seq), slot) {
            (Some(Outcome::Acked), Slot::Whole) => v.acked_ok += 1,
            (Some(Outcome::Acked), _) => v.lost.push(seq),
            (Some(Outcome::Unknown), Slot::Whole) => v.unknown_present += 1,
            (Some(Outcome::Unknown), _) => v.unknown_absent += 1,
            (None, Slot::Whole) => v.torn.push((seq, slot)),
            (None, _) => {}
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u64 = 7;

    fn image(seqs: &[u64], len: usize) -> Vec<u8> {
        let mut img = vec![0u8; len * REC];
        for &s in seqs {
            let at = s as usize * REC;
            img[at..at + REC].copy_from_slice(&encode(RUN, 1, s));
        }
        img
    }

    fn outcomes(acked: &[u64], unknown: &[u64]) -> BTreeMap<u64, Outcome> {
        let mut m = BTreeMap::new();
        m.extend(acked.iter().map(|&s| (s, Outcome::Acked)));
        m.extend(unknown.iter().map(|&s| (s, Outcome::Unknown)));
        m
    }

    #[test]
    fn every_record_differs_and_reads_back_as_whole() {
        assert_ne!(encode(RUN, 1, 0), encode(RUN, 1, 1));
        assert_ne!(encode(RUN, 1, 0), encode(RUN, 2, 0));
        assert_ne!(encode(RUN, 1, 0), encode(RUN + 1, 1, 0));
        assert_eq!(classify(&encode(RUN, 1, 3), RUN, 1, 3), Slot::Whole);
        assert_eq!(classify(&[0; REC], RUN, 1, 3), Slot::Empty);
    }

    #[test]
    fn a_record_of_another_slot_volume_or_run_is_foreign() {
        let want = |run, vol, seq| Slot::Foreign { run, vol, seq };
        assert_eq!(classify(&encode(RUN, 1, 4), RUN, 1, 3), want(RUN, 1, 4));
        assert_eq!(classify(&encode(RUN, 2, 3), RUN, 1, 3), want(RUN, 2, 3));
        assert_eq!(classify(&encode(9, 1, 3), RUN, 1, 3), want(9, 1, 3));
    }

    #[test]
    fn half_a_record_one_flipped_bit_or_a_short_tail_is_torn() {
        let mut half = encode(RUN, 1, 3);
        half[REC / 2..].fill(0);
        assert_eq!(classify(&half, RUN, 1, 3), Slot::Torn);
        let mut flipped = encode(RUN, 1, 3);
        flipped[REC / 3] ^= 1;
        assert_eq!(classify(&flipped, RUN, 1, 3), Slot::Torn);
        assert_eq!(classify(&encode(RUN, 1, 3)[..100], RUN, 1, 3), Slot::Torn);
        // A torn record of another slot is torn, not foreign.
        let mut other = encode(RUN, 1, 4);
        other[REC - 1] ^= 1;
        assert_eq!(classify(&other, RUN, 1, 3), Slot::Torn);
    }

    #[test]
    fn acked_records_present_and_unknown_ones_either_way_are_clean() {
        let v = check(&image(&[0, 1, 3], 4), RUN, 1, &outcomes(&[0, 1], &[2, 3]));
        assert!(v.clean(), "{v}");
        assert_eq!((v.acked_ok, v.unknown_present, v.unknown_absent), (2, 1, 1));
    }

    #[test]
    fn a_missing_acked_record_is_lost_also_past_the_end_of_the_file() {
        let v = check(&image(&[0], 2), RUN, 1, &outcomes(&[0, 1, 2], &[]));
        assert_eq!(v.lost, vec![1, 2]);
        assert!(v.torn.is_empty(), "{v}");
    }

    #[test]
    fn a_torn_unknown_record_and_bytes_past_the_last_tried_are_torn() {
        let mut img = image(&[0, 1, 5], 6);
        img[REC + 10] ^= 0xff;
        let v = check(&img, RUN, 1, &outcomes(&[0], &[1]));
        assert!(v.lost.is_empty(), "{v}");
        assert_eq!(v.torn, vec![(1, Slot::Torn), (5, Slot::Whole)]);
    }

    #[test]
    fn an_acked_record_overwritten_by_a_stale_one_is_lost_and_foreign() {
        let mut img = image(&[0, 1], 2);
        img[REC..].copy_from_slice(&encode(RUN, 1, 0));
        let v = check(&img, RUN, 1, &outcomes(&[0, 1], &[]));
        assert_eq!(v.lost, vec![1]);
        assert_eq!(
            v.torn,
            vec![(
                1,
                Slot::Foreign {
                    run: RUN,
                    vol: 1,
                    seq: 0
                }
            )]
        );
    }
}
