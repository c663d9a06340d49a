//! The bodies of the fuzz targets: one function per parser of untrusted
//! input, taking the fuzz input as bytes. The `fuzz/` crate (cargo-fuzz)
//! has one libFuzzer entry point per function, and the workspace's tests
//! replay every input stored in `fuzz/corpus/<target>/` through them
//! (tests/tests/fuzz_corpus.rs), so a crash once found stays a failing
//! test until it is fixed.
//!
//! A target never panics on its own account: every `assert!` in it is a
//! property of the parser (a frame that decodes encodes back to the same
//! value, a sealed frame opens and a changed one does not, the reassembler
//! holds no more than its bound). Where the parser sits behind a MAC, a
//! target fuzzes both sides of it: the bytes as they arrive (every frame
//! must be refused: nobody fuzzing knows the key) and the bytes sealed
//! with [`KEY`] (what a holder of the key can make the parser read).
//!
//! Stream parsers (metad's handshake and frames, the chunk protocol) are
//! async over tokio's I/O traits; here they read from memory, so they never
//! wait and are run to completion with one poll ([`ready`]).

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gvsfs::chunk::{ChunkId, Delta};
use gvsfs::clone::{CloneArg, CLONE_ARG_SIZE};
use gvsfs::control::{AppCommand, VmCommand};
use gvsfs::net::{read_job, Job};
use lcmd::http::{Check, RequestStream};
use lcmd::packet::{checksum, Arp, Eth, Ipv4, Transport};
use lcmd::pieces::{in_order, Piece, Reassembler};
use lcmd::responder::{arp_reply, dns_answer, parse_query};
use lcmd::tunnel::{self, Header, Outbound, ReplayWindow, TunnelError};
use metad::auth::{accept_handshake, connect_handshake, Role};
use metad::protocol::{Opener, Sealer, MAX_CLIENT_FRAME, MAX_PEER_FRAME};
use metad::Secret;
use protobuf::Message as _;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vmctl::descriptor::{self, check_name, check_property, AppSpec};
use vmctl::units::{parse_bw_mbit, parse_mem_mib};

/// A target's function: the fuzz input in, a panic when a property fails.
pub type Target = fn(&[u8]);

/// Every target: the name of its cargo-fuzz binary and of its corpus
/// directory, and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("metad_handshake", metad_handshake),
    ("metad_client_frame", metad_client_frame),
    ("metad_peer_frame", metad_peer_frame),
    ("gvsfs_chunk_frame", gvsfs_chunk_frame),
    ("gvsfs_delta", gvsfs_delta),
    ("gvsfs_clone_arg", gvsfs_clone_arg),
    ("gvsfs_ctl", gvsfs_ctl),
    ("vmctl_descriptor", vmctl_descriptor),
    ("lcmd_tunnel", lcmd_tunnel),
    ("lcmd_pieces", lcmd_pieces),
    ("lcmd_packet", lcmd_packet),
    ("lcmd_responder", lcmd_responder),
    ("lcmd_http", lcmd_http),
];

/// The key (cluster secret, session key, application key) of every MAC
/// the targets seal and open: fixed, so a stored input replays the same.
const KEY: [u8; 32] = *b"grid fuzzing key, not a secret!!";

/// The most a [`Reassembler`] may hold for partial datagrams: as many as
/// it keeps (256), each at most the largest datagram a sender seals.
const PIECES_HELD_MAX: usize = 256 * (tunnel::HEADER + Outbound::BODY + tunnel::TAG);

/// The fuzz input, read from the front to shape a case (a mode, a length,
/// a header field), with zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// The input `data`.
    fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }

    /// The next `n` bytes (fewer at the end).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// The next `N` bytes, zero-padded at the end.
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.take(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// The next byte.
    fn byte(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// The next two bytes, little-endian.
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// The next four bytes, little-endian.
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// The next eight bytes, little-endian.
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// Whether every byte was read.
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What is left.
    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// Runs a future whose I/O is in memory: it cannot wait, so one poll
/// completes it.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a parser waited on in-memory I/O"),
    }
}

/// A connection in memory: reads come from the fuzz input, writes (the
/// parser's answers) go nowhere.
struct Wire<'a>(&'a [u8]);

