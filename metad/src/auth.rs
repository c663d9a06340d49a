//! Mutual challenge-response authentication with the cluster secret.
//!
//! The connecting side sends a [`Hello`] with a random nonce, its role and
//! member id; the accepting side answers with its own nonce and a proof; the
//! connecting side checks it and sends its proof; the accepting side checks
//! that (and, for a peer, that the member is known) and sends a
//! [`Verdict`]. A proof is the BLAKE3 keyed hash, keyed with the 32-byte
//! secret, of a context string, the side, both nonces, the role and the
//! member id, so a proof cannot be replayed on another connection or passed
//! off for the other side.
//!
//! Both sides then derive a [`Session`]: one key per direction, the keyed
//! hash of another context string, the direction and the same handshake
//! values. Every later frame is sealed with it ([`crate::protocol::Sealer`]):
//! a frame injected into the established TCP stream, replayed from another
//! connection, dropped or reordered fails its tag and ends the connection.

use crate::protocol::{read_msg, write_msg, FrameError, Opener, Sealer, MAX_HANDSHAKE_FRAME};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

const CONTEXT: &[u8] = b"metad auth v1";
const SESSION_CONTEXT: &[u8] = b"metad session v1";

/// Time a new connection has to authenticate: until then it is nobody,
/// and holds one of the accepting side's connection places.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of authentication and of secret files.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The secret file could not be read or written.
    #[error("secret file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The secret file does not hold 64 hex digits.
    #[error("secret file {0}: not 64 hex digits")]
    BadSecret(String),
    /// The frames of the handshake failed.
    #[error("handshake: {0}")]
    Frame(#[from] FrameError),
    /// The other side's proof is wrong: it does not hold the secret.
    #[error("authentication failed: the other side does not prove the cluster secret")]
    BadProof,
    /// The accepting side refused us.
    #[error("refused: {0}")]
    Refused(String),
    /// The connecting side did not authenticate in time.
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
}

/// The 32-byte cluster secret.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A fresh random secret.
    pub fn generate() -> Secret {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        Secret(b)
    }

    /// A secret from its 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> Secret {
        Secret(b)
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Option<Secret> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; 32];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Secret(b))
    }

    /// Reads a secret file (hex).
    pub fn load(path: &Path) -> Result<Secret, AuthError> {
        let p = path.display().to_string();
        let s = std::fs::read_to_string(path).map_err(|source| AuthError::File {
            path: p.clone(),
            source,
        })?;
        Secret::from_hex(&s).ok_or(AuthError::BadSecret(p))
    }

    /// Writes the secret as hex to a new file of mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        let err = |source| AuthError::File {
            path: p.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        writeln!(f, "{}", self.to_hex()).map_err(err)
    }

    fn proof(&self, side: &[u8], h: &Hello, server_nonce: &[u8; 32]) -> [u8; 32] {
        self.bound(CONTEXT, side, h, server_nonce)
    }

    /// The session of a handshake, as seen by the connecting side
    /// (`connecting`) or the accepting side.
    fn session(&self, h: &Hello, server_nonce: &[u8; 32], connecting: bool) -> Session {
        let up = self.bound(SESSION_CONTEXT, b"to server", h, server_nonce);
        let down = self.bound(SESSION_CONTEXT, b"to client", h, server_nonce);
        let (send, recv) = if connecting { (up, down) } else { (down, up) };
        Session {
            send: Sealer::new(send),
            recv: Opener::new(recv),
        }
    }

    /// The keyed hash of `context` and `side` bound to one handshake.
    fn bound(&self, context: &[u8], side: &[u8], h: &Hello, server_nonce: &[u8; 32]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(context);
        hasher.update(side);
        hasher.update(&h.nonce);
        hasher.update(server_nonce);
        hasher.update(&[h.role as u8]);
        hasher.update(&h.member_id.to_be_bytes());
        *hasher.finalize().as_bytes()
    }
}

fn nonce() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

