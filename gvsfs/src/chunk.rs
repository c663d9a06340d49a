//! Content-addressed chunks: the BLAKE3 hash that names a chunk, and the
//! node's chunk store (RocksDB, large values in blob files). Chunks are
//! immutable, so two volumes (a clone and its origin, a snapshot and its
//! volume) can share them without coordination.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{GvsError, Result};

/// The BLAKE3 hash of a chunk's bytes; a chunk's only name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Whether `data` is the chunk this id names (constant-time compare).
    pub fn verifies(&self, data: &[u8]) -> bool {
        blake3::hash(data) == blake3::Hash::from(self.0)
    }

    /// Lowercase hex, for logs and errors.
    pub fn hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }
}

impl std::fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.hex()[..16])
    }
}

/// A chunk's bytes on the wire. serde sends a `Vec<u8>` as a sequence,
/// one call per byte (measured: 6% of a writer's CPU at 4 KiB random
/// writes with fsync); this sends it as one byte string. In postcard both
/// are the length then the bytes, so the frames are the same as before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Bytes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(
                self,
                v: Vec<u8>,
            ) -> std::result::Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A chunk sent as the changes from another: the chunk `id` is the bytes
/// of `base` with each patch (offset, bytes) written over them in order.
/// A 4 KiB write into a 64 KiB block then costs each mirror 4 KiB of log
/// at commit instead of 64 KiB; the mirror rebuilds the chunk and checks
/// it against `id` before keeping the delta.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The chunk this one is.
    pub id: ChunkId,
    /// The chunk it was patched from.
    pub base: ChunkId,
    /// The chunk's length.
    pub len: u32,
    /// (offset, bytes), applied in order.
    pub patches: Vec<(u32, Bytes)>,
}

impl Delta {
    /// Bytes the patches carry.
    pub fn patch_bytes(&self) -> usize {
        self.patches.iter().map(|(_, b)| b.0.len()).sum()
    }

    /// The delta that makes `new` (chunk `id`) from `old` (chunk `base`),
    /// when they have the same length and differ in under a quarter of
    /// it. Differences closer than 16 bytes go in one patch.
    pub fn between(base: ChunkId, old: &[u8], id: ChunkId, new: &[u8]) -> Option<Delta> {
        if old.len() != new.len() || base == id {
            return None;
        }
        let mut patches: Vec<(u32, Bytes)> = Vec::new();
        let mut i = 0;
        while i < new.len() {
            if old[i] == new[i] {
                i += 1;
                continue;
            }
            let start = i;
            let mut end = i + 1;
            // On while another difference lies within 16 bytes.
            while let Some(j) = (end..(end + 16).min(new.len())).find(|&j| old[j] != new[j]) {
                end = j + 1;
            }
            patches.push((start as u32, Bytes(new[start..end].to_vec())));
            i = end;
        }
        let d = Delta {
            id,
            base,
            len: new.len() as u32,
            patches,
        };
        (d.patch_bytes() * DELTA_SHARE <= new.len()).then_some(d)
    }

    /// The patched bytes of `base` (`None`: a patch reaches past its end).
    pub fn apply(&self, mut base: Vec<u8>) -> Option<Vec<u8>> {
        for (off, b) in &self.patches {
            let off = *off as usize;
            base.get_mut(off..off.checked_add(b.0.len())?)?
                .copy_from_slice(&b.0);
        }
        Some(base)
    }
}

/// Whether [`ChunkStore::put`] rebuilds each delta to check it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Check {
    /// Rebuild and verify against the id (deltas from another node).
    Verify,
    /// Trust (deltas this node made from the bytes they name): saves a
    /// read and a hash of the whole chunk per delta on the writer.
    Trust,
}

/// Column family of chunks held as a delta (see [`Delta`]): chunk id →
/// postcard [`Delta`], then one byte: the chunk's depth, how many deltas
/// lie between it and a whole chunk (1: its base is whole). A value
/// without that byte (stored before deltas were chained) has depth 1.
const DELTAS_CF: &str = "deltas";

/// Most deltas between a chunk and a whole one: a delta on a chunk this
/// deep is stored whole instead. Each patch of a block then costs a store
/// one small record (and a whole chunk every seventeenth), instead of a
/// record holding every patch since the last whole chunk, as when deltas
/// were folded onto their whole base (4 KiB random writes with an fsync
/// every 32 wrote ~670 KB per fsync to each store that way; chained, the
/// fsyncs went from ~5500 to ~6570 a second, at a depth of 8 ~6100). A
/// read of a chunk not cached walks at most this many records (cold 4 KiB
/// random reads after such writes: 199 K IOPS, 212 K with folded deltas).
/// The garbage collector shortens chains: a live chunk whose base it
/// deletes is stored whole.
pub(crate) const MAX_DEPTH: u8 = 16;

/// Column family indexing deltas by base: base id ‖ delta id → nothing,
/// so that deleting a base rewrites its deltas whole first.
const BASES_CF: &str = "bases";

/// A delta is kept only while its patches stay under this share of the
/// chunk (1/4): past it, the chunk is stored whole.
pub(crate) const DELTA_SHARE: usize = 4;

/// Column family holding each chunk's store time (8 bytes, nanoseconds
/// since the epoch, little endian), keyed by the chunk id: what the
/// garbage collector's grace period is measured against, without reading
/// chunk values.
const TIMES_CF: &str = "times";

/// Memtable size of the column families of small records (times, bases).
const SMALL_MEMTABLE: usize = 4 << 20;

/// Durable batches of at least this many bytes are flushed to blob files
/// instead of being written to the log first (halves the disk writes of a
/// large commit; measured: 128 MiB took 0.7-2.8 s through the log).
/// Smaller ones go through the log: a flush per small commit would make
/// many small files.
const FLUSH_INSTEAD_OF_LOG: u64 = 8 << 20;

/// What the local store holds for a chunk id.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// An intact copy.
    Good(Vec<u8>),
    /// No copy.
    Absent,
    /// A copy whose bytes do not match the id (or that RocksDB reports as
    /// corrupt): bit rot, to be replaced by a good copy from a mirror.
    Corrupt,
}