impl AsyncRead for Wire<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// `payload` as one frame sealed with [`KEY`] (the first of its direction).
fn sealed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ready(Sealer::new(KEY).write(&mut out, payload)).expect("writing to memory");
    out
}

/// Bytes nobody sealed, read as a sealed stream: the first frame is
/// refused (forging its tag means knowing [`KEY`]).
fn refused_unsealed(stream: &[u8], max: usize) {
    let r = ready(Opener::new(KEY).read(&mut Wire(stream), max));
    assert!(r.is_err(), "a frame nobody sealed was opened");
}

/// `payload` sealed, then opened as the receiving side does: it opens to
/// itself; with the byte at `bend` changed, it does not open.
fn through_session(payload: &[u8], max: usize, bend: usize) {
    let stream = sealed(payload);
    let opened = ready(Opener::new(KEY).read(&mut Wire(&stream), max));
    assert_eq!(opened.expect("a sealed frame opens"), payload);
    let mut bent = stream;
    let at = bend % bent.len();
    bent[at] ^= 0x20;
    let r = ready(Opener::new(KEY).read(&mut Wire(&bent), max));
    assert!(r.is_err(), "a sealed frame opened with byte {at} changed");
}

/// A decoded value encodes to bytes that decode to it again, and so
/// encode the same (postcard, the frames' encoding).
fn reencodes<T: Serialize + DeserializeOwned>(v: &T) {
    let once = postcard::to_stdvec(v).expect("encoding to memory");
    let back: T = postcard::from_bytes(&once).expect("an encoded value decodes");
    let twice = postcard::to_stdvec(&back).expect("encoding to memory");
    assert_eq!(twice, once, "a decoded value does not encode back the same");
}

/// metad's handshake, either side: the accepting side reads a hello and
/// a proof from anyone who connects; the connecting side reads a
/// challenge and a verdict from whatever it connected to. Neither can
/// succeed without the secret (the other side's nonce is random).
pub fn metad_handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let secret = Secret::from_bytes(KEY);
    let accepting = input.byte() % 2 == 0;
    let mut wire = Wire(input.rest());
    let authenticated = if accepting {
        ready(accept_handshake(&mut wire, &secret, |_| true)).is_ok()
    } else {
        ready(connect_handshake(&mut wire, &secret, Role::Client, 0)).is_ok()
    };
    assert!(!authenticated, "a handshake passed without the secret");
}

/// metad's client frames: a stream as it arrives (refused), a request
/// sealed with the session key (decoded as the server does), and a
/// response (decoded as the client does).
pub fn metad_client_frame(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => refused_unsealed(input.rest(), MAX_CLIENT_FRAME),
        1 => {
            let bend = usize::from(input.u16());
            let payload = input.rest();
            through_session(payload, MAX_CLIENT_FRAME, bend);
            if let Ok(req) = metad::protocol::decode::<metad::protocol::Request>(payload) {
                reencodes(&req);
            }
        }
        _ => {
            if let Ok(resp) = metad::protocol::decode::<metad::protocol::Response>(input.rest()) {
                reencodes(&resp);
            }
        }
    }
}

/// metad's peer frames: a stream as it arrives (refused), and a frame
/// sealed with the session key parsed as a Raft message, which encodes
/// back to bytes that parse to a message with the same fields (compared
/// as text, which shows the fields Raft reads: rust-protobuf keeps
/// unknown fields in a hash map, so neither their order in the bytes nor
/// their representation survives a round trip, and Raft ignores them).
pub fn metad_peer_frame(data: &[u8]) {
    let mut input = Input::new(data);
    if input.byte() % 2 == 0 {
        return refused_unsealed(input.rest(), MAX_PEER_FRAME);
    }
    let bend = usize::from(input.u16());
    let payload = input.rest();
    through_session(payload, MAX_PEER_FRAME, bend);
    let Ok(m) = raft::prelude::Message::parse_from_bytes(payload) else {
        return;
    };
    let bytes = m.write_to_bytes().expect("a parsed message encodes");
    let back = raft::prelude::Message::parse_from_bytes(&bytes).expect("an encoded message parses");
    assert_eq!(
        format!("{back:?}"),
        format!("{m:?}"),
        "a Raft message does not encode back to itself"
    );
}

