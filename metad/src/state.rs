//! The replicated key-value state machine: keys with revisions, a bounded
//! revision history for watches, multi-key compare-and-swap transactions,
//! TTL leases and the member address book.
//!
//! The state is held in memory and written through to RocksDB: every change
//! of an applied entry is recorded in a [`Batch`] that the caller writes in one
//! RocksDB `WriteBatch` together with the applied index (see
//! [`crate::storage::RaftStorage::write_applied`]). The module itself knows
//! nothing about RocksDB or Raft, so it is deterministic and unit-testable.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Largest accepted key, in bytes.
pub const MAX_KEY: usize = 4 * 1024;
/// Largest accepted value, in bytes.
pub const MAX_VALUE: usize = 1024 * 1024;
/// Default number of revisions kept in the history for resuming watches.
pub const DEFAULT_HISTORY: usize = 10_000;

/// A key with its value and bookkeeping, as etcd presents it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty in a delete event).
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_rev: u64,
    /// Revision of the last write of the key.
    pub mod_rev: u64,
    /// Number of writes since the key was created (0: absent).
    pub version: u64,
    /// Lease the key is attached to (0: none).
    pub lease: u64,
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted (explicitly or by its lease).
    Delete,
}

/// One change of one key, at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Revision of this change (unique, increasing by one per change).
    pub rev: u64,
    /// Put or delete.
    pub kind: EventKind,
    /// The key as it is after a put; for a delete, the key with an empty value.
    pub kv: KeyValue,
}

/// What a compare looks at; every compare is an equality.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key exists and has exactly this value.
    Value(Vec<u8>),
    /// The key's `mod_rev` equals this (0: the key is absent).
    ModRev(u64),
    /// The key's `version` equals this (0: the key is absent).
    Version(u64),
    /// The key exists (true) or does not (false).
    Exists(bool),
}

/// One condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// Key compared.
    pub key: Vec<u8>,
    /// What must hold of it.
    pub target: CompareTarget,
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set a key, attached to `lease` (0: none).
    Put {
        /// Key written.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
        /// Lease to attach the key to (0: none).
        lease: u64,
    },
    /// Delete a key (no-op when absent).
    Delete {
        /// Key deleted.
        key: Vec<u8>,
    },
    /// Delete every key that starts with the prefix.
    DeletePrefix {
        /// Prefix of the keys deleted.
        prefix: Vec<u8>,
    },
}

/// A compare-and-swap transaction: if every compare holds, `success` is
/// applied, otherwise `failure`. A plain put or delete is a transaction with
/// no compares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Writes applied when they hold.
    pub success: Vec<Op>,
    /// Writes applied otherwise.
    pub failure: Vec<Op>,
}

/// Outcome of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Whether the compares held (and `success` was applied).
    pub succeeded: bool,
    /// Store revision after the transaction.
    pub revision: u64,
}

/// A replicated command, the payload of a Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A transaction (plain puts and deletes included).
    Txn(Txn),
    /// Create a lease; the state machine picks its id.
    LeaseGrant {
        /// Time to live without keepalive, in milliseconds.
        ttl_ms: u64,
    },
    /// Delete a lease and every key attached to it.
    LeaseRevoke {
        /// Lease id.
        id: u64,
    },
}

/// What applying a [`Command`] produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Result of a transaction.
    Txn(TxnResult),
    /// A new lease.
    LeaseGranted {
        /// Lease id.
        id: u64,
        /// Its time to live in milliseconds.
        ttl_ms: u64,
    },
    /// A lease was revoked; the store revision after its keys were deleted.
    LeaseRevoked {
        /// Store revision afterwards.
        revision: u64,
    },
}

/// Errors of the state machine; all are answers to bad requests, none is
/// fatal to the service.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    /// Key is empty.
    #[error("empty key")]
    EmptyKey,
    /// Key over [`MAX_KEY`].
    #[error("key of {len} bytes is over the limit of {MAX_KEY}")]
    KeyTooLarge {
        /// Length of the key.
        len: usize,
    },
    /// Value over [`MAX_VALUE`].
    #[error("value of {len} bytes is over the limit of {MAX_VALUE}")]
    ValueTooLarge {
        /// Length of the value.
        len: usize,
    },
    /// The lease does not exist (expired, revoked or never granted).
    #[error("lease {0} not found")]
    NoSuchLease(u64),
    /// A lease TTL of zero.
    #[error("lease TTL must be positive")]
    ZeroTtl,
    /// The revision asked for is older than the kept history.
    #[error("revision {requested} is compacted (oldest kept is {oldest})")]
    Compacted {
        /// Revision asked for.
        requested: u64,
        /// Oldest revision still in the history.
        oldest: u64,
    },
    /// Bytes that should be a snapshot or a persisted record are not.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

