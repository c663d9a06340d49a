//! The client every part of the grid uses to talk to metad.
//!
//! A [`Client`] is given the members' endpoints and the cluster secret. It
//! keeps one authenticated connection, to the leader once known, on which
//! requests are multiplexed (a `Client` is cheap to share behind an `Arc`
//! and may be used from many tasks at once). It follows `NotLeader`
//! redirects and retries until [`ClientConfig::timeout`] has passed, then
//! fails with [`ClientError::NoQuorum`] ("no quorum: 1 of 3 members
//! reachable") or [`ClientError::Timeout`].
//!
//! What is retried after a request may have reached the leader (its
//! connection broke, or the leader lost its leadership before answering):
//! - reads (`get`, `get_prefix`, `status`), `lease_keepalive` and watches:
//!   always, they change nothing;
//! - `put` and `delete`: always, they are idempotent on the value (a retry
//!   that applies twice only advances the revision once more);
//! - `txn` with compares, `lease_grant`, `lease_revoke` and member changes:
//!   only when the request surely was not applied (not sent, or refused
//!   with `NotLeader`/`Busy`); otherwise they fail with
//!   [`ClientError::Unknown`], because a retried compare-and-swap whose
//!   first attempt applied would report a false failure. Read the keys and
//!   decide.

use crate::auth::{connect_handshake, AuthError, Role, Secret, Session};
use crate::protocol::{
    decode, encode, ErrorReply, MemberStatus, Request, RequestBody, ResponseBody, MAX_PEER_FRAME,
};
use crate::state::{Compare, CompareTarget, Event, KeyValue, Op, StateError, Txn, TxnResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Default bound on the time of one client call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// How long one attempt waits for its answer before the connection is
/// presumed dead (a member cut off the network keeps its TCP connections
/// open but answers nothing) and another member is tried. A healthy
/// cluster answers in milliseconds; an election takes under a second.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2000);

/// A watch stream that hears nothing (not even the member's once-a-second
/// progress heartbeat) for this long is presumed dead and resumed on
/// another member.
const WATCH_SILENCE: Duration = Duration::from_secs(3);

/// Errors of client calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not enough members answered to make progress within the timeout.
    #[error("no quorum: {reachable} of {total} members reachable{detail}")]
    NoQuorum {
        /// Members that accepted a connection.
        reachable: usize,
        /// Members known.
        total: usize,
        /// Last error seen, prefixed with ": " (may be empty).
        detail: String,
    },
    /// Members were reachable but the call did not complete in time.
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    /// The cluster refused the secret (or the member is not metad).
    #[error("authentication with {addr} failed: {source}")]
    Auth {
        /// Endpoint.
        addr: String,
        /// Why.
        source: AuthError,
    },
    /// The request may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The cluster answered with an error (the request was not applied).
    #[error("{0}")]
    Server(ErrorReply),
    /// The cluster answered something unexpected.
    #[error("protocol: unexpected answer {0}")]
    Protocol(String),
    /// One member could not be reached.
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// No endpoints were given.
    #[error("no endpoints given")]
    NoEndpoints,
}

impl ClientError {
    /// The state machine's error, if that is what this is.
    pub fn state_error(&self) -> Option<&StateError> {
        match self {
            ClientError::Server(ErrorReply::State(e)) => Some(e),
            _ => None,
        }
    }
}

/// Where the cluster is and how to prove membership.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of some or all members.
    pub endpoints: Vec<String>,
    /// The cluster secret.
    pub secret: Secret,
    /// Bound on the time of one call, retries included.
    pub timeout: Duration,
}

