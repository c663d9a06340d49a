//! The Raft loop: one dedicated thread owns the `RawNode` and the state
//! machine's writes. Each iteration it drains every pending request from its
//! channel, packs all proposals into as few log entries as possible, asks
//! one ReadIndex for all pending reads, ticks, and handles the `Ready`
//! (persist entries and hard state in one synced batch, send messages, apply
//! committed entries, advance).
//!
//! Reads are linearizable through **ReadIndex**, not leader leases: the leader
//! confirms with a quorum heartbeat round that it still leads, then answers
//! once its state machine has applied up to the commit index it saw. Leader
//! leases would save that round trip but assume bounded clock drift and
//! pauses (a paused or slow-clocked old leader could serve stale reads);
//! ReadIndex assumes nothing about clocks, and the round is shared by every
//! read of an iteration, so its cost is amortized under load.
//!
//! TTL leases expire on the leader's clock only: it keeps an in-memory
//! deadline per lease, reset to the full TTL when it becomes leader (so a
//! lease never expires early because of a leader change) and by keepalives,
//! and proposes a revoke entry when a deadline passes.

use crate::protocol::{decode, encode, ErrorReply, MemberStatus};
use crate::state::{Applied, Batch, Command, Event, State};
use crate::storage::{RaftStorage, StorageErr};
use crate::transport::{PeerReport, Transport};
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

/// How long a request waits for the Raft loop before its outcome is unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// Target encoded size of one log entry packing many proposals.
const ENTRY_PACK_BYTES: usize = 2 * 1024 * 1024;

/// Tunables of a member.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's id.
    pub id: u64,
    /// Raft tick interval.
    pub tick: Duration,
    /// Ticks without a heartbeat before an election.
    pub election_tick: usize,
    /// Ticks between heartbeats.
    pub heartbeat_tick: usize,
    /// Applied entries between snapshots (and log compactions).
    pub snapshot_interval: u64,
    /// Addresses of members known before the state machine has any (a
    /// member that just joined).
    pub bootstrap_peers: BTreeMap<u64, String>,
}

impl NodeConfig {
    /// Defaults: 50 ms tick, election after 8–12 ticks (0.4–0.6 s: eight
    /// missed heartbeats, so a loaded machine does not start spurious
    /// elections, yet fail-over stays under a second), heartbeat every tick,
    /// a snapshot every 10,000 entries.
    pub fn new(id: u64) -> NodeConfig {
        NodeConfig {
            id,
            tick: Duration::from_millis(50),
            election_tick: 8,
            heartbeat_tick: 1,
            snapshot_interval: 10_000,
            bootstrap_peers: BTreeMap::new(),
        }
    }
}

/// Errors that stop the Raft loop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Raft refused its configuration or storage.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The disk failed.
    #[error(transparent)]
    Storage(#[from] StorageErr),
}

/// A membership change.
#[derive(Clone, Debug)]
pub enum MemberChange {
    /// Add a member reachable at this address.
    Add(String),
    /// Remove the member with this id.
    Remove(u64),
}

type Reply<T> = oneshot::Sender<Result<T, ErrorReply>>;
/// Member id and the address book after a membership change.
pub type Membership = (u64, Vec<(u64, String)>);

/// What the Raft loop is asked.
pub enum Msg {
    /// Replicate and apply a command.
    Propose(Command, Reply<Applied>),
    /// Wait until a linearizable read may be served.
    Read(Reply<()>),
    /// Renew a lease on the leader.
    KeepAlive(u64, Reply<u64>),
    /// Change the membership.
    Member(MemberChange, Reply<Membership>),
    /// A Raft message from a peer.
    Raft(Box<Message>),
    /// A report of a peer task.
    Peer(PeerReport),
}

/// The handle the server uses to talk to the Raft loop and read the state.
#[derive(Clone)]
pub struct NodeHandle {
    tx: std::sync::mpsc::Sender<Msg>,
    state: Arc<RwLock<State>>,
    status: Arc<Mutex<MemberStatus>>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    bootstrap: Arc<BTreeMap<u64, String>>,
}

