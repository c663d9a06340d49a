//! The FUSE face of GVS: turns kernel requests into namespace operations
//! (gvs.rs) and volume reads and writes (volume.rs), answers attributes
//! from the watched namespace copy, and invalidates the kernel's caches
//! when another node changes something.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::stats::Stats;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use metad::{Event, EventKind};

use crate::chunk::Lookup;
use crate::clone::{CloneArg, Source, Target, GVS_CLONE_REPLACE, GVS_IOC_CLONE};
use crate::control::{self, GRID};
use crate::error::{GvsError, Result};
use crate::gvs::{conf, Gvs};
use crate::meta::{self, Inode, Kind};
use crate::snapshot::{self, classify, entry_ino, snapdir_ino, Virt, SNAPSHOTS};

const TTL: Duration = Duration::from_secs(1);
/// The longest name of a directory entry, as statfs reports it.
const NAME_MAX: usize = 255;

/// What the watch asks the kernel to forget.
pub enum Inval {
    /// A name in a directory.
    Entry(u64, String),
    /// An inode's attributes and cached data.
    Inode(u64),
}

struct Fh {
    /// The file it opens.
    ino: u64,
    /// The lease generation this handle wrote under.
    gen: Option<u64>,
}

/// The files open on this node, and which of them lost their last name
/// while open: those keep their inode until their last handle is released.
#[derive(Default)]
struct Opened {
    handles: HashMap<u64, usize>,
    unlinked: std::collections::HashSet<u64>,
}

/// What a destination holds after a range clone: its whole content up to
/// `size` is the source's at `src_root`, so the next range of the same
/// copy can be cloned too.
#[derive(Clone, Copy, PartialEq)]
struct CloneTag {
    src: u64,
    src_root: Option<crate::chunk::ChunkId>,
    dst_root: Option<crate::chunk::ChunkId>,
    size: u64,
}

/// The file system served at the mount point.
pub struct GvsFs {
    gvs: Arc<Gvs>,
    fhs: Mutex<HashMap<u64, Fh>>,
    next_fh: AtomicU64,
    writeback: bool,
    snaps: snapshot::Cache,
    tags: Mutex<HashMap<u64, CloneTag>>,
    grid: Option<control::Grid>,
    opened: Mutex<Opened>,
}

/// Answers a request on the control tree (`/gvs/.grid`) and returns.
macro_rules! grid {
    ($reply:expr, $e:expr, |$v:ident| $ok:expr) => {{
        match $e {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
        return;
    }};
}

/// Refuses changes to anything virtual (snapshots).
fn writable(ino: u64) -> Result<u64> {
    match classify(ino) {
        Virt::Real(i) => Ok(i),
        _ => Err(GvsError::ReadOnly),
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    }
}

fn nanos(t: TimeOrNow) -> i64 {
    match t {
        TimeOrNow::Now => meta::now(),
        TimeOrNow::SpecificTime(t) => t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64),
    }
}

fn name_str(name: &OsStr) -> Result<&str> {
    name.to_str()
        .ok_or_else(|| GvsError::Invalid("names must be UTF-8".into()))
}

/// A directory entry's name: ENAMETOOLONG past NAME_MAX, in every call
/// that takes one (the kernel lets FUSE names up to 1024 bytes through).
fn entry_name(name: &OsStr) -> Result<&str> {
    if name.len() > NAME_MAX {
        return Err(GvsError::NameTooLong(name.len()));
    }
    name_str(name)
}

impl GvsFs {
    /// The file system over a node's context.
    pub fn new(gvs: Arc<Gvs>, writeback: bool) -> GvsFs {
        GvsFs {
            gvs,
            fhs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            writeback,
            snaps: snapshot::Cache::default(),
            tags: Mutex::new(HashMap::new()),
            grid: None,
            opened: Mutex::new(Opened::default()),
        }
    }

    /// With the control tree `/gvs/.grid` (see [`control`]).
    pub fn with_grid(mut self, grid: control::Grid) -> GvsFs {
        self.grid = Some(grid);
        self
    }

    /// The control tree, when `ino` is in it.
    fn grid_of(&self, ino: u64) -> Option<&control::Grid> {
        self.grid.as_ref().filter(|_| control::is_grid(ino))
    }

    /// A snapshot entry's record.
    fn entry_rec(&self, id: u64, idx: u32) -> Result<Inode> {
        let view = self.snaps.view(&self.gvs, id)?;
        Ok(view.entry(idx)?.inode.clone())
    }

    /// The record reads of `ino` follow: the volume's, or a snapshot's.
    fn read_rec(&self, ino: u64) -> Result<Inode> {
        match classify(ino) {
            Virt::Real(i) => Ok(self.gvs.inode(i)?.0),
            Virt::Entry { id, idx } => self.entry_rec(id, idx),
            Virt::SnapDir(_) => Err(GvsError::IsDir),
        }
    }

    fn snapdir_attr(&self, dir: u64) -> Result<FileAttr> {
        let (rec, _) = self.gvs.inode(dir)?;
        if rec.kind != Kind::Dir {
            return Err(GvsError::NotFound);
        }
        let mut a = self.attr(dir, &rec);
        a.ino = INodeNo(snapdir_ino(dir));
        a.perm = 0o555;
        Ok(a)
    }

