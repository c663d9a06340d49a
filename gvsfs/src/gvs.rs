//! The node's GVS context: its metad client and watched namespace copy,
//! its chunk store, cache and peers, and the namespace operations (create,
//! unlink, rename, attribute changes), each one metad CAS transaction.

use std::collections::HashMap;
use std::future::Future;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use lru::LruCache;
use metad::{Client, Compare, CompareTarget, Op, Txn};

use crate::chunk::{ChunkId, ChunkStore, Lookup};
use crate::error::{GvsError, Result};
use crate::fs::Inval;
use crate::meta::{self, Dirent, Inode, Kind, NodeInfo};
use crate::mirror::{settle, Mirror};
use crate::net::Peers;
use crate::placement::{place, Candidate};
use crate::stats::Stats;
use crate::volume::VolumeSlot;

/// Inode numbers taken from `gvs/next_ino` at a time.
const INO_BATCH: u64 = 1024;

/// A node to read chunks from: (name, chunk server address).
pub(crate) type Source = (String, String);

/// How often at most the metad client is replaced.
const CLIENT_RESET_EVERY: Duration = Duration::from_secs(3);

/// Runs futures concurrently on the current task; their outputs in order.
/// (What `futures::future::join_all` does, without the dependency.)
pub async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}

/// Chunks of commits under way, each with how many commits carry it.
type InFlight = HashMap<ChunkId, (Arc<Vec<u8>>, usize)>;

/// Everything a node's gvsfs shares between FUSE threads and tasks.
pub struct Gvs {
    /// This node's name (its hostname).
    pub me: String,
    /// The metad client, replaced by a fresh one when metad stops
    /// answering it (see [`Gvs::metad_trouble`]), with its generation.
    client: Mutex<(u64, Arc<Client>, Instant)>,
    /// The watched copy of `gvs/`.
    pub mirror: Arc<Mirror>,
    /// The local chunk store.
    pub store: ChunkStore,
    /// Other nodes' chunk servers.
    pub peers: Peers,
    /// Recently read chunks.
    pub cache: Mutex<LruCache<ChunkId, Arc<Vec<u8>>>>,
    /// The tokio runtime FUSE threads call into.
    pub rt: tokio::runtime::Handle,
    /// This node's metad lease (its registration and write leases hang on it).
    pub node_lease: AtomicU64,
    /// When metad last confirmed that lease (granted or renewed); None
    /// until the node registers.
    lease_confirmed: Mutex<Option<Instant>>,
    /// Volumes with local state (open, written or leased here).
    pub volumes: Mutex<HashMap<u64, Arc<VolumeSlot>>>,
    /// Chunks of commits under way, with how many commits carry each:
    /// readers find them here until they are stored and cached.
    in_flight: Mutex<InFlight>,
    /// Where writers ask the background committer to commit a volume
    /// (set once it runs).
    pub commit_asks: Mutex<Option<mpsc::Sender<u64>>>,
    inos: Mutex<(u64, u64)>,
    /// The node's counters.
    pub stats: Stats,
    /// Where kernel cache invalidations go (set once mounted).
    pub inval: Mutex<Option<mpsc::Sender<Inval>>>,
}

/// TTL of the node's metad lease: how long a dead node keeps its write
/// leases and its place among the live replicas.
pub const NODE_TTL: Duration = Duration::from_secs(5);

/// How long the node's lease may go unconfirmed before its writers give
/// up on metad and the mirrors ([`Gvs::lease_lapsed`]): two TTLs, because
/// a new metad leader restarts every lease's TTL when it is elected, so
/// one TTL without an answer may be only an election (seen under load),
/// after which the lease, and the writes waiting on it, are still good.
/// Safety does not hang on it: a commit is fenced by the lease epoch.
pub const LAPSE_AFTER: Duration = Duration::from_secs(10);

/// How long a snapshot or clone waits for other nodes' writers to flush.
const FLUSH_WAIT: Duration = Duration::from_secs(10);

/// A pin: a clone or snapshot in flight, which the collector waits for.
/// Taken with [`Gvs::pin`]; the operation's final transaction must
/// compare [`Pin::compare`] and include [`Pin::release`].
pub struct Pin {
    /// The pin's key.
    pub key: String,
    /// Its mod revision.
    pub rev: u64,
}

