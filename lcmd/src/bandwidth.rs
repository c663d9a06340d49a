//! Bandwidth of an appliance, as DVM's `bw = { min = "50M", max = "200M" }`
//! declares it, and the token bucket that holds an appliance to its `max`.
//!
//! - **max** is enforced by lcmd on the appliance's node, separately in
//!   each direction: what the appliance sends (at its TAP, before the
//!   tunnel) and what is delivered to it (before its TAP). A frame that
//!   finds too few tokens is dropped and counted (`shaped` and `drops` of
//!   its connection): a policer, to which TCP adapts its window.
//!   The bucket holds [`BURST_TIME`] of traffic at the rate, and never less
//!   than [`MIN_BURST`], so that one full GSO segment always fits.
//! - **min** is a reservation, not something lcmd polices: it is stored
//!   with the appliance for the scheduler, which must not place appliances
//!   whose `min` sum exceeds a node's link. lcmd never holds an appliance
//!   below its `min` (a spec with `min > max` is refused), so on a link
//!   whose `min`s are honoured by placement each appliance gets at least
//!   its `min`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How much traffic a bucket holds, as time at its rate.
pub const BURST_TIME: Duration = Duration::from_millis(20);
/// The smallest bucket: two full-size GSO segments.
pub const MIN_BURST: u64 = 128 * 1024;

/// A rate in bits per second, written `200M`, `1.5G`, `800K` or `1000`
/// (SI multipliers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate(pub u64);

/// A rate that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rate {0:?}: expected a number of bits per second with K, M or G, e.g. \"200M\"")]
pub struct RateError(pub String);

impl FromStr for Rate {
    type Err = RateError;
    fn from_str(s: &str) -> Result<Rate, RateError> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, 'k' | 'K')) => (&t[..i], 1e3),
            Some((i, 'm' | 'M')) => (&t[..i], 1e6),
            Some((i, 'g' | 'G')) => (&t[..i], 1e9),
            _ => (t, 1.0),
        };
        let v: f64 = num.parse().map_err(|_| RateError(s.into()))?;
        if !v.is_finite() || v <= 0.0 || v * mult > 1e12 {
            return Err(RateError(s.into()));
        }
        Ok(Rate((v * mult) as u64))
    }
}

impl TryFrom<String> for Rate {
    type Error = RateError;
    fn try_from(s: String) -> Result<Rate, RateError> {
        s.parse()
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> String {
        r.to_string()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        if r % 1_000_000_000 == 0 {
            write!(f, "{}G", r / 1_000_000_000)
        } else if r % 1_000_000 == 0 {
            write!(f, "{}M", r / 1_000_000)
        } else if r % 1000 == 0 {
            write!(f, "{}K", r / 1000)
        } else {
            write!(f, "{r}")
        }
    }
}

/// An appliance's bandwidth declaration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bandwidth {
    /// Reserved for it (recorded for the scheduler, see the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Rate>,
    /// The most it may use, in each direction (enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Rate>,
}

impl Bandwidth {
    /// Whether `min <= max` (when both are given).
    pub fn is_consistent(&self) -> bool {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => lo <= hi,
            _ => true,
        }
    }
}

/// A token bucket in bytes; time comes from the caller (`now`), so that
/// tests drive it with a fake clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    bytes_per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate`, at `now`.
    pub fn new(rate: Rate, now: Instant) -> TokenBucket {
        let bytes_per_sec = rate.0 as f64 / 8.0;
        let burst = (bytes_per_sec * BURST_TIME.as_secs_f64()).max(MIN_BURST as f64);
        TokenBucket {
            rate,
            bytes_per_sec,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Its rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes `bytes` tokens if there are enough at `now` (refilled since
    /// the last call); false if the frame must be dropped.
    pub fn admit(&mut self, bytes: usize, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.bytes_per_sec).min(self.burst);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("200M".parse::<Rate>().unwrap(), Rate(200_000_000));
        assert_eq!("1.5G".parse::<Rate>().unwrap(), Rate(1_500_000_000));
        assert_eq!("800k".parse::<Rate>().unwrap(), Rate(800_000));
        assert_eq!("1000".parse::<Rate>().unwrap(), Rate(1000));
        for bad in ["", "M", "-5M", "fast", "0", "5T"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(Rate(50_000_000).to_string(), "50M");
        let bw: Bandwidth = toml::from_str("min = \"50M\"\nmax = \"20M\"").unwrap();
        assert!(!bw.is_consistent());
    }

    /// Offered 60 000-byte frames every millisecond (480 Mbit/s) for ten
    /// fake seconds, a 20 Mbit/s bucket admits 20 Mbit/s plus its burst,
    /// to within one frame, and drops the rest.
    #[test]
    fn a_bucket_admits_its_rate_and_burst_and_no_more() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new("20M".parse().unwrap(), t0);
        let frame = 60_000usize;
        let (mut admitted, mut dropped) = (0u64, 0u64);
        for ms in 0..10_000u64 {
            if b.admit(frame, t0 + Duration::from_millis(ms)) {
                admitted += frame as u64;
            } else {
                dropped += 1;
            }
        }
        let allowed = 20e6 / 8.0 * 9.999 + MIN_BURST as f64;
        assert!(admitted as f64 <= allowed, "{admitted} > {allowed}");
        assert!(admitted as f64 >= allowed - frame as f64, "{admitted}");
        assert!(dropped > 9000, "{dropped}");
    }

    /// Under its rate, nothing is dropped; a clock going backwards (two
    /// threads' readings) refills nothing and breaks nothing.
    #[test]
    fn under_the_rate_nothing_is_dropped() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::new("100M".parse().unwrap(), t0);
        for ms in 0..5000u64 {
            // 1500 bytes every ms: 12 Mbit/s.
            assert!(b.admit(1500, t0 + Duration::from_millis(ms)));
        }
        assert!(b.admit(1500, t0));
        let mut small = TokenBucket::new("1M".parse().unwrap(), t0);
        assert!(small.admit(MIN_BURST as usize, t0));
        assert!(!small.admit(1, t0 - Duration::from_millis(500)));
    }
}