    fn attr(&self, ino: u64, rec: &Inode) -> FileAttr {
        let (size, written) = match (rec.kind, self.gvs.volume_if_any(ino)) {
            (Kind::File, Some(v)) => {
                let v = v.lock().unwrap_or_else(|e| e.into_inner());
                (v.size(rec), v.written(rec))
            }
            (Kind::Symlink, _) => (rec.target.len() as u64, 0),
            _ => (rec.size, rec.written),
        };
        let kind = match rec.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
            Kind::Symlink => FileType::Symlink,
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: written * rec.block_size as u64 / 512,
            atime: time(rec.atime),
            mtime: time(rec.mtime),
            ctime: time(rec.ctime),
            crtime: time(rec.ctime),
            kind,
            perm: rec.perm,
            nlink: if rec.kind == Kind::Dir {
                2
            } else if self.opened().unlinked.contains(&ino) {
                0
            } else {
                1
            },
            uid: rec.uid,
            gid: rec.gid,
            rdev: 0,
            blksize: rec.block_size,
            flags: 0,
        }
    }

    /// The attributes of a volume, directory or snapshot entry (the
    /// control tree answers its own, with its own errnos).
    fn getattr_of(&self, ino: u64) -> Result<FileAttr> {
        match classify(ino) {
            Virt::Real(i) => {
                let (rec, _) = self.gvs.inode(i)?;
                Ok(self.attr(i, &rec))
            }
            Virt::SnapDir(d) => self.snapdir_attr(d),
            Virt::Entry { id, idx } => Ok(self.attr(ino, &self.entry_rec(id, idx)?)),
        }
    }

    /// A copy_file_range that can be a clone: the destination holds
    /// nothing past `off_out` that differs from the source (it is empty,
    /// or the previous range of the same copy), the offsets are equal and
    /// the source has no data between the destination's end and `off_in`.
    /// The destination then becomes a clone of the source, cut at the
    /// range's end. `None`: not a clone; the kernel copies the data.
    fn clone_range(
        &self,
        src: u64,
        off_in: u64,
        dst: u64,
        off_out: u64,
        len: u64,
    ) -> Result<Option<u64>> {
        let dst = writable(dst)?;
        if src == dst || off_in != off_out {
            return Ok(None);
        }
        let (source, srec) = match classify(src) {
            Virt::Real(s) => {
                self.gvs.flush_writers(&[s])?;
                (Source::Volume(s), self.gvs.inode(s)?.0)
            }
            Virt::Entry { .. } => {
                let rec = self.read_rec(src)?;
                (Source::Frozen(Box::new(rec.clone())), rec)
            }
            Virt::SnapDir(_) => return Err(GvsError::IsDir),
        };
        if srec.kind != Kind::File {
            return Ok(None);
        }
        if off_in >= srec.size {
            return Ok(Some(0));
        }
        // FUSE answers with 32 bits: at most 4 GiB - 4 KiB per call.
        let n = (srec.size - off_in)
            .min(len)
            .min(u64::from(u32::MAX - 0xfff));
        let end = off_in + n;
        let (drec, _) = self.gvs.inode(dst)?;
        if drec.kind != Kind::File {
            return Err(GvsError::IsDir);
        }
        let size = {
            let v = self.gvs.volume(dst);
            let v = v.lock().unwrap_or_else(|e| e.into_inner());
            if v.is_dirty() {
                return Ok(None);
            }
            v.size(&drec)
        };
        if size > off_out {
            return Ok(None);
        }
        if size > 0 {
            let tag = self
                .tags
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&dst)
                .copied();
            let want = CloneTag {
                src,
                src_root: srec.root,
                dst_root: drec.root,
                size,
            };
            if tag != Some(want) {
                return Ok(None);
            }
        }
        if size < off_in {
            let v = self.gvs.volume(src);
            let mut v = v.lock().unwrap_or_else(|e| e.into_inner());
            if v.seek(&self.gvs, &srec, size, true)?
                .is_some_and(|p| p < off_in)
            {
                return Ok(None);
            }
        }
        crate::clone::clone(&self.gvs, &source, Target::Existing(dst))?;
        if end < srec.size {
            let vol = self.gvs.volume(dst);
            let (rec, _) = self.gvs.inode(dst)?;
            vol.lock()
                .unwrap_or_else(|e| e.into_inner())
                .truncate(&self.gvs, &rec, end)?;
            vol.commit(&self.gvs, None)?;
        }
        let (after, _) = self.gvs.inode(dst)?;
        self.tags.lock().unwrap_or_else(|e| e.into_inner()).insert(
            dst,
            CloneTag {
                src,
                src_root: srec.root,
                dst_root: after.root,
                size: after.size,
            },
        );
        tracing::info!("copy_file_range {src:#x} -> {dst:#x} [{off_in}, {end}): cloned");
        Ok(Some(n))
    }

    /// The clone ioctl (see [`crate::clone`]).
    fn clone_ioctl(&self, req: &Request, ino: u64, arg: &CloneArg) -> Result<()> {
        let source = match classify(ino) {
            Virt::Real(i) => Source::Volume(i),
            Virt::Entry { .. } => Source::Frozen(Box::new(self.read_rec(ino)?)),
            Virt::SnapDir(_) => return Err(GvsError::IsDir),
        };
        let parent = writable(arg.dst_parent)?;
        let (p, _) = self.gvs.inode(parent)?;
        let uid = req.uid();
        let may_write = uid == 0
            || (p.uid == uid && p.perm & 0o200 != 0)
            || (p.gid == req.gid() && p.perm & 0o020 != 0)
            || p.perm & 0o002 != 0;
        if !may_write {
            return Err(GvsError::Denied);
        }
        let target = match self.gvs.dirent(parent, &arg.name) {
            Ok((de, _)) if arg.flags & GVS_CLONE_REPLACE != 0 => {
                if de.kind != Kind::File {
                    return Err(GvsError::IsDir);
                }
                Target::Existing(de.ino)
            }
            Ok(_) => return Err(GvsError::Exists),
            Err(GvsError::NotFound) => Target::New {
                parent,
                name: arg.name.clone(),
                uid,
                gid: req.gid(),
            },
            Err(e) => return Err(e),
        };
        crate::clone::clone(&self.gvs, &source, target)?;
        Ok(())
    }

    /// `gvs.*` attributes of the root: settings, triggers and counters.
    fn root_xattr(&self, name: &str) -> Result<Vec<u8>> {
        let g = &self.gvs;
        let v = match name {
            "gvs.gc.grace_secs" => {
                conf(g, "gc_grace_secs", crate::gc::DEFAULT_GRACE_SECS).to_string()
            }
            "gvs.gc.interval_secs" => {
                conf(g, "gc_interval_secs", crate::gc::DEFAULT_INTERVAL_SECS).to_string()
            }
            "gvs.scrub.rate" => conf(g, "scrub_rate", crate::scrub::DEFAULT_RATE).to_string(),
            "gvs.repair.grace_secs" => {
                conf(g, "repair_grace_secs", crate::remirror::DEFAULT_GRACE_SECS).to_string()
            }
            "gvs.repair.rate_mb" => {
                conf(g, "repair_rate_mb", crate::repair::DEFAULT_RATE_MB).to_string()
            }
            "gvs.rebalance.threshold" => conf(
                g,
                "rebalance_threshold",
                crate::rebalance::DEFAULT_THRESHOLD_PCT,
            )
            .to_string(),
            "gvs.rebalance.rate_mb" => {
                conf(g, "rebalance_rate_mb", crate::rebalance::DEFAULT_RATE_MB).to_string()
            }
            "gvs.rebalance.status" => crate::rebalance::status(g),
            "gvs.stats" => {
                let mut out = format!(
                    "{}: {} store_bytes={} store_put_bytes={} chunks={}\n",
                    g.me,
                    g.stats.render(),
                    g.store.used_bytes(),
                    g.store.put_bytes.load(Ordering::Relaxed),
                    g.store.count()
                );
                for (k, v) in g.mirror.range(meta::STATS_PREFIX) {
                    let node = &k[meta::STATS_PREFIX.len()..];
                    if node != g.me {
                        out.push_str(&format!("{node}: {}\n", String::from_utf8_lossy(&v.value)));
                    }
                }
                out
            }
            _ => return Err(GvsError::NoAttr),
        };
        Ok(v.into_bytes())
    }

    fn set_root_xattr(&self, name: &str, text: &str) -> Result<()> {
        let key = match name {
            "gvs.gc.grace_secs" => "gc_grace_secs",
            "gvs.gc.interval_secs" => "gc_interval_secs",
            "gvs.scrub.rate" => "scrub_rate",
            "gvs.repair.grace_secs" => "repair_grace_secs",
            "gvs.repair.rate_mb" => "repair_rate_mb",
            "gvs.rebalance.threshold" => "rebalance_threshold",
            "gvs.rebalance.rate_mb" => "rebalance_rate_mb",
            "gvs.gc.now" => "gc_now",
            "gvs.scrub.now" => "scrub_now",
            _ => return Err(GvsError::Invalid(format!("unknown attribute {name}"))),
        };
        let value = if key.ends_with("_now") {
            meta::now().to_string()
        } else {
            let n: u64 = text
                .parse()
                .map_err(|_| GvsError::Invalid(format!("{name} {text:?} is not a number")))?;
            match key {
                "rebalance_threshold" => crate::rebalance::check_threshold(n)?,
                "gc_grace_secs" => crate::gc::check_grace(n)?,
                _ => {}
            }
            n.to_string()
        };
        self.gvs.rt.block_on(
            self.gvs
                .client()
                .put(meta::conf_key(key), value.into_bytes()),
        )?;
        Stats::add(&self.gvs.stats.metad_ops, 1);
        Ok(())
    }

    fn opened(&self) -> std::sync::MutexGuard<'_, Opened> {
        self.opened.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_fh(&self, ino: u64) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        *self.opened().handles.entry(ino).or_default() += 1;
        self.fhs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Fh { ino, gen: None });
        fh
    }

    /// Forgets handle `fh`; the last one of a file unlinked while open
    /// frees it, as unlink frees a closed one.
    fn drop_fh(&self, fh: u64) -> Result<()> {
        let Some(h) = self
            .fhs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh)
        else {
            return Ok(());
        };
        let last = {
            let mut o = self.opened();
            let n = o.handles.entry(h.ino).or_default();
            *n = n.saturating_sub(1);
            if *n == 0 {
                o.handles.remove(&h.ino);
            }
            !o.handles.contains_key(&h.ino) && o.unlinked.remove(&h.ino)
        };
        if last {
            self.gvs.free_inode(h.ino)?;
        }
        Ok(())
    }

    /// unlink: a file open here loses its name now and its inode at its
    /// last close.
    fn unlink_name(&self, parent: u64, name: &str) -> Result<()> {
        let mut o = self.opened();
        let kept = self
            .gvs
            .remove_keeping(parent, name, false, |ino| o.handles.contains_key(&ino))?;
        if let Some(ino) = kept {
            o.unlinked.insert(ino);
        }
        Ok(())
    }

    /// Runs `f` on the volume with its write lease held, checking that the
    /// handle `fh` (if any) was not fenced since it last wrote.
    fn with_lease<T>(
        &self,
        ino: u64,
        fh: Option<u64>,
        f: impl FnOnce(&mut crate::volume::Volume, &Inode) -> Result<T>,
    ) -> Result<T> {
        let (rec, _) = self.gvs.inode(ino)?;
        if rec.kind != Kind::File {
            return Err(GvsError::IsDir);
        }
        let vol = self.gvs.volume(ino);
        let mut v = vol.lock().unwrap_or_else(|e| e.into_inner());
        let prior = fh.and_then(|fh| {
            self.fhs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&fh)
                .and_then(|h| h.gen)
        });
        if let Some(g) = prior {
            if g != v.gen {
                return Err(GvsError::Fenced(ino));
            }
        }
        v.ensure_lease(&self.gvs)?;
        if let Some(fh) = fh {
            if let Some(h) = self
                .fhs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&fh)
            {
                h.gen = Some(v.gen);
            }
        }
        let (rec, _) = self.gvs.inode(ino)?;
        let r = f(&mut v, &rec)?;
        let dirty = v.dirty_bytes();
        if dirty > crate::volume::DIRTY_LIMIT {
            // The commit asked for earlier is not done yet: this writer
            // waits for it, and commits the rest itself.
            let gen = v.gen;
            drop(v);
            vol.commit(&self.gvs, Some(gen))?;
        } else if dirty > crate::volume::COMMIT_AHEAD {
            v.commit_soon(&self.gvs);
        }
        Ok(r)
    }

    fn commit(&self, ino: u64, fh: Option<u64>) -> Result<()> {
        let Some(vol) = self.gvs.volume_if_any(ino) else {
            return Ok(());
        };
        let prior = fh.and_then(|fh| {
            self.fhs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&fh)
                .and_then(|h| h.gen)
        });
        vol.commit(&self.gvs, prior)
    }

    #[allow(clippy::too_many_arguments)] // the FUSE request, plus what a new inode needs
    fn new_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        kind: Kind,
        mode: u32,
        umask: u32,
        target: Option<&Path>,
    ) -> Result<FileAttr> {
        let name = entry_name(name)?;
        let parent = INodeNo(writable(parent.0)?);
        let mut rec = Inode::new(kind, (mode & !umask & 0o7777) as u16, req.uid(), req.gid());
        if let Some(t) = target {
            rec.target = t.to_string_lossy().into_owned();
            rec.perm = 0o777;
        }
        // setgid directories pass their group on.
        if let Ok((p, _)) = self.gvs.inode(parent.0) {
            if p.perm & 0o2000 != 0 {
                rec.gid = p.gid;
                if kind == Kind::Dir {
                    rec.perm |= 0o2000;
                }
            }
        }
        let (ino, rec) = self.gvs.create(parent.0, name, rec)?;
        Ok(self.attr(ino, &rec))
    }

    fn gvs_xattr(&self, ino: u64, rec: &Inode, name: &str) -> Result<Vec<u8>> {
        if ino == meta::ROOT_INO {
            match self.root_xattr(name) {
                Err(GvsError::NoAttr) => {}
                r => return r,
            }
        }
        if let Some(off) = name.strip_prefix("gvs.debug.chunk.") {
            // This node's copy of the chunk holding byte OFF.
            let off: u64 = off
                .parse()
                .map_err(|_| GvsError::Invalid(format!("{name}: not an offset")))?;
            let v = self.gvs.volume(ino);
            let mut v = v.lock().unwrap_or_else(|e| e.into_inner());
            let text = match v.chunk_at(&self.gvs, rec, off)? {
                None => "hole".to_string(),
                Some(id) => {
                    let state = match self.gvs.store.lookup(&id)? {
                        Lookup::Good(_) => "intact",
                        Lookup::Corrupt => "corrupt",
                        Lookup::Absent => "absent",
                    };
                    format!("{} {state}", id.hex())
                }
            };
            return Ok(text.into_bytes());
        }
        let v = match name {
            "gvs.mirrors" => rec.mirrors.to_string(),
            "gvs.replicas" => rec.replicas.join(","),
            "gvs.state" if rec.kind == Kind::File => (if !rec.degraded {
                "in-sync"
            } else if crate::repair::missing_of(&self.gvs, ino, true) {
                "repairing"
            } else {
                "degraded"
            })
            .to_string(),
            "gvs.block_size" => rec.block_size.to_string(),
            "gvs.min_copies" if rec.kind == Kind::File => rec.copies_wanted().to_string(),
            "gvs.rollback" if rec.kind == Kind::Dir => {
                crate::restore::last(ino).ok_or(GvsError::NoAttr)?
            }
            _ => return Err(GvsError::NoAttr),
        };
        Ok(v.into_bytes())
    }

    fn set_gvs_xattr(&self, req: &Request, ino: u64, name: &str, value: &[u8]) -> Result<()> {
        let text = std::str::from_utf8(value)
            .unwrap_or("")
            .trim()
            .trim_end_matches('\0');
        if ino == meta::ROOT_INO
            && (name.starts_with("gvs.gc.")
                || name.starts_with("gvs.scrub.")
                || name.starts_with("gvs.repair.")
                || name.starts_with("gvs.rebalance."))
        {
            return self.set_root_xattr(name, text);
        }
        match name {
            "gvs.rollback" | "gvs.rollback.prune" => {
                // Rolls the directory back to snapshot TEXT (owner or root).
                let (rec, _) = self.gvs.inode(ino)?;
                if req.uid() != 0 && req.uid() != rec.uid {
                    return Err(GvsError::Denied);
                }
                let prune = name == "gvs.rollback.prune";
                crate::restore::rollback(&self.gvs, ino, text, prune)?;
            }
            "gvs.debug.corrupt" => {
                // Flips a bit in this node's copy of the chunk holding byte
                // TEXT: a test hook for the scrub and read repair (root only).
                if req.uid() != 0 {
                    return Err(GvsError::Denied);
                }
                let off: u64 = text
                    .parse()
                    .map_err(|_| GvsError::Invalid(format!("{name} {text:?}: not an offset")))?;
                let (rec, _) = self.gvs.inode(ino)?;
                let v = self.gvs.volume(ino);
                let id = v
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .chunk_at(&self.gvs, &rec, off)?
                    .ok_or_else(|| GvsError::Invalid("a hole has no chunk".into()))?;
                if !self.gvs.store.corrupt(&id)? {
                    return Err(GvsError::Invalid("this node holds no copy".into()));
                }
                self.gvs
                    .cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop(&id);
                tracing::warn!(
                    "chunk {} corrupted on request (gvs.debug.corrupt)",
                    id.hex()
                );
            }
            "gvs.debug.watch_hold" => {
                // Holds (1) or releases (0) this node's watch of metad: a
                // test hook for a node whose view lags (root only).
                if req.uid() != 0 {
                    return Err(GvsError::Denied);
                }
                let on = match text {
                    "1" => true,
                    "0" => false,
                    _ => return Err(GvsError::Invalid(format!("{name} {text:?}: 1 or 0"))),
                };
                self.gvs.mirror.hold(on);
            }
            "gvs.min_copies" => {
                let n: u32 = text.parse().map_err(|_| {
                    GvsError::Invalid(format!("gvs.min_copies {text:?} is not a number"))
                })?;
                self.gvs.update_inode(ino, |i| i.set_min_copies(n))?;
            }
            "gvs.block_size" => {
                let bs: u32 = text.parse().map_err(|_| {
                    GvsError::Invalid(format!("gvs.block_size {text:?} is not a number"))
                })?;
                if !bs.is_power_of_two() || !(4096..=crate::MAX_BLOCK_SIZE).contains(&bs) {
                    return Err(GvsError::Invalid(format!(
                        "gvs.block_size must be a power of two in 4096..={}, not {bs}",
                        crate::MAX_BLOCK_SIZE
                    )));
                }
                let dirty = self
                    .gvs
                    .volume_if_any(ino)
                    .is_some_and(|v| v.lock().unwrap_or_else(|e| e.into_inner()).is_dirty());
                if dirty {
                    return Err(GvsError::Invalid(
                        "gvs.block_size can only be set before the volume holds data".into(),
                    ));
                }
                self.gvs.update_inode(ino, |i| {
                    if i.kind == Kind::File && (i.root.is_some() || i.size > 0) {
                        return Err(GvsError::Invalid(
                            "gvs.block_size can only be set before the volume holds data".into(),
                        ));
                    }
                    i.block_size = bs;
                    i.ctime = meta::now();
                    Ok(())
                })?;
                if let Some(v) = self.gvs.volume_if_any(ino) {
                    *v.lock().unwrap_or_else(|e| e.into_inner()) = crate::volume::Volume::new(ino);
                }
            }
            "gvs.mirrors" => {
                let r: u32 = text.parse().map_err(|_| {
                    GvsError::Invalid(format!("gvs.mirrors {text:?} is not a number"))
                })?;
                let (rec, _) = self.gvs.inode(ino)?;
                let replicas = if rec.kind == Kind::File {
                    self.gvs.placement(ino, r)?
                } else {
                    self.gvs.placement(ino, r).map(|_| Vec::new())?
                };
                let updated = self.gvs.update_inode(ino, |i| {
                    let added: Vec<String> = replicas
                        .iter()
                        .filter(|n| !i.replicas.contains(n))
                        .cloned()
                        .collect();
                    if i.root.is_some() && !added.is_empty() {
                        // The new mirrors hold nothing yet: the repair fills them.
                        i.degraded = true;
                    }
                    i.mirrors = r;
                    if i.kind == Kind::File {
                        i.replicas = replicas.clone();
                    }
                    i.ctime = meta::now();
                    Ok(())
                })?;
                if updated.degraded {
                    for n in &updated.replicas {
                        if !rec.replicas.contains(n) {
                            self.gvs.rt.block_on(
                                self.gvs.client().put(meta::missing_key(n, ino), Vec::new()),
                            )?;
                        }
                    }
                }
            }
            "gvs.replicas" | "gvs.state" => {
                return Err(GvsError::Invalid(format!("{name} is read-only")))
            }
            _ => return Err(GvsError::Invalid(format!("unknown attribute {name}"))),
        }
        Ok(())
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

macro_rules! tri {
    ($reply:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                let e: GvsError = e;
                if !matches!(
                    e,
                    GvsError::NotFound | GvsError::NoAttr | GvsError::Exists | GvsError::NotEmpty
                ) {
                    tracing::warn!("{}:{}: {e}", file!(), line!());
                }
                $reply.error(e.errno());
                return;
            }
        }
    };
}

