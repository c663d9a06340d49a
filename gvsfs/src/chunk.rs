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

/// Column family holding each chunk's store time (8 bytes, nanoseconds
/// since the epoch, little endian), keyed by the chunk id: what the
/// garbage collector's grace period is measured against, without reading
/// chunk values.
const TIMES_CF: &str = "times";

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
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ChunkStore> {
        std::fs::create_dir_all(dir)?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(4096);
        opts.set_blob_file_size(256 << 20);
        opts.set_write_buffer_size(64 << 20);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_blob_compression_type(rocksdb::DBCompressionType::None);
        opts.increase_parallelism(2);
        let mut times = rocksdb::Options::default();
        times.set_compression_type(rocksdb::DBCompressionType::None);
        let cfs = vec![
            rocksdb::ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone()),
            rocksdb::ColumnFamilyDescriptor::new(TIMES_CF, times),
        ];
        let db = rocksdb::DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(ChunkStore {
            db: Arc::new(db),
            put_bytes: Arc::default(),
        })
    }

    fn times(&self) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(TIMES_CF)
            .expect("opened with the times column family")
    }

    /// Stores chunks (already verified by the caller) in one atomic batch,
    /// with their store time (a chunk stored again is young again);
    /// `sync` makes the batch durable before returning.
    pub fn put_many(&self, chunks: &[(ChunkId, Arc<Vec<u8>>)], sync: bool) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        let t = now_nanos().to_le_bytes();
        let mut bytes = 0;
        for (id, data) in chunks {
            batch.put(id.0, data.as_slice());
            batch.put_cf(self.times(), id.0, t);
            bytes += data.len() as u64;
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        self.put_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// What the store holds for `id`, verified; nothing is changed.
    pub fn lookup(&self, id: &ChunkId) -> Result<Lookup> {
        match self.db.get(id.0) {
            Ok(Some(v)) if id.verifies(&v) => Ok(Lookup::Good(v)),
            Ok(Some(_)) => Ok(Lookup::Corrupt),
            Ok(None) => Ok(Lookup::Absent),
            Err(e) if e.kind() == rocksdb::ErrorKind::Corruption => Ok(Lookup::Corrupt),
            Err(e) => Err(e.into()),
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
        Ok(self.db.get_pinned(id.0)?.is_some())
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

    /// Deletes chunks (and their times) in one batch.
    pub fn delete_many(&self, ids: &[ChunkId]) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        for id in ids {
            batch.delete(id.0);
            batch.delete_cf(self.times(), id.0);
        }
        self.db.write(batch)?;
        Ok(())
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
        let Some(mut v) = self.db.get(id.0)? else {
            return Ok(false);
        };
        if v.is_empty() {
            v.push(0);
        } else {
            let mid = v.len() / 2;
            v[mid] ^= 0x10;
        }
        self.db.put(id.0, v)?;
        Ok(true)
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

    #[test]
    fn put_get_and_detect_corruption() {
        let dir = tmp("chunks");
        let s = ChunkStore::open(&dir).unwrap();
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
        assert_eq!(s.times_list().unwrap().len(), 1);
        s.delete_many(&[id]).unwrap();
        assert!(!s.has(&id).unwrap());
        assert!(s.times_list().unwrap().is_empty());
        s.reclaim().unwrap();
        drop(s);
        // Reopens with its data.
        let s = ChunkStore::open(&dir).unwrap();
        let other = Arc::new(b"x".to_vec());
        s.put_many(&[(ChunkId::of(&other), other.clone())], false)
            .unwrap();
        drop(s);
        let s = ChunkStore::open(&dir).unwrap();
        assert_eq!(
            s.get(&ChunkId::of(&other)).unwrap().as_deref(),
            Some(&b"x"[..])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
