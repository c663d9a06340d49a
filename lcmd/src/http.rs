//! The `http` protocol checker: follows the client's side of a TCP flow,
//! byte by byte in sequence order, and lets through only a stream of
//! well-formed HTTP/1.x requests: each a request line, header lines, an
//! empty line, then exactly the body its `Content-Length` or chunked
//! `Transfer-Encoding` announces, and the next request (pipelined or on a
//! kept-alive connection) checked the same way. Checking only the first
//! segment would let anything through after one good request.
//!
//! It sees packets, not a reassembled stream: a retransmitted segment is
//! checked only for the bytes it adds, and a segment that starts beyond
//! the bytes checked so far is refused (it could carry bytes the check
//! never saw; the client's TCP sends it again in order). Its state is
//! bounded: a request head or chunk line may not exceed [`MAX_HEAD`].

use crate::policy::is_http_request;

/// Longest request head (request line and headers) or chunk-size line.
pub const MAX_HEAD: usize = 16 * 1024;

/// What the checker says about one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Well formed so far.
    Pass,
    /// Not HTTP, with what was wrong.
    Fail(&'static str),
    /// It starts beyond the bytes checked so far.
    Unordered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Inside a body of this many more bytes.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Inside a chunk: its bytes, then its CRLF (counted in).
    ChunkData(u64),
    /// Collecting trailer lines after the last chunk, up to an empty line.
    Trailer(Vec<u8>),
}

/// One flow's client-to-server byte stream, as far as it was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestStream {
    /// Sequence number of the next byte expected.
    next: u32,
    state: State,
}

/// `a` is before `b` in TCP sequence space.
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// A header field name: an HTTP token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What follows a complete request head: the state for its body.
fn body_of(head: &[u8]) -> Result<State, &'static str> {
    if !is_http_request(head) {
        return Err("not an HTTP/1.x request line");
    }
    let text = std::str::from_utf8(head).map_err(|_| "request head is not text")?;
    let mut length = None;
    let mut chunked = false;
    // Skip the request line; the head ends with an empty line.
    for line in text.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("header line without ':'")?;
        if !is_token(name) {
            return Err("bad header name");
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_number(value, 10).ok_or("bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") {
                return Err("unsupported Transfer-Encoding");
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err("both Content-Length and chunked"),
        (_, true) => Ok(State::ChunkSize(Vec::new())),
        (Some(n), false) if n > 0 => Ok(State::Body(n)),
        _ => Ok(State::Head(Vec::new())),
    }
}

impl RequestStream {
    /// A stream whose first byte has sequence number `first` (the SYN's
    /// sequence number plus one).
    pub fn new(first: u32) -> RequestStream {
        RequestStream {
            next: first,
            state: State::Head(Vec::new()),
        }
    }

    /// Sequence number of the next byte to check.
    pub fn next(&self) -> u32 {
        self.next
    }

    /// Bytes its buffers hold (a head, chunk-size line or trailer being
    /// collected), for the limit on what all flows' checks hold.
    pub fn held(&self) -> usize {
        match &self.state {
            State::Head(b) | State::ChunkSize(b) | State::Trailer(b) => b.capacity(),
            State::Body(_) | State::ChunkData(_) => 0,
        }
    }

    /// Checks the segment with sequence number `seq` and payload `data`.
    pub fn feed(&mut self, seq: u32, data: &[u8]) -> Check {
        if before(self.next, seq) {
            return Check::Unordered;
        }
        let seen = self.next.wrapping_sub(seq) as usize;
        if seen >= data.len() {
            return Check::Pass;
        }
        let fresh = &data[seen..];
        self.next = self.next.wrapping_add(fresh.len() as u32);
        match self.consume(fresh) {
            Ok(()) => Check::Pass,
            Err(why) => Check::Fail(why),
        }
    }

    fn consume(&mut self, mut data: &[u8]) -> Result<(), &'static str> {
        while !data.is_empty() {
            match &mut self.state {
                State::Head(buf) => {
                    let found = collect(buf, data, b"\r\n\r\n", "request head over 16 KiB")?;
                    // The request line is judged as soon as it is complete.
                    if find_crlf(buf).is_some() && !is_http_request(buf) {
                        return Err("not an HTTP/1.x request line");
                    }
                    let Some((end, rest)) = found else {
                        return Ok(());
                    };
                    self.state = body_of(&buf[..end])?;
                    data = &data[data.len() - rest..];
                }
                State::Body(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(buf) => {
                    let Some((end, rest)) =
                        collect(buf, data, b"\r\n", "chunk-size line too long")?
                    else {
                        return Ok(());
                    };
                    let line =
                        std::str::from_utf8(&buf[..end - 2]).map_err(|_| "bad chunk size")?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = parse_number(size, 16).ok_or("bad chunk size")?;
                    data = &data[data.len() - rest..];
                    self.state = if size == 0 {
                        // Seeded with the last chunk-size line's CRLF, so
                        // that the empty line ending the trailer is a
                        // CRLF CRLF whether or not trailer lines come first.
                        State::Trailer(b"\r\n".to_vec())
                    } else {
                        // Its bytes and their CRLF must be countable.
                        State::ChunkData(size.checked_add(2).ok_or("chunk size too large")?)
                    };
                }
                State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64);
                    // The last two bytes of a chunk must be its CRLF.
                    for (i, b) in data[..take as usize].iter().enumerate() {
                        // Bytes left in the chunk from this one on.
                        let left = *n - i as u64;
                        if left <= 2 && *b != b"\r\n"[(2 - left) as usize] {
                            return Err("chunk not followed by CRLF");
                        }
                    }
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailer(buf) => {
                    let Some((_, rest)) = collect(buf, data, b"\r\n\r\n", "trailer over 16 KiB")?
                    else {
                        return Ok(());
                    };
                    data = &data[data.len() - rest..];
                    self.state = State::Head(Vec::new());
                }
            }
        }
        Ok(())
    }
}