/// The chunk protocol: what a chunk server reads from a connection (a
/// stream as it arrives, refused; a sealed request, with the raw bytes
/// of a put after it), and a response as a client decodes it.
pub fn gvsfs_chunk_frame(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => {
            let r = ready(read_job(&mut Wire(input.rest()), &mut Opener::new(KEY)));
            assert!(r.is_err(), "a request nobody sealed was read");
        }
        1 => {
            let len = usize::from(input.u16());
            let mut stream = sealed(input.take(len));
            stream.extend_from_slice(input.rest());
            let job = ready(read_job(&mut Wire(&stream), &mut Opener::new(KEY)));
            match job {
                Ok(Job::Put(put, whole)) => {
                    assert_eq!(put.whole.len(), whole.len());
                    for ((id, n), (read_id, bytes)) in put.whole.iter().zip(&whole) {
                        assert_eq!(id, read_id);
                        assert_eq!(bytes.len(), *n as usize, "a chunk read to another length");
                    }
                }
                Ok(Job::Other(req)) => reencodes(&req),
                Ok(Job::Refused(why)) => assert!(!why.is_empty()),
                Err(_) => {}
            }
        }
        _ => {
            if let Ok(resp) = postcard::from_bytes::<gvsfs::net::Response>(input.rest()) {
                reencodes(&resp);
            }
        }
    }
}

/// Chunk deltas: one as another node sends it, applied to a base held
/// here (it never changes the chunk's length); and the delta between two
/// versions of a chunk, which rebuilds the new one from the old.
pub fn gvsfs_delta(data: &[u8]) {
    let mut input = Input::new(data);
    let received = input.byte() % 2 == 0;
    let len = usize::from(input.u16());
    let old = input.take(len).to_vec();
    if received {
        let Ok(d) = postcard::from_bytes::<Delta>(input.rest()) else {
            return;
        };
        reencodes(&d);
        if let Some(new) = d.apply(old.clone()) {
            assert_eq!(new.len(), old.len(), "a delta changed a chunk's length");
            if let Some((off, b)) = d.patches.last() {
                let off = *off as usize;
                assert_eq!(
                    &new[off..off + b.0.len()],
                    &b.0[..],
                    "the last patch is not there"
                );
            }
        }
        return;
    }
    // The new version: the old one with (offset, byte) writes.
    let mut new = old.clone();
    while !input.is_empty() && !new.is_empty() {
        let at = usize::from(input.u16()) % new.len();
        new[at] = input.byte();
    }
    let (base, id) = (ChunkId::of(&old), ChunkId::of(&new));
    if let Some(d) = Delta::between(base, &old, id, &new) {
        assert_eq!(d.len as usize, new.len());
        assert_eq!(
            d.apply(old).as_deref(),
            Some(&new[..]),
            "a delta rebuilt another chunk"
        );
        reencodes(&d);
    }
}

/// The clone ioctl's argument, as the kernel passes it (the input, and
/// the input cut or padded to the struct's size): what decodes encodes
/// back to the same fields and the same bytes.
pub fn gvsfs_clone_arg(data: &[u8]) {
    let mut sized = data.to_vec();
    sized.resize(CLONE_ARG_SIZE, 0);
    for b in [data, &sized[..]] {
        let Ok(arg) = CloneArg::decode(b) else {
            continue;
        };
        let e = arg.encode().expect("a decoded argument encodes");
        assert_eq!(CloneArg::decode(&e).ok().as_ref(), Some(&arg));
        let used = 16 + arg.name.len();
        assert_eq!(&e[..used], &b[..used], "an argument encodes to other bytes");
    }
}

/// The grammar of `ctl` files, each line as their write cuts what is
/// written: a command is exactly its words, and a refusal names the line.
pub fn gvsfs_ctl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let named = |e: vmctl::commands::CmdError| {
            assert!(e.to_string().contains(&format!("{line:?}")), "{e}");
        };
        match AppCommand::parse(line) {
            Ok(c) => assert_eq!(words.len(), 1, "{c:?} from {line:?}"),
            Err(e) => named(e),
        }
        match VmCommand::parse(line) {
            Ok(VmCommand::Migrate(node)) => assert_eq!(words, ["migrate", node]),
            Ok(c) => assert_eq!(words.len(), 1, "{c:?} from {line:?}"),
            Err(e) => named(e),
        }
    }
}

