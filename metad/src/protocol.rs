//! The wire protocol: length-prefixed frames (u32 big-endian length, then
//! the payload) and the client request/response types (postcard-encoded).
//! Peer connections carry `eraftpb::Message` bytes in the same frames.

use crate::state::{Event, KeyValue, StateError, Txn, TxnResult};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted from an authenticated client.
pub const MAX_CLIENT_FRAME: usize = 8 * 1024 * 1024;
/// Largest frame of the handshake ([`crate::auth`]): its messages are a
/// few dozen bytes (a refusal's reason a few hundred), and before the
/// handshake the other side is nobody, so it gets no more than that.
pub const MAX_HANDSHAKE_FRAME: usize = 1024;
/// Largest frame accepted from an authenticated peer (snapshots can be big).
pub const MAX_PEER_FRAME: usize = 256 * 1024 * 1024;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A length over the limit.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A payload that does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A sealed frame whose tag does not verify: changed, injected,
    /// replayed, dropped or reordered on the way.
    #[error("frame authentication failed (tampered, injected or out of order)")]
    BadTag,
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = r.read_u32().await? as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    w.write_u32(len).await?;
    w.write_all(payload).await?;
    Ok(())
}

/// Bytes of a sealed frame's tag.
pub const TAG: usize = 16;

/// The tag of the `seq`-th frame of a direction.
fn tag(key: &[u8; 32], seq: u64, payload: &[u8]) -> [u8; TAG] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(&seq.to_le_bytes());
    h.update(payload);
    let mut t = [0u8; TAG];
    t.copy_from_slice(&h.finalize().as_bytes()[..TAG]);
    t
}

/// Writes the frames of one direction of an authenticated connection:
/// each carries a tag, the BLAKE3 keyed hash (under the direction's
/// session key, see [`crate::auth`]) of its sequence number and payload.
pub struct Sealer {
    key: [u8; 32],
    seq: u64,
}

impl Sealer {
    /// The sealer of the direction with session key `key`.
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer { key, seq: 0 }
    }

    /// Writes one sealed frame (not flushed).
    pub async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        payload: &[u8],
    ) -> Result<(), FrameError> {
        let t = tag(&self.key, self.seq, payload);
        self.seq += 1;
        let len = u32::try_from(payload.len() + TAG).map_err(|_| FrameError::TooLarge {
            len: payload.len(),
            max: u32::MAX as usize - TAG,
        })?;
        w.write_u32(len).await?;
        w.write_all(payload).await?;
        w.write_all(&t).await?;
        Ok(())
    }
}

/// Reads the frames of one direction of an authenticated connection and
/// checks their tags, so that a frame injected into the TCP stream, or
/// replayed, dropped or reordered, ends the connection instead of being
/// acted on.
pub struct Opener {
    key: [u8; 32],
    seq: u64,
}

impl Opener {
    /// The opener of the direction with session key `key`.
    pub fn new(key: [u8; 32]) -> Opener {
        Opener { key, seq: 0 }
    }

    /// Reads one sealed frame of at most `max` payload bytes; its payload.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> Result<Vec<u8>, FrameError> {
        let mut buf = read_frame(r, max + TAG).await?;
        if buf.len() < TAG {
            return Err(FrameError::BadTag);
        }
        let at = buf.len() - TAG;
        let want = tag(&self.key, self.seq, &buf[..at]);
        // Constant-time comparison, as for the handshake's proofs.
        let mut got = [0u8; 32];
        let mut exp = [0u8; 32];
        got[..TAG].copy_from_slice(&buf[at..]);
        exp[..TAG].copy_from_slice(&want);
        if blake3::Hash::from(got) != blake3::Hash::from(exp) {
            return Err(FrameError::BadTag);
        }
        self.seq += 1;
        buf.truncate(at);
        Ok(buf)
    }
}

/// Encodes a serde value as a frame payload.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("serializing to a Vec cannot fail")
}

