//! The chunk protocol between nodes: each gvsfs serves its chunk store on
//! TCP (port 2390). Connections are authenticated with the cluster secret
//! (metad's mutual challenge-response, within its time and frame limits,
//! with at most a limited number of connections open, as metad's own
//! port); then each request is one sealed
//! length-prefixed postcard frame answered by one frame. A put's chunk
//! bytes follow its frame raw (see [`Put`]), and a put in several parts
//! is streamed: the writer sends every part before it reads the answers,
//! and the server stores one part while it receives the next.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metad::auth::{accept_within, connect_handshake, Role, Session};
use metad::protocol::Opener;
use metad::server::accept_limited;
use metad::Secret;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::chunk::{Bytes, Check, ChunkId, ChunkStore, Delta, Ingest};
use crate::error::{GvsError, Result};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a call may make no progress (one frame or one part's bytes
/// sent, or an answer read) before the peer is taken for gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to a chunk server.
#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    /// One part of storing chunks durably.
    Put(Put),
    /// Read one chunk.
    Get(ChunkId),
    /// Which of these chunks are held.
    Has(Vec<ChunkId>),
}

/// One part of a put: whole chunks (each verified there against its id)
/// and deltas from chunks held there (each rebuilt and verified). The
/// frame names the whole chunks and their lengths; their bytes follow it
/// on the stream in that order, unsealed: the sealed frame authenticates
/// the ids and the ids authenticate the bytes, so the bytes are neither
/// copied into a frame nor hashed a second time for a tag.
#[derive(Serialize, Deserialize, Debug)]
pub struct Put {
    /// The whole chunks whose bytes follow, with their lengths.
    pub whole: Vec<(ChunkId, u32)>,
    /// The deltas.
    pub deltas: Vec<Delta>,
    /// The put's last part: answered only once every part is durable.
    pub last: bool,
}

/// A chunk server's answer.
#[derive(Serialize, Deserialize, Debug)]
pub enum Response {
    /// The chunk, if held.
    Chunk(Option<Bytes>),
    /// One flag per asked chunk.
    Has(Vec<bool>),
    /// The deltas that could not be rebuilt (their base is not held):
    /// to be sent whole.
    Need(Vec<ChunkId>),
    /// Refused, with the reason.
    Err(String),
}

/// What a connection's reader hands its worker.
pub enum Job {
    /// A put's part with the bytes of its whole chunks.
    Put(Put, Vec<(ChunkId, Arc<Vec<u8>>)>),
    /// Any other request.
    Other(Request),
    /// A frame that is no request, or a part that cannot be read: it is
    /// answered with the reason and the connection ends (what follows
    /// it on the stream cannot be told apart).
    Refused(String),
}

/// Answers a request other than a put.
fn handle(store: &ChunkStore, req: Request) -> Response {
    let r = match req {
        Request::Put(_) => return Response::Err("a put's bytes were not read".into()),
        Request::Get(id) => store.get(&id).map(|c| Response::Chunk(c.map(Bytes))),
        Request::Has(ids) => ids
            .iter()
            .map(|id| store.has(id))
            .collect::<Result<Vec<_>>>()
            .map(Response::Has),
    };
    r.unwrap_or_else(|e| Response::Err(e.to_string()))
}

/// Stores one part of a put into `ingest`.
fn store_part(ingest: &mut Ingest, put: &Put, whole: &[(ChunkId, Arc<Vec<u8>>)]) -> Response {
    if let Some((id, _)) = whole.iter().find(|(id, d)| !id.verifies(d)) {
        return Response::Err(format!("chunk {} does not match its id", id.hex()));
    }
    ingest
        .part(whole, &put.deltas, Check::Verify, put.last)
        .map_or_else(|e| Response::Err(e.to_string()), Response::Need)
}

