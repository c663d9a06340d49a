//! The tunnel's UDP socket: bound with large buffers, small datagrams sent
//! with `sendmsg` as they lie, large ones as pieces gathered from where
//! they lie in one `sendmsg` with UDP GSO (see [`crate::pieces`]), and
//! everything received in batches with `recvmmsg`, UDP GRO coalescing the
//! pieces of one datagram into one message that lands with the datagram's
//! bytes contiguous.

use crate::{pieces, tunnel};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// Socket buffer size asked for (both ways): a few dozen full-size GSO
/// segments in flight.
pub const SOCKET_BUFFER: libc::c_int = 8 << 20;

fn setsockopt_int(s: &UdpSocket, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> bool {
    // SAFETY: a valid socket and an int option of the right size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Binds the tunnel socket on `port`: the kernel fragments datagrams
/// larger than the underlay MTU rather than refuse them (only when GSO is
/// not available), coalesces received pieces (UDP GRO), and the buffers
/// are [`SOCKET_BUFFER`] (forced past the sysctl limits where lcmd may).
pub fn bind(port: u16) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port)))?;
    setsockopt_int(
        &s,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    );
    // Without GRO the kernel hands pieces over one by one: slower, same result.
    setsockopt_int(&s, libc::SOL_UDP, libc::UDP_GRO, 1);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !setsockopt_int(&s, libc::SOL_SOCKET, force, SOCKET_BUFFER) {
            setsockopt_int(&s, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    Ok(s)
}

/// Sends one datagram made of `parts` (at most four) to `to`.
fn send_parts(s: &UdpSocket, to: SocketAddrV4, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut addr = sockaddr(to);
    let mut iov = [iovec(&[]); 4];
    let n = parts.len().min(4);
    for (v, p) in iov.iter_mut().zip(&parts[..n]) {
        *v = iovec(p);
    }
    // SAFETY: a zeroed msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    // SAFETY: the header points at the address and slices above, alive
    // for the duration of the call; the kernel only reads them.
    if unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends datagram `d`, numbered `id` among this sender's, to `to`: as it
/// is when it fits in one packet, else as its pieces (see
/// [`crate::pieces`]) gathered from it in one `sendmsg` that the kernel
/// segments (UDP GSO), or one `sendmsg` per piece where GSO is refused.
pub fn send_datagram(s: &UdpSocket, to: SocketAddrV4, d: &[u8], id: u32) -> std::io::Result<()> {
    let Some(plan) = pieces::plan(d.len(), id, pieces::PACKET) else {
        return send_parts(s, to, &[d]);
    };
    let mut heads = [[0u8; pieces::HEADER]; pieces::MAX_PIECES];
    let mut count = 0;
    for p in plan {
        heads[p.index] = p.bytes();
        count = p.count;
    }
    let body = |i: usize| {
        let at = i * (pieces::PACKET - pieces::HEADER);
        &d[at..(at + pieces::PACKET - pieces::HEADER).min(d.len())]
    };
    let mut addr = sockaddr(to);
    // SAFETY: zeroed iovecs are valid; each used one is then set to a
    // live slice.
    let mut iov: [libc::iovec; 2 * pieces::MAX_PIECES] = unsafe { std::mem::zeroed() };
    for (i, head) in heads[..count].iter().enumerate() {
        iov[2 * i] = iovec(head);
        iov[2 * i + 1] = iovec(body(i));
    }
    // A u64 array keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = (2 * count) as _;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
    // SAFETY: the control buffer (32 bytes, aligned) holds one cmsghdr
    // with a u16 payload; CMSG_FIRSTHDR/CMSG_DATA point inside it; the
    // header points at live buffers for the duration of sendmsg, which
    // only reads them.
    let sent = unsafe {
        let cm = libc::CMSG_FIRSTHDR(&msg);
        (*cm).cmsg_level = libc::SOL_UDP;
        (*cm).cmsg_type = libc::UDP_SEGMENT;
        (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut u16, pieces::PACKET as u16);
        libc::sendmsg(s.as_raw_fd(), &msg, 0)
    };
    if sent >= 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
    ) {
        return Err(e);
    }
    for (i, head) in heads[..count].iter().enumerate() {
        send_parts(s, to, &[head, body(i)])?;
    }
    Ok(())
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: a zeroed sockaddr_in is valid.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

/// Piece slots of a receive buffer: enough for the largest UDP payload.
const SLOTS: usize = 65536usize.div_ceil(pieces::PACKET);
/// Bytes of a piece slot that are not its header.
const SLOT_BODY: usize = pieces::PACKET - pieces::HEADER;
/// Bytes of one message's body buffer that the kernel fills.
const BODY: usize = SLOTS * SLOT_BODY;
/// Bytes of one message's body buffer, with room to open a datagram in
/// place (see [`tunnel::open`]).
const STRIDE: usize = tunnel::open_room(BODY);

/// What one received message holds.
pub enum Message<'a> {
    /// All the pieces of one datagram in order (see
    /// [`pieces::in_order`]): the datagram, as it lies in the buffer
    /// (its first `len` bytes), with room to open it in place.
    Whole {
        /// The buffer.
        buf: &'a mut [u8],
        /// The datagram's length.
        len: usize,
    },
    /// Anything else: datagrams and pieces back to back, each of the GRO
    /// segment size but the last (one when not coalesced).
    Parts(std::slice::Chunks<'a, u8>),
}

/// Buffers for receiving up to [`RecvBatch::BATCH`] messages per call,
/// laid out for pieces: the message is scattered in [`pieces::PACKET`]
/// slots, each slot's first [`pieces::HEADER`] bytes to a header array
/// and the rest to one body buffer, so that the pieces of a datagram
/// leave its bytes contiguous with no copy but the kernel's.
pub struct RecvBatch {
    heads: Box<[[[u8; pieces::HEADER]; SLOTS]]>,
    bodies: Box<[u8]>,
    addrs: Box<[libc::sockaddr_in]>,
    /// One aligned control buffer per message (for the GRO cmsg).
    control: Box<[[u64; 4]]>,
    /// The scatter list, two entries per slot, into `heads` and `bodies`.
    iovs: Box<[libc::iovec]>,
    /// The headers, into `iovs`, `addrs` and `control`.
    msgs: Box<[libc::mmsghdr]>,
    lens: Vec<usize>,
    /// GRO's segment size for each message that holds several datagrams.
    segs: Vec<Option<usize>>,
    /// A message that is not one whole datagram, with its slots joined.
    joined: Vec<u8>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        let n = Self::BATCH;
        let mut b = RecvBatch {
            heads: vec![[[0; pieces::HEADER]; SLOTS]; n].into_boxed_slice(),
            bodies: vec![0; n * STRIDE].into_boxed_slice(),
            // SAFETY: zeroed C structs are valid values.
            addrs: vec![unsafe { std::mem::zeroed() }; n].into_boxed_slice(),
            control: vec![[0; 4]; n].into_boxed_slice(),
            iovs: vec![iovec(&[]); n * 2 * SLOTS].into_boxed_slice(),
            // SAFETY: as above.
            msgs: vec![unsafe { std::mem::zeroed() }; n].into_boxed_slice(),
            lens: vec![0; n],
            segs: vec![None; n],
            joined: Vec::with_capacity(SLOTS * pieces::PACKET),
        };
        // The pointers go into the boxes' heap memory, which moving the
        // batch does not move, and which lives as long as they do.
        for i in 0..n {
            for j in 0..SLOTS {
                let iov = &mut b.iovs[(i * SLOTS + j) * 2..][..2];
                iov[0] = libc::iovec {
                    iov_base: b.heads[i][j].as_mut_ptr() as *mut libc::c_void,
                    iov_len: pieces::HEADER,
                };
                iov[1] = libc::iovec {
                    iov_base: b.bodies[i * STRIDE + j * SLOT_BODY..].as_mut_ptr()
                        as *mut libc::c_void,
                    iov_len: SLOT_BODY,
                };
            }
            let h = &mut b.msgs[i].msg_hdr;
            h.msg_name = &mut b.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_iov = b.iovs[i * SLOTS * 2..].as_mut_ptr();
            h.msg_iovlen = (2 * SLOTS) as _;
            h.msg_control = b.control[i].as_mut_ptr() as *mut libc::c_void;
        }
        b
    }
}

impl RecvBatch {
    /// Messages per call.
    pub const BATCH: usize = 32;

    /// Receives what is queued on `s` (without waiting), up to
    /// [`Self::BATCH`] messages; how many.
    pub fn recv(&mut self, s: &UdpSocket) -> usize {
        for m in self.msgs.iter_mut() {
            // The kernel writes back the lengths it used.
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 4]>() as _;
        }
        // SAFETY: every header points at live buffers of the sizes given
        // (set up in `default`, owned by `self`), for the duration of the
        // call.
        let n = unsafe {
            libc::recvmmsg(
                s.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                Self::BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return 0;
        }
        for i in 0..n as usize {
            self.lens[i] = self.msgs[i].msg_len as usize;
            self.segs[i] = gro_size(&self.msgs[i].msg_hdr);
        }
        n as usize
    }

    /// Message `i` of the last batch, and its sender.
    pub fn get(&mut self, i: usize) -> (Message<'_>, SocketAddrV4) {
        let a = self.addrs[i];
        let from = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
            u16::from_be(a.sin_port),
        );
        let (len, seg) = (self.lens[i], self.segs[i]);
        let body = &mut self.bodies[i * STRIDE..][..STRIDE];
        if let Some(total) = pieces::in_order(&self.heads[i], len, seg) {
            let buf = &mut body[..tunnel::open_room(total)];
            return (Message::Whole { buf, len: total }, from);
        }
        self.joined.clear();
        for (j, head) in self.heads[i].iter().enumerate() {
            let Some(left) = len.checked_sub(j * pieces::PACKET).filter(|&l| l > 0) else {
                break;
            };
            let h = left.min(pieces::HEADER);
            self.joined.extend_from_slice(&head[..h]);
            let b = (left - h).min(SLOT_BODY);
            self.joined
                .extend_from_slice(&body[j * SLOT_BODY..j * SLOT_BODY + b]);
        }
        let seg = seg.filter(|&s| s > 0).unwrap_or(len.max(1));
        (Message::Parts(self.joined.chunks(seg)), from)
    }
}

