//! An appliance's NIC as the datapath sees it, whatever it is: a TAP
//! device (a container appliance) or a VM's socket ([`crate::vmnic`]).
//! Either way a read gives a frame with a vnet header in front and a write
//! takes one, so the engine has one path for both.

use crate::model::{Appliance, NicKind};
use crate::tap::{Tap, TapError, NO_VNET};
use crate::vmnic::VmNic;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Errors opening a NIC.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// The TAP device could not be made.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The VM's socket could not be bound.
    #[error("binding the NIC socket of {app}/{name} in {dir}: {source}")]
    Socket {
        /// Application.
        app: String,
        /// Appliance.
        name: String,
        /// The socket directory.
        dir: String,
        /// Why.
        source: io::Error,
    },
}

/// One appliance NIC held by lcmd.
pub enum Nic {
    /// A TAP device.
    Tap(Tap),
    /// A QEMU guest's socket.
    Vm(VmNic),
}

impl Nic {
    /// Opens the NIC appliance `a` declares; VM sockets go in `dir`.
    pub fn open(a: &Appliance, dir: &Path) -> Result<Nic, NicError> {
        Ok(match a.nic {
            NicKind::Tap => Nic::Tap(Tap::create(&a.tap_name(), a.mac)?),
            NicKind::Vm => {
                Nic::Vm(
                    VmNic::bind(dir, &a.app, &a.name).map_err(|source| NicError::Socket {
                        app: a.app.clone(),
                        name: a.name.clone(),
                        dir: dir.display().to_string(),
                        source,
                    })?,
                )
            }
        })
    }

    /// Its name, for logs.
    pub fn name(&self) -> &str {
        match self {
            Nic::Tap(t) => t.name(),
            Nic::Vm(v) => v.name(),
        }
    }

    /// Waits up to `timeout` for a frame to read.
    pub fn readable(&self, timeout: Duration) -> bool {
        match self {
            Nic::Tap(t) => t.readable(timeout),
            Nic::Vm(v) => v.readable(timeout),
        }
    }

    /// Reads one frame with its vnet header in front; `WouldBlock` when
    /// there is none; `Ok(0)` for something to ignore.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Nic::Tap(t) => t.recv(buf),
            Nic::Vm(v) => v.recv(buf),
        }
    }

    /// Writes one complete frame to the appliance.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.send_parts(&NO_VNET, &[frame])
    }

    /// Writes one frame given as its vnet header and pieces (at most three).
    pub fn send_parts(&self, vnet: &[u8], parts: &[&[u8]]) -> io::Result<usize> {
        match self {
            Nic::Tap(t) => t.send_parts(vnet, parts),
            Nic::Vm(v) => v.send_parts(vnet, parts),
        }
    }
}
