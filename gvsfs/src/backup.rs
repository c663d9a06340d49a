//! Backup and restore in raw form: `gvsfs export VOL [-o FILE]` and
//! `gvsfs import FILE VOL`. Both are plain file I/O on the mount: the
//! source's data extents are found with `SEEK_DATA`/`SEEK_HOLE` (gvsfs
//! answers them from the block map, so holes are never read), only those
//! extents are copied, and the destination is left sparse where the source
//! is (it is extended with `set_len`, never filled with zeros). Exporting
//! to a pipe is the one case where holes become zeros, since a stream
//! cannot seek.
//!
//! A progress bar (indicatif) is drawn on stderr when stderr is a
//! terminal; its length is the data to copy, not the volume's size.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Bytes read and written per call.
const BUF: usize = 1 << 20;

/// The data extents `(offset, length)` of `f` below `size`, found with
/// `SEEK_DATA`/`SEEK_HOLE`. A file system without them (EINVAL) counts
/// as one extent covering the whole file.
pub fn data_extents(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek on a valid descriptor owned by `f`.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break,
                Some(libc::EINVAL) if out.is_empty() && pos == 0 => {
                    return Ok(vec![(0, size)]);
                }
                _ => return Err(e),
            }
        }
        let data = data as u64;
        if data >= size {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let end = (hole as u64).min(size);
        if end <= data {
            break;
        }
        out.push((data, end - data));
        pos = end;
    }
    Ok(out)
}

/// A progress bar on stderr if it is a terminal, else a hidden one.
fn progress(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Where copied extents go.
enum Sink<'a> {
    /// A file written at the source's offsets; holes are skipped.
    File(&'a File),
    /// A stream (a pipe): holes become zeros.
    Stream(Box<dyn Write + 'a>, u64),
}

impl Sink<'_> {
    fn write_at(&mut self, buf: &[u8], off: u64) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.write_all_at(buf, off),
            Sink::Stream(w, pos) => {
                zeros(w, off - *pos)?;
                w.write_all(buf)?;
                *pos = off + buf.len() as u64;
                Ok(())
            }
        }
    }
}

