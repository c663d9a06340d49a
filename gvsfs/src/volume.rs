//! A volume's data on this node: its block map, the dirty blocks buffered
//! since the last commit, and its write lease. Writes only touch memory;
//! a commit pushes the new chunks to every live replica in parallel, then
//! swaps the root in metad with one transaction fenced by the lease epoch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metad::{Compare, CompareTarget, Op, Txn};

use crate::blockmap::{BlockMap, NewChunks};
use crate::chunk::{Bytes, Check, ChunkId, ChunkStore, Delta, DELTA_SHARE};
use crate::error::{GvsError, Result};
use crate::gvs::Gvs;
use crate::meta::{self, Inode, NodeInfo};
use crate::mirror::settle;

/// How long a writer waits for the current holder to hand a lease over.
const LEASE_WAIT: Duration = Duration::from_secs(20);

/// How long a node that took a write lease waits for its view of metad
/// to reach the lease's revision (see [`Volume::start_from_committed`]).
const VIEW_WAIT: Duration = Duration::from_secs(10);

/// How long a commit or a lease request retries while metad cannot answer
/// (a leader election, a lost answer).
const METAD_WAIT: Duration = Duration::from_secs(20);
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Whether a metad error may go away by itself: retry it.
fn transient(e: &metad::ClientError) -> bool {
    use metad::ClientError as E;
    matches!(
        e,
        E::NoQuorum { .. } | E::Timeout(..) | E::Unknown(_) | E::Unreachable(_)
    )
}

/// Dirty bytes of one volume that trigger a commit.
pub const DIRTY_LIMIT: usize = 256 << 20;

/// Most separate changed ranges a dirty block keeps for a delta; past
/// this it is sent whole.
const MAX_PATCHES: usize = 32;

/// A block written since the last commit.
struct DirtyBlock {
    /// Its whole new content.
    data: Vec<u8>,
    /// The committed chunk it was patched from and the byte ranges
    /// changed since (sorted, disjoint), while they are few and cover at
    /// most a quarter of the block: the commit sends mirrors a delta
    /// instead of the block. `None`: sent whole.
    from: Option<(ChunkId, Vec<(usize, usize)>)>,
}

impl DirtyBlock {
    /// A block replaced as a whole.
    fn whole(data: Vec<u8>) -> DirtyBlock {
        DirtyBlock { data, from: None }
    }

    /// Records that bytes `[start, end)` changed.
    fn touched(&mut self, start: usize, end: usize) {
        let Some((_, ranges)) = &mut self.from else {
            return;
        };
        let at = ranges.partition_point(|r| r.1 < start);
        let mut merged = (start, end);
        while at < ranges.len() && ranges[at].0 <= merged.1 {
            let r = ranges.remove(at);
            merged = (merged.0.min(r.0), merged.1.max(r.1));
        }
        ranges.insert(at, merged);
        let bytes: usize = ranges.iter().map(|(a, b)| b - a).sum();
        if ranges.len() > MAX_PATCHES || bytes * DELTA_SHARE > self.data.len() {
            self.from = None;
        }
    }

    /// The delta that makes chunk `id` (this block) from its base, if
    /// the block keeps one.
    fn delta(&self, id: ChunkId) -> Option<Delta> {
        let (base, ranges) = self.from.as_ref()?;
        Some(Delta {
            id,
            base: *base,
            len: self.data.len() as u32,
            patches: ranges
                .iter()
                .map(|&(a, b)| (a as u32, Bytes(self.data[a..b].to_vec())))
                .collect(),
        })
    }
}

