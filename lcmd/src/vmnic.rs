//! VM appliance NICs: the wire side of a QEMU guest's NIC as lcmd holds it.
//!
//! # Why a unix datagram socket and not a TAP
//!
//! A TAP device has one character side, and both lcmd (which must see
//! every frame to enforce connections) and QEMU (which must feed the
//! guest's virtio NIC) want to sit on it: `TUNSETIFF` on a single-queue
//! TAP lcmd already holds fails with EBUSY, and a second TAP bridged to
//! lcmd's confuses the bridge (the appliance's MAC is the lcmd TAP's own
//! address). Reading the kernel side of a TAP QEMU opened (AF_PACKET)
//! would work but puts the host's own stack on the appliance's wire (IPv6
//! autoconfiguration, ARP) and leaves a persistent device to clean up.
//!
//! QEMU 7.2's `-netdev dgram,local.type=unix,...,remote.type=unix,...`
//! instead exchanges frames with lcmd over a pair of unix datagram
//! sockets: one datagram is one Ethernet frame, message boundaries are
//! kept, nothing is shared, and nothing appears on the host's network.
//! lcmd binds [`lcmd_socket`] and sends to [`guest_socket`], which QEMU
//! binds; both live in the node's runtime directory ([`NIC_DIR`]), which
//! the node's agent and lcmd share. Either side may start first: a frame
//! sent before the other side is bound is lost, as on a cable not yet
//! plugged in, and TCP retransmits.
//!
//! The socket carries no `virtio_net_hdr`, so QEMU offers the guest no
//! checksum or segmentation offload and the guest sends and receives
//! complete frames of at most one MTU. Frames read here get an empty vnet
//! header in front, so the rest of the datapath treats them as TAP frames;
//! a frame that carries offload work (a TSO segment or a partial checksum
//! from a container appliance's TAP) cannot be handed to a guest and is
//! refused ([`std::io::ErrorKind::InvalidData`]), counted as a drop.

use crate::model;
use crate::tap::VNET_HDR;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where lcmd and the node's VMs keep their NIC sockets (`lcmd run
/// --nic-dir`; the vmctl agent uses the same default).
pub const NIC_DIR: &str = "/run/grid/lcmd";

/// The socket lcmd binds for appliance `app/name` (QEMU's `remote`).
pub fn lcmd_socket(dir: &Path, app: &str, name: &str) -> PathBuf {
    dir.join(format!("{}.lcmd", model::tap_name(app, name)))
}

/// The socket the guest's QEMU binds for appliance `app/name` (QEMU's
/// `local`), where lcmd sends the guest's frames.
pub fn guest_socket(dir: &Path, app: &str, name: &str) -> PathBuf {
    dir.join(format!("{}.vm", model::tap_name(app, name)))
}

/// Waits up to `timeout` for `fd` to become readable.
pub fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// lcmd's end of one VM appliance's NIC; its socket file goes away when
/// this is dropped.
pub struct VmNic {
    sock: UnixDatagram,
    path: PathBuf,
    peer: PathBuf,
    name: String,
}

impl VmNic {
    /// Binds appliance `app/name`'s socket in `dir` (made, mode 0700, if
    /// missing; a stale socket of an earlier lcmd is replaced).
    pub fn bind(dir: &Path, app: &str, name: &str) -> io::Result<VmNic> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let path = lcmd_socket(dir, app, name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let sock = UnixDatagram::bind(&path)?;
        sock.set_nonblocking(true)?;
        Ok(VmNic {
            sock,
            peer: guest_socket(dir, app, name),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path,
        })
    }

    /// The socket's file name, for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `timeout` for a frame to read.
    pub fn readable(&self, timeout: Duration) -> bool {
        wait_readable(&self.sock, timeout)
    }

    /// Reads one frame from the guest into `buf` after an empty vnet
    /// header ([`VNET_HDR`] bytes), like a TAP read; `WouldBlock` when
    /// there is none. A datagram from any socket but the guest's is
    /// skipped (`Ok(0)`): only the guest's QEMU speaks for the appliance.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, from) = self.sock.recv_from(&mut buf[VNET_HDR..])?;
        if from.as_pathname() != Some(self.peer.as_path()) {
            return Ok(0);
        }
        buf[..VNET_HDR].fill(0);
        Ok(VNET_HDR + n)
    }

    /// Sends one frame, given as its vnet header and pieces, to the guest.
    /// The header must be empty (see the module documentation).
    pub fn send_parts(&self, vnet: &[u8], parts: &[&[u8]]) -> io::Result<usize> {
        if vnet.iter().any(|b| *b != 0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a frame with offload work cannot go to a VM's NIC",
            ));
        }
        let frame = parts.concat();
        self.sock.send_to(&frame, &self.peer)
    }
}

impl Drop for VmNic {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_as_datagrams_with_an_empty_vnet_header() {
        let dir = std::env::temp_dir().join(format!("vmnic-{}", std::process::id()));
        let nic = VmNic::bind(&dir, "shop", "web").unwrap();
        let guest = UnixDatagram::bind(guest_socket(&dir, "shop", "web")).unwrap();
        let stranger = UnixDatagram::unbound().unwrap();

        nic.send_parts(&[0; VNET_HDR], &[b"abc", b"def"]).unwrap();
        let mut b = [0u8; 64];
        assert_eq!(guest.recv(&mut b).unwrap(), 6);
        assert_eq!(&b[..6], b"abcdef");
        let mut offload = [0u8; VNET_HDR];
        offload[0] = 1;
        let e = nic.send_parts(&offload, &[b"x"]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        stranger
            .send_to(b"spoof", lcmd_socket(&dir, "shop", "web"))
            .unwrap();
        guest
            .send_to(b"frame", lcmd_socket(&dir, "shop", "web"))
            .unwrap();
        assert!(nic.readable(Duration::from_secs(1)));
        let mut buf = [0xffu8; 64];
        assert_eq!(nic.recv(&mut buf).unwrap(), 0);
        assert_eq!(nic.recv(&mut buf).unwrap(), VNET_HDR + 5);
        assert_eq!(&buf[..VNET_HDR], &[0; VNET_HDR]);
        assert_eq!(&buf[VNET_HDR..VNET_HDR + 5], b"frame");

        drop(nic);
        assert!(!lcmd_socket(&dir, "shop", "web").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