/// The segment size of a GRO-coalesced message, from its control data.
fn gro_size(h: &libc::msghdr) -> Option<usize> {
    // SAFETY: the kernel filled the control buffer of `h` (its length in
    // msg_controllen); the CMSG macros walk only within it.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(h);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_UDP && (*cm).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(cm) as *const libc::c_int);
                return usize::try_from(v).ok();
            }
            cm = libc::CMSG_NXTHDR(h, cm);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Two tunnel sockets on the loopback: (sender, receiver, its address).
    fn pair() -> (UdpSocket, UdpSocket, SocketAddrV4) {
        let rx = bind(0).unwrap();
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, rx.local_addr().unwrap().port());
        (bind(0).unwrap(), rx, to)
    }

    /// The next batch on `s`, waiting up to a second for it.
    fn next(b: &mut RecvBatch, s: &UdpSocket) -> usize {
        let end = Instant::now() + Duration::from_secs(1);
        loop {
            let n = b.recv(s);
            if n > 0 || Instant::now() > end {
                return n;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn pieces_of_one_datagram_arrive_whole_and_the_rest_as_sent() {
        let (tx, rx, to) = pair();
        let mut b = RecvBatch::default();
        let big: Vec<u8> = (0..62_054u32).map(|i| (i % 251) as u8).collect();
        send_datagram(&tx, to, &big, 7).unwrap();
        assert_eq!(next(&mut b, &rx), 1);
        match b.get(0).0 {
            Message::Whole { buf, len } => assert_eq!(&buf[..len], &big[..]),
            Message::Parts(_) => panic!("GRO did not hand over the GSO send whole"),
        }
        // A small datagram, and the pieces of a big one in two sends (as
        // a receiver without GRO, or another cut, would see them).
        send_datagram(&tx, to, b"small", 8).unwrap();
        assert_eq!(next(&mut b, &rx), 1);
        match b.get(0).0 {
            Message::Parts(mut p) => {
                assert_eq!(p.next(), Some(&b"small"[..]));
                assert_eq!(p.next(), None);
            }
            Message::Whole { .. } => panic!("a small datagram is no pieces"),
        }
        let ps: Vec<Vec<u8>> = pieces::plan(big.len(), 9, pieces::PACKET)
            .unwrap()
            .map(|p| {
                let end = (p.offset() + p.piece).min(p.total);
                [&p.bytes()[..], &big[p.offset()..end]].concat()
            })
            .collect();
        let (first, rest) = ps.split_at(20);
        for half in [first, rest] {
            send_parts(&tx, to, &[&half.concat()]).unwrap();
            assert_eq!(next(&mut b, &rx), 1);
            match b.get(0).0 {
                Message::Parts(p) => assert_eq!(p.collect::<Vec<_>>(), [&half.concat()[..]]),
                Message::Whole { .. } => panic!("half a datagram taken whole"),
            }
        }
    }
}
