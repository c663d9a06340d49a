//! The tunnel's UDP socket: bound with large buffers, small datagrams sent
//! from their parts with `sendmsg` (no copy into one buffer), large ones
//! as pieces in one `sendmsg` with UDP GSO (see [`crate::pieces`]), and
//! everything received in batches with `recvmmsg`, UDP GRO coalescing the
//! pieces of one datagram into one buffer.

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
pub fn send_parts(s: &UdpSocket, to: SocketAddrV4, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut addr = sockaddr(to);
    // SAFETY: zeroed iovecs are valid; each is then set to a live slice.
    let mut iov: [libc::iovec; 4] = unsafe { std::mem::zeroed() };
    let n = parts.len().min(4);
    for (v, p) in iov.iter_mut().zip(&parts[..n]) {
        v.iov_base = p.as_ptr() as *mut libc::c_void;
        v.iov_len = p.len();
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

/// Sends `buf`, the pieces of one datagram back to back, each `seg`
/// bytes but the last, to `to`: one `sendmsg` that the kernel segments
/// (UDP GSO), or one per piece where GSO is refused.
pub fn send_segmented(
    s: &UdpSocket,
    to: SocketAddrV4,
    buf: &[u8],
    seg: usize,
) -> std::io::Result<()> {
    let mut addr = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let size = seg as u16;
    // A u64 array keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut addr as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
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
        std::ptr::write_unaligned(libc::CMSG_DATA(cm) as *mut u16, size);
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
    for piece in buf.chunks(seg) {
        send_parts(s, to, &[piece])?;
    }
    Ok(())
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: a zeroed sockaddr_in is valid.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

/// Buffers for receiving up to [`RecvBatch::BATCH`] datagrams per call.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    from: Vec<SocketAddrV4>,
    /// GRO's segment size for each buffer that holds several datagrams.
    segs: Vec<Option<usize>>,
    /// One aligned control buffer per message (for the GRO cmsg).
    control: Vec<[u64; 4]>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![vec![0u8; Self::SIZE]; Self::BATCH],
            lens: vec![0; Self::BATCH],
            from: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); Self::BATCH],
            segs: vec![None; Self::BATCH],
            control: vec![[0; 4]; Self::BATCH],
        }
    }
}

impl RecvBatch {
    /// Datagrams per call.
    pub const BATCH: usize = 32;
    /// Bytes per datagram buffer.
    pub const SIZE: usize = 65536;

    /// Receives what is queued on `s` (without waiting), up to
    /// [`Self::BATCH`] datagrams; how many.
    pub fn recv(&mut self, s: &UdpSocket) -> usize {
        // SAFETY: zeroed C structs are valid initial values.
        let mut addrs: [libc::sockaddr_in; Self::BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; Self::BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; Self::BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..Self::BATCH {
            iovs[i].iov_base = self.bufs[i].as_mut_ptr() as *mut libc::c_void;
            iovs[i].iov_len = Self::SIZE;
            msgs[i].msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            msgs[i].msg_hdr.msg_iov = &mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = self.control[i].as_mut_ptr() as *mut libc::c_void;
            msgs[i].msg_hdr.msg_controllen = std::mem::size_of::<[u64; 4]>() as _;
        }
        // SAFETY: every header points at a live buffer and address of the
        // sizes given, for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                s.as_raw_fd(),
                msgs.as_mut_ptr(),
                Self::BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return 0;
        }
        for i in 0..n as usize {
            let a = addrs[i];
            self.from[i] = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            );
            self.lens[i] = msgs[i].msg_len as usize;
            self.segs[i] = gro_size(&msgs[i].msg_hdr);
        }
        n as usize
    }

    /// The datagrams in buffer `i` of the last batch (several when GRO
    /// coalesced them) and their sender.
    pub fn get(&self, i: usize) -> (impl Iterator<Item = &[u8]>, SocketAddrV4) {
        let buf = &self.bufs[i][..self.lens[i]];
        let seg = self.segs[i].filter(|&s| s > 0).unwrap_or(buf.len().max(1));
        (buf.chunks(seg), self.from[i])
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
