//! The TAP devices that are appliance NICs: created by lcmd (so that lcmd
//! holds their file descriptor, even after the device is moved into an
//! appliance's network namespace or handed to QEMU), given the appliance's
//! MAC, and read with a timeout so that their reader threads can stop.
//!
//! Built on `tun-tap` as the project asked; it opens `/dev/net/tun` with
//! `IFF_TAP | IFF_NO_PI`. Offloads (`IFF_VNET_HDR`) and multiqueue would
//! need our own ioctls and are not used yet.

use crate::model::Mac;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;
use tun_tap::{Iface, Mode};

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
    iface: Iface,
}

impl Tap {
    /// Creates TAP `name` with the appliance's MAC, up.
    pub fn create(name: &str, mac: Mac) -> Result<Tap, TapError> {
        let iface =
            Iface::without_packet_info(name, Mode::Tap).map_err(|source| TapError::Create {
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
        Ok(Tap { iface })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        self.iface.name()
    }

    /// Waits up to `timeout` for a frame to read.
    pub fn readable(&self, timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.iface.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
        n > 0 && p.revents & libc::POLLIN != 0
    }

    /// Reads one frame (call after [`Tap::readable`]).
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.iface.recv(buf)
    }

    /// Writes one frame to the appliance.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.iface.send(frame)
    }
}
