//! Raft storage on RocksDB.
//!
//! Column families:
//! - `log`: entry index (u64 big-endian) → `eraftpb::Entry`;
//! - `raft`: `hard` → `HardState`, `conf` → `ConfState`, `snap` → the latest
//!   `Snapshot` (metadata and state machine data);
//! - `state`: the state machine's records (see [`crate::state`]).
//!
//! All entries and the hard state of one Raft `Ready` are written with one
//! synced `WriteBatch` ([`RaftStorage::persist`]): many proposals, one fsync.
//! The state machine's changes and the applied index go in one more batch
//! ([`RaftStorage::write_applied`]), unsynced: they can be replayed from the
//! synced log, and any later synced write (RocksDB has one WAL) makes them
//! durable too.

use crate::state::{Batch, State, StateError};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::path::Path;
use std::sync::Arc;

const CF_LOG: &str = "log";
const CF_RAFT: &str = "raft";
const CF_STATE: &str = "state";
const K_HARD: &[u8] = b"hard";
const K_CONF: &[u8] = b"conf";
const K_SNAP: &[u8] = b"snap";

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageErr {
    /// RocksDB failed.
    #[error("rocksdb at {path}: {source}")]
    Db {
        /// What was being done.
        path: String,
        /// The RocksDB error.
        source: rocksdb::Error,
    },
    /// A record failed to decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Decoder message.
        detail: String,
    },
    /// The state machine records are invalid.
    #[error(transparent)]
    State(#[from] StateError),
}

fn db_err(path: &str) -> impl FnOnce(rocksdb::Error) -> StorageErr + '_ {
    move |source| StorageErr::Db {
        path: path.to_string(),
        source,
    }
}