impl Pin {
    /// The condition that the pin still holds (a node whose lease
    /// lapsed lost its pins: the collector may have run since).
    pub fn compare(&self) -> Compare {
        unchanged(&self.key, self.rev)
    }
    /// The op that drops the pin.
    pub fn release(&self) -> Op {
        del(&self.key)
    }
}

/// A key and the value it must still have (by mod revision) for a
/// transaction to apply.
pub(crate) fn unchanged(key: &str, mod_rev: u64) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        target: CompareTarget::ModRev(mod_rev),
    }
}

pub(crate) fn put(key: &str, value: Vec<u8>) -> Op {
    Op::Put {
        key: key.as_bytes().to_vec(),
        value,
        lease: 0,
    }
}

pub(crate) fn del(key: &str) -> Op {
    Op::Delete {
        key: key.as_bytes().to_vec(),
    }
}

impl Gvs {
    /// A context; nothing is read yet.
    pub fn new(
        me: String,
        client: Arc<Client>,
        store: ChunkStore,
        peers: Peers,
        cache_chunks: usize,
        rt: tokio::runtime::Handle,
    ) -> Gvs {
        let cap = std::num::NonZeroUsize::new(cache_chunks.max(16)).expect("nonzero");
        Gvs {
            me,
            client: Mutex::new((0, client, Instant::now())),
            mirror: Arc::new(Mirror::default()),
            store,
            peers,
            cache: Mutex::new(LruCache::new(cap)),
            rt,
            node_lease: AtomicU64::new(0),
            lease_confirmed: Mutex::new(None),
            volumes: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            commit_asks: Mutex::new(None),
            inos: Mutex::new((0, 0)),
            stats: Stats::default(),
            inval: Mutex::new(None),
        }
    }

    /// The current metad client.
    pub fn client(&self) -> Arc<Client> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// How many times the metad client was replaced.
    pub fn client_gen(&self) -> u64 {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Called with a metad error: when metad did not answer in time, the
    /// client is replaced by a fresh one (at most every few seconds).
    ///
    /// Works around the metad client keeping its connection to a leader
    /// that was cut off the network: no error closes it, so every call
    /// waits its whole timeout there and never tries the new leader, and a
    /// watch on it stays silent. A fresh client tries every member.
    pub fn metad_trouble(&self, e: &metad::ClientError) {
        use metad::ClientError as E;
        if !matches!(e, E::NoQuorum { .. } | E::Timeout(..) | E::Unknown(_)) {
            return;
        }
        let mut g = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if g.2.elapsed() < CLIENT_RESET_EVERY {
            return;
        }
        tracing::warn!("metad does not answer ({e}); reconnecting");
        let cfg = g.1.config().clone();
        *g = (g.0 + 1, Arc::new(Client::new(cfg)), Instant::now());
    }

    /// Runs a metad transaction from a FUSE thread; on success waits until
    /// the local copy has seen it. Returns whether the compares held.
    pub fn txn(&self, t: Txn) -> Result<bool> {
        Ok(self.txn_rev(t)?.is_some())
    }

    /// Like [`Gvs::txn`]; returns the revision when the compares held.
    /// Counts the keys written in `gvs.stats` (`metad_ops`).
    pub fn txn_rev(&self, t: Txn) -> Result<Option<u64>> {
        let ops = t.success.len() as u64;
        let r = self
            .rt
            .block_on(self.client().txn(t))
            .inspect_err(|e| self.metad_trouble(e))?;
        if r.succeeded {
            Stats::add(&self.stats.metad_ops, ops);
            settle(&self.mirror, r.revision);
            return Ok(Some(r.revision));
        }
        Ok(None)
    }

    /// Asks the kernel to forget what it cached of `ino`.
    pub fn invalidate(&self, ino: u64) {
        if let Some(tx) = self
            .inval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = tx.send(Inval::Inode(ino));
        }
    }