/// The node's local chunk store: chunk id → bytes, in RocksDB.
#[derive(Clone)]
pub struct ChunkStore {
    db: Arc<rocksdb::DB>,
    /// Bytes stored since start (puts, including rewrites), for `gvs.stats`.
    pub put_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Every put holds it shared; [`ChunkStore::delete_stale`] holds it
    /// alone while it re-reads the times of what it deletes, so a chunk
    /// stored again after a collector listed it as old (a commit writing
    /// the same bytes) is never deleted.
    sweeping: Arc<std::sync::RwLock<()>>,
    /// Chunks that puts from other nodes stored lately (see [`Recent`]).
    recent: Arc<std::sync::Mutex<Recent>>,
    /// The depth (see [`DELTAS_CF`]) of chunks lately stored or looked
    /// up here, up to [`DEPTHS_KEPT`]: a writer storing its own deltas
    /// asks for each base's depth, and reading it from the store (the
    /// base's delta record, once flushed a blob) took the writer's store
    /// 0.3 ms per fsync on a fresh grid and 1.2 ms a minute of random
    /// writes later. Filled and read only by puts, which hold
    /// `sweeping` shared; [`ChunkStore::delete_stale`] evicts what it
    /// deletes while it holds it alone, so no entry names a chunk no
    /// longer held.
    depths: Arc<std::sync::Mutex<lru::LruCache<ChunkId, u8>>>,
}

/// How many chunks' depths [`ChunkStore`] keeps in memory (about 20 MiB).
const DEPTHS_KEPT: usize = 1 << 18;

/// The chunks a mirror stored lately from small puts (whole, or rebuilt
/// from their delta), with their depth (see [`DELTAS_CF`]), up to a byte
/// budget, newest kept: the bases it will rebuild a random writer's next
/// deltas from. RocksDB writes blob files with O_DIRECT (see
/// [`ChunkStore::open`]), so once flushed each base would be a disk read
/// (or a walk down its chain), one after another while the writer's fsync
/// waits (measured: 34 deltas took a mirror 2 ms, most of it in `pread`).
/// Large puts (sequential writers) are not kept: their chunks are rarely
/// patched soon, and caching every flushed chunk (RocksDB's blob cache
/// filled at flush) cost sequential writes a tenth.
struct Recent {
    chunks: lru::LruCache<ChunkId, (Arc<Vec<u8>>, u8)>,
    bytes: usize,
    budget: usize,
}

impl Recent {
    fn insert(&mut self, id: ChunkId, data: Arc<Vec<u8>>, depth: u8) {
        if data.len() > self.budget {
            return;
        }
        self.bytes += data.len();
        if let Some((old, _)) = self.chunks.put(id, (data, depth)) {
            self.bytes -= old.len();
        }
        while self.bytes > self.budget {
            match self.chunks.pop_lru() {
                Some((_, (d, _))) => self.bytes -= d.len(),
                None => break,
            }
        }
    }