/// Decodes a frame payload.
pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, FrameError> {
    postcard::from_bytes(b).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads and decodes one frame.
pub async fn read_msg<R: AsyncRead + Unpin, T: for<'a> Deserialize<'a>>(
    r: &mut R,
    max: usize,
) -> Result<T, FrameError> {
    decode(&read_frame(r, max).await?)
}

/// Encodes, writes and flushes one frame.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> Result<(), FrameError> {
    write_frame(w, &encode(v)).await?;
    w.flush().await?;
    Ok(())
}

/// A client request; `id` pairs it with its response(s).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, unique on its connection.
    pub id: u64,
    /// What is asked.
    pub body: RequestBody,
}

/// What a client can ask.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RequestBody {
    /// Linearizable read of one key.
    Get {
        /// Key read.
        key: Vec<u8>,
    },
    /// Linearizable read of the keys under a prefix (`limit` 0: all).
    Range {
        /// Prefix.
        prefix: Vec<u8>,
        /// Most keys returned.
        limit: u32,
    },
    /// A transaction (a put or delete is one without compares).
    Txn(Txn),
    /// Stream the events under `prefix` from revision `from_rev` (0: from
    /// now on); answered by many [`ResponseBody::Events`].
    Watch {
        /// Prefix watched.
        prefix: Vec<u8>,
        /// First revision wanted.
        from_rev: u64,
    },
    /// Create a lease.
    LeaseGrant {
        /// Time to live in milliseconds.
        ttl_ms: u64,
    },
    /// Renew a lease for its full TTL.
    LeaseKeepAlive {
        /// Lease id.
        id: u64,
    },
    /// Delete a lease and its keys.
    LeaseRevoke {
        /// Lease id.
        id: u64,
    },
    /// This member's view of the cluster.
    Status,
    /// Add a member (Raft configuration change); the cluster picks its id.
    MemberAdd {
        /// Address where the new member will be reachable by every member.
        addr: String,
    },
    /// Remove a member (Raft configuration change).
    MemberRemove {
        /// Member id.
        id: u64,
    },
}

/// A response to the request with the same id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Id of the request answered (0: the connection as a whole).
    pub id: u64,
    /// The answer.
    pub body: ResponseBody,
}

/// The answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ResponseBody {
    /// Keys read, at store revision `revision`.
    Kvs {
        /// Keys found.
        kvs: Vec<KeyValue>,
        /// Store revision of the read.
        revision: u64,
    },
    /// Outcome of a transaction.
    Txn(TxnResult),
    /// Events of a watch, in revision order.
    Events(Vec<Event>),
    /// A lease granted or renewed.
    Lease {
        /// Lease id.
        id: u64,
        /// TTL in milliseconds.
        ttl_ms: u64,
    },
    /// A lease revoked.
    Revoked {
        /// Store revision afterwards.
        revision: u64,
    },
    /// Member status.
    Status(MemberStatus),
    /// Membership after a change.
    Members {
        /// Id of the member added (or removed).
        id: u64,
        /// Member id → address, after the change.
        members: Vec<(u64, String)>,
    },
    /// The request failed.
    Error(ErrorReply),
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorReply {
    /// This member is not the leader; retry at the leader if one is known.
    /// The request was not applied.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Leader id and address, if known.
        leader: Option<(u64, String)>,
    },
    /// The state machine refused the request; it was not applied.
    #[error(transparent)]
    State(#[from] StateError),
    /// The request was proposed but its outcome is unknown (leader change or
    /// timeout).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// A configuration change is already under way; retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The frame or request was malformed; the connection is closed.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// One member's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// This member's id.
    pub id: u64,
    /// Leader id as known here (0: none).
    pub leader: u64,
    /// Raft term.
    pub term: u64,
    /// Raft role: Leader, Follower, Candidate or PreCandidate.
    pub role: String,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Store revision.
    pub revision: u64,
    /// Member id → address, from the state machine.
    pub members: Vec<(u64, String)>,
    /// Voters of the current Raft configuration.
    pub voters: Vec<u64>,
}
