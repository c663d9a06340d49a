//! The client side of the `gvs.*` extended attributes through which the
//! `gvsfs` commands ask the mounted daemon for things (a rebalance, a
//! rollback) and read what it reports; and the bounds on the attributes a
//! file stores in its inode record.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Result};

use crate::error::GvsError;

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

/// The longest value of one stored attribute, as Linux's XATTR_SIZE_MAX.
pub const MAX_VALUE: usize = 64 << 10;
/// The most bytes (names and values) a file's stored attributes hold: they
/// live in its inode record, which every commit of the file rewrites, and
/// that record must stay well under metad's value limit.
pub const MAX_TOTAL: usize = 256 << 10;
/// The most stored attributes one file has.
pub const MAX_COUNT: usize = 1024;

/// Whether setting `name` to `value` keeps a file's stored attributes
/// (`user.*` and the like, not the virtual `gvs.*`) within the bounds:
/// E2BIG past [`MAX_VALUE`], ENOSPC past [`MAX_TOTAL`] or [`MAX_COUNT`],
/// as a local file system answers when an inode has no room left.
pub fn check_room(
    xattrs: &BTreeMap<String, Vec<u8>>,
    name: &str,
    value: &[u8],
) -> crate::Result<()> {
    if value.len() > MAX_VALUE {
        return Err(GvsError::ValueTooLong(format!(
            "{name}: {} bytes, at most {MAX_VALUE}",
            value.len()
        )));
    }
    let others = xattrs.iter().filter(|(n, _)| n.as_str() != name);
    let (count, bytes) = others.fold((1, name.len() + value.len()), |(c, b), (n, v)| {
        (c + 1, b + n.len() + v.len())
    });
    if count > MAX_COUNT {
        return Err(GvsError::NoSpace(format!(
            "{name}: a file holds at most {MAX_COUNT} attributes"
        )));
    }
    if bytes > MAX_TOTAL {
        return Err(GvsError::NoSpace(format!(
            "{name}: a file's attributes hold at most {MAX_TOTAL} bytes; this one would make {bytes}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_on_value_total_and_count() {
        let mut x = BTreeMap::new();
        assert!(check_room(&x, "user.a", &[0; MAX_VALUE]).is_ok());
        assert!(matches!(
            check_room(&x, "user.a", &[0; MAX_VALUE + 1]),
            Err(GvsError::ValueTooLong(_))
        ));
        for i in 0..4 {
            x.insert(format!("user.{i}"), vec![0; 60_000]);
        }
        assert!(matches!(
            check_room(&x, "user.new", &[0; 60_000]),
            Err(GvsError::NoSpace(_))
        ));
        // Replacing a value counts the new one, not both.
        assert!(check_room(&x, "user.0", &[0; 60_000]).is_ok());
        let many: BTreeMap<String, Vec<u8>> = (0..MAX_COUNT)
            .map(|i| (format!("u{i}"), Vec::new()))
            .collect();
        assert!(matches!(
            check_room(&many, "user.more", b""),
            Err(GvsError::NoSpace(_))
        ));
        assert!(check_room(&many, "u0", b"v").is_ok());
    }
}