/// Reads the next request and, for a put's part, the bytes after it.
pub async fn read_job<R: AsyncRead + Unpin>(rd: &mut R, recv: &mut Opener) -> std::io::Result<Job> {
    let frame = recv
        .read(rd, MAX_FRAME)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let put = match postcard::from_bytes::<Request>(&frame) {
        Ok(Request::Put(put)) => put,
        Ok(req) => return Ok(Job::Other(req)),
        Err(e) => return Ok(Job::Refused(format!("malformed request: {e}"))),
    };
    if let Some((id, len)) = put.whole.iter().find(|(_, n)| *n > crate::MAX_BLOCK_SIZE) {
        return Ok(Job::Refused(format!(
            "chunk {} of {len} bytes: larger than any block",
            id.hex()
        )));
    }
    // A part is held in memory until stored: its size is bounded as
    // [`frames`] cuts them.
    let total: u64 = put.whole.iter().map(|(_, n)| u64::from(*n)).sum();
    if total > PART_MAX as u64 {
        return Ok(Job::Refused(format!(
            "a part of {total} bytes: over the {PART_MAX}-byte limit"
        )));
    }
    let mut whole = Vec::with_capacity(put.whole.len());
    for &(id, len) in &put.whole {
        let len = len as usize;
        let mut d = Vec::with_capacity(len);
        while d.len() < len {
            let left = (len - d.len()) as u64;
            if (&mut *rd).take(left).read_buf(&mut d).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        whole.push((id, Arc::new(d)));
    }
    Ok(Job::Put(put, whole))
}

async fn serve_conn(mut s: TcpStream, store: ChunkStore, secret: Secret) -> Result<()> {
    let _ = s.set_nodelay(true);
    let (_, session) = accept_within(&mut s, &secret, |_| false)
        .await
        .map_err(|e| GvsError::Peer {
            peer: "incoming".into(),
            why: e.to_string(),
        })?;
    let Session { mut send, mut recv } = session;
    let (mut rd, mut wr) = s.into_split();
    // The reader runs ahead of the worker by one job: a put's next part
    // arrives while this one is stored.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        while let Ok(job) = read_job(&mut rd, &mut recv).await {
            let end = matches!(job, Job::Refused(_));
            if tx.send(job).await.is_err() || end {
                break;
            }
        }
    });
    // The put whose parts are arriving.
    let mut ingest: Option<Ingest> = None;
    let served = async {
        while let Some(job) = rx.recv().await {
            let end = matches!(job, Job::Refused(_));
            let resp = match job {
                Job::Put(put, whole) => {
                    let mut ing = ingest.take().unwrap_or_else(|| store.ingest(true));
                    // Stored on this worker thread (the runtime moves its
                    // other tasks elsewhere meanwhile): handing each part to
                    // the blocking pool and back cost an fsync'd random
                    // writer ~5% of its IOPS.
                    let r = tokio::task::block_in_place(|| store_part(&mut ing, &put, &whole));
                    // A refused part ends its put: what comes after it
                    // starts a new one.
                    if !put.last && !matches!(r, Response::Err(_)) {
                        ingest = Some(ing);
                    }
                    r
                }
                Job::Other(req) => {
                    let st = store.clone();
                    tokio::task::spawn_blocking(move || handle(&st, req))
                        .await
                        .unwrap_or_else(|e| Response::Err(e.to_string()))
                }
                Job::Refused(why) => Response::Err(why),
            };
            let bytes = postcard::to_allocvec(&resp)?;
            send.write(&mut wr, &bytes)
                .await
                .map_err(|e| GvsError::Peer {
                    peer: "incoming".into(),
                    why: e.to_string(),
                })?;
            wr.flush().await?;
            if end {
                break;
            }
        }
        Ok(())
    };
    let r = served.await;
    reader.abort();
    r
}

/// Serves the chunk store on `listener` until the task is dropped, at
/// most `max_connections` connections at a time (as metad's port: see
/// [`metad::server::accept_limited`]).
pub async fn serve(
    listener: TcpListener,
    store: ChunkStore,
    secret: Secret,
    max_connections: usize,
) {
    accept_limited(listener, max_connections, move |s, peer| {
        let (st, sec) = (store.clone(), secret.clone());
        async move {
            if let Err(e) = serve_conn(s, st, sec).await {
                tracing::warn!("chunk connection from {peer}: {e}");
            }
        }
    })
    .await
}

/// Bytes of chunk data in one part of a put at most.
const FRAME_DATA: usize = 16 << 20;

/// Most bytes of whole chunks a part may carry: [`FRAME_DATA`], or one
/// chunk of the largest block size.
const PART_MAX: usize = if FRAME_DATA > crate::MAX_BLOCK_SIZE as usize {
    FRAME_DATA
} else {
    crate::MAX_BLOCK_SIZE as usize
};

/// `items` cut into runs of at most [`FRAME_DATA`] bytes (by `size`),
/// each holding at least one item.
pub(crate) fn frames<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, it) in items.iter().enumerate() {
        let n = size(it);
        if i > start && bytes + n >= FRAME_DATA {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// The error for an unexpected answer to `what`.
fn refused(addr: &str, what: &str, answer: Response) -> GvsError {
    GvsError::Peer {
        peer: addr.to_string(),
        why: format!("{what} refused: {answer:?}"),
    }
}

/// An authenticated connection to a chunk server: its frames are sealed
/// with the session of its handshake (see [`metad::auth`]).
struct Conn {
    s: TcpStream,
    session: Session,
}

/// `io` within [`CALL_TIMEOUT`], its error as text.
async fn within<T, E: std::fmt::Display>(
    io: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, io).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no progress in time".into()),
    }
}