    fn remove(&mut self, id: &ChunkId) -> Option<(Arc<Vec<u8>>, u8)> {
        let got = self.chunks.pop(id)?;
        self.bytes -= got.0.len();
        Some(got)
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Whether files in `dir` can be opened with O_DIRECT (not every file
/// system allows it): RocksDB would only find out at its first flush, and
/// stop writing.
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-io-probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir`, with a cache of
    /// `cache_bytes` for deltas and recent chunks.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<ChunkStore> {
        std::fs::create_dir_all(dir)?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // A large part skips the log (see [`FLUSH_INSTEAD_OF_LOG`]): its
        // chunks and their times live only in memtables until flushed.
        // Flushed one family at a time (the small times family fills
        // first), a crash could keep a chunk's time without its bytes, and
        // what counts as held (the repair's and a commit's "held
        // already?") would not be there. Flushes take every family at once.
        opts.set_atomic_flush(true);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(4096);
        opts.set_blob_file_size(256 << 20);
        opts.set_write_buffer_size(64 << 20);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_blob_compression_type(rocksdb::DBCompressionType::None);
        opts.increase_parallelism(2);
        // Flushes and compactions write their files with O_DIRECT where the
        // file system allows it: chunk data reaches the disk without a copy
        // into page cache pages that nothing reads again (a flush spent most
        // of its time there; 1 GiB sequential writes on the 3-node grid went
        // from 160 to 206 MiB/s, mean of six alternating runs).
        opts.set_use_direct_io_for_flush_and_compaction(direct_io_works(dir));
        let mut times = rocksdb::Options::default();
        times.set_compression_type(rocksdb::DBCompressionType::None);
        // The small families' tables get Bloom filters: every chunk a
        // commit brings is first looked up in times (held already?),
        // mostly in vain, and a base's depth in deltas; the filters spare
        // those point lookups a search of each table file.
        let mut tables = rocksdb::BlockBasedOptions::default();
        tables.set_bloom_filter(10.0, false);
        times.set_block_based_table_factory(&tables);
        // Half the cache holds deltas, half the recent chunks (see
        // [`Recent`]). Whole chunks read from blob files are not cached
        // here: a reader's chunk cache holds what it reads again, and
        // copying every chunk of a long sequential read into a cache it
        // overflows cost a third of its speed.
        let cache = rocksdb::Cache::new_lru_cache(cache_bytes / 2);
        let mut deltas = times.clone();
        deltas.set_enable_blob_files(true);
        deltas.set_min_blob_size(1024);
        deltas.set_blob_cache(&cache);
        // The times and bases families hold only small records, hundreds
        // of thousands to a memtable of the default 64 MiB: a skip list that
        // large made inserting a random writer's fsync into the writer's
        // own store slow down run after run (a quarter of its process's
        // CPU in skip list searches). Small memtables stay quick.
        times.set_write_buffer_size(SMALL_MEMTABLE);
        let cfs = vec![
            rocksdb::ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone()),
            rocksdb::ColumnFamilyDescriptor::new(TIMES_CF, times.clone()),
            rocksdb::ColumnFamilyDescriptor::new(DELTAS_CF, deltas),
            rocksdb::ColumnFamilyDescriptor::new(BASES_CF, times),
        ];
        let db = rocksdb::DB::open_cf_descriptors(&opts, dir, cfs)?;
        // Deltas are small and read back at the next patch of their block
        // (for the depth of its chain) and by reads walking a chain:
        // flushed ones stay in the cache.
        let deltas_cf = db.cf_handle(DELTAS_CF).expect("opened with it");
        db.set_options_cf(deltas_cf, &[("prepopulate_blob_cache", "kFlushOnly")])?;
        Ok(ChunkStore {
            db: Arc::new(db),
            put_bytes: Arc::default(),
            sweeping: Arc::default(),
            recent: Arc::new(std::sync::Mutex::new(Recent {
                chunks: lru::LruCache::unbounded(),
                bytes: 0,
                budget: cache_bytes / 2,
            })),
            depths: Arc::new(std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(DEPTHS_KEPT).expect("not zero"),
            ))),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("opened with every column family")
    }

    fn times(&self) -> &rocksdb::ColumnFamily {
        self.cf(TIMES_CF)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn depths(&self) -> std::sync::MutexGuard<'_, lru::LruCache<ChunkId, u8>> {
        self.depths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The base of a delta to rebuild and its depth, taken out of the
    /// recent chunks (the rebuilt chunk succeeds it there as the block's
    /// next base, and taking it spares a copy of the whole chunk per
    /// delta), else read whole or rebuilt and verified. `None`: not held
    /// here, or corrupt.
    fn take_base(&self, id: &ChunkId) -> Result<Option<(Vec<u8>, u8)>> {
        if let Some((d, depth)) = self.recent().remove(id) {
            return Ok(Some((Arc::unwrap_or_clone(d), depth)));
        }
        Ok(match self.get_raw(id)? {
            Some(whole) => Some((whole, 0)),
            None => match self.rebuild(id)? {
                (Lookup::Good(full), depth) => Some((full, depth)),
                _ => None,
            },
        })
    }

    /// The depth of chunk `id` here (0: whole; see [`DELTAS_CF`]), or
    /// `None` if it is not held. Only a put calls it (holding `sweeping`
    /// shared), so what it remembers in `depths` cannot be collected
    /// meanwhile.
    fn depth(&self, id: &ChunkId) -> Result<Option<u8>> {
        if let Some(depth) = self.depths().get(id) {
            return Ok(Some(*depth));
        }
        let depth = match self.delta(id)? {
            Some((_, depth)) => Some(depth),
            None => self
                .db
                .get_pinned_cf(self.times(), id.0)?
                .is_some()
                .then_some(0),
        };
        if let Some(d) = depth {
            self.depths().put(*id, d);
        }
        Ok(depth)
    }

    /// The bytes stored whole under `id`, unverified. RocksDB's own
    /// checksums are not checked: every reader checks the BLAKE3 id,
    /// which catches what they would (measured: crc32c was a sixth of a
    /// writer's CPU).
    fn get_raw(&self, id: &ChunkId) -> std::result::Result<Option<Vec<u8>>, rocksdb::Error> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_verify_checksums(false);
        self.db.get_opt(id.0, &ro)
    }

    /// The delta held for `id`, if any, and its depth.
    fn delta(&self, id: &ChunkId) -> Result<Option<(Delta, u8)>> {
        let Some(v) = self.db.get_pinned_cf(self.cf(DELTAS_CF), id.0)? else {
            return Ok(None);
        };
        let (d, rest) = postcard::take_from_bytes::<Delta>(&v)
            .map_err(|e| GvsError::Corrupt(format!("delta of chunk {}: {e}", id.hex())))?;
        Ok(Some((d, rest.first().copied().unwrap_or(1))))
    }

    /// Stores chunks (already verified by the caller) in one atomic batch,
    /// with their store time (a chunk stored again is young again);
    /// `sync` makes the batch durable before returning.
    pub fn put_many(&self, chunks: &[(ChunkId, Arc<Vec<u8>>)], sync: bool) -> Result<()> {
        self.put(chunks, &[], Check::Verify, sync).map(drop)
    }

    /// Stores whole chunks and deltas in one atomic batch (see
    /// [`Ingest::part`]); `sync` makes the batch durable before returning.
    pub fn put(
        &self,
        whole: &[(ChunkId, Arc<Vec<u8>>)],
        deltas: &[Delta],
        check: Check,
        sync: bool,
    ) -> Result<Vec<ChunkId>> {
        self.ingest(sync).part(whole, deltas, check, true)
    }

    /// The store's "held already?" for a repair: of `ids`, refreshes the
    /// store time of each one held (so a sweep in progress keeps it) and
    /// returns the ones not held, which the caller must copy.
    pub fn keep_held(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        // A delta of a chunk onto itself: held, it is stored again (its
        // time refreshed); not held, it is returned as needed.
        let same: Vec<Delta> = ids
            .iter()
            .map(|&id| Delta {
                id,
                base: id,
                len: 0,
                patches: Vec::new(),
            })
            .collect();
        self.put(&[], &same, Check::Trust, false)
    }

    /// Starts a put that arrives in parts (see [`Ingest`]); `durable`:
    /// its last part returns only once every part is on disk.
    pub fn ingest(&self, durable: bool) -> Ingest {
        Ingest {
            store: self.clone(),
            durable,
            logged: false,
            unlogged: false,
        }
    }

    /// What the store holds for `id`, verified; nothing is changed.
    /// A chunk held as a delta is rebuilt from its base and verified.
    pub fn lookup(&self, id: &ChunkId) -> Result<Lookup> {
        match self.get_raw(id) {
            Ok(Some(v)) if id.verifies(&v) => Ok(Lookup::Good(v)),
            Ok(Some(_)) => Ok(Lookup::Corrupt),
            Ok(None) => self.lookup_delta(id),
            Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => Ok(Lookup::Corrupt),
            Err(e) => Err(e.into()),
        }
    }

    /// [`ChunkStore::lookup`] of a chunk not held whole. A chunk with a
    /// store time but neither bytes nor delta (what a crash left in a
    /// store whose flushes were not atomic) is lost, not deleted (the
    /// collector deletes both at once): corrupt, so that the scrub and
    /// readers fetch a good copy.
    fn lookup_delta(&self, id: &ChunkId) -> Result<Lookup> {
        match self.rebuild(id)?.0 {
            Lookup::Absent if self.db.get_pinned_cf(self.times(), id.0)?.is_some() => {
                Ok(Lookup::Corrupt)
            }
            found => Ok(found),
        }
    }

    /// A chunk not held whole: its chain of deltas down to a whole chunk,
    /// patched back up and verified, and the chain's length (its depth).
    fn rebuild(&self, id: &ChunkId) -> Result<(Lookup, u8)> {
        let mut chain = Vec::new();
        let mut at = *id;
        let base = loop {
            match self.delta(&at) {
                Ok(Some((d, _))) => {
                    at = d.base;
                    chain.push(d);
                }
                Ok(None) if chain.is_empty() => return Ok((Lookup::Absent, 0)),
                // A base the chain names is gone.
                Ok(None) => return Ok((Lookup::Corrupt, 0)),
                Err(GvsError::Corrupt(_)) => return Ok((Lookup::Corrupt, 0)),
                Err(e) => return Err(e),
            }
            // Deeper than any chain is stored: a corrupt record.
            if chain.len() > MAX_DEPTH as usize {
                return Ok((Lookup::Corrupt, 0));
            }
            match self.get_raw(&at) {
                Ok(Some(b)) => break b,
                Ok(None) => {}
                Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => {
                    return Ok((Lookup::Corrupt, 0))
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Only the result is verified: a bad link cannot make it match.
        let full = chain.iter().rev().try_fold(base, |b, d| d.apply(b));
        match full {
            Some(full) if id.verifies(&full) => Ok((Lookup::Good(full), chain.len() as u8)),
            _ => Ok((Lookup::Corrupt, 0)),
        }
    }

    /// The chunk, if held here and intact. A chunk whose bytes no longer
    /// match its id (bit rot) is reported as absent, so that the caller
    /// fetches a good copy from a mirror (see [`ChunkStore::lookup`] to
    /// tell the two apart).
    pub fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        match self.lookup(id)? {
            Lookup::Good(v) => Ok(Some(v)),
            Lookup::Corrupt => {
                tracing::warn!("chunk {} is corrupt in the local store", id.hex());
                Ok(None)
            }
            Lookup::Absent => Ok(None),
        }
    }

    /// Whether the chunk is held here (not verified).
    pub fn has(&self, id: &ChunkId) -> Result<bool> {
        Ok(self.db.get_pinned(id.0)?.is_some()
            || self.db.get_pinned_cf(self.cf(DELTAS_CF), id.0)?.is_some())
    }

    /// Bytes used by the store on disk (SST and blob files), for statfs.
    pub fn used_bytes(&self) -> u64 {
        let p = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        p("rocksdb.total-sst-files-size")
            + p("rocksdb.total-blob-file-size")
            + p("rocksdb.cur-size-all-mem-tables")
    }

    /// Every chunk id with a store time, and that time (ns since the
    /// epoch). Reads only the small time records, never chunk values.
    /// Chunks stored before times were kept have none and are not listed
    /// (the collector never deletes them).
    pub fn times_list(&self) -> Result<Vec<(ChunkId, u64)>> {
        let mut out = Vec::new();
        for kv in self
            .db
            .iterator_cf(self.times(), rocksdb::IteratorMode::Start)
        {
            let (k, v) = kv?;
            let (Ok(id), Ok(t)) = (<[u8; 32]>::try_from(&k[..]), <[u8; 8]>::try_from(&v[..]))
            else {
                continue;
            };
            out.push((ChunkId(id), u64::from_le_bytes(t)));
        }
        Ok(out)
    }

    /// Deletes, in one batch, those of `ids` (and their times) last stored
    /// before `cutoff` (ns since the epoch), as their times read now, with
    /// every put held off: a chunk stored again since the caller listed it
    /// stays. The deltas still based on a deleted chunk are stored whole
    /// first, in the same batch. Returns how many were deleted.
    pub fn delete_stale(&self, ids: &[ChunkId], cutoff: u64) -> Result<u64> {
        let _sweep = self.sweeping.write().unwrap_or_else(|e| e.into_inner());
        let mut stale = Vec::with_capacity(ids.len());
        for id in ids {
            let t = self.db.get_pinned_cf(self.times(), id.0)?;
            let t = t.and_then(|v| <[u8; 8]>::try_from(&v[..]).ok());
            if t.is_some_and(|t| u64::from_le_bytes(t) < cutoff) {
                stale.push(*id);
            }
        }
        let gone: std::collections::HashSet<ChunkId> = stale.iter().copied().collect();
        let mut batch = rocksdb::WriteBatch::default();
        // Deltas stored whole now: depth 0.
        let mut rewritten = Vec::new();
        for id in &stale {
            if let Some((d, _)) = self.delta(id).unwrap_or(None) {
                batch.delete_cf(self.cf(DELTAS_CF), id.0);
                batch.delete_cf(self.cf(BASES_CF), [d.base.0, id.0].concat());
            }
            for kv in self.db.prefix_iterator_cf(self.cf(BASES_CF), id.0) {
                let (k, _) = kv?;
                if !k.starts_with(&id.0) {
                    break;
                }
                batch.delete_cf(self.cf(BASES_CF), &k);
                let Ok(dep) = <[u8; 32]>::try_from(&k[32..]) else {
                    continue;
                };
                let dep = ChunkId(dep);
                if gone.contains(&dep) {
                    continue;
                }
                if let Lookup::Good(full) = self.lookup_delta(&dep)? {
                    batch.put(dep.0, full);
                    batch.delete_cf(self.cf(DELTAS_CF), dep.0);
                    rewritten.push(dep);
                }
            }
            batch.delete(id.0);
            batch.delete_cf(self.times(), id.0);
        }
        self.db.write(batch)?;
        let mut recent = self.recent();
        let mut depths = self.depths();
        for id in &stale {
            recent.remove(id);
            depths.pop(id);
        }
        for id in &rewritten {
            depths.put(*id, 0);
        }
        Ok(stale.len() as u64)
    }

    /// Gives the space of deleted chunks back to the file system: a full
    /// compaction that also rewrites live blobs out of old blob files, so
    /// that files holding only garbage are dropped. Blob garbage
    /// collection is switched on only for this compaction.
    pub fn reclaim(&self) -> Result<()> {
        self.db.set_options(&[
            ("enable_blob_garbage_collection", "true"),
            ("blob_garbage_collection_age_cutoff", "1.0"),
        ])?;
        let mut co = rocksdb::CompactOptions::default();
        co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db.compact_range_opt::<&[u8], &[u8]>(None, None, &co);
        self.db
            .compact_range_cf_opt::<&[u8], &[u8]>(self.times(), None, None, &co);
        self.db
            .set_options(&[("enable_blob_garbage_collection", "false")])?;
        Ok(())
    }

    /// Up to `n` chunk ids after `after` (from the start when `None`), in
    /// key order: the scrub's walk. Keys only (from the times records).
    pub fn ids_after(&self, after: Option<&ChunkId>, n: usize) -> Result<Vec<ChunkId>> {
        let mode = match after {
            Some(a) => rocksdb::IteratorMode::From(&a.0, rocksdb::Direction::Forward),
            None => rocksdb::IteratorMode::Start,
        };
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(self.times(), mode) {
            let (k, _) = kv?;
            let Ok(id) = <[u8; 32]>::try_from(&k[..]) else {
                continue;
            };
            if Some(&ChunkId(id)) == after {
                continue;
            }
            out.push(ChunkId(id));
            if out.len() >= n {
                break;
            }
        }
        Ok(out)
    }

    /// Number of chunks with a store time.
    pub fn count(&self) -> u64 {
        self.db
            .property_int_value_cf(self.times(), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Debugging aid (root only, through `gvs.debug.corrupt`): replaces
    /// the local copy of `id` by the same bytes with one bit flipped, as
    /// bit rot would. Returns whether a copy was there.
    pub fn corrupt(&self, id: &ChunkId) -> Result<bool> {
        let mut v = match (self.db.get(id.0)?, self.lookup_delta(id)?) {
            (Some(v), _) | (None, Lookup::Good(v)) => v,
            (None, _) => return Ok(false),
        };
        if v.is_empty() {
            v.push(0);
        } else {
            let mid = v.len() / 2;
            v[mid] ^= 0x10;
        }
        self.db.put(id.0, v)?;
        self.recent().remove(id);
        Ok(true)
    }
}

/// A put that arrives in parts (a commit streamed by its writer, or
/// pushed from this node in pieces): each part is written as it comes,
/// so that receiving the next overlaps writing this one, and the last
/// makes them all durable at once instead of one sync per part.
pub struct Ingest {
    store: ChunkStore,
    /// Whether the last part waits until every part is on disk.
    durable: bool,
    /// Some part went through the write-ahead log.
    logged: bool,
    /// Some part skipped it: only a flush makes that one durable.
    unlogged: bool,
}

impl Ingest {
    /// Stores one part: whole chunks (already verified by the caller) and
    /// chunks sent as deltas (see [`Delta`]; rebuilt and verified here if
    /// `check` says so) in one atomic batch, with their store time (a
    /// chunk stored again is young again). A delta is stored as it comes,
    /// on its base, unless it patches over a quarter of the chunk or its
    /// base is [`MAX_DEPTH`] deep here: then the chunk is stored whole
    /// (when rebuilt here) or from `whole`. A chunk in `whole` that was
    /// stored as its delta is not stored again. Returns the deltas stored
    /// neither way (base absent or bad here, or too deep or large, and not
    /// in `whole`): the caller sends those whole.
    /// `last`: the put's last part; a durable put returns from it only
    /// once every part is on disk.
    pub fn part(
        &mut self,
        whole: &[(ChunkId, Arc<Vec<u8>>)],
        deltas: &[Delta],
        check: Check,
        last: bool,
    ) -> Result<Vec<ChunkId>> {
        let store = &self.store;
        let _put = store.sweeping.read().unwrap_or_else(|e| e.into_inner());
        let mut batch = rocksdb::WriteBatch::default();
        let t = now_nanos().to_le_bytes();
        let mut bytes = 0;
        let mut need = Vec::new();
        let mut stored = std::collections::HashSet::new();
        // Chunks to keep among the recent ones once stored, and the depth
        // of each chunk stored.
        let (mut keep, mut depths) = (Vec::new(), Vec::new());
        for d in deltas {
            if store.db.get_pinned_cf(store.times(), d.id.0)?.is_some() {
                // Held already (unchanged, or the same bytes again): young
                // again. A chunk's record is written only when it is not
                // held, so a chain always leads to older chunks, never
                // round in a circle.
                batch.put_cf(store.times(), d.id.0, t);
                stored.insert(d.id);
                continue;
            }
            if d.id == d.base {
                need.push(d.id);
                continue;
            }
            let large = d.patch_bytes() * DELTA_SHARE > d.len as usize;
            let depth = match check {
                Check::Verify => {
                    // Only the result is verified: a bad base cannot make it match.
                    let rebuilt = store.take_base(&d.base)?.and_then(|(b, depth)| {
                        d.apply(b)
                            .filter(|full| d.id.verifies(full))
                            .map(|full| (full, depth + 1))
                    });
                    let Some((full, depth)) = rebuilt else {
                        need.push(d.id);
                        continue;
                    };
                    if large || depth > MAX_DEPTH {
                        bytes += full.len() as u64;
                        batch.put(d.id.0, &full);
                        batch.put_cf(store.times(), d.id.0, t);
                        keep.push((d.id, Arc::new(full), 0));
                        depths.push((d.id, 0));
                        continue;
                    }
                    keep.push((d.id, Arc::new(full), depth));
                    depth
                }
                Check::Trust => match store.depth(&d.base)? {
                    Some(depth) if !large && depth < MAX_DEPTH => depth + 1,
                    _ => {
                        need.push(d.id);
                        continue;
                    }
                },
            };
            let mut enc = postcard::to_allocvec(d)?;
            enc.push(depth);
            bytes += enc.len() as u64;
            batch.put_cf(store.cf(DELTAS_CF), d.id.0, enc);
            batch.put_cf(store.cf(BASES_CF), [d.base.0, d.id.0].concat(), []);
            batch.put_cf(store.times(), d.id.0, t);
            stored.insert(d.id);
            depths.push((d.id, depth));
        }
        for (id, data) in whole.iter().filter(|(id, _)| !stored.contains(id)) {
            batch.put(id.0, data.as_slice());
            batch.put_cf(store.times(), id.0, t);
            bytes += data.len() as u64;
            depths.push((*id, 0));
        }
        let given: std::collections::HashSet<ChunkId> = whole.iter().map(|(id, _)| *id).collect();
        need.retain(|id| !given.contains(id));
        // A large part of a durable put skips the write-ahead log and is
        // flushed at the end instead: its bytes reach the disk once (blob
        // files), not twice (log, then blob files at the next flush).
        let skip_log = self.durable && bytes >= FLUSH_INSTEAD_OF_LOG;
        let empty = batch.is_empty();
        self.unlogged |= skip_log;
        self.logged |= !skip_log && !empty;
        let settle = last && self.durable;
        let mut wo = rocksdb::WriteOptions::default();
        // A synced write syncs the log records of the earlier parts too.
        wo.set_sync(settle && !self.unlogged && !empty);
        wo.disable_wal(skip_log);
        if !empty {
            store.db.write_opt(batch, &wo)?;
        }
        {
            let mut known = store.depths();
            for (id, depth) in depths {
                known.put(id, depth);
            }
        }
        if check == Check::Verify {
            let mut recent = store.recent();
            if !skip_log {
                let wholes = whole.iter().filter(|(id, _)| !stored.contains(id));
                keep.extend(wholes.map(|(id, d)| (*id, d.clone(), 0)));
            }
            for (id, data, depth) in keep {
                recent.insert(id, data, depth);
            }
        }
        if settle && self.unlogged {
            let mut fo = rocksdb::FlushOptions::default();
            fo.set_wait(true);
            let cfs = [
                rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
                TIMES_CF,
                DELTAS_CF,
                BASES_CF,
            ]
            .map(|n| store.cf(n));
            store.db.flush_cfs_opt(&cfs, &fo)?;
        } else if settle && empty && self.logged {
            store.db.flush_wal(true)?;
        }
        store
            .put_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(need)
    }
}

/// Decodes a postcard chunk, naming the chunk on failure.
pub fn decode_chunk<T: for<'a> Deserialize<'a>>(id: &ChunkId, data: &[u8]) -> Result<T> {
    postcard::from_bytes(data).map_err(|e| GvsError::Corrupt(format!("chunk {}: {e}", id.hex())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gvsfs-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Stores one delta durably; what the store asks for whole.
    fn put_delta(s: &ChunkStore, d: &Delta, check: Check) -> Vec<ChunkId> {
        s.put(&[], std::slice::from_ref(d), check, true).unwrap()
    }

    /// `base` with `n` bytes of `fill` written at `off`, and the delta.
    fn patched(base: &[u8], base_id: ChunkId, off: usize, n: usize, fill: u8) -> (Vec<u8>, Delta) {
        let mut d = base.to_vec();
        d[off..off + n].fill(fill);
        let delta = Delta {
            id: ChunkId::of(&d),
            base: base_id,
            len: d.len() as u32,
            patches: vec![(off as u32, Bytes(d[off..off + n].to_vec()))],
        };
        (d, delta)
    }

    #[test]
    fn deltas_chain_grow_whole_and_survive_their_base() {
        let dir = tmp("deltas");
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        let base = Arc::new(vec![1u8; 65536]);
        let base_id = ChunkId::of(&base);
        // A delta from a chunk not held here is asked for whole.
        let (_, orphan) = patched(&base, base_id, 0, 4096, 9);
        for check in [Check::Verify, Check::Trust] {
            let need = put_delta(&s, &orphan, check);
            assert_eq!(need, vec![orphan.id]);
        }
        assert!(!s.has(&orphan.id).unwrap());
        s.put_many(&[(base_id, base.clone())], true).unwrap();
        // Held as a delta, read back whole and verified.
        let (v1, d1) = patched(&base, base_id, 4096, 4096, 2);
        assert!(put_delta(&s, &d1, Check::Verify).is_empty());
        assert!(s.has(&d1.id).unwrap());
        assert_eq!(s.get(&d1.id).unwrap().as_deref(), Some(&v1[..]));
        // A delta of a delta is chained on it.
        let (v2, d2) = patched(&v1, d1.id, 8192, 4096, 3);
        assert!(put_delta(&s, &d2, Check::Trust).is_empty());
        let (held, depth) = s.delta(&d2.id).unwrap().unwrap();
        assert_eq!((held.base, depth), (d1.id, 2));
        assert_eq!(s.get(&d2.id).unwrap().as_deref(), Some(&v2[..]));
        // The same bytes again, as a delta on a newer chunk: held already,
        // not chained (a chain never leads round to where it started).
        let (_, back) = patched(&v1, d1.id, 4096, 4096, 1);
        assert_eq!(back.id, base_id);
        assert!(put_delta(&s, &back, Check::Verify).is_empty());
        assert!(s.delta(&base_id).unwrap().is_none());
        // Patching over a quarter of the chunk, it is stored whole.
        let (v3, d3) = patched(&v2, d2.id, 16384, 20000, 4);
        assert!(put_delta(&s, &d3, Check::Verify).is_empty());
        assert!(s.delta(&d3.id).unwrap().is_none());
        assert_eq!(s.get(&d3.id).unwrap().as_deref(), Some(&v3[..]));
        // A delta that does not rebuild its id is refused (asked whole).
        let mut forged = d1.clone();
        forged.id = ChunkId::of(b"something else");
        assert_eq!(put_delta(&s, &forged, Check::Verify), vec![forged.id]);
        assert!(!s.has(&forged.id).unwrap());
        // Deleting the base stores its deltas whole first; theirs stay.
        assert_eq!(s.delete_stale(&[base_id], u64::MAX).unwrap(), 1);
        assert!(!s.has(&base_id).unwrap());
        assert!(s.delta(&d1.id).unwrap().is_none());
        assert_eq!(s.get(&d1.id).unwrap().as_deref(), Some(&v1[..]));
        assert_eq!(s.delta(&d2.id).unwrap().unwrap().0.base, d1.id);
        assert_eq!(s.get(&d2.id).unwrap().as_deref(), Some(&v2[..]));
        // Deleting a link in the middle of a chain: the rest still reads.
        let (v4, d4) = patched(&v2, d2.id, 40000, 100, 5);
        assert!(put_delta(&s, &d4, Check::Verify).is_empty());
        assert_eq!(s.delete_stale(&[d1.id], u64::MAX).unwrap(), 1);
        assert_eq!(s.get(&d2.id).unwrap().as_deref(), Some(&v2[..]));
        assert_eq!(s.get(&d4.id).unwrap().as_deref(), Some(&v4[..]));
        // Bit rot in a delta's chunk is caught like in a whole one.
        assert!(s.corrupt(&d2.id).unwrap());
        assert_eq!(s.lookup(&d2.id).unwrap(), Lookup::Corrupt);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_chain_of_deltas_ends_in_a_whole_chunk_at_its_depth_limit() {
        let dir = tmp("depth");
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        let mut data = vec![0u8; 65536];
        data[0] = 1;
        let mut id = ChunkId::of(&data);
        s.put_many(&[(id, Arc::new(data.clone()))], true).unwrap();
        let checks = [Check::Verify, Check::Trust].into_iter().cycle();
        for (i, check) in checks.take(MAX_DEPTH as usize).enumerate() {
            let (next, d) = patched(&data, id, i * 100, 10, i as u8 + 2);
            let need = put_delta(&s, &d, check);
            assert!(need.is_empty(), "patch {i}");
            assert_eq!(s.delta(&d.id).unwrap().unwrap().1, i as u8 + 1);
            assert_eq!(s.get(&d.id).unwrap().as_deref(), Some(&next[..]));
            (data, id) = (next, d.id);
        }
        // One deeper: asked for whole, or rebuilt and stored whole.
        let (next, d) = patched(&data, id, 5000, 10, 99);
        let need = put_delta(&s, &d, Check::Trust);
        assert_eq!(need, vec![d.id]);
        assert!(!s.has(&d.id).unwrap());
        let need = put_delta(&s, &d, Check::Verify);
        assert!(need.is_empty());
        assert!(s.delta(&d.id).unwrap().is_none());
        assert_eq!(s.get(&d.id).unwrap().as_deref(), Some(&next[..]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_delta_is_never_rebuilt_from_a_base_gone_from_the_store() {
        let dir = tmp("recent");
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        let whole = |fill: u8| {
            let d = Arc::new(vec![fill; 65536]);
            (ChunkId::of(&d), d)
        };
        // Stored from another node: kept among the recent chunks too.
        let (a, a_data) = whole(1);
        let (b, b_data) = whole(2);
        s.put(
            &[(a, a_data.clone()), (b, b_data.clone())],
            &[],
            Check::Verify,
            true,
        )
        .unwrap();
        // Rotten on disk: a delta on it must not be rebuilt from memory.
        assert!(s.corrupt(&a).unwrap());
        let (_, on_a) = patched(&a_data, a, 0, 4096, 7);
        let need = put_delta(&s, &on_a, Check::Verify);
        assert_eq!(need, vec![on_a.id]);
        assert_eq!(s.lookup(&on_a.id).unwrap(), Lookup::Absent);
        // Collected: no delta on it either.
        assert_eq!(s.delete_stale(&[b], u64::MAX).unwrap(), 1);
        let (_, on_b) = patched(&b_data, b, 0, 4096, 7);
        let need = put_delta(&s, &on_b, Check::Verify);
        assert_eq!(need, vec![on_b.id]);
        // Nor is a writer's own delta stored on a collected chunk: the
        // depth known of it goes with it.
        let (c, c_data) = whole(3);
        s.put_many(&[(c, c_data.clone())], true).unwrap();
        let (_, on_c) = patched(&c_data, c, 0, 4096, 7);
        assert!(put_delta(&s, &on_c, Check::Trust).is_empty());
        assert_eq!(s.delete_stale(&[c, on_c.id], u64::MAX).unwrap(), 2);
        let (_, again) = patched(&c_data, c, 4096, 4096, 8);
        assert_eq!(put_delta(&s, &again, Check::Trust), vec![again.id]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn recent_chunks_stay_within_their_budget_newest_kept() {
        let mut r = Recent {
            chunks: lru::LruCache::unbounded(),
            bytes: 0,
            budget: 3 * 1000,
        };
        let ids: Vec<ChunkId> = (0..5u8).map(|i| ChunkId::of(&[i])).collect();
        for id in &ids {
            r.insert(*id, Arc::new(vec![0; 1000]), 0);
        }
        assert_eq!(r.bytes, 3000);
        assert!(ids[..2].iter().all(|id| !r.chunks.contains(id)));
        assert!(ids[2..].iter().all(|id| r.chunks.contains(id)));
        r.insert(ChunkId::of(b"big"), Arc::new(vec![0; 3001]), 0);
        assert_eq!(r.bytes, 3000);
        r.remove(&ids[4]);
        assert_eq!(r.bytes, 2000);
    }

    /// A durable batch large enough to be flushed (with O_DIRECT, as the
    /// disk allows it) reads back after a reopen.
    #[test]
    fn flushed_batches_read_back() {
        let dir = tmp("flush");
        assert!(direct_io_works(&std::env::temp_dir()));
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        let chunks: Vec<(ChunkId, Arc<Vec<u8>>)> = (0..160u32)
            .map(|i| {
                let d = Arc::new(vec![(i % 251) as u8 + 1; 65536]);
                (ChunkId::of(&d), d)
            })
            .collect();
        s.put_many(&chunks, true).unwrap();
        drop(s);
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        for (id, d) in &chunks {
            assert_eq!(s.get(id).unwrap().as_deref(), Some(d.as_slice()));
        }
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Where the crashing child of
    /// [`a_crash_during_a_large_commit_leaves_no_chunk_held_without_its_bytes`]
    /// keeps its store.
    const CRASH_DIR: &str = "GVSFS_TEST_CRASH_DIR";

    /// The large commit's chunks: 16 MiB in one part, over the size that
    /// skips the write-ahead log.
    fn large_part() -> Vec<(ChunkId, Arc<Vec<u8>>)> {
        (0..256u32)
            .map(|i| {
                let d = Arc::new(vec![(i % 251) as u8 + 1; 65536]);
                (ChunkId::of(&d), d)
            })
            .collect()
    }

    /// The crashing child: stores a large part without the log, then small
    /// logged puts (other commits) until RocksDB has flushed the times
    /// family on its own, then dies by SIGKILL before the commit's end.
    fn crash_during_a_large_commit(dir: &Path) -> ! {
        let s = ChunkStore::open(dir, 16 << 20).unwrap();
        let mut ingest = s.ingest(true);
        ingest
            .part(&large_part(), &[], Check::Trust, false)
            .unwrap();
        let times_on_disk = || {
            s.db.property_int_value_cf(s.times(), "rocksdb.total-sst-files-size")
                .unwrap()
                .unwrap_or(0)
                > 0
                && s.db
                    .property_int_value_cf(s.times(), "rocksdb.num-immutable-mem-table")
                    .unwrap()
                    == Some(0)
        };
        let mut n = 0u64;
        while !times_on_disk() {
            assert!(n < 4_000_000, "the times family never flushed");
            let small: Vec<(ChunkId, Arc<Vec<u8>>)> = (n..n + 1000)
                .map(|i| {
                    let d = Arc::new(i.to_le_bytes().to_vec());
                    (ChunkId::of(&d), d)
                })
                .collect();
            s.put_many(&small, false).unwrap();
            n += 1000;
        }
        // SAFETY: signalling this very process; nothing runs after it.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        unreachable!("SIGKILL");
    }

    /// A chunk that the repair's "held already?" counts as held must read
    /// back, also after a crash in the middle of a large commit whose
    /// parts skip the log (the repair copies only what is not held).
    #[test]
    fn a_crash_during_a_large_commit_leaves_no_chunk_held_without_its_bytes() {
        if let Some(dir) = std::env::var_os(CRASH_DIR) {
            crash_during_a_large_commit(Path::new(&dir));
        }
        let dir = tmp("crash");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "chunk::tests::a_crash_during_a_large_commit_leaves_no_chunk_held_without_its_bytes",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR, &dir)
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "the child: {status}");
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        let ids: Vec<ChunkId> = large_part().iter().map(|(id, _)| *id).collect();
        // What the repair asks the store.
        let lacking: std::collections::HashSet<ChunkId> =
            s.keep_held(&ids).unwrap().into_iter().collect();
        for (id, data) in large_part() {
            if !lacking.contains(&id) {
                assert!(
                    s.get(&id).unwrap().as_deref() == Some(data.as_slice()),
                    "chunk {id:?} counts as held, but its bytes are not there"
                );
            }
        }
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A chunk listed (it has a store time) whose bytes are gone, as a
    /// crash left a store before the flush was atomic: reading it says
    /// corrupt, so that the scrub and readers fetch a good copy instead
    /// of taking it for deleted.
    #[test]
    fn a_chunk_listed_without_its_bytes_reads_as_corrupt() {
        let dir = tmp("listed");
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        let data = Arc::new(vec![5u8; 65536]);
        let id = ChunkId::of(&data);
        s.put_many(&[(id, data)], true).unwrap();
        s.db.delete(id.0).unwrap();
        assert_eq!(s.ids_after(None, 10).unwrap(), vec![id]);
        assert_eq!(s.lookup(&id).unwrap(), Lookup::Corrupt);
        // Deleted by the collector (bytes and time together): absent.
        assert_eq!(s.delete_stale(&[id], u64::MAX).unwrap(), 1);
        assert_eq!(s.lookup(&id).unwrap(), Lookup::Absent);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn put_get_and_detect_corruption() {
        let dir = tmp("chunks");
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        let data = Arc::new(vec![7u8; 65536]);
        let id = ChunkId::of(&data);
        assert!(!s.has(&id).unwrap());
        s.put_many(&[(id, data.clone())], true).unwrap();
        assert!(s.has(&id).unwrap());
        assert_eq!(s.get(&id).unwrap().as_deref(), Some(data.as_slice()));
        // Bit rot: the same key with other bytes is refused.
        assert!(s.corrupt(&id).unwrap());
        assert_eq!(s.get(&id).unwrap(), None);
        assert_eq!(s.lookup(&id).unwrap(), Lookup::Corrupt);
        let listed = s.times_list().unwrap();
        assert_eq!(listed.len(), 1);
        // Stored again after a collector listed it as old: kept.
        std::thread::sleep(std::time::Duration::from_millis(2));
        s.put_many(&[(id, data.clone())], true).unwrap();
        assert_eq!(s.delete_stale(&[id], listed[0].1 + 1).unwrap(), 0);
        assert!(s.has(&id).unwrap());
        assert_eq!(s.delete_stale(&[id], u64::MAX).unwrap(), 1);
        assert!(!s.has(&id).unwrap());
        assert!(s.times_list().unwrap().is_empty());
        s.reclaim().unwrap();
        drop(s);
        // Reopens with its data.
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        let other = Arc::new(b"x".to_vec());
        s.put_many(&[(ChunkId::of(&other), other.clone())], false)
            .unwrap();
        drop(s);
        let s = ChunkStore::open(&dir, 16 << 20).unwrap();
        assert_eq!(
            s.get(&ChunkId::of(&other)).unwrap().as_deref(),
            Some(&b"x"[..])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