impl NodeHandle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T, ErrorReply> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| ErrorReply::Other("member is shutting down".into()))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ErrorReply::Unknown("member is shutting down".into())),
            Err(_) => Err(ErrorReply::Unknown(format!(
                "no answer from Raft within {REQUEST_TIMEOUT:?}"
            ))),
        }
    }

    /// Replicates a command and returns what applying it produced.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ErrorReply> {
        self.ask(|r| Msg::Propose(cmd, r)).await
    }

    /// Returns once a linearizable read of the state may be served here.
    pub async fn read_barrier(&self) -> Result<(), ErrorReply> {
        self.ask(Msg::Read).await
    }

    /// Renews a lease; returns its TTL.
    pub async fn keepalive(&self, id: u64) -> Result<u64, ErrorReply> {
        self.ask(|r| Msg::KeepAlive(id, r)).await
    }

    /// Adds or removes a member.
    pub async fn change_member(&self, change: MemberChange) -> Result<Membership, ErrorReply> {
        self.ask(|r| Msg::Member(change, r)).await
    }

    /// Hands a Raft message from a peer to the loop.
    pub fn step(&self, m: Message) {
        let _ = self.tx.send(Msg::Raft(Box::new(m)));
    }

    /// The state machine, for reads (after [`NodeHandle::read_barrier`]).
    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Events as they are applied, in batches; an empty batch means events
    /// were skipped (a snapshot from the leader jumped past the history).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<Event>>> {
        self.events.subscribe()
    }

    /// This member's view of the cluster.
    pub fn status(&self) -> MemberStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `id` may connect as a peer: a member in the state machine, a
    /// voter, or a member known from joining.
    pub fn is_member(&self, id: u64) -> bool {
        let s = self.status();
        s.members.iter().any(|(m, _)| *m == id)
            || s.voters.contains(&id)
            || self.bootstrap.contains_key(&id)
    }
}

/// Starts the Raft loop on its own thread. `rt` runs the peer tasks. The
/// returned join handle ends when the member is removed or the disk fails.
pub fn start(
    cfg: NodeConfig,
    mut storage: RaftStorage,
    state: State,
    secret: crate::auth::Secret,
    rt: tokio::runtime::Handle,
) -> Result<(NodeHandle, std::thread::JoinHandle<Result<(), NodeError>>), NodeError> {
    let applied = state.meta().applied_index;
    if storage.hard_state().commit < applied {
        storage.set_commit(applied);
    }
    let rc = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_tick,
        // Randomized election timeout in [election, 1.5 × election) ticks
        // rather than raft-rs's default [1, 2): 0.5–0.75 s at 50 ms ticks,
        // so fail-over stays under a second.
        min_election_tick: cfg.election_tick,
        max_election_tick: cfg.election_tick + cfg.election_tick / 2,
        heartbeat_tick: cfg.heartbeat_tick,
        applied,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    rc.validate()?;
    let raw = RawNode::new(&rc, storage, &raft::default_logger())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (events, _) = broadcast::channel(4096);
    let handle = NodeHandle {
        tx: tx.clone(),
        state: Arc::new(RwLock::new(state)),
        status: Arc::new(Mutex::new(MemberStatus::default())),
        events,
        bootstrap: Arc::new(cfg.bootstrap_peers.clone()),
    };
    let mut lp = Loop {
        transport: Transport::new(cfg.id, secret, rt, tx),
        cfg,
        raw,
        rx,
        h: handle.clone(),
        proposals: HashMap::new(),
        next_proposal: 0,
        queued: Vec::new(),
        reads_new: Vec::new(),
        reads_waiting: HashMap::new(),
        reads_ready: Vec::new(),
        next_read: 0,
        member_op: None,
        deadlines: HashMap::new(),
        revoking: HashMap::new(),
        was_leader: false,
        removed: false,
        snapshot_due: false,
    };
    lp.refresh_addrs();
    lp.publish_status();
    let jh = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || lp.run())
        .expect("spawning the raft thread");
    Ok((handle, jh))
}

struct Loop {
    cfg: NodeConfig,
    raw: RawNode<RaftStorage>,
    rx: std::sync::mpsc::Receiver<Msg>,
    h: NodeHandle,
    transport: Transport,
    proposals: HashMap<u64, Reply<Applied>>,
    next_proposal: u64,
    queued: Vec<(u64, Command)>,
    reads_new: Vec<Reply<()>>,
    reads_waiting: HashMap<Vec<u8>, Vec<Reply<()>>>,
    reads_ready: Vec<(u64, Vec<Reply<()>>)>,
    next_read: u64,
    member_op: Option<(u64, Reply<Membership>)>,
    deadlines: HashMap<u64, Instant>,
    revoking: HashMap<u64, Instant>,
    was_leader: bool,
    removed: bool,
    /// A member was added: snapshot now, so the snapshot it will be sent
    /// (its log starts after the bootstrap snapshot) includes it in its
    /// configuration, which raft-rs requires to restore it.
    snapshot_due: bool,
}