    /// Pins the chunks of the roots this node is about to read and commit
    /// elsewhere (a clone or a snapshot): while a pin exists, or if one
    /// came and went while the collector read the roots, no node sweeps.
    /// The pin hangs on the node's metad lease, so a dead node's pins go.
    pub fn pin(&self) -> Result<Pin> {
        let id = self.alloc_ino()?;
        let key = meta::pin_key(&self.me, id);
        let t = Txn {
            compare: vec![],
            success: vec![
                Op::Put {
                    key: key.clone().into_bytes(),
                    value: Vec::new(),
                    lease: self.lease(),
                },
                put(meta::PINSEQ_KEY, id.to_string().into_bytes()),
            ],
            failure: vec![],
        };
        let rev = self
            .txn_rev(t)?
            .ok_or_else(|| GvsError::Conflict("pin".into()))?;
        let rev = self.mirror.get(&key).map_or(rev, |v| v.mod_rev);
        Ok(Pin { key, rev })
    }

    /// Drops a pin when the operation fails (best effort: it goes with
    /// the node's lease anyway).
    pub fn unpin(&self, pin: &Pin) {
        let _ = self.rt.block_on(self.client().delete(pin.key.as_bytes()));
    }

    /// Makes the writers of `inos` commit what they buffered, and waits
    /// (at most 10 s) until they did: volumes leased here are committed
    /// directly; other holders are asked through `gvs/flush/<ino>`, which
    /// they delete once committed (see `fs::on_event`). A holder that does
    /// not answer (dead, cut off) is not waited for past the deadline: its
    /// buffered writes were never acknowledged by an fsync. Returns the
    /// flush keys that may be left, for the caller's final transaction
    /// to delete.
    pub fn flush_writers(&self, inos: &[u64]) -> Result<Vec<String>> {
        let mut remote = Vec::new();
        for &ino in inos {
            let Some(l) = self.mirror.get(&meta::lease_key(ino)) else {
                continue;
            };
            if l.value == self.me.as_bytes() {
                if let Some(vol) = self.volume_if_any(ino) {
                    if vol.lock().unwrap_or_else(|e| e.into_inner()).leased() {
                        if let Err(e) = vol.commit(self, None) {
                            tracing::warn!(
                                "volume {ino:#x}: commit before a snapshot or clone: {e}"
                            );
                        }
                    }
                }
            } else {
                remote.push((ino, l.mod_rev));
            }
        }
        if remote.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = remote.iter().map(|(i, _)| meta::flush_key(*i)).collect();
        self.txn(Txn {
            compare: vec![],
            success: keys
                .iter()
                .map(|k| put(k, self.me.clone().into_bytes()))
                .collect(),
            failure: vec![],
        })?;
        let deadline = Instant::now() + FLUSH_WAIT;
        loop {
            let rev = self.mirror.rev();
            let pending: Vec<u64> = remote
                .iter()
                .filter(|(ino, lease_rev)| {
                    self.mirror.get(&meta::flush_key(*ino)).is_some()
                        && self
                            .mirror
                            .get(&meta::lease_key(*ino))
                            .is_some_and(|l| l.mod_rev == *lease_rev)
                })
                .map(|(i, _)| *i)
                .collect();
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    "writers of {pending:x?} did not flush within {FLUSH_WAIT:?}; going on"
                );
                break;
            }
            self.mirror.wait_change(rev, Duration::from_millis(100));
        }
        Ok(keys)
    }

    /// Creates the root directory if the grid has none yet.
    pub async fn init_root(&self) -> Result<()> {
        let root = Inode::new(Kind::Dir, 0o755, 0, 0);
        let key = meta::ino_key(meta::ROOT_INO);
        let t = Txn {
            compare: vec![Compare {
                key: key.clone().into_bytes(),
                target: CompareTarget::Exists(false),
            }],
            success: vec![
                put(&key, root.encode()),
                put(
                    meta::NEXT_INO_KEY,
                    (meta::ROOT_INO + 1).to_string().into_bytes(),
                ),
            ],
            failure: vec![],
        };
        match self.client().txn(t).await {
            Ok(_) => Ok(()),
            // Another node may have raced us; what matters is that it exists.
            Err(metad::ClientError::Unknown(_))
                if self.client().get(key.as_bytes()).await?.is_some() =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A new inode number, unique grid-wide.
    pub fn alloc_ino(&self) -> Result<u64> {
        let mut g = self.inos.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= g.1 {
            for _ in 0..100 {
                let cur = self.rt.block_on(self.client().get(meta::NEXT_INO_KEY))?;
                let cur_v = cur.as_ref().map(|kv| kv.value.clone());
                let start: u64 = cur_v
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(meta::ROOT_INO + 1);
                let next = (start + INO_BATCH).to_string();
                match self.rt.block_on(self.client().cas(
                    meta::NEXT_INO_KEY,
                    cur_v.as_deref(),
                    next,
                )) {
                    Ok(true) => {
                        *g = (start, start + INO_BATCH);
                        break;
                    }
                    Ok(false) | Err(metad::ClientError::Unknown(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if g.0 >= g.1 {
                return Err(GvsError::Conflict(
                    "could not allocate inode numbers".into(),
                ));
            }
        }
        g.0 += 1;
        Ok(g.0 - 1)
    }

    /// An inode record with its mod revision, from the local copy.
    pub fn inode(&self, ino: u64) -> Result<(Inode, u64)> {
        let v = self
            .mirror
            .get(&meta::ino_key(ino))
            .ok_or(GvsError::NotFound)?;
        Ok((Inode::decode(&v.value)?, v.mod_rev))
    }

    /// A directory entry with its mod revision.
    pub fn dirent(&self, parent: u64, name: &str) -> Result<(Dirent, u64)> {
        let v = self
            .mirror
            .get(&meta::dir_key(parent, name))
            .ok_or(GvsError::NotFound)?;
        Ok((Dirent::decode(&v.value)?, v.mod_rev))
    }

    /// A directory's entries, in name order.
    pub fn list(&self, dir: u64) -> Vec<(String, Dirent)> {
        let prefix = meta::dir_prefix(dir);
        self.mirror
            .range(&prefix)
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    k[prefix.len()..].to_string(),
                    Dirent::decode(&v.value).ok()?,
                ))
            })
            .collect()
    }

    /// The registered (live) nodes.
    pub fn nodes(&self) -> Vec<(String, NodeInfo)> {
        self.mirror
            .range(meta::NODES_PREFIX)
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    k[meta::NODES_PREFIX.len()..].to_string(),
                    NodeInfo::decode(&v.value).ok()?,
                ))
            })
            .collect()
    }

    /// The live nodes as placement candidates (name and capacity).
    pub fn candidates(&self) -> Vec<Candidate> {
        self.nodes()
            .into_iter()
            .map(|(name, i)| Candidate {
                name,
                capacity: i.capacity,
            })
            .collect()
    }

    /// The replica set for a volume of `mirrors` copies over the live nodes.
    pub fn placement(&self, ino: u64, mirrors: u32) -> Result<Vec<String>> {
        let nodes = self.candidates();
        if mirrors == 0 || mirrors as usize > nodes.len() {
            return Err(GvsError::Invalid(format!(
                "gvs.mirrors must be 1..={} (the live nodes), not {mirrors}",
                nodes.len()
            )));
        }
        Ok(place(ino, &nodes, mirrors as usize))
    }

    /// Creates `name` in `parent`: one transaction (the name must be free
    /// and the parent must still exist).
    pub fn create(&self, parent: u64, name: &str, mut ino_rec: Inode) -> Result<(u64, Inode)> {
        check_name(name)?;
        if name == crate::snapshot::SNAPSHOTS {
            return Err(GvsError::Exists);
        }
        let (p, p_rev) = self.inode(parent)?;
        if p.kind != Kind::Dir {
            return Err(GvsError::NotDir);
        }
        let ino = self.alloc_ino()?;
        if ino_rec.kind == Kind::File {
            // New volumes inherit the directory's mirror count and block size.
            ino_rec.block_size = p.block_size;
            let live = self.nodes().len().max(1) as u32;
            ino_rec.mirrors = p.mirrors.min(live);
            ino_rec.replicas = self.placement(ino, ino_rec.mirrors)?;
        } else if ino_rec.kind == Kind::Dir {
            ino_rec.block_size = p.block_size;
            ino_rec.mirrors = p.mirrors;
        }
        let dk = meta::dir_key(parent, name);
        let mut np = p.clone();
        np.mtime = meta::now();
        np.ctime = np.mtime;
        let t = Txn {
            compare: vec![unchanged(&dk, 0), unchanged(&meta::ino_key(parent), p_rev)],
            success: vec![
                put(&meta::ino_key(ino), ino_rec.encode()),
                put(
                    &dk,
                    Dirent {
                        ino,
                        kind: ino_rec.kind,
                    }
                    .encode(),
                ),
                put(&meta::ino_key(parent), np.encode()),
            ],
            failure: vec![],
        };
        if self.txn(t)? {
            return Ok((ino, ino_rec));
        }
        if self.mirror.get(&dk).is_some() {
            return Err(GvsError::Exists);
        }
        if self.mirror.get(&meta::ino_key(parent)).is_none() {
            return Err(GvsError::NotFound);
        }
        Err(GvsError::Conflict(format!(
            "create {name}: the directory changed meanwhile"
        )))
    }

    /// Removes `name` from `parent` (a file, symlink, or an empty directory
    /// when `dir`), in one transaction.
    pub fn remove(&self, parent: u64, name: &str, dir: bool) -> Result<()> {
        self.remove_keeping(parent, name, dir, |_| false).map(drop)
    }

    /// [`Gvs::remove`], except that a file for which `open` holds keeps its
    /// inode and data (POSIX: an unlinked file lives until its last close)
    /// until [`Gvs::free_inode`]; only its name goes. Returns that inode.
    pub fn remove_keeping(
        &self,
        parent: u64,
        name: &str,
        dir: bool,
        open: impl Fn(u64) -> bool,
    ) -> Result<Option<u64>> {
        for _ in 0..10 {
            let (de, de_rev) = self.dirent(parent, name)?;
            match (dir, de.kind) {
                (true, Kind::Dir) | (false, Kind::File | Kind::Symlink) => {}
                (true, _) => return Err(GvsError::NotDir),
                (false, _) => return Err(GvsError::IsDir),
            }
            // A directory with snapshots is not empty: delete them first.
            if dir
                && (self.mirror.any_under(&meta::dir_prefix(de.ino))
                    || self.mirror.any_under(&meta::snapdir_prefix(de.ino)))
            {
                return Err(GvsError::NotEmpty);
            }
            let dk = meta::dir_key(parent, name);
            let kept = !dir && open(de.ino);
            let mut success = vec![del(&dk)];
            if !kept {
                success.extend(inode_ops(de.ino));
            }
            let t = Txn {
                compare: vec![unchanged(&dk, de_rev)],
                success,
                failure: vec![],
            };
            if self.txn(t)? {
                self.touch_dir(parent);
                if kept {
                    return Ok(Some(de.ino));
                }
                self.forget_volume(de.ino);
                return Ok(None);
            }
        }
        Err(GvsError::Conflict(format!(
            "remove {name}: it kept changing"
        )))
    }

    /// Deletes the records of an inode [`Gvs::remove_keeping`] kept, once
    /// its last open handle is gone.
    pub fn free_inode(&self, ino: u64) -> Result<()> {
        self.txn(Txn {
            success: inode_ops(ino),
            ..Txn::default()
        })?;
        self.forget_volume(ino);
        Ok(())
    }

    fn forget_volume(&self, ino: u64) {
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
    }

    /// Updates a directory's times after a change of its entries (best effort).
    fn touch_dir(&self, dir: u64) {
        let _ = self.update_inode(dir, |i| {
            i.mtime = meta::now();
            i.ctime = i.mtime;
            Ok(())
        });
    }

    /// Renames atomically, replacing a destination file or empty directory
    /// unless `noreplace`.
    pub fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        noreplace: bool,
    ) -> Result<()> {
        check_name(newname)?;
        if newname == crate::snapshot::SNAPSHOTS {
            return Err(GvsError::Exists);
        }
        for _ in 0..10 {
            let (de, de_rev) = self.dirent(parent, name)?;
            let (np, _) = self.inode(newparent)?;
            if np.kind != Kind::Dir {
                return Err(GvsError::NotDir);
            }
            if de.kind == Kind::Dir && self.is_ancestor(de.ino, newparent) {
                return Err(GvsError::Invalid(
                    "cannot move a directory into itself".into(),
                ));
            }
            let sk = meta::dir_key(parent, name);
            let dk = meta::dir_key(newparent, newname);
            if sk == dk {
                return Ok(());
            }
            let mut compare = vec![unchanged(&sk, de_rev)];
            let mut success = vec![del(&sk), put(&dk, de.encode())];
            match self.dirent(newparent, newname) {
                Ok((old, old_rev)) => {
                    if noreplace {
                        return Err(GvsError::Exists);
                    }
                    if old.ino == de.ino {
                        return Ok(());
                    }
                    match (de.kind == Kind::Dir, old.kind == Kind::Dir) {
                        (true, false) => return Err(GvsError::NotDir),
                        (false, true) => return Err(GvsError::IsDir),
                        (true, true)
                            if self.mirror.any_under(&meta::dir_prefix(old.ino))
                                || self.mirror.any_under(&meta::snapdir_prefix(old.ino)) =>
                        {
                            return Err(GvsError::NotEmpty)
                        }
                        _ => {}
                    }
                    compare.push(unchanged(&dk, old_rev));
                    success.extend([
                        del(&meta::ino_key(old.ino)),
                        del(&meta::lease_key(old.ino)),
                        del(&meta::lease_req_key(old.ino)),
                    ]);
                }
                Err(GvsError::NotFound) => compare.push(unchanged(&dk, 0)),
                Err(e) => return Err(e),
            }
            if self.txn(Txn {
                compare,
                success,
                failure: vec![],
            })? {
                self.touch_dir(parent);
                if newparent != parent {
                    self.touch_dir(newparent);
                }
                return Ok(());
            }
        }
        Err(GvsError::Conflict(format!(
            "rename {name}: it kept changing"
        )))
    }

    /// Whether `a` is `d` or one of its ancestors.
    fn is_ancestor(&self, a: u64, mut d: u64) -> bool {
        for _ in 0..4096 {
            if d == a {
                return true;
            }
            if d == meta::ROOT_INO {
                return false;
            }
            match self.parent_of(d) {
                Some((p, _)) => d = p,
                None => return false,
            }
        }
        false
    }

    /// The directory holding `ino` and its name there, from the namespace
    /// copy (a walk of every entry: for messages and rare checks).
    fn parent_of(&self, ino: u64) -> Option<(u64, String)> {
        self.mirror
            .range(meta::DIR_PREFIX)
            .into_iter()
            .find_map(|(k, v)| {
                let de = Dirent::decode(&v.value).ok()?;
                (de.ino == ino)
                    .then(|| meta::dirent_of_key(&k).map(|(p, n)| (p, n.to_string())))
                    .flatten()
            })
    }

    /// The path of `ino` in the namespace (`/apps/shop/db.vol`), for
    /// messages; `None` when it has no name (removed meanwhile).
    pub fn path_of(&self, ino: u64) -> Option<String> {
        let (mut names, mut at) = (Vec::new(), ino);
        for _ in 0..4096 {
            if at == meta::ROOT_INO {
                names.reverse();
                return Some(format!("/{}", names.join("/")));
            }
            let (parent, name) = self.parent_of(at)?;
            names.push(name);
            at = parent;
        }
        None
    }

    /// Read-modify-CAS of an inode record; `f` may refuse with an error.
    pub fn update_inode(&self, ino: u64, f: impl Fn(&mut Inode) -> Result<()>) -> Result<Inode> {
        for _ in 0..20 {
            let (mut i, rev) = self.inode(ino)?;
            f(&mut i)?;
            let k = meta::ino_key(ino);
            let t = Txn {
                compare: vec![unchanged(&k, rev)],
                success: vec![put(&k, i.encode())],
                failure: vec![],
            };
            if self.txn(t)? {
                return Ok(i);
            }
            self.mirror.wait_change(rev, Duration::from_millis(50));
        }
        Err(GvsError::Conflict(format!("inode {ino:#x} kept changing")))
    }

    /// A chunk by id: cache, local store, then the given replicas (each
    /// copy verified; a bad copy is skipped for the next replica).
    pub fn fetch(&self, id: &ChunkId, replicas: &[String]) -> Result<Arc<Vec<u8>>> {
        Ok(self
            .fetch_many(std::slice::from_ref(id), replicas)?
            .pop()
            .expect("one chunk asked, one returned"))
    }

    /// Chunks by id, in order: from the cache, then the local store (in
    /// parallel), then the other replicas, in parallel and spread over
    /// them: the k-th missing chunk is asked of replica k mod R first, so
    /// a large read draws on every mirror at once. Every copy is verified.
    pub fn fetch_many(&self, ids: &[ChunkId], replicas: &[String]) -> Result<Vec<Arc<Vec<u8>>>> {
        let mut out: Vec<Option<Arc<Vec<u8>>>> = vec![None; ids.len()];
        let mut need = Vec::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            let flying = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for (i, id) in ids.iter().enumerate() {
                match cache.get(id).or_else(|| flying.get(id).map(|f| &f.0)) {
                    Some(c) => out[i] = Some(c.clone()),
                    None => need.push(i),
                }
            }
        }
        if need.is_empty() {
            return Ok(out.into_iter().map(|o| o.expect("filled")).collect());
        }
        // The local store: one read per chunk, all at once, on the
        // runtime's pool of blocking threads (reused: starting threads per
        // request cost more than the reads of a warm store; and a cold
        // store's disk gets every read of the request at once).
        let local: Vec<(usize, Lookup)> = if need.len() == 1 {
            vec![(need[0], self.store.lookup(&ids[need[0]])?)]
        } else {
            let reads = need.iter().map(|&i| {
                let (store, id) = (self.store.clone(), ids[i]);
                self.rt.spawn_blocking(move || store.lookup(&id))
            });
            let reads: Vec<_> = reads.collect();
            let done = self.rt.block_on(join_all(reads));
            need.iter()
                .zip(done)
                .map(|(&i, r)| {
                    let r = r.map_err(|e| GvsError::Io(std::io::Error::other(e)))?;
                    Ok((i, r?))
                })
                .collect::<Result<_>>()?
        };
        let mut fetched = Vec::new();
        let mut remote = Vec::new();
        let mut corrupt = std::collections::HashSet::new();
        for (i, d) in local {
            match d {
                Lookup::Good(d) => fetched.push((i, Arc::new(d))),
                Lookup::Absent => remote.push(i),
                Lookup::Corrupt => {
                    tracing::warn!(
                        "chunk {} is corrupt in the local store; reading a mirror's copy",
                        ids[i].hex()
                    );
                    corrupt.insert(i);
                    remote.push(i);
                }
            }
        }
        if !remote.is_empty() {
            let (primary, fallback) = self.sources(replicas);
            let results = self.rt.block_on(join_all(
                remote
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| self.fetch_remote(ids[i], k, &primary, &fallback))
                    .collect(),
            ));
            let mut repairs = Vec::new();
            for (&i, r) in remote.iter().zip(results) {
                let d = Arc::new(r?);
                Stats::add(&self.stats.fetched_bytes, d.len() as u64);
                if corrupt.contains(&i) {
                    repairs.push((ids[i], d.clone()));
                }
                fetched.push((i, d));
            }
            // A corrupt local copy is replaced by the good one (verified).
            if !repairs.is_empty() {
                self.store.put_many(&repairs, true)?;
                Stats::add(&self.stats.read_repaired, repairs.len() as u64);
                for (id, _) in &repairs {
                    tracing::info!("chunk {} repaired from a mirror", id.hex());
                }
            }
        }
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for (i, d) in fetched {
                cache.put(ids[i], d.clone());
                out[i] = Some(d);
            }
        }
        Ok(out.into_iter().map(|o| o.expect("filled")).collect())
    }

    /// Where to read a volume's chunks from: its live replicas other than
    /// this node, then any other live node (a chunk shared by a clone may
    /// live on the origin's replicas). Each as (name, address).
    pub(crate) fn sources(&self, replicas: &[String]) -> (Vec<Source>, Vec<Source>) {
        let nodes: HashMap<String, NodeInfo> = self.nodes().into_iter().collect();
        let primary = replicas
            .iter()
            .filter(|r| **r != self.me)
            .filter_map(|r| Some((r.clone(), nodes.get(r)?.addr.clone())))
            .collect();
        let fallback = nodes
            .iter()
            .filter(|(n, _)| **n != self.me && !replicas.contains(n))
            .map(|(n, i)| (n.clone(), i.addr.clone()))
            .collect();
        (primary, fallback)
    }

    /// One chunk from the other nodes: replica `k mod R` first, then the
    /// other replicas, then every other node.
    pub(crate) async fn fetch_remote(
        &self,
        id: ChunkId,
        k: usize,
        primary: &[Source],
        fallback: &[Source],
    ) -> Result<Vec<u8>> {
        let n = primary.len();
        let order = (0..n).map(|j| &primary[(k + j) % n]).chain(fallback.iter());
        for (node, addr) in order {
            match self.peers.get(addr, &id).await {
                Ok(Some(d)) => return Ok(d),
                Ok(None) => {}
                Err(e) => tracing::warn!("reading chunk {} from {node}: {e}", id.hex()),
            }
        }
        Err(GvsError::ChunkUnavailable(id.hex()))
    }

    /// Makes a commit's chunks readable while it stores them.
    pub fn take_off(&self, chunks: &[(ChunkId, Arc<Vec<u8>>)]) {
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for (id, d) in chunks {
            f.entry(*id).or_insert_with(|| (d.clone(), 0)).1 += 1;
        }
    }

    /// Ends [`Gvs::take_off`] once the commit is done with its chunks.
    pub fn land(&self, chunks: &[(ChunkId, Arc<Vec<u8>>)]) {
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for (id, _) in chunks {
            if let Some(e) = f.get_mut(id) {
                e.1 -= 1;
                if e.1 == 0 {
                    f.remove(id);
                }
            }
        }
    }

    /// Asks the background committer to commit volume `ino` soon.
    pub fn ask_commit(&self, ino: u64) {
        if let Some(tx) = &*self.commit_asks.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(ino);
        }
    }

    /// The local state of a volume (made on first use).
    pub fn volume(&self, ino: u64) -> Arc<VolumeSlot> {
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ino)
            .or_insert_with(|| Arc::new(VolumeSlot::new(ino)))
            .clone()
    }

    /// The volume's local state if it exists already.
    pub fn volume_if_any(&self, ino: u64) -> Option<Arc<VolumeSlot>> {
        self.volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned()
    }

    /// This node's metad lease id.
    pub fn lease(&self) -> u64 {
        self.node_lease.load(Ordering::SeqCst)
    }

    /// Records that metad granted or renewed the node's lease in answer
    /// to a request sent at `asked` (the lease runs from no later than that).
    pub fn lease_confirmed(&self, asked: Instant) {
        *self
            .lease_confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(asked);
    }

    /// True when metad has not confirmed the node's lease for
    /// [`LAPSE_AFTER`]: every write lease hanging on it may have expired
    /// and been taken by another node, so waiting for metad to commit is
    /// pointless (and would keep writers, and the processes killed while
    /// writing, stuck in the kernel for as long as the node is cut off).
    pub fn lease_lapsed(&self) -> bool {
        self.lease_confirmed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() >= LAPSE_AFTER)
    }

    /// Runs `work` (a chunk push, a metad commit) unless the node's lease
    /// lapses first ([`Gvs::lease_lapsed`]), then gives up with None: a
    /// peer or metad out of reach holds a writer no longer than that.
    pub async fn unless_lapsed<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        let lapsed = async {
            while !self.lease_lapsed() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            r = work => Some(r),
            () = lapsed => None,
        }
    }
}

/// What deleting an inode deletes: its record, lease and requests.
fn inode_ops(ino: u64) -> Vec<Op> {
    vec![
        del(&meta::ino_key(ino)),
        del(&meta::lease_key(ino)),
        del(&meta::lease_req_key(ino)),
        del(&meta::flush_key(ino)),
    ]
}

/// Refuses names the namespace cannot hold.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.len() > 255 {
        return Err(GvsError::Invalid(format!("bad name {name:?}")));
    }
    Ok(())
}

/// A grid-wide setting (`gvs/conf/<name>`, decimal), or `default`.
pub fn conf(gvs: &Gvs, name: &str, default: u64) -> u64 {
    gvs.mirror
        .get(&meta::conf_key(name))
        .and_then(|v| std::str::from_utf8(&v.value).ok()?.trim().parse().ok())
        .unwrap_or(default)
}

/// The mod revision of a setting (0: never set): triggers compare it.
pub fn conf_rev(gvs: &Gvs, name: &str) -> u64 {
    gvs.mirror
        .get(&meta::conf_key(name))
        .map_or(0, |v| v.mod_rev)
}