/// Writes `n` zero bytes to `w`.
fn zeros(w: &mut Box<dyn Write + '_>, mut n: u64) -> std::io::Result<()> {
    let z = [0u8; 64 * 1024];
    while n > 0 {
        let k = n.min(z.len() as u64) as usize;
        w.write_all(&z[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Copies the data extents of `src` (of `size` bytes) to `dst`; returns
/// the bytes copied.
fn copy_extents(src: &File, src_name: &Path, size: u64, dst: &mut Sink, what: &str) -> Result<u64> {
    let extents = data_extents(src, size)
        .with_context(|| format!("finding data in {}", src_name.display()))?;
    let total: u64 = extents.iter().map(|e| e.1).sum();
    let bar = progress(total, what);
    let mut buf = vec![0u8; BUF];
    for (off, len) in extents {
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(BUF as u64) as usize;
            let n = src
                .read_at(&mut buf[..want], off + done)
                .with_context(|| format!("reading {}", src_name.display()))?;
            if n == 0 {
                break; // the file shrank under us
            }
            dst.write_at(&buf[..n], off + done)?;
            done += n as u64;
            bar.inc(n as u64);
        }
    }
    bar.finish_and_clear();
    Ok(total)
}

/// `gvsfs export VOL [-o FILE]`: writes the raw contents of `vol` to
/// `out` (or stdout), sparse. Returns the data bytes copied.
pub fn export(vol: &Path, out: Option<&Path>) -> Result<u64> {
    let src = File::open(vol).with_context(|| format!("opening {}", vol.display()))?;
    let meta = src.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a volume (not a regular file)", vol.display());
    }
    let size = meta.len();
    let what = format!("export {}", vol.display());
    match out {
        Some(path) => {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let n = copy_extents(&src, vol, size, &mut Sink::File(&f), &what)
                .with_context(|| format!("writing {}", path.display()))?;
            f.set_len(size)?;
            f.sync_all()
                .with_context(|| format!("syncing {}", path.display()))?;
            Ok(n)
        }
        None => {
            let stdout = std::io::stdout();
            // A regular file on stdout (`> FILE`) is written sparse; a pipe
            // gets the zeros.
            let lock = stdout.lock();
            // SAFETY: fstat on stdout's descriptor into a zeroed struct.
            let regular = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(lock.as_raw_fd(), &mut st) == 0
                    && (st.st_mode & libc::S_IFMT) == libc::S_IFREG
            };
            if regular {
                // Borrow stdout's descriptor as a File without closing it.
                let f = std::mem::ManuallyDrop::new(unsafe {
                    // SAFETY: the descriptor stays open for the program's
                    // life and ManuallyDrop never closes it.
                    <File as std::os::fd::FromRawFd>::from_raw_fd(lock.as_raw_fd())
                });
                let n = copy_extents(&src, vol, size, &mut Sink::File(&f), &what)?;
                f.set_len(size)?;
                Ok(n)
            } else {
                let mut sink = Sink::Stream(Box::new(std::io::BufWriter::new(lock)), 0);
                let n = copy_extents(&src, vol, size, &mut sink, &what)?;
                if let Sink::Stream(mut w, pos) = sink {
                    zeros(&mut w, size - pos)?;
                    w.flush()?;
                }
                Ok(n)
            }
        }
    }
}

/// The gvs mount (a FUSE file system of type `fuse.gvsfs` or source
/// `gvs`) `path` is on, if any.
pub fn gvs_mount_of(path: &Path) -> Option<PathBuf> {
    let path = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(PathBuf, bool)> = None;
    for line in info.lines() {
        // id parent major:minor root mountpoint opts... - fstype source superopts
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(mp), Some(dash)) = (f.get(4), f.iter().position(|x| *x == "-")) else {
            continue;
        };
        let mp = PathBuf::from(mp.replace("\\040", " "));
        let fstype = f.get(dash + 1).copied().unwrap_or_default();
        let source = f.get(dash + 2).copied().unwrap_or_default();
        let gvs = fstype == "fuse.gvsfs" || (fstype.starts_with("fuse") && source == "gvs");
        if path.starts_with(&mp)
            && best
                .as_ref()
                .is_none_or(|(b, _)| mp.as_os_str().len() >= b.as_os_str().len())
        {
            best = Some((mp, gvs));
        }
    }
    match best {
        Some((mp, true)) => Some(mp),
        _ => None,
    }
}

/// `gvsfs import FILE VOL`: creates the volume `vol` (replacing it with
/// `force`) from the raw image `file`, writing only `file`'s data
/// extents, then sets its size and fsyncs it. Returns the data bytes
/// copied.
pub fn import(file: &Path, vol: &Path, force: bool) -> Result<u64> {
    let src = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let meta = src.metadata()?;
    if !meta.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    let name = vol
        .file_name()
        .with_context(|| format!("{}: needs a file name", vol.display()))?;
    let parent = match vol.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!("{}: no such directory", parent.display());
    }
    if gvs_mount_of(&parent).is_none() {
        bail!("{} is not on a gvs mount (/gvs)", vol.display());
    }
    let vol = parent.join(name);
    if vol.is_dir() {
        bail!("{} is a directory", vol.display());
    }
    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o644);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let dst = opts.open(&vol).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!("{} exists (use --force to replace it)", vol.display())
        } else {
            anyhow::anyhow!("creating {}: {e}", vol.display())
        }
    })?;
    let size = meta.len();
    let what = format!("import {}", vol.display());
    let n = copy_extents(&src, file, size, &mut Sink::File(&dst), &what)
        .with_context(|| format!("writing {}", vol.display()))?;
    dst.set_len(size)
        .with_context(|| format!("setting the size of {}", vol.display()))?;
    dst.sync_all()
        .with_context(|| format!("syncing {}", vol.display()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_of_a_sparse_file_and_a_sparse_copy() {
        let dir = std::env::temp_dir().join(format!("gvsbk{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        let f = File::create(&a).unwrap();
        f.write_all_at(&[7u8; 8192], 1 << 20).unwrap();
        f.set_len(8 << 20).unwrap();
        let ext = data_extents(&File::open(&a).unwrap(), 8 << 20).unwrap();
        assert!(
            !ext.is_empty()
                && ext
                    .iter()
                    .all(|(o, l)| *o <= 1 << 20 && o + l >= (1 << 20) + 8192)
        );
        let b = dir.join("b");
        export(&a, Some(&b)).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