impl Loop {
    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn not_leader(&self) -> ErrorReply {
        let id = self.raw.raft.leader_id;
        let leader = (id != 0 && id != self.cfg.id)
            .then(|| self.h.state().members().get(&id).cloned().map(|a| (id, a)))
            .flatten();
        ErrorReply::NotLeader { leader }
    }

    fn proposal_id(&mut self) -> u64 {
        self.next_proposal += 1;
        (self.cfg.id << 40) | (self.next_proposal & ((1 << 40) - 1))
    }

    fn run(mut self) -> Result<(), NodeError> {
        let mut next_tick = Instant::now() + self.cfg.tick;
        while !self.removed {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(m) => self.handle(m),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m);
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += self.cfg.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.cfg.tick;
                }
                self.expire_leases();
            }
            self.flush_proposals();
            self.flush_reads();
            self.on_ready()?;
        }
        tracing::warn!(
            id = self.cfg.id,
            "this member was removed from the cluster; stopping"
        );
        Ok(())
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Propose(cmd, reply) => {
                if !self.is_leader() {
                    let _ = reply.send(Err(self.not_leader()));
                    return;
                }
                let id = self.proposal_id();
                self.proposals.insert(id, reply);
                self.queued.push((id, cmd));
            }
            Msg::Read(reply) => self.reads_new.push(reply),
            Msg::KeepAlive(id, reply) => {
                let r = if !self.is_leader() {
                    Err(self.not_leader())
                } else {
                    match self.h.state().lease_ttl(id) {
                        Some(ttl) => {
                            self.deadlines
                                .insert(id, Instant::now() + Duration::from_millis(ttl));
                            Ok(ttl)
                        }
                        None => Err(crate::state::StateError::NoSuchLease(id).into()),
                    }
                };
                let _ = reply.send(r);
            }
            Msg::Member(change, reply) => self.propose_member(change, reply),
            Msg::Raft(m) => {
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!("raft step: {e}");
                }
            }
            Msg::Peer(PeerReport::Unreachable(id)) => self.raw.report_unreachable(id),
            Msg::Peer(PeerReport::SnapshotFailed(id)) => {
                self.raw.report_snapshot(id, SnapshotStatus::Failure)
            }
        }
    }

    fn propose_member(&mut self, change: MemberChange, reply: Reply<Membership>) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if self.member_op.is_some() || self.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(ErrorReply::Busy(
                "a membership change is under way".into(),
            )));
            return;
        }
        let pid = self.proposal_id();
        let mut cc = ConfChange::default();
        let addr = match change {
            MemberChange::Add(addr) => {
                let st = self.h.state();
                let max_member = st.members().keys().max().copied().unwrap_or(0);
                cc.node_id = st.meta().next_member_id.max(max_member + 1);
                cc.set_change_type(ConfChangeType::AddNode);
                addr
            }
            MemberChange::Remove(id) => {
                if !self.h.state().members().contains_key(&id) {
                    let _ = reply.send(Err(ErrorReply::Other(format!(
                        "member {id} does not exist"
                    ))));
                    return;
                }
                cc.node_id = id;
                cc.set_change_type(ConfChangeType::RemoveNode);
                String::new()
            }
        };
        cc.context = encode(&(pid, addr)).into();
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => self.member_op = Some((pid, reply)),
            Err(e) => {
                let _ = reply.send(Err(ErrorReply::Busy(format!(
                    "configuration change refused: {e}"
                ))));
            }
        }
    }

    fn flush_proposals(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        if !self.is_leader() {
            let e = self.not_leader();
            for (id, _) in queued {
                if let Some(r) = self.proposals.remove(&id) {
                    let _ = r.send(Err(e.clone()));
                }
            }
            return;
        }
        let mut chunk: Vec<(u64, Command)> = Vec::new();
        let mut size = 0;
        for (id, cmd) in queued {
            size += command_size(&cmd);
            chunk.push((id, cmd));
            if size >= ENTRY_PACK_BYTES {
                self.propose_chunk(std::mem::take(&mut chunk));
                size = 0;
            }
        }
        if !chunk.is_empty() {
            self.propose_chunk(chunk);
        }
    }

    fn propose_chunk(&mut self, chunk: Vec<(u64, Command)>) {
        if let Err(e) = self.raw.propose(Vec::new(), encode(&chunk)) {
            for (id, _) in chunk {
                if let Some(r) = self.proposals.remove(&id) {
                    let _ = r.send(Err(ErrorReply::Busy(format!("proposal dropped: {e}"))));
                }
            }
        }
    }

    fn flush_reads(&mut self) {
        if self.reads_new.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads_new);
        if !self.is_leader() {
            let e = self.not_leader();
            for r in reads {
                let _ = r.send(Err(e.clone()));
            }
            return;
        }
        self.next_read += 1;
        let ctx = self.next_read.to_be_bytes().to_vec();
        self.raw.read_index(ctx.clone());
        self.reads_waiting.insert(ctx, reads);
    }

    fn expire_leases(&mut self) {
        if !self.is_leader() {
            return;
        }
        let now = Instant::now();
        let expired: Vec<u64> = self
            .deadlines
            .iter()
            .filter(|(id, d)| {
                **d <= now
                    && !matches!(self.revoking.get(*id), Some(t) if now.duration_since(*t) <= REQUEST_TIMEOUT)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            tracing::info!(lease = id, "lease expired; revoking");
            self.revoking.insert(id, now);
            self.queued.push((0, Command::LeaseRevoke { id }));
        }
    }

    fn on_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            self.after_ready();
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        let snap = if rd.snapshot().is_empty() {
            None
        } else {
            Some((rd.snapshot(), self.restore(rd.snapshot())?))
        };
        let restored = snap.is_some();
        self.raw.mut_store().persist(snap, rd.entries(), rd.hs())?;
        if restored {
            self.refresh_addrs();
        }
        for rs in rd.take_read_states() {
            if let Some(waiting) = self.reads_waiting.remove(&rs.request_ctx) {
                self.reads_ready.push((rs.index, waiting));
            }
        }
        self.apply(rd.take_committed_entries())?;
        if !rd.persisted_messages().is_empty() {
            self.transport.send(rd.take_persisted_messages());
        }
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.after_ready();
        Ok(())
    }

    /// Restores the state machine from a snapshot sent by the leader; the
    /// records to persist are returned with it.
    fn restore(&mut self, snap: &Snapshot) -> Result<Batch, NodeError> {
        let mut b = Batch::default();
        let mut st = self.h.state.write().unwrap_or_else(|e| e.into_inner());
        let old_rev = st.revision();
        st.restore(&snap.data, &mut b).map_err(StorageErr::from)?;
        // Watchers get the events the snapshot jumped over from its history;
        // when it does not reach back that far, an empty batch tells them
        // events were skipped, and they end (clients resume elsewhere).
        let skipped = st.history_since(b"", old_rev + 1).unwrap_or_default();
        let _ = self.h.events.send(Arc::new(skipped));
        tracing::info!(
            index = snap.get_metadata().index,
            "restored state from a snapshot"
        );
        Ok(b)
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut b = Batch::default();
        let mut replies = Vec::new();
        let mut members_changed = false;
        {
            let state = self.h.state.clone();
            let mut st = state.write().unwrap_or_else(|e| e.into_inner());
            for e in &entries {
                match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => {}
                    EntryType::EntryNormal => match decode::<Vec<(u64, Command)>>(&e.data) {
                        Ok(cmds) => {
                            for (pid, cmd) in cmds {
                                let r = st.apply(&cmd, &mut b);
                                self.track_lease(&cmd, &r);
                                if let Some(tx) = self.proposals.remove(&pid) {
                                    replies.push((tx, r.map_err(ErrorReply::from)));
                                }
                            }
                        }
                        Err(err) => {
                            tracing::error!(index = e.index, "undecodable entry skipped: {err}")
                        }
                    },
                    EntryType::EntryConfChange => {
                        members_changed = true;
                        self.apply_conf_change(e, &mut st, &mut b)?;
                    }
                    EntryType::EntryConfChangeV2 => {
                        tracing::error!(index = e.index, "unexpected ConfChangeV2 skipped")
                    }
                }
                st.set_applied(e.index, e.term, &mut b);
            }
            let events = std::mem::take(&mut b.events);
            self.raw.store().write_applied(b, false, false)?;
            if !events.is_empty() {
                let _ = self.h.events.send(Arc::new(events));
            }
        }
        for (tx, r) in replies {
            let _ = tx.send(r);
        }
        if members_changed {
            self.refresh_addrs();
        }
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        e: &Entry,
        st: &mut State,
        b: &mut Batch,
    ) -> Result<(), NodeError> {
        let cc = match ConfChange::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                tracing::error!(index = e.index, "undecodable conf change skipped: {err}");
                return Ok(());
            }
        };
        let (pid, addr): (u64, String) = decode(&cc.context).unwrap_or((0, String::new()));
        let result = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => {
                if cc.get_change_type() == ConfChangeType::RemoveNode {
                    st.set_member(cc.node_id, None, b);
                    self.removed |= cc.node_id == self.cfg.id;
                } else {
                    st.set_member(cc.node_id, Some(addr.clone()), b);
                    self.snapshot_due = true;
                }
                tracing::info!(member = cc.node_id, change = ?cc.get_change_type(), %addr, voters = ?cs.voters, "membership changed");
                self.raw.mut_store().set_conf_state(cs);
                Ok((
                    cc.node_id,
                    st.members().iter().map(|(i, a)| (*i, a.clone())).collect(),
                ))
            }
            Err(err) => Err(ErrorReply::Other(format!(
                "configuration change failed: {err}"
            ))),
        };
        if let Some((p, tx)) = self.member_op.take() {
            if p == pid {
                let _ = tx.send(result);
            } else {
                self.member_op = Some((p, tx));
            }
        }
        Ok(())
    }

    fn track_lease(&mut self, cmd: &Command, r: &Result<Applied, crate::state::StateError>) {
        match (cmd, r) {
            (_, Ok(Applied::LeaseGranted { id, ttl_ms })) => {
                self.deadlines
                    .insert(*id, Instant::now() + Duration::from_millis(*ttl_ms));
            }
            (Command::LeaseRevoke { id }, _) => {
                self.deadlines.remove(id);
                self.revoking.remove(id);
            }
            _ => {}
        }
    }

    fn refresh_addrs(&mut self) {
        let mut addrs = self.cfg.bootstrap_peers.clone();
        addrs.extend(
            self.h
                .state()
                .members()
                .iter()
                .map(|(i, a)| (*i, a.clone())),
        );
        self.transport.set_addrs(addrs);
    }

    /// Bookkeeping after each iteration: leadership changes, reads that may
    /// now be served, snapshots, and the published status.
    fn after_ready(&mut self) {
        let leader = self.is_leader();
        if leader && !self.was_leader {
            let now = Instant::now();
            self.deadlines = self
                .h
                .state()
                .leases()
                .map(|(id, ttl)| (id, now + Duration::from_millis(ttl)))
                .collect();
            self.revoking.clear();
            tracing::info!(id = self.cfg.id, term = self.raw.raft.term, "became leader");
        }
        if !leader && self.was_leader {
            let e = self.not_leader();
            for (_, tx) in self.proposals.drain() {
                let _ = tx.send(Err(ErrorReply::Unknown(
                    "leadership lost before the write was applied".into(),
                )));
            }
            let waiting = self
                .reads_waiting
                .drain()
                .map(|(_, w)| w)
                .chain(self.reads_ready.drain(..).map(|(_, w)| w));
            for txs in waiting.collect::<Vec<_>>() {
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
            if let Some((_, tx)) = self.member_op.take() {
                let _ = tx.send(Err(ErrorReply::Unknown(
                    "leadership lost during the membership change".into(),
                )));
            }
            self.deadlines.clear();
        }
        self.was_leader = leader;
        let applied = self.h.state().meta().applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.reads_ready.drain(..).partition(|(i, _)| *i <= applied);
        self.reads_ready = waiting;
        for (_, txs) in ready {
            for tx in txs {
                let _ = tx.send(Ok(()));
            }
        }
        if std::mem::take(&mut self.snapshot_due)
            || applied >= self.raw.store().snapshot_index() + self.cfg.snapshot_interval
        {
            let (data, term) = {
                let st = self.h.state();
                (st.snapshot(), st.meta().applied_term)
            };
            match self.raw.mut_store().compact(applied, term, data) {
                Ok(()) => tracing::info!(index = applied, "snapshot taken; log compacted"),
                Err(e) => tracing::error!("snapshot failed: {e}"),
            }
        }
        self.publish_status();
    }

    fn publish_status(&self) {
        let st = self.h.state();
        let s = MemberStatus {
            id: self.cfg.id,
            leader: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            role: format!("{:?}", self.raw.raft.state),
            commit: self.raw.raft.raft_log.committed,
            applied: st.meta().applied_index,
            revision: st.revision(),
            members: st.members().iter().map(|(i, a)| (*i, a.clone())).collect(),
            voters: self.raw.store().conf_state().voters.clone(),
        };
        drop(st);
        *self.h.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

fn command_size(cmd: &Command) -> usize {
    match cmd {
        Command::Txn(t) => {
            64 + t
                .success
                .iter()
                .chain(&t.failure)
                .map(|op| match op {
                    crate::state::Op::Put { key, value, .. } => key.len() + value.len(),
                    crate::state::Op::Delete { key } => key.len(),
                    crate::state::Op::DeletePrefix { prefix } => prefix.len(),
                })
                .sum::<usize>()
        }
        _ => 32,
    }
}