/// Bookkeeping persisted with every applied entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Index of the last applied Raft entry.
    pub applied_index: u64,
    /// Term of the last applied Raft entry.
    pub applied_term: u64,
    /// Store revision (number of key changes ever).
    pub revision: u64,
    /// Next lease id to hand out.
    pub next_lease_id: u64,
    /// Next member id to hand out.
    pub next_member_id: u64,
}

/// Key-level changes of applied entries, to be written to the state column
/// family: `(key, Some(value))` is a put, `(key, None)` a delete.
#[derive(Debug, Default)]
pub struct Batch {
    /// The changes, in order.
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Events produced, in revision order, for watchers.
    pub events: Vec<Event>,
}

const P_KEY: u8 = b'k';
const P_HIST: u8 = b'h';
const P_LEASE: u8 = b'l';
const P_MEMBER: u8 = b'm';
const K_META: &[u8] = b"s";

fn pkey(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(rest.len() + 1);
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("serializing to a Vec cannot fail")
}

fn dec<'a, T: Deserialize<'a>>(b: &'a [u8], what: &str) -> Result<T, StateError> {
    postcard::from_bytes(b).map_err(|e| StateError::Corrupt(format!("{what}: {e}")))
}

/// Checks a key against the limits.
pub fn check_key(key: &[u8]) -> Result<(), StateError> {
    if key.is_empty() {
        Err(StateError::EmptyKey)
    } else if key.len() > MAX_KEY {
        Err(StateError::KeyTooLarge { len: key.len() })
    } else {
        Ok(())
    }
}

/// Checks every key and value of a command against the limits.
pub fn check_command(cmd: &Command) -> Result<(), StateError> {
    match cmd {
        Command::Txn(t) => {
            for c in &t.compare {
                check_key(&c.key)?;
                if let CompareTarget::Value(v) = &c.target {
                    check_value(v)?;
                }
            }
            for op in t.success.iter().chain(&t.failure) {
                match op {
                    Op::Put { key, value, .. } => {
                        check_key(key)?;
                        check_value(value)?;
                    }
                    Op::Delete { key } => check_key(key)?,
                    Op::DeletePrefix { prefix } if prefix.len() > MAX_KEY => {
                        return Err(StateError::KeyTooLarge { len: prefix.len() })
                    }
                    Op::DeletePrefix { .. } => {}
                }
            }
            Ok(())
        }
        Command::LeaseGrant { ttl_ms: 0 } => Err(StateError::ZeroTtl),
        Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => Ok(()),
    }
}

fn check_value(v: &[u8]) -> Result<(), StateError> {
    if v.len() > MAX_VALUE {
        Err(StateError::ValueTooLarge { len: v.len() })
    } else {
        Ok(())
    }
}

/// Everything a snapshot carries.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    meta: Meta,
    kvs: Vec<KeyValue>,
    leases: Vec<(u64, u64)>,
    members: Vec<(u64, String)>,
    history: Vec<Event>,
}

#[derive(Clone, Debug, Default)]
struct Lease {
    ttl_ms: u64,
    keys: BTreeSet<Vec<u8>>,
}

/// The state machine.
#[derive(Debug)]
pub struct State {
    kv: BTreeMap<Vec<u8>, KeyValue>,
    leases: BTreeMap<u64, Lease>,
    members: BTreeMap<u64, String>,
    history: VecDeque<Event>,
    meta: Meta,
    history_len: usize,
}

impl State {
    /// An empty state keeping `history_len` revisions of history.
    pub fn new(history_len: usize) -> State {
        State {
            kv: BTreeMap::new(),
            leases: BTreeMap::new(),
            members: BTreeMap::new(),
            history: VecDeque::new(),
            meta: Meta {
                next_lease_id: 1,
                next_member_id: 1,
                ..Meta::default()
            },
            history_len: history_len.max(1),
        }
    }