/// A fresh [`Volume::era`].
fn next_era() -> u64 {
    static ERAS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    ERAS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A volume's local state.
pub struct Volume {
    ino: u64,
    /// The block map and the root it was loaded from.
    map: Option<(Option<ChunkId>, BlockMap)>,
    /// Blocks written since the last commit.
    dirty: BTreeMap<u64, DirtyBlock>,
    /// The size after the uncommitted changes.
    pending_size: Option<u64>,
    /// Whether the map changed beyond `dirty` (truncate, punch).
    map_changed: bool,
    /// Map chunks of a commit whose push failed: the in-memory map refers
    /// to them, so the next commit pushes them too.
    unpushed: NewChunks,
    /// The lease epoch (the lease key's mod revision) while held here.
    epoch: Option<u64>,
    /// Set while the lease is held here but this node's view has not
    /// reached the lease's revision: until then it cannot know the
    /// latest committed root, and writes fail.
    unseen: bool,
    /// The root of a commit whose outcome is unknown (metad's answer was
    /// lost): it may be the record's root now, committed by this node.
    maybe_committed: Option<Option<ChunkId>>,
    /// Bumped whenever the lease is lost or handed over: file handles that
    /// wrote under an older generation are fenced.
    pub gen: u64,
    /// Changes whenever the state is dropped or replaced (fenced, a clone
    /// or rollback adopted), unique across volumes: a commit whose batch
    /// was cut in another era does not record it.
    era: u64,
    /// The background committer was asked to commit this buffer.
    commit_asked: bool,
    /// End of the last read, to detect sequential reads.
    last_read_end: u64,
    /// First block not yet asked for by read-ahead: a sequential reader
    /// asks only for the blocks that entered its window since its last
    /// read, so that no block is fetched twice while a read-ahead of it
    /// is still on its way.
    ahead_end: u64,
}

/// One piece of a planned read.
pub enum Piece {
    /// Buffered (uncommitted) bytes, already cut to the piece.
    Bytes(Vec<u8>),
    /// `n` bytes at `within` of a chunk.
    Chunk {
        /// The chunk.
        id: ChunkId,
        /// Where the piece starts in it.
        within: usize,
        /// How many bytes.
        n: usize,
    },
    /// A hole: `n` zeros.
    Zeros(usize),
}

/// Carries out a planned read: fetches its chunks (in parallel, from the
/// cache, the local store or the mirrors) and joins the pieces.
pub fn assemble(gvs: &Gvs, replicas: &[String], pieces: Vec<Piece>) -> Result<Vec<u8>> {
    let ids: Vec<ChunkId> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Chunk { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let mut chunks = gvs.fetch_many(&ids, replicas)?.into_iter();
    let total = pieces
        .iter()
        .map(|p| match p {
            Piece::Bytes(b) => b.len(),
            Piece::Chunk { n, .. } | Piece::Zeros(n) => *n,
        })
        .sum();
    let mut out = Vec::with_capacity(total);
    for p in pieces {
        match p {
            Piece::Bytes(b) => out.extend_from_slice(&b),
            Piece::Zeros(n) => out.resize(out.len() + n, 0),
            Piece::Chunk { within, n, .. } => {
                let data = chunks.next().expect("one chunk per piece");
                // A chunk shorter than the block (never made by gvsfs, but
                // harmless) reads as zeros past its end.
                let avail = data.len().saturating_sub(within).min(n);
                out.extend_from_slice(&data[within..within + avail]);
                out.resize(out.len() + (n - avail), 0);
            }
        }
    }
    Ok(out)
}

fn fetcher<'a>(gvs: &'a Gvs, replicas: &'a [String]) -> impl Fn(&ChunkId) -> Result<Vec<u8>> + 'a {
    move |id: &ChunkId| Ok(gvs.fetch(id, replicas)?.to_vec())
}

impl Volume {
    /// Empty local state for volume `ino`.
    pub fn new(ino: u64) -> Volume {
        Volume {
            ino,
            map: None,
            dirty: BTreeMap::new(),
            pending_size: None,
            map_changed: false,
            unpushed: Vec::new(),
            epoch: None,
            unseen: false,
            maybe_committed: None,
            gen: 0,
            era: next_era(),
            commit_asked: false,
            last_read_end: 0,
            ahead_end: 0,
        }
    }

    /// Whether this node holds the write lease.
    pub fn leased(&self) -> bool {
        self.epoch.is_some()
    }

    /// The lease epoch while the lease is held here.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Replaces the whole content by the map of `root` (a clone into this
    /// volume, committed by the caller): buffered changes are dropped;
    /// the lease stays.
    pub fn adopt(&mut self, root: Option<ChunkId>, map: BlockMap) {
        self.era = next_era();
        self.map = Some((root, map));
        self.dirty.clear();
        self.unpushed.clear();
        self.pending_size = None;
        self.map_changed = false;
    }

    /// The committed chunk holding byte `off`, if any (debugging aids).
    pub fn chunk_at(&mut self, gvs: &Gvs, rec: &Inode, off: u64) -> Result<Option<ChunkId>> {
        let f = fetcher(gvs, &rec.replicas);
        let b = off / rec.block_size as u64;
        self.map(gvs, rec)?.get(b, &f)
    }

    /// The size as this node sees it (with uncommitted changes).
    pub fn size(&self, rec: &Inode) -> u64 {
        self.pending_size.unwrap_or(rec.size)
    }

    /// Blocks holding data, as this node sees it.
    pub fn written(&self, rec: &Inode) -> u64 {
        match &self.map {
            Some((_, m)) if self.leased() => {
                let extra = self.dirty.len() as u64;
                m.written() + extra
            }
            _ => rec.written,
        }
    }

    fn map<'a>(&'a mut self, gvs: &Gvs, rec: &Inode) -> Result<&'a mut BlockMap> {
        let stale = match &self.map {
            None => true,
            // A writer's map is ahead of the record; a reader follows the record.
            Some((root, _)) => self.epoch.is_none() && *root != rec.root,
        };
        if stale {
            let f = fetcher(gvs, &rec.replicas);
            self.map = Some((rec.root, BlockMap::load(rec.root, &f)?));
        }
        Ok(&mut self.map.as_mut().expect("loaded").1)
    }

    /// Plans a read of up to `len` bytes at `off`: where each piece comes
    /// from (buffered bytes, a chunk, or zeros) and, for a sequential
    /// reader, the chunks worth reading ahead. Only the block map is
    /// consulted here, under the volume's lock; the chunks are fetched
    /// afterwards without it (see [`assemble`]), so that readers of one
    /// volume run in parallel.
    pub fn plan_read(
        &mut self,
        gvs: &Gvs,
        rec: &Inode,
        off: u64,
        len: u32,
    ) -> Result<(Vec<Piece>, Vec<ChunkId>)> {
        let size = self.size(rec);
        if off >= size {
            return Ok((Vec::new(), Vec::new()));
        }
        let end = size.min(off + len as u64);
        let bs = rec.block_size as u64;
        let f = fetcher(gvs, &rec.replicas);
        let mut pieces = Vec::new();
        let mut pos = off;
        while pos < end {
            let b = pos / bs;
            let within = (pos % bs) as usize;
            let n = ((bs - within as u64).min(end - pos)) as usize;
            let piece = match self.dirty.get(&b) {
                Some(d) => Piece::Bytes(d.data[within..within + n].to_vec()),
                None => match self.map(gvs, rec)?.get(b, &f)? {
                    Some(id) => Piece::Chunk { id, within, n },
                    None => Piece::Zeros(n),
                },
            };
            pieces.push(piece);
            pos += n as u64;
        }
        let mut ahead = Vec::new();
        if off == self.last_read_end && off > 0 {
            let next = end.div_ceil(bs);
            let last = size.div_ceil(bs).min(next + crate::READ_AHEAD_BLOCKS);
            // Blocks already asked for stay asked for while the window
            // moves; a jump (or a first sequential read) starts afresh.
            let first = if (next..=last).contains(&self.ahead_end) {
                self.ahead_end
            } else {
                next
            };
            self.ahead_end = last;
            for b in first..last {
                if !self.dirty.contains_key(&b) {
                    if let Some(id) = self.map(gvs, rec)?.get(b, &f)? {
                        ahead.push(id);
                    }
                }
            }
        }
        self.last_read_end = end;
        Ok((pieces, ahead))
    }

    /// Takes the write lease if this node does not hold it: asks the
    /// holder to hand it over and waits (or for the holder's lease to end).
    pub fn ensure_lease(&mut self, gvs: &Gvs) -> Result<()> {
        if let Some(epoch) = self.epoch {
            return match self.unseen {
                true => self.start_from_committed(gvs, epoch),
                false => Ok(()),
            };
        }
        let lk = meta::lease_key(self.ino);
        let rk = meta::lease_req_key(self.ino);
        let deadline = Instant::now() + LEASE_WAIT;
        let mut asked = false;
        loop {
            let rev = gvs.mirror.rev();
            match gvs.mirror.get(&lk) {
                None => {
                    // The lease key is written last: its mod revision is
                    // the transaction's (metad may count one per op).
                    let mut success = Vec::new();
                    if asked {
                        success.push(Op::Delete {
                            key: rk.clone().into_bytes(),
                        });
                    }
                    success.push(Op::Put {
                        key: lk.clone().into_bytes(),
                        value: gvs.me.clone().into_bytes(),
                        lease: gvs.lease(),
                    });
                    let t = Txn {
                        compare: vec![
                            Compare {
                                key: lk.clone().into_bytes(),
                                target: CompareTarget::Exists(false),
                            },
                            Compare {
                                key: meta::ino_key(self.ino).into_bytes(),
                                target: CompareTarget::Exists(true),
                            },
                        ],
                        success,
                        failure: vec![],
                    };
                    match gvs.rt.block_on(gvs.client().txn(t)) {
                        Ok(r) if r.succeeded => {
                            // The lease key is the transaction's last write:
                            // its mod revision, the epoch, is the
                            // transaction's revision.
                            let epoch = r.revision;
                            self.epoch = Some(epoch);
                            self.unseen = true;
                            tracing::info!(
                                "volume {:#x}: write lease taken, epoch {epoch}",
                                self.ino
                            );
                            return self.start_from_committed(gvs, epoch);
                        }
                        Ok(_) => {
                            if gvs.mirror.get(&meta::ino_key(self.ino)).is_none() {
                                return Err(GvsError::NotFound);
                            }
                            // The lease is held (or the volume changed)
                            // beyond what this node's view shows yet.
                            gvs.mirror.wait_change(rev, Duration::from_millis(200));
                        }
                        Err(e) if transient(&e) => {
                            gvs.metad_trouble(&e);
                            std::thread::sleep(RETRY_PAUSE);
                        }
                        // This node's metad lease expired (metad was out of
                        // reach): it registers again in a moment.
                        Err(e)
                            if matches!(
                                e.state_error(),
                                Some(metad::state::StateError::NoSuchLease(_))
                            ) =>
                        {
                            std::thread::sleep(RETRY_PAUSE);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(_) if !asked => {
                    match gvs
                        .rt
                        .block_on(gvs.client().put(rk.as_bytes(), gvs.me.as_bytes()))
                    {
                        Ok(_) => asked = true,
                        Err(e) if transient(&e) => {
                            gvs.metad_trouble(&e);
                            tracing::info!("volume {:#x}: asking for the lease: {e}", self.ino);
                            std::thread::sleep(RETRY_PAUSE);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(_) => gvs.mirror.wait_change(rev, Duration::from_millis(200)),
            }
            if Instant::now() > deadline {
                let holder = gvs
                    .mirror
                    .get(&lk)
                    .map(|v| String::from_utf8_lossy(&v.value).into_owned())
                    .unwrap_or_default();
                return Err(GvsError::Conflict(format!(
                    "the write lease of volume {:#x} is held by {holder}",
                    self.ino
                )));
            }
        }
    }

    /// Loads the volume's committed state once this node's view has
    /// reached revision `epoch`, that of the write lease it took: any
    /// later commit needs that lease, so the root the view shows then is
    /// the latest committed one. A view that does not get there within
    /// [`VIEW_WAIT`] (a monotonic wait) fails the writer with EIO rather
    /// than let it write on an older root; the lease stays, and is handed
    /// over if another node asks.
    fn start_from_committed(&mut self, gvs: &Gvs, epoch: u64) -> Result<()> {
        if !gvs.mirror.wait_rev(epoch, VIEW_WAIT) {
            tracing::warn!(
                "volume {:#x}: this node's view of metad did not reach the write lease's revision {epoch} within {VIEW_WAIT:?}",
                self.ino
            );
            return Err(GvsError::ViewLags {
                ino: self.ino,
                rev: epoch,
            });
        }
        if gvs
            .mirror
            .get(&meta::lease_key(self.ino))
            .map(|v| v.mod_rev)
            != Some(epoch)
        {
            tracing::warn!(
                "volume {:#x}: write lease epoch {epoch} lost before use",
                self.ino
            );
            self.fence();
            return Err(GvsError::Fenced(self.ino));
        }
        let (fresh, _) = gvs.inode(self.ino)?;
        let f = fetcher(gvs, &fresh.replicas);
        self.map = Some((fresh.root, BlockMap::load(fresh.root, &f)?));
        self.dirty.clear();
        self.unpushed.clear();
        self.pending_size = None;
        self.map_changed = false;
        self.unseen = false;
        Ok(())
    }

    /// Block `b` in the buffer (read in from its committed chunk, or
    /// zeros, the first time), with `[start, end)` recorded as changed
    /// and returned for the caller to change.
    fn dirty_range(
        &mut self,
        gvs: &Gvs,
        rec: &Inode,
        b: u64,
        start: usize,
        end: usize,
    ) -> Result<&mut [u8]> {
        if !self.dirty.contains_key(&b) {
            let f = fetcher(gvs, &rec.replicas);
            let blk = match self.map(gvs, rec)?.get(b, &f)? {
                Some(id) => {
                    let mut data = gvs.fetch(&id, &rec.replicas)?.to_vec();
                    // A delta needs a base of the block's length.
                    let whole = data.len() == rec.block_size as usize;
                    data.resize(rec.block_size as usize, 0);
                    DirtyBlock {
                        data,
                        from: whole.then(|| (id, Vec::new())),
                    }
                }
                None => DirtyBlock::whole(vec![0; rec.block_size as usize]),
            };
            self.dirty.insert(b, blk);
        }
        let blk = self.dirty.get_mut(&b).expect("inserted");
        blk.touched(start, end);
        Ok(&mut blk.data[start..end])
    }

    /// Buffers a write (the lease must be held).
    pub fn write(&mut self, gvs: &Gvs, rec: &Inode, off: u64, data: &[u8]) -> Result<()> {
        let end = off
            .checked_add(data.len() as u64)
            .ok_or(GvsError::TooLarge)?;
        if end > crate::MAX_VOLUME_SIZE {
            return Err(GvsError::TooLarge);
        }
        let bs = rec.block_size as u64;
        let mut pos = off;
        let mut src = data;
        while !src.is_empty() {
            let b = pos / bs;
            let within = (pos % bs) as usize;
            let n = (bs as usize - within).min(src.len());
            if within == 0 && n == bs as usize {
                self.dirty.insert(b, DirtyBlock::whole(src[..n].to_vec()));
            } else {
                self.dirty_range(gvs, rec, b, within, within + n)?
                    .copy_from_slice(&src[..n]);
            }
            src = &src[n..];
            pos += n as u64;
        }
        if end > self.size(rec) {
            self.pending_size = Some(end);
        }
        Ok(())
    }

    /// Zeroes `[off, off+len)` without changing the size, dropping whole
    /// blocks to holes (punch hole; also a shrinking truncate's tail).
    pub fn zero_range(&mut self, gvs: &Gvs, rec: &Inode, off: u64, len: u64) -> Result<()> {
        let bs = rec.block_size as u64;
        let end = off.saturating_add(len);
        let mut pos = off;
        while pos < end {
            let b = pos / bs;
            let within = pos % bs;
            let n = (bs - within).min(end - pos);
            if n == bs {
                self.dirty.remove(&b);
                let f = fetcher(gvs, &rec.replicas);
                self.map(gvs, rec)?.set(b, None, &f)?;
                self.map_changed = true;
            } else {
                let f = fetcher(gvs, &rec.replicas);
                let has = self.dirty.contains_key(&b) || self.map(gvs, rec)?.get(b, &f)?.is_some();
                if has {
                    let (start, end) = (within as usize, (within + n) as usize);
                    self.dirty_range(gvs, rec, b, start, end)?.fill(0);
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// Sets the size (the lease must be held): grows sparsely, or drops
    /// every block past the end and zeroes the tail of the last one.
    pub fn truncate(&mut self, gvs: &Gvs, rec: &Inode, size: u64) -> Result<()> {
        if size > crate::MAX_VOLUME_SIZE {
            return Err(GvsError::TooLarge);
        }
        let old = self.size(rec);
        if size < old {
            let bs = rec.block_size as u64;
            let keep = size.div_ceil(bs);
            self.dirty.retain(|b, _| *b < keep);
            let f = fetcher(gvs, &rec.replicas);
            self.map(gvs, rec)?.truncate(keep, &f)?;
            self.map_changed = true;
            if size % bs != 0 {
                self.zero_range(gvs, rec, size, bs - size % bs)?;
            }
        }
        self.pending_size = Some(size);
        Ok(())
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from `off`; `None`: no data past `off`.
    pub fn seek(&mut self, gvs: &Gvs, rec: &Inode, off: u64, data: bool) -> Result<Option<u64>> {
        let size = self.size(rec);
        if off >= size {
            return Ok(None);
        }
        let bs = rec.block_size as u64;
        let f = fetcher(gvs, &rec.replicas);
        let b = off / bs;
        let dirty: Vec<u64> = self.dirty.keys().copied().collect();
        let map = self.map(gvs, rec)?;
        if data {
            let mut next = map.next_data(b, &f)?;
            if let Some(d) = dirty.iter().find(|d| **d >= b) {
                next = Some(next.map_or(*d, |n| n.min(*d)));
            }
            Ok(next.map(|n| (n * bs).max(off)).filter(|p| *p < size))
        } else {
            let mut h = b;
            loop {
                let mh = map.next_hole(h, &f)?;
                if dirty.binary_search(&mh).is_ok() {
                    h = mh + 1;
                    continue;
                }
                return Ok(Some((mh * bs).max(off).min(size)));
            }
        }
    }

    /// Asks the background committer to commit this volume soon, once
    /// per buffer.
    pub fn commit_soon(&mut self, gvs: &Gvs) {
        if !self.commit_asked {
            self.commit_asked = true;
            gvs.ask_commit(self.ino);
        }
    }

    /// Whether there is anything to commit.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.pending_size.is_some() || self.map_changed
    }

    /// Bytes buffered. Every buffered block is a whole block of the
    /// volume's size, so this does not walk them (it runs at each write).
    pub fn dirty_bytes(&self) -> usize {
        let bs = self.dirty.values().next().map_or(0, |d| d.data.len());
        bs * self.dirty.len()
    }

    /// Fences this node's writers at once when the watched lease key no
    /// longer carries this node's epoch (the lease expired or was taken):
    /// their next write, fsync or close gets EIO. Returns whether it fenced.
    pub fn check_lease(&mut self, gvs: &Gvs) -> bool {
        let Some(epoch) = self.epoch else {
            return false;
        };
        let lk = meta::lease_key(self.ino);
        // A view older than the lease cannot tell whether it was lost.
        if gvs.mirror.rev() < epoch || gvs.mirror.get(&lk).map(|v| v.mod_rev) == Some(epoch) {
            return false;
        }
        tracing::warn!(
            "volume {:#x}: write lease epoch {epoch} lost; fencing this node's writers",
            self.ino
        );
        self.fence();
        true
    }

    /// Fences the volume because the node's own lease lapsed while
    /// metad was out of reach (`why`): the write lease may be another
    /// node's by now.
    fn lapsed(&mut self, why: &str) -> GvsError {
        tracing::warn!(
            "volume {:#x}: node lease lapsed while committing ({why}); dropping uncommitted data",
            self.ino
        );
        self.fence();
        GvsError::Fenced(self.ino)
    }

    /// Drops the local state after losing the lease.
    fn fence(&mut self) {
        self.era = next_era();
        self.dirty.clear();
        self.unpushed.clear();
        self.pending_size = None;
        self.map_changed = false;
        self.map = None;
        self.epoch = None;
        self.unseen = false;
        self.maybe_committed = None;
        self.gen += 1;
    }

    /// First half of a commit, under the volume's lock: turns the dirty
    /// blocks into chunks and the new map root, and empties the buffer
    /// for the writes that come while the chunks travel. `None`: nothing
    /// to commit.
    fn prepare(&mut self, gvs: &Gvs) -> Result<Option<Batch>> {
        self.commit_asked = false;
        if !self.is_dirty() {
            return Ok(None);
        }
        let Some(epoch) = self.epoch else {
            self.fence();
            return Err(GvsError::Fenced(self.ino));
        };
        let lk = meta::lease_key(self.ino);
        if gvs.mirror.get(&lk).map(|v| v.mod_rev) != Some(epoch) {
            tracing::warn!(
                "volume {:#x}: lease epoch {epoch} lost; dropping uncommitted data",
                self.ino
            );
            self.fence();
            return Err(GvsError::Fenced(self.ino));
        }
        let (rec, _) = gvs.inode(self.ino)?;
        let mut chunks: NewChunks = Vec::new();
        let f = fetcher(gvs, &rec.replicas);
        let dirty = std::mem::take(&mut self.dirty);
        let mut blocks: Vec<(u64, Option<ChunkId>)> = Vec::with_capacity(dirty.len());
        // Blocks patched from a committed chunk go to the mirrors as deltas.
        let mut deltas = Vec::new();
        for (b, blk) in dirty {
            if blk.data.iter().all(|x| *x == 0) {
                blocks.push((b, None));
            } else {
                let id = ChunkId::of(&blk.data);
                blocks.push((b, Some(id)));
                deltas.extend(blk.delta(id));
                chunks.push((id, Arc::new(blk.data)));
            }
        }
        let mapped = (|| {
            let map = self.map(gvs, &rec)?;
            for (b, id) in &blocks {
                map.set(*b, *id, &f)?;
            }
            map.commit()
        })();
        let (root, map_chunks, map_deltas) = match mapped {
            Ok(r) => r,
            Err(e) => {
                self.restore(&blocks, &chunks, rec.block_size as usize);
                return Err(e);
            }
        };
        chunks.extend(map_chunks);
        deltas.extend(map_deltas);
        chunks.append(&mut self.unpushed);
        self.map_changed = false;
        drop(f);
        Ok(Some(Batch {
            base: self.map.as_ref().expect("loaded").0,
            size: self.pending_size.unwrap_or(rec.size),
            written: self.map.as_ref().expect("loaded").1.written(),
            rec,
            epoch,
            era: self.era,
            root,
            chunks,
            deltas,
            blocks,
        }))
    }

    /// Puts the blocks of a commit that did not happen back into the
    /// buffer, under any newer write to them.
    fn restore(&mut self, blocks: &[(u64, Option<ChunkId>)], chunks: &NewChunks, bs: usize) {
        let data: HashMap<ChunkId, &Arc<Vec<u8>>> = chunks.iter().map(|(id, d)| (*id, d)).collect();
        for (b, id) in blocks {
            self.dirty.entry(*b).or_insert_with(|| {
                let d = id
                    .and_then(|id| data.get(&id).map(|d| d.to_vec()))
                    .unwrap_or_else(|| vec![0; bs]);
                DirtyBlock::whole(d)
            });
        }
    }

    /// Second half of a commit, under the volume's lock again: once the
    /// chunks are stored (`pushed`: the replicas that missed them),
    /// swaps the root in metad, fenced by the lease epoch. A fenced
    /// writer's data is dropped and it gets [`GvsError::Fenced`].
    fn finish(&mut self, gvs: &Gvs, batch: Batch, pushed: Result<Vec<String>>) -> Result<()> {
        let Batch {
            rec,
            epoch,
            base,
            era,
            root,
            chunks,
            deltas,
            blocks,
            size,
            written,
        } = batch;
        if self.era != era {
            // Fenced, or replaced by a clone or rollback meanwhile: what
            // this commit carried is gone with the state it came from.
            return Err(match self.epoch {
                None => GvsError::Fenced(self.ino),
                Some(_) => GvsError::Conflict(format!(
                    "volume {:#x} was replaced while its writes were being committed",
                    self.ino
                )),
            });
        }
        let missing = match pushed.and_then(|m| enough_copies(self.ino, &rec, m)) {
            Ok(m) => m,
            Err(e) => {
                self.restore(&blocks, &chunks, rec.block_size as usize);
                let data: HashSet<ChunkId> = blocks.iter().filter_map(|(_, id)| *id).collect();
                self.unpushed
                    .extend(chunks.into_iter().filter(|(id, _)| !data.contains(id)));
                self.map_changed = true;
                return Err(e);
            }
        };
        {
            // A patched block's old chunk is rarely read again (a snapshot
            // or clone that shares it reads it from the store): it leaves
            // the cache to its successor, so that a random writer's blocks
            // stay cached for their next partial write.
            let mut cache = gvs.cache.lock().unwrap_or_else(|e| e.into_inner());
            for d in &deltas {
                cache.pop(&d.base);
            }
            for (id, d) in &chunks {
                cache.put(*id, d.clone());
            }
        }
        let lk = meta::lease_key(self.ino);
        let deadline = Instant::now() + METAD_WAIT;
        let mut conflicts = 0;
        while conflicts < 20 {
            let (mut cur, rev) = gvs.inode(self.ino)?;
            // Another root was committed since this node's map started
            // from `base` (its view lagged): committing would drop it.
            // (The transaction compares the record's revision: this is
            // the root it holds.)
            if cur.root != base && cur.root != root && Some(cur.root) != self.maybe_committed {
                tracing::warn!(
                    "volume {:#x}: the committed root is not the one this node's writes started from; dropping them",
                    self.ino
                );
                release_lease(gvs, self.ino, epoch);
                self.fence();
                return Err(GvsError::StaleBase(self.ino));
            }
            // A replica added since the push (re-mirroring, a rebalance)
            // lacks this commit's chunks: recorded, its repair copies them.
            let missed: Vec<String> = missing
                .iter()
                .chain(cur.replicas.iter().filter(|n| !rec.replicas.contains(n)))
                .cloned()
                .collect();
            let was_degraded = cur.degraded;
            cur.root = root;
            cur.size = size;
            cur.written = written;
            cur.mtime = meta::now();
            cur.ctime = cur.mtime;
            cur.degraded |= !missed.is_empty();
            let mut success = vec![Op::Put {
                key: meta::ino_key(self.ino).into_bytes(),
                value: cur.encode(),
                lease: 0,
            }];
            for m in &missed {
                success.push(Op::Put {
                    key: meta::missing_key(m, self.ino).into_bytes(),
                    value: Vec::new(),
                    lease: 0,
                });
            }
            let t = Txn {
                compare: vec![
                    Compare {
                        key: lk.clone().into_bytes(),
                        target: CompareTarget::ModRev(epoch),
                    },
                    Compare {
                        key: meta::ino_key(self.ino).into_bytes(),
                        target: CompareTarget::ModRev(rev),
                    },
                ],
                success,
                failure: vec![],
            };
            let Some(r) = gvs.rt.block_on(gvs.unless_lapsed(gvs.client().txn(t))) else {
                return Err(self.lapsed("metad did not answer"));
            };
            match r {
                Ok(r) if r.succeeded => {
                    crate::stats::Stats::add(&gvs.stats.metad_ops, 1 + missing.len() as u64);
                    settle(&gvs.mirror, r.revision);
                    self.map.as_mut().expect("loaded").0 = root;
                    self.maybe_committed = None;
                    // A size set since the batch was cut is still pending.
                    if self.pending_size == Some(size) {
                        self.pending_size = None;
                    }
                    if !was_degraded && !missed.is_empty() {
                        crate::events::degraded(gvs, self.ino, &cur.replicas, &missed);
                    }
                    return Ok(());
                }
                Ok(r) => {
                    conflicts += 1;
                    gvs.mirror.wait_rev(r.revision, Duration::from_secs(2));
                    if gvs.mirror.get(&lk).map(|v| v.mod_rev) != Some(epoch) {
                        tracing::warn!("volume {:#x}: fenced at commit (epoch {epoch})", self.ino);
                        self.fence();
                        return Err(GvsError::Fenced(self.ino));
                    }
                    if gvs.mirror.get(&meta::ino_key(self.ino)).is_none() {
                        return Err(GvsError::NotFound);
                    }
                }
                // metad is electing a leader, or the answer was lost: try
                // again (the same root, fenced by the same epoch) for a while.
                // Once the node's own lease has lapsed the write lease
                // may be another node's: give up now (EIO) rather than
                // hold the writer for the whole wait.
                Err(e) if transient(&e) && gvs.lease_lapsed() => {
                    return Err(self.lapsed(&e.to_string()));
                }
                Err(e) if transient(&e) && Instant::now() < deadline => {
                    gvs.metad_trouble(&e);
                    tracing::info!("volume {:#x}: commit: {e}; retrying", self.ino);
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(e) => {
                    // The outcome may be unknown: keep the map; the next
                    // commit writes the same root again.
                    self.map_changed = true;
                    self.maybe_committed = Some(root);
                    return Err(e.into());
                }
            }
        }
        Err(GvsError::Conflict(format!(
            "commit of volume {:#x}: the record kept changing",
            self.ino
        )))
    }
}

/// A commit between its two halves: what was cut from the buffer and
/// where it goes.
struct Batch {
    /// The volume's record when the batch was cut.
    rec: Inode,
    /// The lease epoch it commits under.
    epoch: u64,
    /// The committed root the batch's map was changed from.
    base: Option<ChunkId>,
    /// The volume's [`Volume::era`] when it was cut.
    era: u64,
    /// The new map root.
    root: Option<ChunkId>,
    /// Data and map chunks to store.
    chunks: NewChunks,
    /// The chunks the mirrors get as deltas.
    deltas: Vec<Delta>,
    /// Which block became which chunk (None: zeros, a hole), so that the
    /// buffer can be rebuilt if no replica takes the chunks.
    blocks: Vec<(u64, Option<ChunkId>)>,
    /// The size and written blocks after it.
    size: u64,
    written: u64,
}

/// Dirty bytes past which a writer asks the background committer to
/// commit the volume (a quarter of [`DIRTY_LIMIT`]): the writer goes on
/// into a fresh buffer while the chunks travel, and waits only when it
/// fills [`DIRTY_LIMIT`] before that commit is done.
pub const COMMIT_AHEAD: usize = DIRTY_LIMIT / 4;

/// A volume's local state behind its lock, and a second lock that keeps
/// its commits one at a time. A commit holds the state's lock only to cut
/// the buffer and to record the result, not while the chunks travel to
/// the mirrors, so that writes go on meanwhile.
pub struct VolumeSlot {
    state: std::sync::Mutex<Volume>,
    committing: std::sync::Mutex<()>,
}

impl VolumeSlot {
    /// The slot of volume `ino`, with empty state.
    pub fn new(ino: u64) -> VolumeSlot {
        VolumeSlot {
            state: std::sync::Mutex::new(Volume::new(ino)),
            committing: std::sync::Mutex::new(()),
        }
    }

    /// Locks the state (as [`std::sync::Mutex::lock`]).
    pub fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, Volume>> {
        self.state.lock()
    }

    /// Locks the state if it is free (as [`std::sync::Mutex::try_lock`]).
    pub fn try_lock(&self) -> std::sync::TryLockResult<std::sync::MutexGuard<'_, Volume>> {
        self.state.try_lock()
    }

    /// Pushes the buffered writes to every live replica and commits the
    /// new root in metad, after any commit already under way. `gen`: the
    /// writer generation the caller wrote under (a file handle's): if the
    /// volume was fenced since, its writes are gone and it gets
    /// [`GvsError::Fenced`].
    pub fn commit(&self, gvs: &Gvs, gen: Option<u64>) -> Result<()> {
        let _one = self.committing.lock().unwrap_or_else(|e| e.into_inner());
        let v = self.lock().unwrap_or_else(|e| e.into_inner());
        if gen.is_some_and(|g| g != v.gen) {
            return Err(GvsError::Fenced(v.ino));
        }
        self.run_commit(v, gvs, false).1
    }

    /// One commit, from the state's guard to the guard it ends with (the
    /// caller holds `committing`). `hold` keeps writers out while the
    /// chunks travel; otherwise the guard is let go meanwhile.
    fn run_commit<'a>(
        &'a self,
        mut v: std::sync::MutexGuard<'a, Volume>,
        gvs: &Gvs,
        hold: bool,
    ) -> (std::sync::MutexGuard<'a, Volume>, Result<()>) {
        let batch = match v.prepare(gvs) {
            Ok(Some(b)) => b,
            other => return (v, other.map(drop)),
        };
        // The map names the new chunks from now on: readers and partial
        // writes find them in flight until they are stored and cached.
        gvs.take_off(&batch.chunks);
        let chunks = batch.chunks.clone();
        let held = hold.then_some(v);
        let pushed = push(gvs, &batch.rec.replicas, &batch.chunks, &batch.deltas);
        let mut v = held.unwrap_or_else(|| self.lock().unwrap_or_else(|e| e.into_inner()));
        let r = v.finish(gvs, batch, pushed);
        gvs.land(&chunks);
        (v, r)
    }

    /// Hands the lease over to a node that asked: commit, then release.
    pub fn hand_over(&self, gvs: &Gvs) {
        // The bulk while writers go on, then the rest with them held, so
        // that no write acknowledged before the release is dropped.
        if let Err(e) = self.commit(gvs, None) {
            tracing::warn!("commit before handing a lease over: {e}");
        }
        let _one = self.committing.lock().unwrap_or_else(|e| e.into_inner());
        let v = self.lock().unwrap_or_else(|e| e.into_inner());
        if v.epoch.is_none() {
            return;
        }
        let (mut v, r) = self.run_commit(v, gvs, true);
        if let Err(e) = r {
            tracing::warn!(
                "volume {:#x}: commit before handing the lease over: {e}",
                v.ino
            );
        }
        let Some(epoch) = v.epoch else { return };
        release_lease(gvs, v.ino, epoch);
        tracing::info!("volume {:#x}: write lease handed over", v.ino);
        v.fence();
    }
}

/// Gives up volume `ino`'s write lease held at `epoch` (and any request
/// for it), for the next writer to take.
fn release_lease(gvs: &Gvs, ino: u64, epoch: u64) {
    let lk = meta::lease_key(ino);
    let t = Txn {
        compare: vec![Compare {
            key: lk.clone().into_bytes(),
            target: CompareTarget::ModRev(epoch),
        }],
        success: vec![
            Op::Delete {
                key: lk.into_bytes(),
            },
            Op::Delete {
                key: meta::lease_req_key(ino).into_bytes(),
            },
        ],
        failure: vec![],
    };
    match gvs.rt.block_on(gvs.client().txn(t)) {
        Ok(r) => settle(&gvs.mirror, r.revision),
        Err(e) => tracing::warn!("volume {ino:#x}: releasing the lease: {e}"),
    }
}

/// Stores `chunks` on every live replica in parallel (locally when this
/// node is one): those with a delta in `deltas` as that delta, whole when
/// the replica cannot rebuild it, the others whole. Returns the replicas
/// that missed them; fails only when no replica took them.
pub(crate) fn push(
    gvs: &Gvs,
    replicas: &[String],
    chunks: &NewChunks,
    deltas: &[Delta],
) -> Result<Vec<String>> {
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    let nodes: HashMap<String, NodeInfo> = gvs.nodes().into_iter().collect();
    let mut missing = Vec::new();
    let mut ok = 0;
    let local = replicas.contains(&gvs.me);
    let remote: Vec<(String, String)> = replicas
        .iter()
        .filter(|r| **r != gvs.me)
        .filter_map(|r| match nodes.get(r) {
            Some(n) => Some((r.clone(), n.addr.clone())),
            None => {
                missing.push(r.clone());
                None
            }
        })
        .collect();
    // Chunks with a delta, and the others (sent whole everywhere).
    let by_delta: HashSet<ChunkId> = deltas.iter().map(|d| d.id).collect();
    let (patched, whole): (NewChunks, NewChunks) = chunks
        .iter()
        .cloned()
        .partition(|(id, _)| by_delta.contains(id));
    // The chunks a replica could not rebuild from their delta.
    let resend = |need: Vec<ChunkId>| -> NewChunks {
        let need: HashSet<ChunkId> = need.into_iter().collect();
        chunks
            .iter()
            .filter(|(id, _)| need.contains(id))
            .cloned()
            .collect()
    };
    let (whole, resend) = (&whole, &resend);
    // One thread per replica: the pushes run in parallel.
    let results: Vec<(String, Result<()>)> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (name, addr) in &remote {
            handles.push((
                name.clone(),
                scope.spawn(move || {
                    let put = async {
                        let need = gvs.peers.put(addr, whole, deltas).await?;
                        if !need.is_empty() {
                            gvs.peers.put(addr, &resend(need), &[]).await?;
                        }
                        Ok(())
                    };
                    let r = gvs.rt.block_on(gvs.unless_lapsed(put));
                    r.unwrap_or_else(|| {
                        Err(GvsError::Peer {
                            peer: addr.clone(),
                            why: "gave up: this node's metad lease lapsed".into(),
                        })
                    })
                }),
            ));
        }
        if local {
            handles.push((
                gvs.me.clone(),
                scope.spawn(|| store_locally(&gvs.store, &patched, whole, deltas)),
            ));
        }
        outcomes(handles)
    });
    let bytes = whole.iter().map(|(_, d)| d.len()).sum::<usize>()
        + deltas.iter().map(Delta::patch_bytes).sum::<usize>();
    for (name, r) in results {
        match r {
            Ok(()) => {
                ok += 1;
                if name != gvs.me {
                    crate::stats::Stats::add(&gvs.stats.pushed_bytes, bytes as u64);
                }
            }
            Err(e) => {
                tracing::warn!("replica {name} missed a commit: {e}");
                missing.push(name);
            }
        }
    }
    if ok == 0 {
        return Err(GvsError::Peer {
            peer: replicas.join(","),
            why: "no replica is reachable".into(),
        });
    }
    Ok(missing)
}

/// The replicas that missed a commit (`missing`), unless that leaves
/// fewer copies than the volume's `gvs.min_copies` asks for: then the
/// commit fails (EIO), its writes stay buffered for the next one.
fn enough_copies(ino: u64, rec: &Inode, missing: Vec<String>) -> Result<Vec<String>> {
    let copies = rec.replicas.iter().filter(|r| !missing.contains(r)).count() as u32;
    let wanted = rec.copies_wanted();
    if copies < wanted {
        return Err(GvsError::TooFewCopies {
            ino,
            copies,
            wanted,
        });
    }
    Ok(missing)
}

/// Each replica's push outcome, by name, once its thread is done: a
/// thread that panicked counts as a replica that missed the commit (the
/// volume is degraded and the repair copies it), never as neither.
fn outcomes(
    handles: Vec<(String, std::thread::ScopedJoinHandle<'_, Result<()>>)>,
) -> Vec<(String, Result<()>)> {
    handles
        .into_iter()
        .map(|(name, h)| {
            let r = h.join().unwrap_or_else(|_| {
                Err(GvsError::Peer {
                    peer: name.clone(),
                    why: "the push to it panicked".into(),
                })
            });
            (name, r)
        })
        .collect()
}

/// Stores a commit's chunks in the local store, durably, in parts of
/// bounded size (one RocksDB batch each, synced once at the end): the
/// chunks that have a delta (`patched`) go with the deltas, so the store
/// keeps each as its delta where it can and whole where it cannot, never
/// both; the others (`whole`) follow.
fn store_locally(
    store: &ChunkStore,
    patched: &NewChunks,
    whole: &NewChunks,
    deltas: &[Delta],
) -> Result<()> {
    let rest = crate::net::frames(whole, |(_, d)| d.len());
    let mut ingest = store.ingest(true);
    ingest.part(patched, deltas, Check::Trust, rest.is_empty())?;
    for (i, part) in rest.iter().enumerate() {
        ingest.part(part, &[], Check::Trust, i + 1 == rest.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_commit_goes_back_under_newer_writes() {
        let mut v = Volume::new(7);
        let (old, other) = (vec![1u8; 16], vec![2u8; 16]);
        let (old_id, other_id) = (ChunkId::of(&old), ChunkId::of(&other));
        // Block 0 was written again while the commit was under way.
        v.dirty.insert(0, DirtyBlock::whole(vec![9; 16]));
        let blocks = [(0, Some(old_id)), (1, Some(other_id)), (2, None)];
        let chunks: NewChunks = vec![(old_id, Arc::new(old)), (other_id, Arc::new(other))];
        v.restore(&blocks, &chunks, 16);
        let data: Vec<(u64, Vec<u8>)> = v.dirty.iter().map(|(b, d)| (*b, d.data.clone())).collect();
        assert_eq!(
            data,
            vec![(0, vec![9; 16]), (1, vec![2; 16]), (2, vec![0; 16])],
            "the newer write stays; the others come back, holes as zeros"
        );
    }

    #[test]
    fn a_push_thread_that_panics_counts_as_a_replica_that_missed_the_commit() {
        let got = std::thread::scope(|scope| {
            let good = scope.spawn(|| Ok(()));
            let bad = scope.spawn(|| -> Result<()> { panic!("a push thread panics") });
            outcomes(vec![("node1".into(), good), ("node2".into(), bad)])
        });
        let names: Vec<(&str, bool)> = got.iter().map(|(n, r)| (n.as_str(), r.is_ok())).collect();
        assert_eq!(
            names,
            vec![("node1", true), ("node2", false)],
            "every replica has an outcome; the panicked push is a miss"
        );
    }

    #[test]
    fn dirty_ranges_merge_and_give_up_past_a_quarter() {
        let base = ChunkId::of(b"base");
        let mut b = DirtyBlock {
            data: vec![0; 65536],
            from: Some((base, Vec::new())),
        };
        b.touched(8192, 12288);
        b.touched(0, 4096);
        b.touched(4096, 6000);
        b.touched(5000, 8192);
        b.touched(20000, 20010);
        b.data[0] = 7;
        let id = ChunkId::of(&b.data);
        let d = b.delta(id).unwrap();
        let ranges: Vec<(u32, usize)> = d.patches.iter().map(|(o, p)| (*o, p.0.len())).collect();
        assert_eq!(ranges, vec![(0, 12288), (20000, 10)]);
        assert_eq!((d.id, d.base, d.patches[0].1 .0[0]), (id, base, 7));
        // Past a quarter of the block: sent whole.
        b.touched(30000, 40000);
        assert!(b.delta(id).is_none());
        // A block replaced whole has no delta.
        assert!(DirtyBlock::whole(vec![1; 16]).delta(id).is_none());
    }
}
