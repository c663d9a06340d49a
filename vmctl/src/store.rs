//! DVM's access to metad: JSON records under `dvm/`, compare-and-swap on
//! their revisions, and DVM's events (in the grid's one log,
//! [`metad::events`]). Shared by the CLI, the agent and the
//! scheduler.

use metad::events::{self, GridEvent, Source};
use metad::{Client, ClientConfig, ClientError, Compare, CompareTarget, Op, Secret, Txn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Errors talking to metad.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// metad failed.
    #[error("metad: {0}")]
    Metad(#[from] ClientError),
    /// The cluster secret could not be read.
    #[error("cluster secret: {0}")]
    Secret(String),
    /// A stored record does not parse.
    #[error("corrupt record {key}: {why}")]
    Corrupt {
        /// Key.
        key: String,
        /// Why.
        why: String,
    },
}

/// A record and the revision it was read at (for compare-and-swap).
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Its `mod_rev`.
    pub rev: u64,
    /// The lease it is attached to (0: none).
    pub lease: u64,
}

/// The metad client with DVM's conveniences.
pub struct Store {
    /// The client (shared with lcmd's store, see [`crate::guest`]).
    pub client: Arc<Client>,
}

/// Serializes a record.
pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn parse<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        why: e.to_string(),
    })
}

/// A put of a JSON record.
pub fn put_op<T: Serialize>(key: &str, v: &T) -> Op {
    Op::Put {
        key: key.as_bytes().to_vec(),
        value: to_json(v),
        lease: 0,
    }
}

/// A compare: the key is still at `rev` (0: it does not exist).
pub fn at_rev(key: &str, rev: u64) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        target: if rev == 0 {
            CompareTarget::Exists(false)
        } else {
            CompareTarget::ModRev(rev)
        },
    }
}

impl Store {
    /// Connects to metad (lazily) with the given endpoints and secret file.
    pub fn connect(endpoints: Vec<String>, secret_file: &Path) -> Result<Store, StoreError> {
        let secret = Secret::load(secret_file).map_err(|e| StoreError::Secret(e.to_string()))?;
        let mut cfg = ClientConfig::new(endpoints, secret);
        cfg.timeout = Duration::from_secs(5);
        Ok(Store {
            client: Arc::new(Client::new(cfg)),
        })
    }

    /// One record.
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        match self.client.get(key).await? {
            None => Ok(None),
            Some(kv) => Ok(Some(Versioned {
                value: parse(&kv.key, &kv.value)?,
                rev: kv.mod_rev,
                lease: kv.lease,
            })),
        }
    }

    /// Every record under `prefix`, by the rest of its key; records that do
    /// not parse are skipped with a warning (one bad record must not stop
    /// the grid).
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, Versioned<T>)>, u64), StoreError> {
        let (kvs, rev) = self.client.get_prefix(prefix).await?;
        let mut out = Vec::new();
        for kv in kvs {
            let name = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            match parse::<T>(&kv.key, &kv.value) {
                Ok(v) => out.push((
                    name,
                    Versioned {
                        value: v,
                        rev: kv.mod_rev,
                        lease: kv.lease,
                    },
                )),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        Ok((out, rev))
    }

    /// Writes a record unconditionally.
    pub async fn put<T: Serialize>(&self, key: &str, v: &T) -> Result<(), StoreError> {
        self.client.put(key, to_json(v)).await?;
        Ok(())
    }

    /// Writes a record if it is still at `rev` (0: absent); whether it did.
    pub async fn cas<T: Serialize>(&self, key: &str, rev: u64, v: &T) -> Result<bool, StoreError> {
        let txn = Txn {
            compare: vec![at_rev(key, rev)],
            success: vec![put_op(key, v)],
            failure: vec![],
        };
        Ok(self.client.txn(txn).await?.succeeded)
    }

    /// Appends a DVM event to the grid's event log (best effort: an
    /// event lost to a metad outage is logged, never an error of the
    /// operation it reports).
    pub async fn event(&self, node: &str, kind: &str, subject: &str, message: impl Into<String>) {
        let ev = GridEvent::new(node, Source::Dvm, kind, subject, message);
        tracing::info!("event {kind} {subject}: {}", ev.message);
        if let Err(e) = events::append(&self.client, &ev).await {
            tracing::warn!("event not recorded: {e}");
        }
    }
}