/// A Content-Length (`radix` 10) or chunk size (16): digits only (no
/// sign, which `from_str_radix` would take) that fit a u64.
fn parse_number(s: &str, radix: u32) -> Option<u64> {
    if s.is_empty() || !s.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(s, radix).ok()
}

/// Appends `data` to `buf` (a head or line being collected) and looks for
/// `term`, also across the segment edge: the index just past it and how
/// many bytes of `data` follow it, or None while it has not come yet (an
/// error, `too_long`, once `buf` passes [`MAX_HEAD`]).
fn collect(
    buf: &mut Vec<u8>,
    data: &[u8],
    term: &[u8],
    too_long: &'static str,
) -> Result<Option<(usize, usize)>, &'static str> {
    // `buf` held no `term` before: only its last bytes can start one.
    let from = buf.len().saturating_sub(term.len() - 1);
    buf.extend_from_slice(data);
    match buf[from..].windows(term.len()).position(|w| w == term) {
        Some(at) => {
            let end = from + at + term.len();
            Ok(Some((end, buf.len() - end)))
        }
        None if buf.len() > MAX_HEAD => Err(too_long),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in segments of `size` bytes from sequence 1000.
    fn run(stream: &[u8], size: usize) -> Check {
        let mut s = RequestStream::new(1000);
        let mut seq = 1000u32;
        for seg in stream.chunks(size) {
            match s.feed(seq, seg) {
                Check::Pass => {}
                other => return other,
            }
            seq = seq.wrapping_add(seg.len() as u32);
        }
        Check::Pass
    }

    const GOOD: &[u8] = b"GET / HTTP/1.1\r\nHost: db\r\n\r\n\
        POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
        PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n\
        PUT /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n\
        HEAD / HTTP/1.0\r\n\r\n";

    #[test]
    fn pipelined_requests_with_bodies_pass_in_any_segmentation() {
        for size in [1, 2, 3, 7, 64, GOOD.len()] {
            assert_eq!(run(GOOD, size), Check::Pass, "segments of {size}");
        }
    }

    #[test]
    fn anything_after_a_good_request_is_still_checked() {
        let mut bad = GOOD.to_vec();
        bad.extend_from_slice(b"SSH-2.0-OpenSSH\r\n\r\n");
        assert!(matches!(run(&bad, 9), Check::Fail(_)));
        // A body longer than announced runs into the next "request".
        let smuggled = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabcdef\r\n\r\n";
        assert!(matches!(run(smuggled, 5), Check::Fail(_)));
        for bad in [
            &b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                matches!(run(bad, 4), Check::Fail(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = [b"GET / HTTP/1.1\r\n".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert!(matches!(run(&endless, 1000), Check::Fail(_)));
    }

    #[test]
    fn chunk_sizes_and_lengths_that_do_not_fit_are_refused() {
        // `size + 2` would wrap to 1: a one-byte "chunk" of just its LF.
        let wrap = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            ffffffffffffffff\r\n\n0\r\n\r\n";
        assert_eq!(run(wrap, 7), Check::Fail("chunk size too large"));
        for bad in [
            &b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nabcde\r\n0\r\n\r\n"[..],
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(
                matches!(run(bad, 5), Check::Fail(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // The largest size that fits still counts its bytes exactly.
        let mut s = RequestStream::new(0);
        let big = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffd\r\n";
        assert_eq!(s.feed(0, big), Check::Pass);
        assert_eq!(s.state, State::ChunkData(u64::MAX));
    }

    #[test]
    fn retransmissions_are_checked_once_and_gaps_refused() {
        let mut s = RequestStream::new(u32::MAX - 3);
        let req = b"GET / HTTP/1.1\r\n\r\n";
        let a = &req[..8];
        assert_eq!(s.feed(u32::MAX - 3, a), Check::Pass);
        // The same bytes again, then overlapping with new ones (and the
        // sequence numbers wrap).
        assert_eq!(s.feed(u32::MAX - 3, a), Check::Pass);
        assert_eq!(
            s.feed((u32::MAX - 3).wrapping_add(4), &req[4..]),
            Check::Pass
        );
        assert_eq!(s.state, State::Head(Vec::new()));
        // A segment beyond what was checked.
        let next = (u32::MAX - 3).wrapping_add(req.len() as u32);
        assert_eq!(s.feed(next.wrapping_add(10), b"junk"), Check::Unordered);
        assert_eq!(s.feed(next, b"GET /2 HTTP/1.1\r\n\r\n"), Check::Pass);
    }
}
