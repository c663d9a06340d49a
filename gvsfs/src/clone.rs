//! Copy-on-write clones: a clone is a new inode record holding the
//! source's root. Chunks are immutable and each volume commits new roots
//! for its own writes, so the two sides share every chunk until one of
//! them writes, and neither ever sees the other's writes. The work is
//! O(1) in the volume's size: a pin, a flush request to the source's
//! writer (if any), and one metad transaction; no chunk is read or moved.
//!
//! Replicas: the clone gets the source's replica set. Every chunk it
//! shares is already there, so nothing is copied at clone time, and its
//! own writes go to the same nodes (its mirror count is the source's).
//! Changing `gvs.mirrors` of the clone later moves it like any volume.
//! The cost is concentration: clones of one catalog image start on that
//! image's nodes; reads fall back to any node holding a chunk.
//!
//! The ioctl that `gvsfs clone` uses, for other tools:
//!
//! ```c
//! /* On an open file of the source (any access mode). */
//! struct gvs_clone_arg {
//!     uint64_t dst_parent; /* st_ino of the destination's directory (same mount) */
//!     uint32_t flags;      /* GVS_CLONE_REPLACE: replace an existing destination */
//!     uint32_t name_len;   /* bytes of name used, 1..=255 */
//!     char     name[256];  /* the destination's name in dst_parent (no NUL needed) */
//! };                       /* 272 bytes */
//! #define GVS_CLONE_REPLACE 1
//! #define GVS_IOC_CLONE _IOW('G', 1, struct gvs_clone_arg)   /* 0x41104701 */
//! ```
//!
//! Errors: EEXIST (the destination exists, no GVS_CLONE_REPLACE), ENOENT,
//! EISDIR (the source is not a volume), ENOTDIR, EINVAL (a bad name or
//! struct), EROFS (a destination inside a snapshot).

use std::path::{Path, PathBuf};

use metad::{Compare, CompareTarget, Txn};

use crate::blockmap::BlockMap;
use crate::error::{GvsError, Result};
use crate::gvs::{del, put, unchanged, Gvs, Pin};
use crate::meta::{self, Dirent, Inode, Kind};
use crate::stats::Stats;

/// `_IOW('G', 1, struct gvs_clone_arg)`.
pub const GVS_IOC_CLONE: u32 = (1 << 30) | ((CLONE_ARG_SIZE as u32) << 16) | (b'G' as u32) << 8 | 1;
/// Size of `struct gvs_clone_arg`.
pub const CLONE_ARG_SIZE: usize = 272;
/// `gvs_clone_arg.flags`: replace an existing destination.
pub const GVS_CLONE_REPLACE: u32 = 1;

/// The ioctl's argument, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneArg {
    /// The destination directory's inode number.
    pub dst_parent: u64,
    /// `GVS_CLONE_*` flags.
    pub flags: u32,
    /// The destination's name.
    pub name: String,
}