/// The two directions of an authenticated connection: frames written
/// with `send`, read with `recv`. Split with the stream when its halves
/// go to different tasks.
pub struct Session {
    /// Seals this side's frames.
    pub send: Sealer,
    /// Checks the other side's frames.
    pub recv: Opener,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

/// What the connecting side is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A client; its frames are [`crate::protocol::Request`]s.
    Client = 1,
    /// A member; its frames are Raft messages.
    Peer = 2,
}

/// First message of the connecting side.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Random nonce.
    pub nonce: [u8; 32],
    /// Client or peer.
    pub role: Role,
    /// The peer's member id (0 for a client).
    pub member_id: u64,
}

#[derive(Serialize, Deserialize)]
struct Challenge {
    nonce: [u8; 32],
    proof: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct Proof {
    proof: [u8; 32],
}

/// Last message of the accepting side.
#[derive(Debug, Serialize, Deserialize)]
pub enum Verdict {
    /// Authenticated.
    Welcome,
    /// Refused, with the reason.
    Refused(String),
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // constant time: blake3::Hash's equality is.
    blake3::Hash::from(*a) == blake3::Hash::from(*b)
}

/// Runs the connecting side of the handshake; the session to seal the
/// connection's frames with.
pub async fn connect_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &Secret,
    role: Role,
    member_id: u64,
) -> Result<Session, AuthError> {
    let hello = Hello {
        nonce: nonce(),
        role,
        member_id,
    };
    write_msg(s, &hello).await?;
    let ch: Challenge = read_msg(s, MAX_HANDSHAKE_FRAME).await?;
    if !same(&ch.proof, &secret.proof(b"server", &hello, &ch.nonce)) {
        return Err(AuthError::BadProof);
    }
    write_msg(
        s,
        &Proof {
            proof: secret.proof(b"client", &hello, &ch.nonce),
        },
    )
    .await?;
    match read_msg(s, MAX_HANDSHAKE_FRAME).await? {
        Verdict::Welcome => Ok(secret.session(&hello, &ch.nonce, true)),
        Verdict::Refused(why) => Err(AuthError::Refused(why)),
    }
}

/// Runs the accepting side of the handshake; `known_peer` says whether a
/// member id may connect as a peer. Returns the authenticated [`Hello`]
/// and the session to seal the connection's frames with.
pub async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &Secret,
    known_peer: impl FnOnce(u64) -> bool,
) -> Result<(Hello, Session), AuthError> {
    let hello: Hello = read_msg(s, MAX_HANDSHAKE_FRAME).await?;
    let server_nonce = nonce();
    let proof = secret.proof(b"server", &hello, &server_nonce);
    write_msg(
        s,
        &Challenge {
            nonce: server_nonce,
            proof,
        },
    )
    .await?;
    let p: Proof = read_msg(s, MAX_HANDSHAKE_FRAME).await?;
    let refusal = if !same(&p.proof, &secret.proof(b"client", &hello, &server_nonce)) {
        Some(AuthError::BadProof)
    } else if hello.role == Role::Peer && !known_peer(hello.member_id) {
        Some(AuthError::Refused(format!(
            "member {} is not a member of this cluster",
            hello.member_id
        )))
    } else {
        None
    };
    match refusal {
        Some(e) => {
            let _ = write_msg(s, &Verdict::Refused(e.to_string())).await;
            Err(e)
        }
        None => {
            write_msg(s, &Verdict::Welcome).await?;
            let session = secret.session(&hello, &server_nonce, false);
            Ok((hello, session))
        }
    }
}

