//! The chunk protocol between nodes: each gvsfs serves its chunk store on
//! TCP (port 2390). Connections are authenticated with the cluster secret
//! (metad's mutual challenge-response); then each request is one
//! length-prefixed postcard frame answered by one frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metad::auth::{accept_handshake, connect_handshake, Role, Session};
use metad::Secret;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::chunk::{Bytes, Check, ChunkId, ChunkStore, Delta};
use crate::error::{GvsError, Result};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A request to a chunk server.
#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    /// Store these chunks durably: whole ones (each verified against its
    /// id) and deltas from chunks held there (each rebuilt and verified).
    Put(Vec<(ChunkId, Bytes)>, Vec<Delta>),
    /// Read one chunk.
    Get(ChunkId),
    /// Which of these chunks are held.
    Has(Vec<ChunkId>),
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

fn handle(store: &ChunkStore, req: Request) -> Response {
    let r = match req {
        Request::Put(whole, deltas) => {
            if let Some((id, _)) = whole.iter().find(|(id, d)| !id.verifies(&d.0)) {
                return Response::Err(format!("chunk {} does not match its id", id.hex()));
            }
            let whole: Vec<_> = whole
                .into_iter()
                .map(|(id, d)| (id, Arc::new(d.0)))
                .collect();
            store
                .put(&whole, &deltas, Check::Verify, true)
                .map(Response::Need)
        }
        Request::Get(id) => store.get(&id).map(|c| Response::Chunk(c.map(Bytes))),
        Request::Has(ids) => ids
            .iter()
            .map(|id| store.has(id))
            .collect::<Result<Vec<_>>>()
            .map(Response::Has),
    };
    r.unwrap_or_else(|e| Response::Err(e.to_string()))
}

async fn serve_conn(mut s: TcpStream, store: ChunkStore, secret: Secret) -> Result<()> {
    let _ = s.set_nodelay(true);
    let (_, mut session) = accept_handshake(&mut s, &secret, |_| false)
        .await
        .map_err(|e| GvsError::Peer {
            peer: "incoming".into(),
            why: e.to_string(),
        })?;
    loop {
        let frame = match session.recv.read(&mut s, MAX_FRAME).await {
            Ok(f) => f,
            Err(_) => return Ok(()),
        };
        let resp = match postcard::from_bytes::<Request>(&frame) {
            Ok(req) => {
                let st = store.clone();
                tokio::task::spawn_blocking(move || handle(&st, req))
                    .await
                    .unwrap_or_else(|e| Response::Err(e.to_string()))
            }
            Err(e) => Response::Err(format!("malformed request: {e}")),
        };
        let bytes = postcard::to_allocvec(&resp)?;
        session
            .send
            .write(&mut s, &bytes)
            .await
            .map_err(|e| GvsError::Peer {
                peer: "incoming".into(),
                why: e.to_string(),
            })?;
        s.flush().await?;
    }
}

/// Serves the chunk store on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, store: ChunkStore, secret: Secret) {
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                let (st, sec) = (store.clone(), secret.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve_conn(s, st, sec).await {
                        tracing::warn!("chunk connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Bytes of chunk data in one request frame at most.
const FRAME_DATA: usize = 16 << 20;

/// `items` cut into runs of at most [`FRAME_DATA`] bytes (by `size`),
/// each holding at least one item.
fn frames<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
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

    /// Sends one request to `addr` and returns its answer.
    pub async fn call(&self, addr: &str, req: &Request) -> Result<Response> {
        let err = |why: String| GvsError::Peer {
            peer: addr.to_string(),
            why,
        };
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(addr)
            .and_then(|v| v.pop());
        let bytes = postcard::to_allocvec(req)?;
        // A pooled connection may have been closed by a restarted peer:
        // one retry on a fresh connection.
        let mut pooled = pooled;
        for attempt in 0..2 {
            let mut c = match pooled.take() {
                Some(c) => c,
                None => self.connect(addr).await?,
            };
            // A call cut short leaves its connection dropped, never
            // pooled: the sessions' sequence numbers would disagree.
            let r = tokio::time::timeout(CALL_TIMEOUT, async {
                let Conn { s, session } = &mut c;
                session
                    .send
                    .write(s, &bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                s.flush().await.map_err(|e| e.to_string())?;
                session
                    .recv
                    .read(s, MAX_FRAME)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()));
            match r {
                Ok(f) => {
                    let resp: Response = postcard::from_bytes(&f)
                        .map_err(|e| err(format!("malformed answer: {e}")))?;
                    self.pool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(addr.to_string())
                        .or_default()
                        .push(c);
                    return Ok(resp);
                }
                Err(e) if attempt == 1 => return Err(err(e)),
                Err(_) => continue,
            }
        }
        Err(err("unreachable".into()))
    }

    /// Stores chunks on `addr`: `whole` ones and `deltas` (see
    /// [`Delta`]), in frames of bounded size. Returns the deltas it could
    /// not rebuild (their base is not held there), to be sent whole.
    pub async fn put(
        &self,
        addr: &str,
        whole: &[(ChunkId, Arc<Vec<u8>>)],
        deltas: &[Delta],
    ) -> Result<Vec<ChunkId>> {
        let whole = frames(whole, |(_, d)| d.len());
        let deltas = frames(deltas, Delta::patch_bytes);
        let mut need = Vec::new();
        for i in 0..whole.len().max(deltas.len()) {
            let w = whole.get(i).map_or_else(Vec::new, |part| {
                part.iter()
                    .map(|(id, d)| (*id, Bytes(d.to_vec())))
                    .collect()
            });
            let d = deltas.get(i).map_or_else(Vec::new, |part| part.to_vec());
            match self.call(addr, &Request::Put(w, d)).await? {
                Response::Need(ids) => need.extend(ids),
                other => return Err(refused(addr, "put", other)),
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

    #[tokio::test]
    async fn put_get_over_tcp_and_refuse_strangers() {
        let dir = std::env::temp_dir().join(format!("gvsfs-test-net-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = ChunkStore::open(&dir).unwrap();
        let secret = Secret::generate();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let srv = tokio::spawn(serve(l, store.clone(), secret.clone()));
        let peers = Peers::new(secret);
        let data = Arc::new(vec![3u8; 100_000]);
        let id = ChunkId::of(&data);
        let need = peers.put(&addr, &[(id, data.clone())], &[]).await.unwrap();
        assert!(need.is_empty());
        assert_eq!(
            peers.get(&addr, &id).await.unwrap().as_deref(),
            Some(data.as_slice())
        );
        assert_eq!(peers.get(&addr, &ChunkId::of(b"nope")).await.unwrap(), None);
        // A chunk that does not match its id is refused.
        let bad = peers
            .call(
                &addr,
                &Request::Put(vec![(id, Bytes(b"forged".to_vec()))], vec![]),
            )
            .await
            .unwrap();
        assert!(matches!(bad, Response::Err(_)));
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
        srv.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