/// Most buffers one `writev` gathers (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

impl Conn {
    /// Writes one sealed frame (not flushed).
    async fn send(&mut self, payload: &[u8]) -> std::result::Result<(), String> {
        within(self.session.send.write(&mut self.s, payload)).await
    }

    /// Writes chunks' bytes back to back, gathered straight from where
    /// they lie.
    async fn send_raw(
        &mut self,
        chunks: &[(ChunkId, Arc<Vec<u8>>)],
    ) -> std::result::Result<(), String> {
        let mut bufs: Vec<IoSlice> = chunks.iter().map(|(_, d)| IoSlice::new(d)).collect();
        let mut rest = &mut bufs[..];
        while !rest.is_empty() {
            let k = rest.len().min(IOV_MAX);
            match within(self.s.write_vectored(&rest[..k])).await? {
                0 => return Err("connection closed".into()),
                n => IoSlice::advance_slices(&mut rest, n),
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::result::Result<(), String> {
        within(self.s.flush()).await
    }

    /// Reads one sealed frame's payload.
    async fn recv(&mut self) -> std::result::Result<Vec<u8>, String> {
        within(self.session.recv.read(&mut self.s, MAX_FRAME)).await
    }
}

/// Connections to other nodes' chunk servers, pooled per address.
pub struct Peers {
    secret: Secret,
    pool: Mutex<HashMap<String, Vec<Conn>>>,
}

impl Peers {
    /// A pool that authenticates with `secret`.
    pub fn new(secret: Secret) -> Peers {
        Peers {
            secret,
            pool: Mutex::new(HashMap::new()),
        }
    }

    async fn connect(&self, addr: &str) -> Result<Conn> {
        let err = |why: String| GvsError::Peer {
            peer: addr.to_string(),
            why,
        };
        let mut s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| err("connect timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        let _ = s.set_nodelay(true);
        let session = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            connect_handshake(&mut s, &self.secret, Role::Client, 0),
        )
        .await
        .map_err(|_| err("handshake timed out".into()))?
        .map_err(|e| err(e.to_string()))?;
        Ok(Conn { s, session })
    }

    /// Runs `talk` on a connection to `addr` (pooled, or new) and pools
    /// the connection again when it succeeds. A pooled connection may
    /// have been closed by a restarted peer: one retry on a fresh one.
    async fn exchange<T>(
        &self,
        addr: &str,
        mut talk: impl AsyncFnMut(&mut Conn) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let mut pooled = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)
            .and_then(|v| v.pop());
        let mut why = String::new();
        for _ in 0..2 {
            let mut c = match pooled.take() {
                Some(c) => c,
                None => self.connect(addr).await?,
            };
            // A call cut short leaves its connection dropped, never
            // pooled: the sessions' sequence numbers would disagree.
            match talk(&mut c).await {
                Ok(t) => {
                    self.pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(addr.to_string())
                        .or_default()
                        .push(c);
                    return Ok(t);
                }
                Err(e) => why = e,
            }
        }
        Err(GvsError::Peer {
            peer: addr.to_string(),
            why,
        })
    }

    /// Sends one request to `addr` and returns its answer.
    pub async fn call(&self, addr: &str, req: &Request) -> Result<Response> {
        let bytes = postcard::to_allocvec(req)?;
        let frame = self
            .exchange(addr, async |c| {
                c.send(&bytes).await?;
                c.flush().await?;
                c.recv().await
            })
            .await?;
        postcard::from_bytes(&frame).map_err(|e| GvsError::Peer {
            peer: addr.to_string(),
            why: format!("malformed answer: {e}"),
        })
    }

    /// Stores chunks on `addr` durably: `whole` ones and `deltas` (see
    /// [`Delta`]), streamed in parts of bounded size. Returns the deltas
    /// it could not rebuild (their base is not held there), to be sent
    /// whole.
    pub async fn put(
        &self,
        addr: &str,
        whole: &[(ChunkId, Arc<Vec<u8>>)],
        deltas: &[Delta],
    ) -> Result<Vec<ChunkId>> {
        let whole = frames(whole, |(_, d)| d.len());
        let deltas = frames(deltas, Delta::patch_bytes);
        let n = whole.len().max(deltas.len());
        let mut heads = Vec::with_capacity(n);
        for i in 0..n {
            let w: &[(ChunkId, Arc<Vec<u8>>)] = whole.get(i).copied().unwrap_or_default();
            let head = Request::Put(Put {
                whole: w.iter().map(|(id, d)| (*id, d.len() as u32)).collect(),
                deltas: deltas.get(i).map_or_else(Vec::new, |p| p.to_vec()),
                last: i + 1 == n,
            });
            heads.push((postcard::to_allocvec(&head)?, w));
        }
        let answers = self
            .exchange(addr, async |c| {
                for (head, w) in &heads {
                    c.send(head).await?;
                    c.send_raw(w).await?;
                }
                c.flush().await?;
                let mut answers = Vec::with_capacity(n);
                for _ in 0..n {
                    answers.push(c.recv().await?);
                }
                Ok(answers)
            })
            .await?;
        let mut need = Vec::new();
        for f in answers {
            match postcard::from_bytes(&f) {
                Ok(Response::Need(ids)) => need.extend(ids),
                Ok(other) => return Err(refused(addr, "put", other)),
                Err(e) => return Err(refused(addr, "put", Response::Err(e.to_string()))),
            }
        }
        Ok(need)
    }

    /// Reads a chunk from `addr`, verified; `None` if absent or bad there.
    pub async fn get(&self, addr: &str, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        match self.call(addr, &Request::Get(*id)).await? {
            Response::Chunk(Some(Bytes(d))) if id.verifies(&d) => Ok(Some(d)),
            Response::Chunk(Some(_)) => {
                tracing::warn!("{addr} returned a corrupt copy of chunk {}", id.hex());
                Ok(None)
            }
            Response::Chunk(None) => Ok(None),
            other => Err(refused(addr, "get", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_frame_like_a_byte_vector() {
        let v: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let ours = postcard::to_allocvec(&Bytes(v.clone())).unwrap();
        assert_eq!(ours, postcard::to_allocvec(&v).unwrap());
        let back: Bytes = postcard::from_bytes(&ours).unwrap();
        assert_eq!(back.0, v);
    }

    /// A chunk server on loopback over a fresh store, and a client of
    /// it; both go on drop.
    struct Served {
        dir: std::path::PathBuf,
        srv: tokio::task::JoinHandle<()>,
        addr: String,
        peers: Peers,
    }

    impl Served {
        async fn new(name: &str) -> Served {
            Served::with_cap(name, metad::server::MAX_CONNECTIONS).await
        }

        /// A server holding at most `cap` connections.
        async fn with_cap(name: &str, cap: usize) -> Served {
            let dir =
                std::env::temp_dir().join(format!("gvsfs-test-net-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let store = ChunkStore::open(&dir, 16 << 20).unwrap();
            let secret = Secret::generate();
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            let srv = tokio::spawn(serve(l, store, secret.clone(), cap));
            Served {
                dir,
                srv,
                addr,
                peers: Peers::new(secret),
            }
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.srv.abort();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_get_over_tcp_and_refuse_strangers() {
        let served = Served::new("strangers").await;
        let (addr, peers) = (served.addr.clone(), &served.peers);
        let data = Arc::new(vec![3u8; 100_000]);
        let id = ChunkId::of(&data);
        let need = peers.put(&addr, &[(id, data.clone())], &[]).await.unwrap();
        assert!(need.is_empty());
        assert_eq!(
            peers.get(&addr, &id).await.unwrap().as_deref(),
            Some(data.as_slice())
        );
        assert_eq!(peers.get(&addr, &ChunkId::of(b"nope")).await.unwrap(), None);
        // A chunk that does not match its id is refused, and not stored.
        let forged = ChunkId::of(b"genuine");
        let bad = peers
            .put(&addr, &[(forged, Arc::new(b"forged".to_vec()))], &[])
            .await;
        assert!(
            matches!(&bad, Err(e) if e.to_string().contains("does not match its id")),
            "{bad:?}"
        );
        assert_eq!(peers.get(&addr, &forged).await.unwrap(), None);
        // A part naming a chunk larger than any block is refused with the
        // reason (its bytes cannot be told from what follows).
        let huge = Request::Put(Put {
            whole: vec![(id, crate::MAX_BLOCK_SIZE + 1)],
            deltas: vec![],
            last: true,
        });
        match peers.call(&addr, &huge).await.unwrap() {
            Response::Err(why) => assert!(why.contains("larger than any block"), "{why}"),
            other => panic!("a chunk past the block limit was taken: {other:?}"),
        }
        // So is a part larger than a part can be.
        let big = Request::Put(Put {
            whole: vec![(id, crate::MAX_BLOCK_SIZE), (id, crate::MAX_BLOCK_SIZE)],
            deltas: vec![],
            last: true,
        });
        match peers.call(&addr, &big).await.unwrap() {
            Response::Err(why) => assert!(why.contains("over the"), "{why}"),
            other => panic!("a part past the limit was taken: {other:?}"),
        }
        // A client without the secret is refused.
        let stranger = Peers::new(Secret::generate());
        assert!(stranger.get(&addr, &id).await.is_err());
        // A request injected into an authenticated connection without its
        // tag gets no answer: the server drops the connection.
        let mut c = peers.connect(&addr).await.unwrap();
        let get = postcard::to_allocvec(&Request::Get(id)).unwrap();
        metad::protocol::write_frame(&mut c.s, &get).await.unwrap();
        c.s.flush().await.unwrap();
        let answer = metad::protocol::read_frame(&mut c.s, MAX_FRAME).await;
        assert!(answer.is_err(), "an untagged request was answered");
    }

    /// Waits (generously: this only catches a hang) for `s` to be closed
    /// by the server; whether it was.
    async fn closed_by_server(s: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut rest))
            .await
            .is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_connection_is_closed() {
        let served = Served::new("silent").await;
        let mut s = TcpStream::connect(&served.addr).await.unwrap();
        assert!(
            closed_by_server(&mut s).await,
            "a connection that never authenticates is held open"
        );
        // A frame header claiming 8 MiB before any handshake: closed too.
        let mut s = TcpStream::connect(&served.addr).await.unwrap();
        s.write_u32(8 << 20).await.unwrap();
        assert!(
            closed_by_server(&mut s).await,
            "an 8 MiB hello was waited for"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_the_cap_are_closed_and_a_client_is_served_afterwards() {
        const CAP: usize = 4;
        let served = Served::with_cap("cap", CAP).await;
        let (addr, peers) = (served.addr.clone(), &served.peers);
        // CAP authenticated connections fill the server...
        let mut held = Vec::new();
        for _ in 0..CAP {
            held.push(peers.connect(&addr).await.unwrap());
        }
        // ...so one more is closed at once, before its handshake.
        let past = peers.connect(&addr).await;
        assert!(past.is_err(), "a connection past the cap was served");
        drop(held);
        // A flood of silent connections, more than the cap: every one is
        // closed (past the cap at once, the others when their handshake
        // time is up)...
        let mut flood = Vec::new();
        for _ in 0..3 * CAP {
            flood.push(TcpStream::connect(&addr).await.unwrap());
        }
        for s in &mut flood {
            assert!(closed_by_server(s).await, "a silent connection stayed open");
        }
        // ...and a client is served afterwards (once the server has let
        // go of the flood: it closes a connection, then frees its place).
        let served_again = async {
            while peers.get(&addr, &ChunkId::of(b"nope")).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(120), served_again)
                .await
                .is_ok(),
            "no client is served after the flood"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_put_larger_than_a_part_streams_in_parts_and_reads_back() {
        let served = Served::new("parts").await;
        let (addr, peers) = (served.addr.clone(), &served.peers);
        // 40 MiB: three parts of at most FRAME_DATA.
        let chunks: Vec<(ChunkId, Arc<Vec<u8>>)> = (0..40u8)
            .map(|i| {
                let d: Vec<u8> = (0..1 << 20).map(|j: u32| (j as u8) ^ i).collect();
                (ChunkId::of(&d), Arc::new(d))
            })
            .collect();
        assert_eq!(frames(&chunks, |(_, d)| d.len()).len(), 3);
        // A delta from the first chunk.
        let mut changed = chunks[0].1.to_vec();
        changed[100..110].copy_from_slice(b"0123456789");
        let delta = Delta::between(chunks[0].0, &chunks[0].1, ChunkId::of(&changed), &changed)
            .expect("a small change makes a delta");
        // Its base is not held there yet: asked for whole.
        let need = peers
            .put(&addr, &chunks, std::slice::from_ref(&delta))
            .await
            .unwrap();
        assert_eq!(need, vec![delta.id]);
        let need = peers
            .put(&addr, &[], std::slice::from_ref(&delta))
            .await
            .unwrap();
        assert!(need.is_empty(), "the base is held now: {need:?}");
        for (id, d) in &chunks {
            assert_eq!(
                peers.get(&addr, id).await.unwrap().as_deref(),
                Some(d.as_slice())
            );
        }
        assert_eq!(
            peers.get(&addr, &delta.id).await.unwrap().as_deref(),
            Some(changed.as_slice())
        );
        // The connection is pooled and still in step after the streamed put.
        assert_eq!(peers.get(&addr, &ChunkId::of(b"nope")).await.unwrap(), None);
    }
}
