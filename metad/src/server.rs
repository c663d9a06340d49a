//! The listening side: one TCP port serves both peers and clients. Every
//! connection is authenticated first ([`crate::auth`]); an unauthenticated
//! one is logged and closed before any of its frames reach the Raft loop or
//! the state machine. Before it has authenticated a connection may send no
//! more than the handshake needs, in no more than
//! [`crate::auth::HANDSHAKE_TIMEOUT`], and the port holds no more than its
//! limit of connections ([`accept_limited`], which gvsfs's chunk port runs
//! too).

use crate::auth::{accept_within, Role, Secret, Session};
use crate::node::{MemberChange, NodeHandle};
use crate::protocol::{
    decode, ErrorReply, FrameError, Opener, Request, RequestBody, Response, ResponseBody,
    MAX_CLIENT_FRAME, MAX_PEER_FRAME,
};
use crate::state::{check_command, check_key, Applied, Command};
use protobuf::Message as _;
use raft::prelude::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};

/// Connections a daemon holds open at most, by default: past it a new
/// connection is closed at once, so that a flood of them cannot take the
/// file descriptors and memory the grid's own connections need.
pub const MAX_CONNECTIONS: usize = 4096;

/// At most one log line per this long about connections closed for the
/// limit: a flood must not flood the log too.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections forever, at most `max_connections` at a time.
pub async fn serve(
    listener: TcpListener,
    node: NodeHandle,
    secret: Secret,
    max_connections: usize,
) {
    accept_limited(listener, max_connections, move |stream, addr| {
        connection(stream, addr, node.clone(), secret.clone())
    })
    .await
}

/// Accepts connections on `listener` forever and spawns `serve` for each,
/// with at most `max` of them open at a time: one past that is closed as
/// soon as it is accepted (and logged, at most once per
/// [`REFUSALS_LOGGED_EVERY`]). Every listening port of the grid runs
/// this, with [`crate::auth::accept_within`] first in `serve`.
pub async fn accept_limited<F, Fut>(listener: TcpListener, max: usize, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let places = Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)));
    let mut refusals = Refusals::default();
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => match places.clone().try_acquire_owned() {
                Ok(place) => {
                    let served = serve(stream, addr);
                    tokio::spawn(async move {
                        served.await;
                        drop(place);
                    });
                }
                Err(_) => {
                    drop(stream);
                    if let Some(n) = refusals.note(Instant::now()) {
                        tracing::warn!(%addr, "connection limit ({max}) reached: closed {n} new connection(s) since the last such line");
                    }
                }
            },
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Connections closed for the limit, counted between two log lines.
#[derive(Default)]
struct Refusals {
    /// When the last line was logged.
    logged: Option<Instant>,
    /// Refusals not logged yet.
    pending: u64,
}

impl Refusals {
    /// Counts one refusal at `now`; the count to log, when a line is due.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        let due = self
            .logged
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSALS_LOGGED_EVERY);
        if !due {
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

async fn connection(mut stream: TcpStream, addr: SocketAddr, node: NodeHandle, secret: Secret) {
    let _ = stream.set_nodelay(true);
    let (hello, session) = match accept_within(&mut stream, &secret, |id| node.is_member(id)).await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%addr, "connection refused: {e}");
            return;
        }
    };
    match hello.role {
        Role::Peer => peer(stream, addr, hello.member_id, node, session.recv).await,
        Role::Client => client(stream, addr, node, session).await,
    }
}

async fn peer(
    mut stream: TcpStream,
    addr: SocketAddr,
    from: u64,
    node: NodeHandle,
    mut recv: Opener,
) {
    loop {
        let frame = match recv.read(&mut stream, MAX_PEER_FRAME).await {
            Ok(f) => f,
            Err(FrameError::Io(_)) => return,
            Err(e) => {
                tracing::warn!(%addr, member = from, "closing peer connection: {e}");
                return;
            }
        };
        match Message::parse_from_bytes(&frame) {
            Ok(m) if m.from == from => node.step(m),
            Ok(m) => {
                tracing::warn!(%addr, member = from, claimed = m.from, "peer sent a message as another member; closing");
                return;
            }
            Err(e) => {
                tracing::warn!(%addr, member = from, "malformed raft message; closing: {e}");
                return;
            }
        }
    }
}

async fn client(stream: TcpStream, addr: SocketAddr, node: NodeHandle, session: Session) {
    let Session { mut send, mut recv } = session;
    let (mut r, w) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Response>(1024);
    let writer = tokio::spawn(async move {
        let mut w = BufWriter::new(w);
        while let Some(resp) = rx.recv().await {
            let mut ok = send
                .write(&mut w, &crate::protocol::encode(&resp))
                .await
                .is_ok();
            while ok {
                match rx.try_recv() {
                    Ok(resp) => {
                        ok = send
                            .write(&mut w, &crate::protocol::encode(&resp))
                            .await
                            .is_ok()
                    }
                    Err(_) => break,
                }
            }
            if !ok || w.flush().await.is_err() {
                return;
            }
        }
    });
    loop {
        let req = match recv
            .read(&mut r, MAX_CLIENT_FRAME)
            .await
            .and_then(|f| decode::<Request>(&f))
        {
            Ok(req) => req,
            Err(FrameError::Io(_)) => break,
            Err(e) => {
                tracing::warn!(%addr, "bad frame from client; closing: {e}");
                let body = ResponseBody::Error(ErrorReply::Malformed(e.to_string()));
                let _ = tx.send(Response { id: 0, body }).await;
                break;
            }
        };
        let (node, tx) = (node.clone(), tx.clone());
        tokio::spawn(async move {
            if let RequestBody::Watch { prefix, from_rev } = req.body {
                watch(req.id, prefix, from_rev, node, tx).await;
            } else {
                let body = answer(req.body, &node)
                    .await
                    .unwrap_or_else(ResponseBody::Error);
                let _ = tx.send(Response { id: req.id, body }).await;
            }
        });
    }
    drop(tx);
    // Let pending answers (the malformed-frame error included) go out, but
    // end the watches of this connection.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !writer.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    writer.abort();
}