/// Application descriptors as a `spec` file takes them (its bytes, read
/// lossily): an accepted one holds only what validation allows, and
/// survives its JSON record; a refused one names a line of the text.
/// The size and rate parsers, on every line.
pub fn vmctl_descriptor(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    match descriptor::parse(&src) {
        Ok(spec) => valid_spec(&spec),
        Err(e) => {
            assert!(
                e.line <= src.lines().count() + 1,
                "line {} of {:?}",
                e.line,
                src
            );
            assert!(!e.message.is_empty());
        }
    }
    for line in src.lines() {
        if let Ok(mib) = parse_mem_mib(line) {
            assert!(mib > 0, "{line:?} is {mib} MiB");
        }
        if let Ok(mbit) = parse_bw_mbit(line) {
            assert!(mbit > 0, "{line:?} is {mbit} Mbit/s");
        }
    }
}

/// What [`descriptor::parse`] promises of an accepted descriptor.
fn valid_spec(spec: &AppSpec) {
    check_name(&spec.name).expect("a valid application name");
    for (name, c) in &spec.components {
        check_name(name).expect("a valid component name");
        assert!(1 <= c.cpu_min && c.cpu_min <= c.cpu_max, "{name}: cpu");
        assert!(c.mem_mib >= 32, "{name}: mem");
        assert!(c.bw_max == 0 || c.bw_min <= c.bw_max, "{name}: bw");
        for (k, v) in &c.properties {
            check_property(k, v).expect("a valid property");
        }
        for a in &c.anti_affinity {
            assert!(a != name && spec.components.contains_key(a), "{name}: {a}");
        }
    }
    for conn in &spec.connections {
        let end = |s: &str| {
            let (c, t) = s.split_once('.').expect("COMPONENT.TERMINAL");
            (&spec.components[c], t.to_string())
        };
        let (from, out) = end(&conn.from);
        let (to, input) = end(&conn.to);
        assert!(from.outputs.contains(&out) && to.inputs.contains_key(&input));
    }
    let json = serde_json::to_string(spec).expect("a spec encodes");
    let back: AppSpec = serde_json::from_str(&json).expect("a spec's JSON decodes");
    assert_eq!(&back, spec, "a spec does not survive its JSON record");
}

/// Tunnel datagrams: one as it arrives (its header parses back to its
/// bytes; it does not open), one sealed with the application's key (it
/// opens to its body, and with any bit changed it does not), and the
/// replay window over a run of sequence numbers.
pub fn lcmd_tunnel(data: &[u8]) {
    let mut input = Input::new(data);
    match input.byte() % 3 {
        0 => {
            let d = input.rest();
            if let Ok(h) = tunnel::peek(d) {
                assert_eq!(tunnel::header_bytes(h)[..], d[..tunnel::HEADER]);
            }
            let mut buf = d.to_vec();
            buf.resize(tunnel::open_room(d.len()), 0);
            let r = tunnel::open(&KEY, &mut buf, d.len());
            assert!(r.is_err(), "a datagram nobody sealed was opened");
        }
        1 => sealed_datagram(&mut input),
        _ => replay_window(input),
    }
}

/// A body sealed into a datagram under [`KEY`], opened, then bent.
fn sealed_datagram(input: &mut Input) {
    let h = Header {
        app: input.u64(),
        sender: input.u64(),
        seq: input.u64(),
    };
    let bend = usize::from(input.u16());
    let body = input.take(Outbound::BODY);
    let mut out = Outbound::default();
    out.room()[..body.len()].copy_from_slice(body);
    out.set_len(body.len());
    let d = out.seal(&KEY, h).to_vec();
    let opened = |d: &[u8]| {
        let mut buf = d.to_vec();
        buf.resize(tunnel::open_room(d.len()), 0);
        tunnel::open(&KEY, &mut buf, d.len()).map(<[u8]>::to_vec)
    };
    match opened(&d) {
        Ok(b) => {
            assert_eq!(b, body, "a datagram opened to another body");
            assert_eq!(tunnel::peek(&d), Ok(h));
        }
        // Shorter than any frame: no tunnel packet at all.
        Err(e) => assert_eq!(e, TunnelError::NotTunnel),
    }
    let mut bent = d;
    let at = bend % bent.len();
    bent[at] ^= 1 << (bend % 8);
    assert!(
        opened(&bent).is_err(),
        "a datagram opened with bit {bend} of byte {at} changed"
    );
}