/// [`accept_handshake`] within [`HANDSHAKE_TIMEOUT`]: what every
/// listening side of the grid runs first on a new connection, so that a
/// connection that sends nothing, or too little, is closed.
pub async fn accept_within<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &Secret,
    known_peer: impl FnOnce(u64) -> bool,
) -> Result<(Hello, Session), AuthError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_handshake(s, secret, known_peer))
        .await
        .unwrap_or(Err(AuthError::Timeout(HANDSHAKE_TIMEOUT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        server_secret: Secret,
        client_secret: Secret,
        role: Role,
    ) -> (
        Result<(Hello, Session), AuthError>,
        Result<Session, AuthError>,
    ) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let server =
            tokio::spawn(
                async move { accept_handshake(&mut a, &server_secret, |id| id == 2).await },
            );
        let client = connect_handshake(&mut b, &client_secret, role, 3).await;
        drop(b);
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn handshake_accepts_the_secret_and_refuses_others() {
        let s = Secret::generate();
        let (srv, cli) = pair(s.clone(), s.clone(), Role::Client).await;
        assert!(srv.is_ok() && cli.is_ok());
        let (srv, cli) = pair(s.clone(), Secret::generate(), Role::Client).await;
        assert!(srv.is_err() && matches!(cli, Err(AuthError::BadProof)));
        let (srv, cli) = pair(s.clone(), s.clone(), Role::Peer).await;
        assert!(srv.is_err() && matches!(cli, Err(AuthError::Refused(_))));
        assert_eq!(Secret::from_hex(&s.to_hex()).unwrap().0, s.0);
    }

    #[tokio::test]
    async fn a_first_frame_longer_than_a_handshake_is_refused_unread() {
        use tokio::io::AsyncWriteExt;
        // Before the handshake the other side is nobody: a frame header
        // claiming 8 MiB must not be waited for (nor allocated).
        let (mut a, mut b) = tokio::io::duplex(4096);
        b.write_u32(8 << 20).await.unwrap();
        drop(b);
        let r = accept_handshake(&mut a, &Secret::generate(), |_| true).await;
        assert!(
            matches!(r, Err(AuthError::Frame(FrameError::TooLarge { .. }))),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn sealed_frames_pass_and_tampered_ones_fail() {
        use crate::protocol::{write_frame, FrameError};
        let s = Secret::generate();
        let (srv, cli) = pair(s.clone(), s.clone(), Role::Client).await;
        let (_, mut server) = srv.unwrap();
        let mut client = cli.unwrap();
        let refused = |r: Result<Vec<u8>, FrameError>| matches!(r, Err(FrameError::BadTag));
        // Each direction opens what the other sealed, in order.
        let mut frames = Vec::new();
        for p in [&b"one"[..], b"two", b""] {
            let mut f = Vec::new();
            client.send.write(&mut f, p).await.unwrap();
            frames.push(f);
        }
        for (f, p) in frames.iter().zip([&b"one"[..], b"two", b""]) {
            assert_eq!(server.recv.read(&mut f.as_slice(), 64).await.unwrap(), p);
        }
        let mut back = Vec::new();
        server.send.write(&mut back, b"answer").await.unwrap();
        assert_eq!(
            client.recv.read(&mut back.as_slice(), 64).await.unwrap(),
            b"answer"
        );
        let mut next = Vec::new();
        client.send.write(&mut next, b"four").await.unwrap();
        // A replayed frame, one sealed for the other direction, a changed
        // byte, a frame injected without a tag: all refused.
        assert!(refused(
            server.recv.read(&mut frames[0].as_slice(), 64).await
        ));
        let mut other_way = Vec::new();
        server.send.write(&mut other_way, b"four").await.unwrap();
        assert!(refused(
            server.recv.read(&mut other_way.as_slice(), 64).await
        ));
        let mut bent = next.clone();
        bent[5] ^= 1;
        assert!(refused(server.recv.read(&mut bent.as_slice(), 64).await));
        let mut injected = Vec::new();
        write_frame(&mut injected, &[0u8; 20]).await.unwrap();
        assert!(refused(
            server.recv.read(&mut injected.as_slice(), 64).await
        ));
        // The genuine next frame still opens: a refusal consumes nothing.
        assert_eq!(
            server.recv.read(&mut next.as_slice(), 64).await.unwrap(),
            b"four"
        );
    }
}