impl Filesystem for GvsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        if let Err(e) = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO) {
            tracing::warn!("kernel refused asynchronous direct I/O: {e:?}");
        }
        if self.writeback {
            if let Err(e) = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE) {
                tracing::warn!("kernel refused the writeback cache: {e:?}");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = tri!(reply, entry_name(name));
        if let Some(g) = self.grid_of(parent.0) {
            grid!(reply, g.lookup(parent.0, name), |a| reply.entry(
                &TTL,
                &a,
                Generation(0)
            ));
        }
        if let (Some(g), true) = (&self.grid, parent.0 == meta::ROOT_INO && name == GRID) {
            grid!(reply, g.getattr(g.root_ino()), |a| reply.entry(
                &TTL,
                &a,
                Generation(0)
            ));
        }
        let ino = match classify(parent.0) {
            Virt::Real(p) if name == SNAPSHOTS => {
                let attr = tri!(reply, self.snapdir_attr(p));
                reply.entry(&TTL, &attr, Generation(0));
                return;
            }
            Virt::Real(p) => tri!(reply, self.gvs.dirent(p, name)).0.ino,
            Virt::SnapDir(d) => entry_ino(tri!(reply, snapshot::id_of(&self.gvs, d, name)), 0),
            Virt::Entry { id, idx } => {
                let view = tri!(reply, self.snaps.view(&self.gvs, id));
                entry_ino(id, tri!(reply, view.child(idx, name)))
            }
        };
        let attr = tri!(reply, self.getattr_of(ino));
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(g) = self.grid_of(ino.0) {
            grid!(reply, g.getattr(ino.0), |a| reply.attr(&TTL, &a));
        }
        let attr = tri!(reply, self.getattr_of(ino.0));
        reply.attr(&TTL, &attr);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(g) = self.grid_of(ino.0) {
            // Truncating a control file (O_TRUNC) changes nothing.
            grid!(reply, g.getattr(ino.0), |a| reply.attr(&TTL, &a));
        }
        let ino = tri!(reply, writable(ino.0));
        if let Some(size) = size {
            tri!(
                reply,
                self.with_lease(ino, fh.map(|f| f.0), |v, rec| v
                    .truncate(&self.gvs, rec, size))
            );
            tri!(reply, self.commit(ino, None));
        }
        if mode.is_some() || uid.is_some() || gid.is_some() || atime.is_some() || mtime.is_some() {
            tri!(
                reply,
                self.gvs.update_inode(ino, |i| {
                    if let Some(m) = mode {
                        i.perm = (m & 0o7777) as u16;
                    }
                    if let Some(u) = uid {
                        i.uid = u;
                    }
                    if let Some(g) = gid {
                        i.gid = g;
                    }
                    if let Some(a) = atime {
                        i.atime = nanos(a);
                    }
                    if let Some(m) = mtime {
                        i.mtime = nanos(m);
                    }
                    i.ctime = meta::now();
                    Ok(())
                })
            );
        }
        let attr = tri!(reply, self.getattr_of(ino));
        reply.attr(&TTL, &attr);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let rec = match classify(ino.0) {
            Virt::Entry { id, idx } => tri!(reply, self.entry_rec(id, idx)),
            _ => tri!(reply, self.gvs.inode(ino.0)).0,
        };
        if rec.kind != Kind::Symlink {
            reply.error(Errno::EINVAL);
            return;
        }
        reply.data(rec.target.as_bytes());
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            tracing::info!(
                "mknod {name:?} refused: gvsfs holds volumes, not device files, fifos or sockets"
            );
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let attr = tri!(
            reply,
            self.new_node(req, parent, name, Kind::File, mode, umask, None)
        );
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        if let Some(g) = self.grid_of(parent.0) {
            let name = tri!(reply, entry_name(name));
            grid!(reply, g.mkdir(parent.0, name), |a| reply.entry(
                &TTL,
                &a,
                Generation(0)
            ));
        }
        if let Virt::SnapDir(d) = classify(parent.0) {
            // mkdir DIR/.snapshots/NAME: a snapshot of DIR.
            let name = tri!(reply, entry_name(name));
            let id = tri!(reply, snapshot::take(&self.gvs, d, name));
            let attr = tri!(reply, self.getattr_of(entry_ino(id, 0)));
            reply.entry(&TTL, &attr, Generation(0));
            return;
        }
        let attr = tri!(
            reply,
            self.new_node(req, parent, name, Kind::Dir, mode, umask, None)
        );
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let attr = tri!(
            reply,
            self.new_node(
                req,
                parent,
                link_name,
                Kind::Symlink,
                0o777,
                0,
                Some(target)
            )
        );
        reply.entry(&TTL, &attr, Generation(0));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        tri!(reply, entry_name(newname));
        // EPERM: what link(2) documents for a file system without hard
        // links (a volume has one name; a copy is a clone).
        tracing::info!("link refused: gvsfs has no hard links (use a clone)");
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = tri!(reply, entry_name(name));
        let parent = tri!(reply, writable(parent.0));
        if name == SNAPSHOTS {
            reply.error(Errno::EISDIR);
            return;
        }
        tri!(reply, self.unlink_name(parent, name));
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = tri!(reply, entry_name(name));
        if let Some(g) = self.grid_of(parent.0) {
            grid!(reply, g.rmdir(parent.0, name), |_a| reply.ok());
        }
        if let Virt::SnapDir(d) = classify(parent.0) {
            tri!(reply, snapshot::remove(&self.gvs, d, name));
            reply.ok();
            return;
        }
        let parent = tri!(reply, writable(parent.0));
        if name == SNAPSHOTS {
            // Virtual: "removing" it succeeds when it holds no snapshot,
            // so that `rm -r` of a directory works.
            if snapshot::list(&self.gvs, parent).is_empty() {
                reply.ok();
            } else {
                reply.error(Errno::ENOTEMPTY);
            }
            return;
        }
        tri!(reply, self.gvs.remove(parent, name, true));
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            reply.error(Errno::EINVAL);
            return;
        }
        let (name, newname) = (
            tri!(reply, entry_name(name)),
            tri!(reply, entry_name(newname)),
        );
        let (parent, newparent) = (
            INodeNo(tri!(reply, writable(parent.0))),
            INodeNo(tri!(reply, writable(newparent.0))),
        );
        // Data buffered here under the old name is committed first.
        if let Ok((de, _)) = self.gvs.dirent(parent.0, name) {
            tri!(reply, self.commit(de.ino, None));
        }
        tri!(
            reply,
            self.gvs.rename(
                parent.0,
                name,
                newparent.0,
                newname,
                flags.contains(RenameFlags::RENAME_NOREPLACE)
            )
        );
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if let Some(g) = self.grid_of(ino.0) {
            grid!(reply, g.open(ino.0, flags.0), |fh| reply
                .opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO));
        }
        if !matches!(classify(ino.0), Virt::Real(_)) {
            let f = flags.0;
            if f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0 {
                reply.error(Errno::EROFS);
                return;
            }
        }
        let rec = tri!(reply, self.read_rec(ino.0));
        if rec.kind == Kind::Dir {
            reply.error(Errno::EISDIR);
            return;
        }
        // The kernel may keep this file's pages across opens: a change made
        // by another node invalidates them (see `on_event`).
        reply.opened(FileHandle(self.new_fh(ino.0)), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if let Some(g) = self.grid_of(ino.0) {
            grid!(reply, g.read(_fh.0, offset, size), |d| reply.data(&d));
        }
        let rec = tri!(reply, self.read_rec(ino.0));
        let vol = self.gvs.volume(ino.0);
        // Only the plan is made under the volume's lock; the chunks are
        // fetched without it, so readers of one volume run in parallel.
        let (pieces, ahead) = {
            let mut v = vol.lock().unwrap_or_else(|e| e.into_inner());
            tri!(reply, v.plan_read(&self.gvs, &rec, offset, size))
        };
        let data = tri!(
            reply,
            crate::volume::assemble(&self.gvs, &rec.replicas, pieces)
        );
        reply.data(&data);
        if !ahead.is_empty() {
            let gvs = self.gvs.clone();
            self.gvs.rt.spawn_blocking(move || {
                if let Err(e) = gvs.fetch_many(&ahead, &rec.replicas) {
                    tracing::debug!("read-ahead: {e}");
                }
            });
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Some(g) = self.grid_of(ino.0) {
            grid!(reply, g.write(fh.0, offset, data), |n| reply.written(n));
        }
        tri!(reply, writable(ino.0));
        tri!(
            reply,
            self.with_lease(ino.0, Some(fh.0), |v, rec| v
                .write(&self.gvs, rec, offset, data))
        );
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        if let Some(g) = self.grid_of(ino.0) {
            grid!(reply, g.flush(fh.0), |_a| reply.ok());
        }
        tri!(reply, self.commit(ino.0, Some(fh.0)));
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(g) = self.grid_of(ino.0) {
            grid!(reply, g.release(fh.0), |_a| reply.ok());
        }
        let r = self.commit(ino.0, Some(fh.0));
        let freed = self.drop_fh(fh.0);
        tri!(reply, r);
        tri!(reply, freed);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        tri!(reply, self.commit(ino.0, Some(fh.0)));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let attr = match self.grid_of(ino.0) {
            Some(g) => match g.getattr(ino.0) {
                Ok(a) => a,
                Err(e) => return reply.error(e),
            },
            None => tri!(reply, self.getattr_of(ino.0)),
        };
        if attr.kind != FileType::Directory {
            reply.error(Errno::ENOTDIR);
            return;
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let ft = |k: Kind| match k {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
            Kind::Symlink => FileType::Symlink,
        };
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        if let Some(g) = self.grid_of(ino.0) {
            match g.readdir(ino.0) {
                Ok(v) => entries.extend(v),
                Err(e) => return reply.error(e),
            }
        } else if let (Some(g), true) = (&self.grid, ino.0 == meta::ROOT_INO) {
            entries.push((g.root_ino(), FileType::Directory, GRID.into()));
        }
        match classify(ino.0) {
            _ if control::is_grid(ino.0) => {}
            Virt::Real(d) => {
                // Listed (ls -a shows it; plain ls hides dot names anyway).
                entries.push((snapdir_ino(d), FileType::Directory, SNAPSHOTS.into()));
                for (name, de) in self.gvs.list(d) {
                    entries.push((de.ino, ft(de.kind), name));
                }
            }
            Virt::SnapDir(d) => {
                entries[1].0 = d;
                for (name, id) in snapshot::list(&self.gvs, d) {
                    entries.push((entry_ino(id, 0), FileType::Directory, name));
                }
            }
            Virt::Entry { id, idx } => {
                let view = tri!(reply, self.snaps.view(&self.gvs, id));
                for (name, c) in view.children(idx) {
                    let kind = tri!(reply, view.entry(*c)).inode.kind;
                    entries.push((entry_ino(id, *c), ft(kind), name.clone()));
                }
            }
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let nodes = self.gvs.nodes();
        let cap: u64 = nodes.iter().map(|(_, n)| n.capacity).sum();
        let free: u64 = nodes.iter().map(|(_, n)| n.free).sum();
        let files = self.gvs.mirror.range(meta::INO_PREFIX).len() as u64;
        reply.statfs(
            cap / 4096,
            free / 4096,
            free / 4096,
            files + 1_000_000,
            1_000_000,
            4096,
            NAME_MAX as u32,
            4096,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = tri!(reply, name_str(name));
        let ino = INodeNo(tri!(reply, writable(ino.0)));
        if name.starts_with("gvs.") {
            tri!(reply, self.set_gvs_xattr(req, ino.0, name, value));
        } else if name.starts_with("system.") {
            reply.error(Errno::EOPNOTSUPP);
            return;
        } else {
            tri!(
                reply,
                self.gvs.update_inode(ino.0, |i| {
                    let exists = i.xattrs.contains_key(name);
                    if flags & libc::XATTR_CREATE != 0 && exists {
                        return Err(GvsError::Exists);
                    }
                    if flags & libc::XATTR_REPLACE != 0 && !exists {
                        return Err(GvsError::NoAttr);
                    }
                    crate::xattr::check_room(&i.xattrs, name, value)?;
                    i.xattrs.insert(name.to_string(), value.to_vec());
                    i.ctime = meta::now();
                    Ok(())
                })
            );
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.grid_of(ino.0).is_some() {
            reply.error(Errno::NO_XATTR);
            return;
        }
        let name = tri!(reply, name_str(name));
        if let Virt::SnapDir(_) = classify(ino.0) {
            reply.error(Errno::NO_XATTR);
            return;
        }
        let rec = tri!(
            reply,
            self.read_rec(ino.0)
                .or_else(|_| Ok(self.gvs.inode(ino.0)?.0))
        );
        let value = if name.starts_with("gvs.") {
            tri!(reply, self.gvs_xattr(ino.0, &rec, name))
        } else {
            tri!(reply, rec.xattrs.get(name).cloned().ok_or(GvsError::NoAttr))
        };
        reply_xattr(reply, size, &value);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.grid_of(ino.0).is_some() {
            reply_xattr(reply, size, &[]);
            return;
        }
        if let Virt::SnapDir(_) = classify(ino.0) {
            reply_xattr(reply, size, &[]);
            return;
        }
        let rec = tri!(
            reply,
            self.read_rec(ino.0)
                .or_else(|_| Ok(self.gvs.inode(ino.0)?.0))
        );
        let mut out = Vec::new();
        let gvs_names: &[&str] = match rec.kind {
            Kind::File => &[
                "gvs.mirrors",
                "gvs.replicas",
                "gvs.state",
                "gvs.block_size",
                "gvs.min_copies",
            ],
            Kind::Dir => &["gvs.mirrors", "gvs.block_size"],
            Kind::Symlink => &[],
        };
        for n in gvs_names
            .iter()
            .map(|s| s.to_string())
            .chain(rec.xattrs.keys().cloned())
        {
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        reply_xattr(reply, size, &out);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = tri!(reply, name_str(name));
        let ino = INodeNo(tri!(reply, writable(ino.0)));
        if name.starts_with("gvs.") {
            reply.error(Errno::EPERM);
            return;
        }
        tri!(
            reply,
            self.gvs.update_inode(ino.0, |i| {
                i.xattrs.remove(name).ok_or(GvsError::NoAttr)?;
                i.ctime = meta::now();
                Ok(())
            })
        );
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if let Some(g) = self.grid_of(ino.0) {
            grid!(reply, g.getattr(ino.0), |_a| reply.ok());
        }
        tri!(reply, self.getattr_of(ino.0));
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        let attr = tri!(
            reply,
            self.new_node(req, parent, name, Kind::File, mode, umask, None)
        );
        let fh = self.new_fh(attr.ino.0);
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(fh),
            FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        tri!(reply, writable(ino.0));
        let end = offset.saturating_add(length);
        let r =
            match mode {
                0 => self.with_lease(ino.0, Some(fh.0), |v, rec| {
                    if end > v.size(rec) {
                        v.truncate(&self.gvs, rec, end)
                    } else {
                        Ok(())
                    }
                }),
                libc::FALLOC_FL_KEEP_SIZE => Ok(()),
                m if m == libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE => self
                    .with_lease(ino.0, Some(fh.0), |v, rec| {
                        let end = end.min(v.size(rec));
                        v.zero_range(&self.gvs, rec, offset, end.saturating_sub(offset))
                    }),
                m if m & !libc::FALLOC_FL_KEEP_SIZE == libc::FALLOC_FL_ZERO_RANGE => self
                    .with_lease(ino.0, Some(fh.0), |v, rec| {
                        let size = v.size(rec);
                        v.zero_range(&self.gvs, rec, offset, end.min(size).saturating_sub(offset))?;
                        if m & libc::FALLOC_FL_KEEP_SIZE == 0 && end > size {
                            v.truncate(&self.gvs, rec, end)?;
                        }
                        Ok(())
                    }),
                _ => {
                    reply.error(Errno::EOPNOTSUPP);
                    return;
                }
            };
        tri!(reply, r);
        reply.ok();
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            reply.error(Errno::EINVAL);
            return;
        }
        if offset < 0 {
            reply.error(Errno::ENXIO);
            return;
        }
        let rec = tri!(reply, self.read_rec(ino.0));
        let vol = self.gvs.volume(ino.0);
        let mut v = vol.lock().unwrap_or_else(|e| e.into_inner());
        match tri!(
            reply,
            v.seek(&self.gvs, &rec, offset as u64, whence == libc::SEEK_DATA)
        ) {
            Some(p) => reply.offset(p as i64),
            None => reply.error(Errno::ENXIO),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        match tri!(
            reply,
            self.clone_range(ino_in.0, offset_in, ino_out.0, offset_out, len)
        ) {
            Some(n) => reply.written(n as u32),
            // Not a clone: the kernel falls back to copying the data.
            None => reply.error(Errno::EOPNOTSUPP),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        if cmd != GVS_IOC_CLONE {
            reply.error(Errno::ENOTTY);
            return;
        }
        let arg = tri!(reply, CloneArg::decode(in_data));
        tri!(reply, self.clone_ioctl(req, ino.0, &arg));
        reply.ioctl(0, &[]);
    }
}

/// What to do about one change seen by the watch: forget kernel caches
/// and hand write leases over. Runs on the watch task: never blocks.
pub fn on_event(gvs: &Arc<Gvs>, e: &Event) {
    let inval = &gvs.inval;
    let key = String::from_utf8_lossy(&e.kv.key);
    let send = |i: Inval| {
        if let Some(tx) = inval.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(i);
        }
    };
    if let Some((parent, name)) = meta::dirent_of_key(&key) {
        send(Inval::Entry(parent, name.to_string()));
        send(Inval::Inode(parent));
    } else if let Some(ino) = meta::ino_of_key(&key, meta::INO_PREFIX) {
        // Our own commits need no invalidation of our own caches.
        let ours = gvs
            .volume_if_any(ino)
            .is_some_and(|v| v.try_lock().map(|v| v.leased()).unwrap_or(false));
        if !ours || e.kind == EventKind::Delete {
            send(Inval::Inode(ino));
        }
    } else if let Some(ino) = meta::ino_of_key(&key, meta::LEASE_PREFIX) {
        // The lease left this node (expired, or taken after it expired):
        // fence this node's writers now rather than at their next commit.
        let taken = e.kind == EventKind::Delete || e.kv.value != gvs.me.as_bytes();
        if taken {
            if let Some(vol) = gvs.volume_if_any(ino) {
                let gvs = gvs.clone();
                let tx = inval.lock().unwrap_or_else(|e| e.into_inner()).clone();
                std::thread::spawn(move || {
                    let fenced = vol
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .check_lease(&gvs);
                    // What the kernel cached of the fenced writes goes too.
                    if let (true, Some(tx)) = (fenced, tx) {
                        let _ = tx.send(Inval::Inode(ino));
                    }
                });
            }
        }
    } else if let Some(rest) = key.strip_prefix("gvs/snapdir/") {
        if let Some((d, name)) = rest.split_once('/') {
            if let Ok(d) = u64::from_str_radix(d, 16) {
                send(Inval::Entry(snapdir_ino(d), name.to_string()));
            }
        }
    } else if let Some(ino) = meta::ino_of_key(&key, meta::FLUSH_PREFIX) {
        // A snapshot or clone asks this node's writer to commit now.
        if e.kind == EventKind::Put && e.kv.value != gvs.me.as_bytes() {
            if let Some(vol) = gvs.volume_if_any(ino) {
                let gvs = gvs.clone();
                let rev = e.kv.mod_rev;
                std::thread::spawn(move || {
                    if !vol.lock().unwrap_or_else(|e| e.into_inner()).leased() {
                        return;
                    }
                    if let Err(e) = vol.commit(&gvs, None) {
                        tracing::warn!("volume {ino:#x}: flush on request: {e}");
                    }
                    let k = meta::flush_key(ino);
                    let _ = gvs.txn(metad::Txn {
                        compare: vec![crate::gvs::unchanged(&k, rev)],
                        success: vec![crate::gvs::del(&k)],
                        failure: vec![],
                    });
                });
            }
        }
    } else if let Some(ino) = meta::ino_of_key(&key, meta::LEASE_REQ_PREFIX) {
        if e.kind == EventKind::Put && e.kv.value != gvs.me.as_bytes() {
            if let Some(vol) = gvs.volume_if_any(ino) {
                let gvs = gvs.clone();
                let tx = inval.lock().unwrap_or_else(|e| e.into_inner()).clone();
                std::thread::spawn(move || {
                    vol.hand_over(&gvs);
                    if let Some(tx) = tx {
                        let _ = tx.send(Inval::Inode(ino));
                    }
                });
            }
        }
    }
}

/// Delivers invalidations to the kernel from their own thread (a
/// notification may wait for a lock that a pending request holds).
pub fn run_invalidations(notifier: fuser::Notifier, rx: mpsc::Receiver<Inval>) {
    for i in rx {
        let _ = match i {
            Inval::Entry(parent, name) => notifier.inval_entry(INodeNo(parent), OsStr::new(&name)),
            Inval::Inode(ino) => notifier.inval_inode(INodeNo(ino), 0, 0),
        };
    }
}