    /// Rebuilds the state from the records of the state column family, as
    /// `(key, value)` pairs in key order.
    pub fn load(
        history_len: usize,
        records: impl Iterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<State, StateError> {
        let mut s = State::new(history_len);
        for (k, v) in records {
            match k.first() {
                Some(&P_KEY) => {
                    let kv: KeyValue = dec(&v, "key record")?;
                    s.kv.insert(kv.key.clone(), kv);
                }
                Some(&P_HIST) => s.history.push_back(dec(&v, "history record")?),
                Some(&P_LEASE) => {
                    let (id, ttl_ms): (u64, u64) = dec(&v, "lease record")?;
                    s.leases.insert(
                        id,
                        Lease {
                            ttl_ms,
                            ..Lease::default()
                        },
                    );
                }
                Some(&P_MEMBER) => {
                    let (id, addr): (u64, String) = dec(&v, "member record")?;
                    s.members.insert(id, addr);
                }
                _ if k == K_META => s.meta = dec(&v, "meta record")?,
                _ => return Err(StateError::Corrupt(format!("unknown record {k:?}"))),
            }
        }
        s.relink_leases();
        Ok(s)
    }

    fn relink_leases(&mut self) {
        for kv in self.kv.values() {
            if let Some(l) = self.leases.get_mut(&kv.lease) {
                l.keys.insert(kv.key.clone());
            }
        }
    }

    /// Bookkeeping (applied index, revision, ...).
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// Current store revision.
    pub fn revision(&self) -> u64 {
        self.meta.revision
    }

    /// Records that the entry `index` of `term` is applied.
    pub fn set_applied(&mut self, index: u64, term: u64, b: &mut Batch) {
        self.meta.applied_index = index;
        self.meta.applied_term = term;
        b.ops.push((K_META.to_vec(), Some(enc(&self.meta))));
    }

    /// The current value of a key.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.kv.get(key)
    }