fn parse<M: protobuf::Message>(b: &[u8], what: &'static str) -> Result<M, StorageErr> {
    M::parse_from_bytes(b).map_err(|e| StorageErr::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn bytes<M: protobuf::Message>(m: &M) -> Vec<u8> {
    m.write_to_bytes()
        .expect("encoding a protobuf message to a Vec cannot fail")
}

/// Raft's view of the log on RocksDB, with the first/last index, hard state,
/// conf state and latest snapshot's metadata cached in memory.
pub struct RaftStorage {
    db: Arc<DB>,
    first: u64,
    last: u64,
    hard: HardState,
    conf: ConfState,
    snap_meta: SnapshotMetadata,
}

fn io<E: std::fmt::Display>(e: E) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

impl RaftStorage {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<RaftStorage, StorageErr> {
        let path = dir.display().to_string();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs =
            [CF_LOG, CF_RAFT, CF_STATE].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir, cfs).map_err(db_err(&path))?);
        let raft = db.cf_handle(CF_RAFT).expect("cf raft");
        let get = |k: &[u8]| db.get_cf(raft, k).map_err(db_err(&path));
        let hard: HardState = match get(K_HARD)? {
            Some(b) => parse(&b, "hard state")?,
            None => HardState::default(),
        };
        let conf: ConfState = match get(K_CONF)? {
            Some(b) => parse(&b, "conf state")?,
            None => ConfState::default(),
        };
        let snap_meta = match get(K_SNAP)? {
            Some(b) => parse::<Snapshot>(&b, "snapshot")?.take_metadata(),
            None => SnapshotMetadata::default(),
        };
        let log = db.cf_handle(CF_LOG).expect("cf log");
        let last = match db.iterator_cf(log, IteratorMode::End).next() {
            Some(kv) => index_of(&kv.map_err(db_err(&path))?.0),
            None => snap_meta.index,
        };
        Ok(RaftStorage {
            db,
            first: snap_meta.index + 1,
            last,
            hard,
            conf,
            snap_meta,
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        cf(&self.db, name)
    }

    fn write(&self, wb: WriteBatch, sync: bool) -> Result<(), StorageErr> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(db_err("write batch"))
    }

    /// True when the storage holds a Raft group (bootstrapped or joined and
    /// caught up at least once).
    pub fn is_initialized(&self) -> bool {
        !self.conf.voters.is_empty()
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    /// The current configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }

    /// Index of the latest snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snap_meta.index
    }

    /// Loads the state machine from its column family; when the snapshot is
    /// newer than the persisted state (unsynced state writes lost in a
    /// crash), the state is restored from the snapshot.
    pub fn load_state(&self, history_len: usize) -> Result<State, StorageErr> {
        let cf = self.cf(CF_STATE);
        let mut records = Vec::new();
        for kv in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = kv.map_err(db_err("state"))?;
            records.push((k.to_vec(), v.to_vec()));
        }
        let mut state = State::load(history_len, records.into_iter())?;
        if state.meta().applied_index < self.snap_meta.index {
            let snap: Snapshot = match self
                .db
                .get_cf(self.cf(CF_RAFT), K_SNAP)
                .map_err(db_err("snap"))?
            {
                Some(b) => parse(&b, "snapshot")?,
                None => Snapshot::default(),
            };
            let mut b = Batch::default();
            state.restore(&snap.data, &mut b)?;
            self.write_applied(b, true, true)?;
        }
        Ok(state)
    }

    /// Persists, in one synced batch, a snapshot received from the leader
    /// (with the state records it restores, `state`), new log entries and a
    /// new hard state.
    pub fn persist(
        &mut self,
        snap: Option<(&Snapshot, Batch)>,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), StorageErr> {
        let mut wb = WriteBatch::default();
        let db = self.db.clone();
        let (log, raft, state) = (cf(&db, CF_LOG), cf(&db, CF_RAFT), cf(&db, CF_STATE));
        if let Some((s, records)) = &snap {
            let m = s.get_metadata();
            wb.delete_range_cf(log, key_of(0), key_of(u64::MAX));
            wb.put_cf(raft, K_SNAP, bytes(*s));
            wb.put_cf(raft, K_CONF, bytes(m.get_conf_state()));
            wb.delete_range_cf(state, &[0u8][..], &[0xffu8][..]);
            for (k, v) in &records.ops {
                if let Some(v) = v {
                    wb.put_cf(state, k, v);
                }
            }
            self.hard.term = self.hard.term.max(m.term);
            self.hard.commit = m.index;
            wb.put_cf(raft, K_HARD, bytes(&self.hard));
        }
        if let Some(first) = entries.first() {
            if first.index <= self.last {
                wb.delete_range_cf(log, key_of(first.index), key_of(self.last + 1));
            }
            for e in entries {
                wb.put_cf(log, key_of(e.index), bytes(e));
            }
        }
        if let Some(hs) = hs {
            wb.put_cf(raft, K_HARD, bytes(hs));
        }
        self.write(wb, true)?;
        if let Some((s, _)) = snap {
            self.snap_meta = s.get_metadata().clone();
            self.conf = self.snap_meta.get_conf_state().clone();
            self.first = self.snap_meta.index + 1;
            self.last = self.snap_meta.index;
        }
        if let Some(last) = entries.last() {
            self.last = last.index;
        }
        if let Some(hs) = hs {
            self.hard = hs.clone();
        }
        Ok(())
    }

    /// Records a commit index learnt after the Ready was persisted; it is
    /// written with the next [`RaftStorage::write_applied`].
    pub fn set_commit(&mut self, commit: u64) {
        self.hard.commit = self.hard.commit.max(commit);
    }

    /// Records a new configuration; written with the next
    /// [`RaftStorage::write_applied`].
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf = cs;
    }

    /// Writes the state machine's changes of applied entries, with the
    /// applied index they contain, the commit index and the configuration,
    /// in one batch; `clear` first empties the state column family.
    pub fn write_applied(&self, b: Batch, clear: bool, sync: bool) -> Result<(), StorageErr> {
        let mut wb = WriteBatch::default();
        let (raft, state) = (self.cf(CF_RAFT), self.cf(CF_STATE));
        if clear {
            wb.delete_range_cf(state, &[0u8][..], &[0xffu8][..]);
        }
        for (k, v) in b.ops {
            match v {
                Some(v) => wb.put_cf(state, k, v),
                None => wb.delete_cf(state, k),
            }
        }
        wb.put_cf(raft, K_HARD, bytes(&self.hard));
        wb.put_cf(raft, K_CONF, bytes(&self.conf));
        self.write(wb, sync)
    }

    /// Stores a snapshot of the state at `index` (which must be applied) and
    /// drops the log up to it. Followers whose next entry is older then get
    /// this snapshot.
    pub fn compact(&mut self, index: u64, term: u64, data: Vec<u8>) -> Result<(), StorageErr> {
        if index <= self.snap_meta.index {
            return Ok(());
        }
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let m = snap.mut_metadata();
        m.index = index;
        m.term = term;
        m.set_conf_state(self.conf.clone());
        let mut wb = WriteBatch::default();
        let db = self.db.clone();
        let (log, raft) = (cf(&db, CF_LOG), cf(&db, CF_RAFT));
        wb.put_cf(raft, K_SNAP, bytes(&snap));
        wb.delete_range_cf(log, key_of(0), key_of(index + 1));
        self.write(wb, true)?;
        self.snap_meta = snap.take_metadata();
        self.first = index + 1;
        self.last = self.last.max(index);
        Ok(())
    }

    /// Creates a new one-member group: member `id` is the only voter, and
    /// the state (which holds its address) is the snapshot at index 1.
    pub fn bootstrap(&mut self, id: u64, state: &State) -> Result<(), StorageErr> {
        let mut snap = Snapshot {
            data: state.snapshot().into(),
            ..Default::default()
        };
        let m = snap.mut_metadata();
        m.index = 1;
        m.term = 1;
        m.mut_conf_state().voters = vec![id];
        let mut records = Batch::default();
        State::new(1).restore(&snap.data, &mut records)?;
        self.hard.term = 1;
        self.persist(Some((&snap, records)), &[], None)
    }

    fn read_entry(&self, idx: u64) -> raft::Result<Entry> {
        let log = self.cf(CF_LOG);
        match self.db.get_cf(log, key_of(idx)).map_err(io)? {
            Some(b) => Entry::parse_from_bytes(&b).map_err(io),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

fn key_of(idx: u64) -> [u8; 8] {
    idx.to_be_bytes()
}

fn index_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[..8]);
    u64::from_be_bytes(b)
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let log = self.cf(CF_LOG);
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        let from = key_of(low);
        let it = self
            .db
            .iterator_cf(log, IteratorMode::From(&from, rocksdb::Direction::Forward));
        for kv in it {
            let (k, v) = kv.map_err(io)?;
            if index_of(&k) >= high {
                break;
            }
            size += v.len() as u64;
            if !out.is_empty() && size > max {
                break;
            }
            out.push(Entry::parse_from_bytes(&v).map_err(io)?);
        }
        if out.is_empty() && high > low {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snap_meta.index {
            return Ok(self.snap_meta.term);
        }
        if idx < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let raft = self.cf(CF_RAFT);
        match self.db.get_cf(raft, K_SNAP).map_err(io)? {
            Some(b) => Snapshot::parse_from_bytes(&b).map_err(io),
            None => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}