impl CloneArg {
    /// The C struct's bytes (what `gvsfs clone` passes).
    pub fn encode(&self) -> Result<[u8; CLONE_ARG_SIZE]> {
        let n = self.name.as_bytes();
        if n.is_empty() || n.len() > 255 {
            return Err(GvsError::Invalid(format!("bad name {:?}", self.name)));
        }
        let mut b = [0u8; CLONE_ARG_SIZE];
        b[0..8].copy_from_slice(&self.dst_parent.to_ne_bytes());
        b[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        b[12..16].copy_from_slice(&(n.len() as u32).to_ne_bytes());
        b[16..16 + n.len()].copy_from_slice(n);
        Ok(b)
    }

    /// Decodes the struct the kernel passed.
    pub fn decode(b: &[u8]) -> Result<CloneArg> {
        if b.len() != CLONE_ARG_SIZE {
            return Err(GvsError::Invalid(format!(
                "gvs_clone_arg of {} bytes, not {CLONE_ARG_SIZE}",
                b.len()
            )));
        }
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let len = u32_at(12) as usize;
        if len == 0 || len > 255 {
            return Err(GvsError::Invalid(format!("name_len {len}")));
        }
        let name = std::str::from_utf8(&b[16..16 + len])
            .map_err(|_| GvsError::Invalid("names must be UTF-8".into()))?
            .to_string();
        Ok(CloneArg {
            dst_parent: u64::from_ne_bytes(b[0..8].try_into().expect("8 bytes")),
            flags: u32_at(8),
            name,
        })
    }
}

/// What a clone copies.
pub enum Source {
    /// A live volume: its writer flushes first, then its committed root.
    Volume(u64),
    /// A volume of a snapshot: its record there (a restore).
    Frozen(Box<Inode>),
}

/// Where a clone goes.
pub enum Target {
    /// A new file `name` in `parent`, owned by `uid:gid`.
    New {
        /// The directory.
        parent: u64,
        /// The name.
        name: String,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// An existing volume, whose content is replaced.
    Existing(u64),
}

/// Reads the source's record once its writer has flushed. Returns it with
/// the flush keys to delete in the final transaction.
fn source_record(gvs: &Gvs, src: &Source) -> Result<(Inode, Vec<String>)> {
    let (rec, leftovers) = match src {
        Source::Volume(ino) => {
            let leftovers = gvs.flush_writers(&[*ino])?;
            (gvs.inode(*ino)?.0, leftovers)
        }
        Source::Frozen(rec) => ((**rec).clone(), Vec::new()),
    };
    match rec.kind {
        Kind::File => Ok((rec, leftovers)),
        Kind::Dir => Err(GvsError::IsDir),
        Kind::Symlink => Err(GvsError::Invalid("a symlink is not a volume".into())),
    }
}

/// Makes a copy-on-write clone of `src` at `dst`; returns the destination's
/// inode number and record. O(1): no chunk is read or written.
pub fn clone(gvs: &Gvs, src: &Source, dst: Target) -> Result<(u64, Inode)> {
    let pin = gvs.pin()?;
    let r = (|| {
        let (srec, leftovers) = source_record(gvs, src)?;
        match dst {
            Target::New {
                parent,
                name,
                uid,
                gid,
            } => clone_new(gvs, &pin, &srec, &leftovers, parent, &name, uid, gid),
            Target::Existing(ino) => clone_into(gvs, &pin, &srec, &leftovers, ino),
        }
    })();
    match &r {
        Ok(_) => Stats::add(&gvs.stats.clones, 1),
        Err(_) => gvs.unpin(&pin),
    }
    r
}

/// The missed-commit records that make the repair bring a clone of a
/// degraded volume in sync: its record says some replica lacks chunks but
/// not which, so every replica walks the root and copies what it lacks
/// (without them the clone stayed degraded for good).
pub(crate) fn repairs(ino: u64, rec: &Inode) -> Vec<metad::Op> {
    if !rec.degraded || rec.root.is_none() {
        return Vec::new();
    }
    rec.replicas
        .iter()
        .map(|n| put(&meta::missing_key(n, ino), Vec::new()))
        .collect()
}

/// The destination's record: the source's content, its own identity
/// (also what a rollback restores, see [`crate::restore`]).
pub(crate) fn cloned(srec: &Inode, mut d: Inode) -> Inode {
    d.size = srec.size;
    d.root = srec.root;
    d.written = srec.written;
    d.block_size = srec.block_size;
    d.mirrors = srec.mirrors;
    d.replicas = srec.replicas.clone();
    d.degraded = srec.degraded;
    d.min_copies = srec.min_copies;
    d.mtime = meta::now();
    d.ctime = d.mtime;
    d
}

#[allow(clippy::too_many_arguments)] // one transaction's worth of inputs
fn clone_new(
    gvs: &Gvs,
    pin: &Pin,
    srec: &Inode,
    leftovers: &[String],
    parent: u64,
    name: &str,
    uid: u32,
    gid: u32,
) -> Result<(u64, Inode)> {
    crate::gvs::check_name(name)?;
    if name == crate::snapshot::SNAPSHOTS {
        return Err(GvsError::Exists);
    }
    let (p, p_rev) = gvs.inode(parent)?;
    if p.kind != Kind::Dir {
        return Err(GvsError::NotDir);
    }
    let ino = gvs.alloc_ino()?;
    let mut fresh = Inode::new(Kind::File, srec.perm, uid, gid);
    fresh.xattrs = srec.xattrs.clone();
    let rec = cloned(srec, fresh);
    let dk = meta::dir_key(parent, name);
    let mut np = p.clone();
    np.mtime = meta::now();
    np.ctime = np.mtime;
    let mut success = vec![
        put(&meta::ino_key(ino), rec.encode()),
        put(
            &dk,
            Dirent {
                ino,
                kind: Kind::File,
            }
            .encode(),
        ),
        put(&meta::ino_key(parent), np.encode()),
        pin.release(),
    ];
    success.extend(repairs(ino, &rec));
    success.extend(leftovers.iter().map(|k| del(k)));
    let t = Txn {
        compare: vec![
            unchanged(&dk, 0),
            unchanged(&meta::ino_key(parent), p_rev),
            pin.compare(),
        ],
        success,
        failure: vec![],
    };
    if gvs.txn(t)? {
        return Ok((ino, rec));
    }
    if gvs.mirror.get(&dk).is_some() {
        return Err(GvsError::Exists);
    }
    if gvs.mirror.get(&meta::ino_key(parent)).is_none() {
        return Err(GvsError::NotFound);
    }
    Err(GvsError::Conflict(format!(
        "clone to {name}: the directory changed meanwhile"
    )))
}

fn clone_into(
    gvs: &Gvs,
    pin: &Pin,
    srec: &Inode,
    leftovers: &[String],
    ino: u64,
) -> Result<(u64, Inode)> {
    let vol = gvs.volume(ino);
    let mut v = vol.lock().unwrap_or_else(|e| e.into_inner());
    let (drec, _) = gvs.inode(ino)?;
    if drec.kind != Kind::File {
        return Err(GvsError::IsDir);
    }
    // The destination's writer (wherever it is) hands its lease over: its
    // buffered writes are superseded, and no later commit of its old map
    // can overwrite the clone.
    v.ensure_lease(gvs)?;
    let epoch = v.epoch().ok_or(GvsError::Fenced(ino))?;
    let (drec, d_rev) = gvs.inode(ino)?;
    let rec = cloned(srec, drec);
    let k = meta::ino_key(ino);
    let mut success = vec![put(&k, rec.encode()), pin.release()];
    success.extend(repairs(ino, &rec));
    success.extend(leftovers.iter().map(|k| del(k)));
    let t = Txn {
        compare: vec![
            Compare {
                key: meta::lease_key(ino).into_bytes(),
                target: CompareTarget::ModRev(epoch),
            },
            unchanged(&k, d_rev),
            pin.compare(),
        ],
        success,
        failure: vec![],
    };
    if !gvs.txn(t)? {
        return Err(GvsError::Conflict(format!(
            "clone into {ino:#x}: the volume changed meanwhile"
        )));
    }
    let fetch = |id: &crate::chunk::ChunkId| Ok(gvs.fetch(id, &rec.replicas)?.to_vec());
    v.adopt(rec.root, BlockMap::load(rec.root, &fetch)?);
    drop(v);
    gvs.invalidate(ino);
    Ok((ino, rec))
}

/// Client side of `gvsfs clone` (and `gvsfs rollback`): the clone ioctl
/// on `src`, naming `dst` by its directory's inode number and its name.
/// `force` replaces an existing `dst` (GVS_CLONE_REPLACE). If `dst` is a
/// directory, the clone goes into it under `src`'s name.
pub fn clone_path(src: &Path, dst: &Path, force: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    let f = std::fs::File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut dst = dst.to_path_buf();
    if dst.is_dir() {
        let name = src
            .file_name()
            .with_context(|| format!("{} has no file name", src.display()))?;
        dst.push(name);
    }
    let name = dst
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: the destination needs a UTF-8 file name", dst.display()))?
        .to_string();
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let pmeta =
        std::fs::metadata(&parent).with_context(|| format!("reading {}", parent.display()))?;
    if pmeta.dev() != f.metadata()?.dev() {
        anyhow::bail!(
            "{} and {} are not on the same gvs mount",
            src.display(),
            dst.display()
        );
    }
    let arg = CloneArg {
        dst_parent: pmeta.ino(),
        flags: if force { GVS_CLONE_REPLACE } else { 0 },
        name,
    }
    .encode()?;
    // SAFETY: the request number encodes the struct's size, and `arg`
    // is exactly that many bytes, alive for the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), GVS_IOC_CLONE as libc::Ioctl, arg.as_ptr()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::EEXIST) => " (use --force to replace it)",
            Some(libc::ENOTTY) => " (not a gvs volume)",
            _ => "",
        };
        anyhow::bail!("cloning {} to {}: {e}{hint}", src.display(), dst.display());
    }
    Ok(())
}
