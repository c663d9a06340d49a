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

/// The node's local chunk store: chunk id → bytes, in RocksDB.
#[derive(Clone)]
pub struct ChunkStore {
    db: Arc<rocksdb::DB>,
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ChunkStore> {
        std::fs::create_dir_all(dir)?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_enable_blob_files(true);
        opts.set_min_blob_size(4096);
        opts.set_blob_file_size(256 << 20);
        opts.set_write_buffer_size(64 << 20);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        opts.set_blob_compression_type(rocksdb::DBCompressionType::None);
        opts.increase_parallelism(2);
        let db = rocksdb::DB::open(&opts, dir)?;
        Ok(ChunkStore { db: Arc::new(db) })
    }

    /// Stores chunks (already verified by the caller) in one atomic batch;
    /// `sync` makes the batch durable before returning.
    pub fn put_many(&self, chunks: &[(ChunkId, Arc<Vec<u8>>)], sync: bool) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        for (id, data) in chunks {
            batch.put(id.0, data.as_slice());
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// The chunk, if held here and intact. A chunk whose bytes no longer
    /// match its id (bit rot) is deleted and reported as absent, so that
    /// the caller fetches a good copy from a mirror.
    pub fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        match self.db.get(id.0)? {
            Some(v) if id.verifies(&v) => Ok(Some(v)),
            Some(_) => {
                tracing::warn!(
                    "chunk {} is corrupt in the local store; dropping it",
                    id.hex()
                );
                self.db.delete(id.0)?;
                Ok(None)
            }
            None => Ok(None),
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
        // Bit rot: the same key with other bytes is refused and dropped.
        s.db.put(id.0, b"rotten").unwrap();
        assert_eq!(s.get(&id).unwrap(), None);
        assert!(!s.has(&id).unwrap());
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
