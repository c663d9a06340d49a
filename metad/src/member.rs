//! A member's data directory and its lifecycle: `init` (first member and
//! cluster secret), `join` (record an identity given by the cluster) and
//! `run` (serve).
//!
//! Layout: `DIR/member.json` (id, listen and advertised addresses, the
//! members known when joining), `DIR/secret` (hex, mode 0600), `DIR/db`
//! (RocksDB).

use crate::auth::{AuthError, Secret};
use crate::node::{NodeConfig, NodeError};
use crate::state::{Batch, State, DEFAULT_HISTORY};
use crate::storage::{RaftStorage, StorageErr};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors of member lifecycle operations.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// A file of the data directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `member.json` is invalid.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The directory already holds a member.
    #[error("{0} already holds a member (member.json exists)")]
    Exists(PathBuf),
    /// The directory holds no member.
    #[error("{0} holds no member: run `metad init` or `metad join` first")]
    Missing(PathBuf),
    /// The secret.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The database.
    #[error(transparent)]
    Storage(#[from] StorageErr),
    /// The Raft loop.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// The identity of a member, `DIR/member.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberFile {
    /// Member id.
    pub id: u64,
    /// Address to listen on (e.g. `0.0.0.0:2380`).
    pub listen: String,
    /// Address the others reach this member at (e.g. `node2:2380`).
    pub advertise: String,
    /// Members known when this one joined (id → address).
    #[serde(default)]
    pub peers: BTreeMap<u64, String>,
}

/// Paths of a data directory.
pub struct DataDir(PathBuf);

impl DataDir {
    /// The data directory at `p`.
    pub fn new(p: &Path) -> DataDir {
        DataDir(p.to_path_buf())
    }

    /// `DIR/secret`.
    pub fn secret_path(&self) -> PathBuf {
        self.0.join("secret")
    }

    /// Whether the directory already holds a member.
    pub fn holds_member(&self) -> bool {
        self.member_path().exists()
    }

    fn member_path(&self) -> PathBuf {
        self.0.join("member.json")
    }

    fn db_path(&self) -> PathBuf {
        self.0.join("db")
    }

    fn io(&self, path: PathBuf) -> impl FnOnce(std::io::Error) -> MemberError {
        move |source| MemberError::Io { path, source }
    }

    fn create(&self) -> Result<(), MemberError> {
        std::fs::create_dir_all(&self.0).map_err(self.io(self.0.clone()))?;
        if self.holds_member() {
            return Err(MemberError::Exists(self.0.clone()));
        }
        Ok(())
    }

    /// Reads `member.json`.
    pub fn member(&self) -> Result<MemberFile, MemberError> {
        let p = self.member_path();
        if !p.exists() {
            return Err(MemberError::Missing(self.0.clone()));
        }
        let s = std::fs::read_to_string(&p).map_err(self.io(p.clone()))?;
        serde_json::from_str(&s).map_err(|source| MemberError::Json { path: p, source })
    }

    fn write_member(&self, m: &MemberFile) -> Result<(), MemberError> {
        let p = self.member_path();
        let s = serde_json::to_string_pretty(m).expect("a MemberFile serializes");
        std::fs::write(&p, s).map_err(self.io(p))
    }

    /// Creates member 1 of a new cluster and a new cluster secret.
    pub fn init(&self, listen: &str, advertise: &str) -> Result<MemberFile, MemberError> {
        self.create()?;
        Secret::generate().save(&self.secret_path())?;
        let mut storage = RaftStorage::open(&self.db_path())?;
        let mut state = State::new(DEFAULT_HISTORY);
        let mut b = Batch::default();
        state.set_member(1, Some(advertise.to_string()), &mut b);
        state.set_applied(1, 1, &mut b);
        storage.bootstrap(1, &state)?;
        let m = MemberFile {
            id: 1,
            listen: listen.into(),
            advertise: advertise.into(),
            peers: BTreeMap::new(),
        };
        self.write_member(&m)?;
        Ok(m)
    }

    /// Records the identity the cluster gave this member when it was added
    /// (see [`crate::client::Client::member_add`]) and copies the secret.
    pub fn record_join(&self, m: &MemberFile, secret: &Secret) -> Result<(), MemberError> {
        self.create()?;
        if !self.secret_path().exists() {
            secret.save(&self.secret_path())?;
        }
        RaftStorage::open(&self.db_path())?;
        self.write_member(m)
    }

    /// The member's state machine as it is on disk, read while the member
    /// is stopped (RocksDB's lock refuses it while `run` holds the
    /// database): what this very member holds, not what a quorum answers.
    pub fn offline_state(&self) -> Result<State, MemberError> {
        self.member()?;
        let storage = RaftStorage::open(&self.db_path())?;
        Ok(storage.load_state(crate::state::DEFAULT_HISTORY)?)
    }

    /// Serves until the member is removed or its disk fails, holding at
    /// most `max_connections` connections open.
    pub async fn run(
        &self,
        snapshot_interval: u64,
        history: usize,
        max_connections: usize,
    ) -> Result<(), MemberError> {
        let m = self.member()?;
        let secret = Secret::load(&self.secret_path())?;
        let storage = RaftStorage::open(&self.db_path())?;
        let state = storage.load_state(history)?;
        let mut cfg = NodeConfig::new(m.id);
        cfg.snapshot_interval = snapshot_interval;
        cfg.bootstrap_peers = m.peers.clone();
        let listener = tokio::net::TcpListener::bind(&m.listen)
            .await
            .map_err(self.io(PathBuf::from(&m.listen)))?;
        tracing::info!(id = m.id, listen = %m.listen, advertise = %m.advertise, applied = state.meta().applied_index, "metad member starting");
        let (node, raft) = crate::node::start(
            cfg,
            storage,
            state,
            secret.clone(),
            tokio::runtime::Handle::current(),
        )?;
        let server = tokio::spawn(crate::server::serve(
            listener,
            node,
            secret,
            max_connections,
        ));
        let result = tokio::task::spawn_blocking(move || raft.join()).await;
        // Removed from the cluster: let the answer to the removal and the
        // last messages go out before the connections close.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        server.abort();
        match result {
            Ok(Ok(r)) => r.map_err(MemberError::from),
            _ => Err(
                NodeError::Raft(raft::Error::Store(raft::StorageError::Other(
                    "the raft thread panicked".into(),
                )))
                .into(),
            ),
        }
    }
}