impl ClientConfig {
    /// A configuration with [`DEFAULT_TIMEOUT`].
    pub fn new(endpoints: Vec<String>, secret: Secret) -> ClientConfig {
        ClientConfig {
            endpoints,
            secret,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// One member's health as seen by [`Client::status`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberHealth {
    /// Member id.
    pub id: u64,
    /// Its address.
    pub addr: String,
    /// Whether it answered.
    pub reachable: bool,
    /// Its own status, when it answered.
    pub status: Option<MemberStatus>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The cluster as [`Client::status`] sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Leader id (0: none known).
    pub leader: u64,
    /// Every member of the configuration.
    pub members: Vec<MemberHealth>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Retry even if the request may have been applied.
    Always,
    /// Retry only if the request surely was not applied.
    IfNotApplied,
}

type Pending = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<ResponseBody>>>>;

/// One authenticated, multiplexed connection.
struct Conn {
    addr: String,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    next_id: AtomicU64,
}

enum ConnectError {
    Unreachable(String),
    Auth(AuthError),
}

impl Conn {
    async fn open(addr: &str, secret: &Secret) -> Result<Conn, ConnectError> {
        let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Unreachable(format!("{addr}: connect timed out")))?
            .map_err(|e| ConnectError::Unreachable(format!("{addr}: {e}")))?;
        let _ = s.set_nodelay(true);
        let session = match tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            connect_handshake(&mut s, secret, Role::Client, 0),
        )
        .await
        {
            Err(_) => {
                return Err(ConnectError::Unreachable(format!(
                    "{addr}: handshake timed out"
                )))
            }
            Ok(Err(AuthError::Frame(e))) => {
                return Err(ConnectError::Unreachable(format!("{addr}: {e}")))
            }
            Ok(Err(e)) => return Err(ConnectError::Auth(e)),
            Ok(Ok(session)) => session,
        };
        let Session { mut send, mut recv } = session;
        let (mut r, w) = s.into_split();
        let (frames, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (p2, a2) = (pending.clone(), alive.clone());
        tokio::spawn(async move {
            let mut w = BufWriter::new(w);
            while let Some(f) = rx.recv().await {
                let mut ok = send.write(&mut w, &f).await.is_ok();
                while ok {
                    match rx.try_recv() {
                        Ok(f) => ok = send.write(&mut w, &f).await.is_ok(),
                        Err(_) => break,
                    }
                }
                if !ok || w.flush().await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Ok(Ok(resp)) = recv
                .read(&mut r, MAX_PEER_FRAME)
                .await
                .map(|f| decode::<crate::protocol::Response>(&f))
            {
                let tx = p2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&resp.id)
                    .cloned();
                if let Some(tx) = tx {
                    let _ = tx.send(resp.body);
                }
            }
            a2.store(false, Ordering::SeqCst);
            p2.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Ok(Conn {
            addr: addr.to_string(),
            frames,
            pending,
            alive,
            next_id: AtomicU64::new(1),
        })
    }

    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst) && !self.frames.is_closed()
    }

    /// Sends a request; its answers arrive on the returned channel, which
    /// closes if the connection is lost. `None`: the connection is dead
    /// (the request was not sent).
    fn send(&self, body: &RequestBody) -> Option<(u64, mpsc::UnboundedReceiver<ResponseBody>)> {
        if !self.is_alive() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let frame = encode(&Request {
            id,
            body: body.clone(),
        });
        if self.frames.send(frame).is_err() {
            self.forget(id);
            return None;
        }
        Some((id, rx))
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// The metad client.
pub struct Client {
    cfg: ClientConfig,
    current: tokio::sync::Mutex<Option<Arc<Conn>>>,
    known_members: Mutex<BTreeSet<String>>,
}

fn op_txn(op: Op) -> Txn {
    Txn {
        success: vec![op],
        ..Txn::default()
    }
}

impl Client {
    /// A client; it connects on first use.
    pub fn new(cfg: ClientConfig) -> Client {
        let known = cfg.endpoints.iter().cloned().collect();
        Client {
            cfg,
            current: tokio::sync::Mutex::new(None),
            known_members: Mutex::new(known),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    async fn conn_to(&self, addr: &str) -> Result<Arc<Conn>, ConnectError> {
        let mut cur = self.current.lock().await;
        if let Some(c) = cur.as_ref() {
            if c.addr == addr && c.is_alive() {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(Conn::open(addr, &self.cfg.secret).await?);
        *cur = Some(c.clone());
        Ok(c)
    }

    async fn current_addr(&self) -> Option<String> {
        self.current
            .lock()
            .await
            .as_ref()
            .filter(|c| c.is_alive())
            .map(|c| c.addr.clone())
    }

    /// Sends one request to the leader, following redirects and retrying as
    /// `retry` allows, until the configured timeout.
    async fn call(&self, body: RequestBody, retry: Retry) -> Result<ResponseBody, ClientError> {
        if self.cfg.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let deadline = Instant::now() + self.cfg.timeout;
        let mut reachable = BTreeSet::new();
        let mut last_err = String::new();
        let mut target = self.current_addr().await;
        let mut rr = 0usize;
        let mut round = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.give_up(&reachable, &last_err));
            }
            let addr = match target.take() {
                Some(a) => a,
                None => {
                    let eps = &self.cfg.endpoints;
                    if rr > 0 && rr % eps.len() == 0 {
                        round += 1;
                        tokio::time::sleep(Duration::from_millis((10 * round as u64).min(200)))
                            .await;
                    }
                    rr += 1;
                    eps[(rr - 1) % eps.len()].clone()
                }
            };
            let conn = match self.conn_to(&addr).await {
                Ok(c) => c,
                Err(ConnectError::Auth(source)) => return Err(ClientError::Auth { addr, source }),
                Err(ConnectError::Unreachable(e)) => {
                    last_err = e;
                    continue;
                }
            };
            reachable.insert(addr.clone());
            let Some((id, mut rx)) = conn.send(&body) else {
                continue;
            };
            let answer = tokio::time::timeout(
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(ATTEMPT_TIMEOUT),
                rx.recv(),
            )
            .await;
            conn.forget(id);
            if answer.is_err() {
                // Silent member: drop the connection so the next attempt
                // connects afresh (or fails fast if it is cut off).
                conn.alive.store(false, Ordering::SeqCst);
            }
            match answer {
                Ok(Some(ResponseBody::Error(ErrorReply::NotLeader { leader }))) => {
                    last_err = "no leader".into();
                    if let Some((_, a)) = leader {
                        self.learn(&a);
                        target = Some(a);
                    } else {
                        // An election is under way: ask again soon, the
                        // fail-over time is this sleep plus the election.
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                }
                Ok(Some(ResponseBody::Error(ErrorReply::Busy(e)))) => {
                    last_err = e;
                    target = Some(addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Some(ResponseBody::Error(ErrorReply::Unknown(e)))) => {
                    if retry == Retry::IfNotApplied {
                        return Err(ClientError::Unknown(e));
                    }
                    last_err = e;
                }
                Ok(Some(ResponseBody::Error(e))) => return Err(ClientError::Server(e)),
                Ok(Some(body)) => return Ok(body),
                Ok(None) => {
                    let e = format!("connection to {addr} lost");
                    if retry == Retry::IfNotApplied {
                        return Err(ClientError::Unknown(e));
                    }
                    last_err = e;
                }
                Err(_) if retry == Retry::IfNotApplied => {
                    return Err(ClientError::Unknown(format!(
                        "no answer from {addr} in time"
                    )))
                }
                Err(_) => {
                    reachable.remove(&addr);
                    last_err = format!("{addr}: no answer in time");
                }
            }
        }
    }

    fn learn(&self, addr: &str) {
        self.known_members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr.to_string());
    }

    fn give_up(&self, reachable: &BTreeSet<String>, last: &str) -> ClientError {
        let total = self
            .known_members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(self.cfg.endpoints.len());
        let detail = if last.is_empty() {
            String::new()
        } else {
            format!(" ({last})")
        };
        if reachable.len() * 2 <= total {
            ClientError::NoQuorum {
                reachable: reachable.len(),
                total,
                detail,
            }
        } else {
            ClientError::Timeout(
                self.cfg.timeout,
                format!("{} of {total} members reachable{detail}", reachable.len()),
            )
        }
    }

    async fn kvs(&self, body: RequestBody) -> Result<(Vec<KeyValue>, u64), ClientError> {
        match self.call(body, Retry::Always).await? {
            ResponseBody::Kvs { kvs, revision } => Ok((kvs, revision)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Linearizable read of one key.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, ClientError> {
        Ok(self
            .kvs(RequestBody::Get { key: key.into() })
            .await?
            .0
            .pop())
    }

    /// Linearizable read of every key under `prefix`, in key order, with the
    /// store revision of the read.
    pub async fn get_prefix(
        &self,
        prefix: impl Into<Vec<u8>>,
    ) -> Result<(Vec<KeyValue>, u64), ClientError> {
        self.kvs(RequestBody::Range {
            prefix: prefix.into(),
            limit: 0,
        })
        .await
    }

    /// Runs a transaction (retried only when surely not applied, if it has
    /// compares).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, ClientError> {
        let retry = if txn.compare.is_empty() {
            Retry::Always
        } else {
            Retry::IfNotApplied
        };
        match self.call(RequestBody::Txn(txn), retry).await? {
            ResponseBody::Txn(r) => Ok(r),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Sets a key; returns the store revision of the write.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, ClientError> {
        self.put_with_lease(key, value, 0).await
    }

    /// Sets a key attached to a lease (deleted when the lease ends).
    pub async fn put_with_lease(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: u64,
    ) -> Result<u64, ClientError> {
        let op = Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        };
        Ok(self.txn(op_txn(op)).await?.revision)
    }

    /// Deletes a key; returns the store revision afterwards.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<u64, ClientError> {
        Ok(self
            .txn(op_txn(Op::Delete { key: key.into() }))
            .await?
            .revision)
    }

    /// Compare-and-swap of one key: sets `new` if the current value is
    /// `expected` (`None`: the key must be absent). Returns whether it did.
    pub async fn cas(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Option<&[u8]>,
        new: impl Into<Vec<u8>>,
    ) -> Result<bool, ClientError> {
        let key = key.into();
        let target = match expected {
            Some(v) => CompareTarget::Value(v.to_vec()),
            None => CompareTarget::Exists(false),
        };
        let txn = Txn {
            compare: vec![Compare {
                key: key.clone(),
                target,
            }],
            success: vec![Op::Put {
                key,
                value: new.into(),
                lease: 0,
            }],
            failure: vec![],
        };
        Ok(self.txn(txn).await?.succeeded)
    }

    /// Creates a lease of `ttl`; returns its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<u64, ClientError> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        match self
            .call(RequestBody::LeaseGrant { ttl_ms }, Retry::IfNotApplied)
            .await?
        {
            ResponseBody::Lease { id, .. } => Ok(id),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Renews a lease for its full TTL; returns the TTL.
    pub async fn lease_keepalive(&self, id: u64) -> Result<Duration, ClientError> {
        match self
            .call(RequestBody::LeaseKeepAlive { id }, Retry::Always)
            .await?
        {
            ResponseBody::Lease { ttl_ms, .. } => Ok(Duration::from_millis(ttl_ms)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Revokes a lease, deleting its keys; returns the store revision after.
    pub async fn lease_revoke(&self, id: u64) -> Result<u64, ClientError> {
        match self
            .call(RequestBody::LeaseRevoke { id }, Retry::IfNotApplied)
            .await?
        {
            ResponseBody::Revoked { revision } => Ok(revision),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Adds a member that will listen at `addr`; returns its id and the
    /// address book after the change.
    pub async fn member_add(&self, addr: &str) -> Result<(u64, Vec<(u64, String)>), ClientError> {
        self.members(RequestBody::MemberAdd {
            addr: addr.to_string(),
        })
        .await
    }

    /// Removes a member; returns the address book after the change.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<(u64, String)>, ClientError> {
        Ok(self.members(RequestBody::MemberRemove { id }).await?.1)
    }

    async fn members(&self, body: RequestBody) -> Result<(u64, Vec<(u64, String)>), ClientError> {
        match self.call(body, Retry::IfNotApplied).await? {
            ResponseBody::Members { id, members } => Ok((id, members)),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Status of one member at `addr` (not redirected).
    pub async fn member_status(&self, addr: &str) -> Result<MemberStatus, ClientError> {
        probe_status(addr.to_string(), self.cfg.secret.clone()).await
    }

    /// Every member's status and reachability, and the leader.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        let mut first = None;
        let mut last_err = None;
        for ep in &self.cfg.endpoints {
            match self.member_status(ep).await {
                Ok(s) => {
                    first = Some(s);
                    break;
                }
                Err(e @ ClientError::Auth { .. }) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        let Some(first) = first else {
            return Err(last_err.unwrap_or(ClientError::NoEndpoints));
        };
        let mut members: Vec<(u64, String)> = first.members.clone();
        for v in &first.voters {
            if !members.iter().any(|(i, _)| i == v) {
                members.push((*v, String::new()));
            }
        }
        let probes: Vec<_> = members
            .into_iter()
            .map(|(id, addr)| {
                let secret = self.cfg.secret.clone();
                tokio::spawn(async move {
                    match probe_status(addr.clone(), secret).await {
                        Ok(s) => MemberHealth {
                            id,
                            addr,
                            reachable: true,
                            status: Some(s),
                            error: None,
                        },
                        Err(e) => MemberHealth {
                            id,
                            addr,
                            reachable: false,
                            status: None,
                            error: Some(e.to_string()),
                        },
                    }
                })
            })
            .collect();
        let mut health = Vec::new();
        for p in probes {
            if let Ok(h) = p.await {
                health.push(h);
            }
        }
        let leader = health
            .iter()
            .filter_map(|h| h.status.as_ref())
            .filter(|s| s.leader != 0)
            .max_by_key(|s| s.term)
            .map_or(0, |s| s.leader);
        Ok(ClusterStatus {
            leader,
            members: health,
        })
    }

    /// Watches the keys under `prefix` from revision `from_rev` (0: from the
    /// current revision on). The stream reconnects by itself, to any member,
    /// resuming after the last event it delivered, so no event is missed or
    /// repeated; it ends with an error only if the history was compacted
    /// past the revision it needs, or authentication fails.
    pub async fn watch(
        &self,
        prefix: impl Into<Vec<u8>>,
        from_rev: u64,
    ) -> Result<Watch, ClientError> {
        let prefix = prefix.into();
        let next = if from_rev == 0 {
            self.kvs(RequestBody::Range {
                prefix: prefix.clone(),
                limit: 1,
            })
            .await?
            .1 + 1
        } else {
            from_rev
        };
        let (tx, rx) = mpsc::channel(1024);
        let cfg = self.cfg.clone();
        let task = tokio::spawn(watch_task(cfg, prefix, next, tx));
        Ok(Watch { rx, task })
    }
}

async fn probe_status(addr: String, secret: Secret) -> Result<MemberStatus, ClientError> {
    let conn = match Conn::open(&addr, &secret).await {
        Ok(c) => c,
        Err(ConnectError::Auth(source)) => return Err(ClientError::Auth { addr, source }),
        Err(ConnectError::Unreachable(e)) => return Err(ClientError::Unreachable(e)),
    };
    let (_, mut rx) = conn
        .send(&RequestBody::Status)
        .ok_or_else(|| ClientError::Unknown("connection lost".into()))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, rx.recv()).await {
        Ok(Some(ResponseBody::Status(s))) => Ok(s),
        Ok(Some(other)) => Err(ClientError::Protocol(format!("{other:?}"))),
        _ => Err(ClientError::Timeout(
            CONNECT_TIMEOUT,
            format!("no status from {addr}"),
        )),
    }
}

async fn watch_task(
    cfg: ClientConfig,
    prefix: Vec<u8>,
    mut next: u64,
    tx: mpsc::Sender<Result<Event, ClientError>>,
) {
    let mut i = 0usize;
    loop {
        let addr = cfg.endpoints[i % cfg.endpoints.len().max(1)].clone();
        i += 1;
        let conn = match Conn::open(&addr, &cfg.secret).await {
            Ok(c) => c,
            Err(ConnectError::Auth(source)) => {
                let _ = tx.send(Err(ClientError::Auth { addr, source })).await;
                return;
            }
            Err(ConnectError::Unreachable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((_, mut rx)) = conn.send(&RequestBody::Watch {
            prefix: prefix.clone(),
            from_rev: next,
        }) else {
            continue;
        };
        while let Ok(Some(body)) = tokio::time::timeout(WATCH_SILENCE, rx.recv()).await {
            match body {
                ResponseBody::Events(evs) => {
                    for e in evs {
                        next = e.rev + 1;
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                }
                ResponseBody::Error(e @ ErrorReply::State(StateError::Compacted { .. })) => {
                    let _ = tx.send(Err(ClientError::Server(e))).await;
                    return;
                }
                other => {
                    tracing::debug!("watch on {addr} ended: {other:?}");
                    break;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stream of watch events; dropping it stops the watch.
pub struct Watch {
    rx: mpsc::Receiver<Result<Event, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// The next event, in revision order; `None` after a fatal error.
    pub async fn next(&mut self) -> Option<Result<Event, ClientError>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A blocking wrapper of [`Client`] for synchronous code (FUSE handlers,
/// agents without a runtime): it owns a one-worker tokio runtime. Any
/// [`Client`] call can be made with [`BlockingClient::block_on`]; the
/// common ones have shortcuts.
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl BlockingClient {
    /// A blocking client; fails only if the runtime cannot start.
    pub fn new(cfg: ClientConfig) -> std::io::Result<BlockingClient> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        Ok(BlockingClient {
            rt,
            client: Client::new(cfg),
        })
    }

    /// The async client, for [`BlockingClient::block_on`].
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a future (typically a [`Client`] call) to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// [`Client::get`].
    pub fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, ClientError> {
        self.block_on(self.client.get(key))
    }

    /// [`Client::get_prefix`].
    pub fn get_prefix(
        &self,
        prefix: impl Into<Vec<u8>>,
    ) -> Result<(Vec<KeyValue>, u64), ClientError> {
        self.block_on(self.client.get_prefix(prefix))
    }

    /// [`Client::put`].
    pub fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, ClientError> {
        self.block_on(self.client.put(key, value))
    }

    /// [`Client::delete`].
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Result<u64, ClientError> {
        self.block_on(self.client.delete(key))
    }

    /// [`Client::txn`].
    pub fn txn(&self, txn: Txn) -> Result<TxnResult, ClientError> {
        self.block_on(self.client.txn(txn))
    }

    /// [`Client::watch`]; the events are read with
    /// `client.block_on(watch.next())`.
    pub fn watch(&self, prefix: impl Into<Vec<u8>>, from_rev: u64) -> Result<Watch, ClientError> {
        self.block_on(self.client.watch(prefix, from_rev))
    }
}