/// Sequence numbers, each a step (-32768..=32767) from the last: the
/// window takes none twice, always takes one above all before, and
/// never one a window or more below the highest.
fn replay_window(mut input: Input) {
    let mut w = ReplayWindow::default();
    let mut taken = HashSet::new();
    let mut seq = input.u64();
    let mut top: Option<u64> = None;
    while !input.is_empty() {
        seq = seq.wrapping_add_signed(i64::from(input.u16() as i16));
        let took = w.accept(seq);
        if took {
            assert!(taken.insert(seq), "sequence number {seq} taken twice");
        }
        match top {
            None => assert!(took, "the first number was refused"),
            Some(t) if seq > t => assert!(took, "{seq}, above all before, was refused"),
            Some(t) => assert!(!took || t - seq < tunnel::WINDOW, "{seq} taken below {t}"),
        }
        top = top.max(Some(seq));
    }
}

/// Tunnel pieces: a run of pieces from two senders over time, each
/// either given whole (header and body) or made from the fields of a
/// piece that adds up (so that the fuzzer reaches the reassembler with
/// any claim, large ones included): headers parse back to their bytes,
/// datagrams come out at the length they claimed, and what is held stays
/// within [`PIECES_HELD_MAX`]. Then the in-order check of a received
/// message.
pub fn lcmd_pieces(data: &[u8]) {
    let mut input = Input::new(data);
    let from = [
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 2395),
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 2395),
    ];
    let mut r = Reassembler::default();
    let mut now = Instant::now();
    let mut body = Vec::new();
    while !input.is_empty() {
        let ctl = input.byte();
        if ctl == 0xff {
            return in_order_message(input);
        }
        now += Duration::from_millis(u64::from(ctl >> 4) * 50);
        let piece = if ctl & 2 == 0 {
            let len = usize::from(input.u16());
            input.take(len)
        } else {
            made_piece(&mut input, &mut body);
            &body[..]
        };
        if let Some((head, rest)) = piece.split_first_chunk::<{ lcmd::pieces::HEADER }>() {
            if let Ok(p) = Piece::parse(head, rest.len()) {
                assert_eq!(&p.bytes(), head, "a piece header parses to other fields");
                assert!(p.offset() + rest.len() <= p.total);
            }
        }
        if let Ok(Some(d)) = r.push(from[usize::from(ctl & 1)], piece, now) {
            let total = u32::from_le_bytes(piece[8..12].try_into().expect("4 bytes"));
            assert_eq!(d.len(), total as usize, "a datagram of another length");
            r.recycle(d);
        }
        assert!(
            r.held() <= PIECES_HELD_MAX,
            "the reassembler holds {} bytes",
            r.held()
        );
    }
}

/// A piece made from fields read from `input`, in `out`: its id, its
/// piece length, count and index, and where the datagram ends in its last
/// piece; its body is zeros, of the length it claims.
fn made_piece(input: &mut Input, out: &mut Vec<u8>) {
    let id = input.u32();
    let piece = usize::from(input.u16()).max(1);
    let count = usize::from(input.byte()) % lcmd::pieces::MAX_PIECES + 1;
    let index = usize::from(input.byte()) % count;
    let total = piece * (count - 1) + 1 + usize::from(input.u16()) % piece;
    let p = Piece {
        id,
        total,
        piece,
        index,
        count,
    };
    out.clear();
    out.extend_from_slice(&p.bytes());
    out.resize(lcmd::pieces::HEADER + piece.min(total - p.offset()), 0);
}