    /// Keys starting with `prefix`, in key order, at most `limit` (0: all).
    pub fn range(&self, prefix: &[u8], limit: usize) -> Vec<KeyValue> {
        let it = self
            .kv
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone());
        if limit == 0 {
            it.collect()
        } else {
            it.take(limit).collect()
        }
    }

    /// Events of keys under `prefix` with revision ≥ `from_rev`, or
    /// [`StateError::Compacted`] when the history no longer reaches back there.
    pub fn history_since(&self, prefix: &[u8], from_rev: u64) -> Result<Vec<Event>, StateError> {
        let oldest = self
            .history
            .front()
            .map_or(self.meta.revision + 1, |e| e.rev);
        if from_rev < oldest && from_rev <= self.meta.revision {
            return Err(StateError::Compacted {
                requested: from_rev,
                oldest,
            });
        }
        let skip = from_rev.saturating_sub(oldest) as usize;
        Ok(self
            .history
            .iter()
            .skip(skip)
            .filter(|e| e.kv.key.starts_with(prefix))
            .cloned()
            .collect())
    }

    /// Member id → advertised address.
    pub fn members(&self) -> &BTreeMap<u64, String> {
        &self.members
    }

    /// Lease id → TTL in milliseconds.
    pub fn leases(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.leases.iter().map(|(id, l)| (*id, l.ttl_ms))
    }

    /// TTL of a lease, if it exists.
    pub fn lease_ttl(&self, id: u64) -> Option<u64> {
        self.leases.get(&id).map(|l| l.ttl_ms)
    }

    /// Adds (`Some(addr)`) or removes (`None`) a member's address.
    pub fn set_member(&mut self, id: u64, addr: Option<String>, b: &mut Batch) {
        let key = pkey(P_MEMBER, &id.to_be_bytes());
        match addr {
            Some(a) => {
                b.ops.push((key, Some(enc(&(id, a.clone())))));
                self.members.insert(id, a);
                self.meta.next_member_id = self.meta.next_member_id.max(id + 1);
            }
            None => {
                b.ops.push((key, None));
                self.members.remove(&id);
            }
        }
    }

    /// Applies one command, recording its changes in `b`. Errors leave the
    /// state unchanged.
    pub fn apply(&mut self, cmd: &Command, b: &mut Batch) -> Result<Applied, StateError> {
        check_command(cmd)?;
        match cmd {
            Command::Txn(t) => self.apply_txn(t, b).map(Applied::Txn),
            Command::LeaseGrant { ttl_ms } => {
                let id = self.meta.next_lease_id;
                self.meta.next_lease_id += 1;
                self.leases.insert(
                    id,
                    Lease {
                        ttl_ms: *ttl_ms,
                        ..Lease::default()
                    },
                );
                b.ops
                    .push((pkey(P_LEASE, &id.to_be_bytes()), Some(enc(&(id, *ttl_ms)))));
                Ok(Applied::LeaseGranted {
                    id,
                    ttl_ms: *ttl_ms,
                })
            }
            Command::LeaseRevoke { id } => {
                let lease = self.leases.remove(id).ok_or(StateError::NoSuchLease(*id))?;
                b.ops.push((pkey(P_LEASE, &id.to_be_bytes()), None));
                for key in lease.keys {
                    self.delete_key(&key, b);
                }
                Ok(Applied::LeaseRevoked {
                    revision: self.meta.revision,
                })
            }
        }
    }

    fn holds(&self, c: &Compare) -> bool {
        let kv = self.kv.get(&c.key);
        match &c.target {
            CompareTarget::Value(v) => kv.is_some_and(|kv| &kv.value == v),
            CompareTarget::ModRev(r) => kv.map_or(0, |kv| kv.mod_rev) == *r,
            CompareTarget::Version(n) => kv.map_or(0, |kv| kv.version) == *n,
            CompareTarget::Exists(e) => kv.is_some() == *e,
        }
    }

    fn apply_txn(&mut self, t: &Txn, b: &mut Batch) -> Result<TxnResult, StateError> {
        let succeeded = t.compare.iter().all(|c| self.holds(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        for op in ops {
            if let Op::Put { lease, .. } = op {
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Err(StateError::NoSuchLease(*lease));
                }
            }
        }
        for op in ops {
            match op {
                Op::Put { key, value, lease } => self.put_key(key, value, *lease, b),
                Op::Delete { key } => self.delete_key(key, b),
                Op::DeletePrefix { prefix } => {
                    let keys: Vec<Vec<u8>> =
                        self.range(prefix, 0).into_iter().map(|kv| kv.key).collect();
                    for key in keys {
                        self.delete_key(&key, b);
                    }
                }
            }
        }
        Ok(TxnResult {
            succeeded,
            revision: self.meta.revision,
        })
    }

    fn put_key(&mut self, key: &[u8], value: &[u8], lease: u64, b: &mut Batch) {
        self.meta.revision += 1;
        let rev = self.meta.revision;
        let old = self.kv.get(key);
        let old_lease = old.map_or(0, |kv| kv.lease);
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_rev: old.map_or(rev, |kv| kv.create_rev),
            mod_rev: rev,
            version: old.map_or(0, |kv| kv.version) + 1,
            lease,
        };
        if old_lease != lease {
            if let Some(l) = self.leases.get_mut(&old_lease) {
                l.keys.remove(key);
            }
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_vec());
        }
        b.ops.push((pkey(P_KEY, key), Some(enc(&kv))));
        self.kv.insert(key.to_vec(), kv.clone());
        self.record(
            Event {
                rev,
                kind: EventKind::Put,
                kv,
            },
            b,
        );
    }

    fn delete_key(&mut self, key: &[u8], b: &mut Batch) {
        let Some(old) = self.kv.remove(key) else {
            return;
        };
        self.meta.revision += 1;
        let rev = self.meta.revision;
        if let Some(l) = self.leases.get_mut(&old.lease) {
            l.keys.remove(key);
        }
        b.ops.push((pkey(P_KEY, key), None));
        let kv = KeyValue {
            value: Vec::new(),
            mod_rev: rev,
            ..old
        };
        self.record(
            Event {
                rev,
                kind: EventKind::Delete,
                kv,
            },
            b,
        );
    }

    fn record(&mut self, ev: Event, b: &mut Batch) {
        b.ops
            .push((pkey(P_HIST, &ev.rev.to_be_bytes()), Some(enc(&ev))));
        self.history.push_back(ev.clone());
        b.events.push(ev);
        while self.history.len() > self.history_len {
            if let Some(old) = self.history.pop_front() {
                b.ops.push((pkey(P_HIST, &old.rev.to_be_bytes()), None));
            }
        }
    }

    /// Serializes the whole state for a Raft snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        enc(&SnapshotData {
            meta: self.meta,
            kvs: self.kv.values().cloned().collect(),
            leases: self.leases().collect(),
            members: self.members.iter().map(|(i, a)| (*i, a.clone())).collect(),
            history: self.history.iter().cloned().collect(),
        })
    }

    /// Replaces the state with a snapshot; `b` receives every record of the
    /// new state (the caller clears the column family first).
    pub fn restore(&mut self, data: &[u8], b: &mut Batch) -> Result<(), StateError> {
        let snap: SnapshotData = dec(data, "snapshot")?;
        let mut s = State::new(self.history_len);
        s.meta = snap.meta;
        for kv in snap.kvs {
            b.ops.push((pkey(P_KEY, &kv.key), Some(enc(&kv))));
            s.kv.insert(kv.key.clone(), kv);
        }
        for (id, ttl_ms) in snap.leases {
            b.ops
                .push((pkey(P_LEASE, &id.to_be_bytes()), Some(enc(&(id, ttl_ms)))));
            s.leases.insert(
                id,
                Lease {
                    ttl_ms,
                    ..Lease::default()
                },
            );
        }
        for (id, addr) in snap.members {
            b.ops.push((
                pkey(P_MEMBER, &id.to_be_bytes()),
                Some(enc(&(id, addr.clone()))),
            ));
            s.members.insert(id, addr);
        }
        for ev in snap.history {
            b.ops
                .push((pkey(P_HIST, &ev.rev.to_be_bytes()), Some(enc(&ev))));
            s.history.push_back(ev);
        }
        b.ops.push((K_META.to_vec(), Some(enc(&s.meta))));
        s.relink_leases();
        *self = s;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Command {
        Command::Txn(Txn {
            success: vec![Op::Put {
                key: k.into(),
                value: v.into(),
                lease: 0,
            }],
            ..Txn::default()
        })
    }

    #[test]
    fn revisions_cas_history_and_leases() {
        let mut s = State::new(3);
        let mut b = Batch::default();
        s.apply(&put("a", "1"), &mut b).unwrap();
        s.apply(&put("a", "2"), &mut b).unwrap();
        let kv = s.get(b"a").unwrap();
        assert_eq!((kv.create_rev, kv.mod_rev, kv.version), (1, 2, 2));

        let cas = |expect: &str| {
            Command::Txn(Txn {
                compare: vec![Compare {
                    key: b"a".to_vec(),
                    target: CompareTarget::Value(expect.into()),
                }],
                success: vec![Op::Put {
                    key: b"a".to_vec(),
                    value: b"3".to_vec(),
                    lease: 0,
                }],
                failure: vec![],
            })
        };
        assert_eq!(
            s.apply(&cas("1"), &mut b).unwrap(),
            Applied::Txn(TxnResult {
                succeeded: false,
                revision: 2
            })
        );
        assert_eq!(
            s.apply(&cas("2"), &mut b).unwrap(),
            Applied::Txn(TxnResult {
                succeeded: true,
                revision: 3
            })
        );

        let Applied::LeaseGranted { id, .. } = s
            .apply(&Command::LeaseGrant { ttl_ms: 100 }, &mut b)
            .unwrap()
        else {
            panic!("not a lease")
        };
        let leased = Command::Txn(Txn {
            success: vec![Op::Put {
                key: b"l".to_vec(),
                value: b"x".to_vec(),
                lease: id,
            }],
            ..Txn::default()
        });
        s.apply(&leased, &mut b).unwrap();
        s.apply(&Command::LeaseRevoke { id }, &mut b).unwrap();
        assert!(s.get(b"l").is_none());
        assert_eq!(s.revision(), 5);
        // history of 3: revisions 3, 4, 5 are kept
        assert!(matches!(
            s.history_since(b"", 2),
            Err(StateError::Compacted { oldest: 3, .. })
        ));
        assert_eq!(s.history_since(b"", 4).unwrap().len(), 2);
        assert_eq!(s.history_since(b"", 6).unwrap().len(), 0);

        let big = put("k", &"v".repeat(MAX_VALUE + 1));
        assert!(matches!(
            s.apply(&big, &mut b),
            Err(StateError::ValueTooLarge { .. })
        ));
        assert!(matches!(
            s.apply(&put(&"k".repeat(MAX_KEY + 1), ""), &mut b),
            Err(StateError::KeyTooLarge { .. })
        ));
    }

    #[test]
    fn snapshot_and_load_round_trip() {
        let mut s = State::new(10);
        let mut b = Batch::default();
        s.apply(&put("x/1", "a"), &mut b).unwrap();
        s.apply(&put("x/2", "b"), &mut b).unwrap();
        s.apply(&put("y", "c"), &mut b).unwrap();
        s.set_member(1, Some("h:1".into()), &mut b);
        s.set_applied(7, 2, &mut b);
        let snap = s.snapshot();

        let mut r = State::new(10);
        let mut rb = Batch::default();
        r.restore(&snap, &mut rb).unwrap();
        assert_eq!(r.range(b"x/", 0).len(), 2);
        assert_eq!(r.meta(), s.meta());

        let mut records: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (k, v) in rb.ops {
            match v {
                Some(v) => records.insert(k, v),
                None => records.remove(&k),
            };
        }
        let l = State::load(10, records.into_iter()).unwrap();
        assert_eq!(l.range(b"", 0), s.range(b"", 0));
        assert_eq!(l.members(), s.members());
        assert_eq!(l.history_since(b"x/", 1).unwrap().len(), 2);
    }
}