async fn answer(body: RequestBody, node: &NodeHandle) -> Result<ResponseBody, ErrorReply> {
    Ok(match body {
        RequestBody::Get { key } => {
            check_key(&key)?;
            node.read_barrier().await?;
            let st = node.state();
            ResponseBody::Kvs {
                kvs: st.get(&key).cloned().into_iter().collect(),
                revision: st.revision(),
            }
        }
        RequestBody::Range { prefix, limit } => {
            node.read_barrier().await?;
            let st = node.state();
            ResponseBody::Kvs {
                kvs: st.range(&prefix, limit as usize),
                revision: st.revision(),
            }
        }
        RequestBody::Txn(t) => {
            let cmd = Command::Txn(t);
            check_command(&cmd)?;
            applied(node.propose(cmd).await?)
        }
        RequestBody::LeaseGrant { ttl_ms } => {
            let cmd = Command::LeaseGrant { ttl_ms };
            check_command(&cmd)?;
            applied(node.propose(cmd).await?)
        }
        RequestBody::LeaseRevoke { id } => {
            applied(node.propose(Command::LeaseRevoke { id }).await?)
        }
        RequestBody::LeaseKeepAlive { id } => ResponseBody::Lease {
            id,
            ttl_ms: node.keepalive(id).await?,
        },
        RequestBody::Status => ResponseBody::Status(node.status()),
        RequestBody::MemberAdd { addr } => {
            let (id, members) = node.change_member(MemberChange::Add(addr)).await?;
            ResponseBody::Members { id, members }
        }
        RequestBody::MemberRemove { id } => {
            let (id, members) = node.change_member(MemberChange::Remove(id)).await?;
            ResponseBody::Members { id, members }
        }
        RequestBody::Watch { .. } => return Err(ErrorReply::Other("watch is a stream".into())),
    })
}

fn applied(a: Applied) -> ResponseBody {
    match a {
        Applied::Txn(r) => ResponseBody::Txn(r),
        Applied::LeaseGranted { id, ttl_ms } => ResponseBody::Lease { id, ttl_ms },
        Applied::LeaseRevoked { revision } => ResponseBody::Revoked { revision },
    }
}

/// Streams the events under `prefix` from `from_rev` (0: from now on): the
/// kept history first, then live events, with no gap and no repeat: the
/// subscription is taken before the history is read, and live events older
/// than the history's end are skipped.
/// How often a watch stream sends its progress heartbeat.
const WATCH_PROGRESS: Duration = Duration::from_secs(1);

async fn watch(
    id: u64,
    prefix: Vec<u8>,
    from_rev: u64,
    node: NodeHandle,
    tx: mpsc::Sender<Response>,
) {
    let mut live = node.subscribe();
    let (backlog, mut next) = {
        let st = node.state();
        let from = if from_rev == 0 {
            st.revision() + 1
        } else {
            from_rev
        };
        (
            st.history_since(&prefix, from),
            (st.revision() + 1).max(from),
        )
    };
    let send = |body| {
        let tx = tx.clone();
        async move { tx.send(Response { id, body }).await.is_ok() }
    };
    match backlog {
        Err(e) => {
            send(ResponseBody::Error(e.into())).await;
            return;
        }
        Ok(evs) if !evs.is_empty() => {
            if !send(ResponseBody::Events(evs)).await {
                return;
            }
        }
        Ok(_) => {}
    }
    // Once a second: an empty batch tells the client the stream is alive;
    // a member that has known no leader for a while ends the watch, so the
    // client resumes on a member that hears the cluster.
    let mut progress = tokio::time::interval(WATCH_PROGRESS);
    let mut leaderless = 0;
    loop {
        let batch = tokio::select! {
            b = live.recv() => b,
            _ = tx.closed() => return,
            _ = progress.tick() => {
                leaderless = if node.status().leader == 0 { leaderless + 1 } else { 0 };
                if leaderless > 2 {
                    let msg = format!("member has no leader; resume elsewhere from revision {next}");
                    send(ResponseBody::Error(ErrorReply::Other(msg))).await;
                    return;
                }
                if !send(ResponseBody::Events(Vec::new())).await {
                    return;
                }
                continue;
            }
        };
        match batch {
            Ok(batch) if batch.is_empty() => {
                let msg = format!("events skipped by a snapshot; resume from revision {next}");
                send(ResponseBody::Error(ErrorReply::Other(msg))).await;
                return;
            }
            Ok(batch) => {
                let evs: Vec<_> = batch
                    .iter()
                    .filter(|e| e.rev >= next && e.kv.key.starts_with(&prefix))
                    .cloned()
                    .collect();
                if let Some(last) = batch.last() {
                    next = next.max(last.rev + 1);
                }
                if !evs.is_empty() && !send(ResponseBody::Events(evs)).await {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let msg = format!("watch fell behind; resume from revision {next}");
                send(ResponseBody::Error(ErrorReply::Other(msg))).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_period_with_their_count() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.note(t0), Some(1));
        assert_eq!(r.note(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.note(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.note(t0 + REFUSALS_LOGGED_EVERY), Some(3));
        assert_eq!(r.note(t0 + REFUSALS_LOGGED_EVERY), None);
    }
}