/// A received message's piece headers, its length and GRO segment size:
/// a message taken as one whole datagram holds exactly its pieces.
fn in_order_message(mut input: Input) {
    let len = usize::from(input.u16()) * 4;
    let seg = match input.byte() {
        0 => None,
        1 => Some(lcmd::pieces::PACKET),
        s => Some(usize::from(s) * 8),
    };
    let mut heads = Vec::new();
    while heads.len() < lcmd::pieces::MAX_PIECES && !input.is_empty() {
        heads.push(input.array::<{ lcmd::pieces::HEADER }>());
    }
    if let Some(total) = in_order(&heads, len, seg) {
        let count = len.div_ceil(lcmd::pieces::PACKET);
        assert_eq!(total + count * lcmd::pieces::HEADER, len);
    }
}

/// Frames from an appliance's NIC: Ethernet, then ARP (which builds back
/// into the same message) or IPv4 and its transport header (whose data is
/// the tail of the packet).
pub fn lcmd_packet(data: &[u8]) {
    let Ok(eth) = Eth::parse(data) else {
        return;
    };
    let _ = (eth.dst(), eth.ethertype());
    let p = eth.payload();
    if let Ok(a) = Arp::parse(p) {
        let f = a.to_frame(eth.src());
        assert_eq!(
            Arp::parse(&f[14..]),
            Ok(a),
            "an ARP message builds back to another"
        );
    }
    let Ok(ip) = Ipv4::parse(p) else {
        return;
    };
    assert!(ip.ihl <= ip.pkt.len() && ip.pkt.len() <= p.len());
    let _ = (ip.src(), ip.dst(), ip.proto(), checksum(&ip.pkt[..ip.ihl]));
    if let Ok(t) = Transport::parse(&ip) {
        assert!(
            ip.payload().ends_with(t.data),
            "transport data outside the packet"
        );
    }
}

/// lcmd's own answers: ARP for an appliance (answered only inside its
/// range, never for itself, to the asker), and DNS (an answer carries the
/// query's id and is never taken for a query itself).
pub fn lcmd_responder(data: &[u8]) {
    let range: lcmd::model::Range = "10.200.1.0/24".parse().expect("a valid range");
    let own = Ipv4Addr::new(10, 200, 1, 10);
    if let Ok(req) = Arp::parse(data) {
        if let Some(f) = arp_reply(&req, own, &range) {
            let a = Arp::parse(&f[14..]).expect("a reply parses");
            assert_eq!((a.op, a.spa, a.tha, a.tpa), (2, req.tpa, req.sha, req.spa));
            assert!(range.contains(a.spa) && a.spa != own);
        }
    }
    if let Some(q) = parse_query(data) {
        assert!(q.end <= data.len());
        for addr in [Some(Ipv4Addr::new(10, 200, 1, 20)), None] {
            let answer = dns_answer(data, &q, addr);
            assert_eq!(answer[..2], data[..2], "an answer to another query id");
            assert!(
                parse_query(&answer).is_none(),
                "an answer taken for a query"
            );
        }
    }
}

/// `a` is before `b` in TCP sequence space.
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The HTTP checker over a client's segments, each starting at, before
/// (a retransmission) or beyond (a gap) the next byte: a gap is what is
/// refused as unordered, and a segment that passed passes again when it
/// is retransmitted.
pub fn lcmd_http(data: &[u8]) {
    let mut input = Input::new(data);
    let mut next = input.u32();
    let mut s = RequestStream::new(next);
    while !input.is_empty() {
        let ctl = input.byte();
        let seq = match ctl % 8 {
            7 => next.wrapping_add(1 + u32::from(ctl >> 3)),
            back => next.wrapping_sub(u32::from(back)),
        };
        let len = usize::from(input.byte());
        let seg = input.take(len);
        match s.feed(seq, seg) {
            Check::Unordered => {
                assert!(before(next, seq), "segment at {seq} refused, next {next}");
                continue;
            }
            Check::Pass => {
                assert!(!before(next, seq), "a gap before {seq} passed, next {next}");
                assert_eq!(s.feed(seq, seg), Check::Pass, "a retransmission failed");
            }
            Check::Fail(_) => return,
        }
        let end = seq.wrapping_add(seg.len() as u32);
        if before(next, end) {
            next = end;
        }
    }
}
