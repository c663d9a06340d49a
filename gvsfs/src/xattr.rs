//! The client side of the `gvs.*` extended attributes through which the
//! `gvsfs` commands ask the mounted daemon for things (a rebalance, a
//! rollback) and read what it reports.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Result};

fn c_strings(path: &Path, name: &str) -> Result<(CString, CString)> {
    Ok((
        CString::new(path.as_os_str().as_bytes())?,
        CString::new(name)?,
    ))
}

/// Sets attribute `name` of `path` to `value`; the error is the errno's.
pub fn set(path: &Path, name: &str, value: &str) -> std::io::Result<()> {
    let (p, n) = c_strings(path, name).map_err(std::io::Error::other)?;
    // SAFETY: valid C strings and a buffer of the given length, alive for the call.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attribute `name` of `path`, as text (at most 64 KiB).
pub fn get(path: &Path, name: &str) -> Result<String> {
    let (p, n) = c_strings(path, name)?;
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: valid C strings and a buffer of the given length, alive for the call.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        bail!("reading {name} of {}: {e}", path.display());
    }
    buf.truncate(r as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
