//! Reading and writing the LCM model, events and statistics in metad: the
//! library API the CLI, tests and vmctl (which declares its applications'
//! VM appliances here) use.

use crate::events::SecurityEvent;
use crate::model::{self, AppSpec, Appliance, Connection, ModelError, NodeRecord, Resolved};
use crate::stats::{ConnStats, NodeStats};
use metad::events::{self, GridEvent, Source};
use metad::{Client, ClientConfig, ClientError, Op, Secret, Txn};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// metad failed.
    #[error("metad: {0}")]
    Metad(#[from] ClientError),
    /// The cluster secret could not be read.
    #[error("secret: {0}")]
    Secret(String),
    /// A declaration is invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A record does not exist.
    #[error("no such {0}")]
    NotFound(String),
    /// A stored record does not parse.
    #[error("corrupt record {key}: {why}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        why: String,
    },
}

/// The model in metad.
pub struct Store {
    /// The metad client (shared: vmctl hands its own in).
    pub client: Arc<Client>,
}

/// One row of `lcmd conn list`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnRow {
    /// `app/from->to`.
    pub id: String,
    /// The connection.
    #[serde(flatten)]
    pub conn: Connection,
    /// Counters summed over nodes.
    #[serde(flatten)]
    pub stats: ConnStats,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("model serializes")
}

impl Store {
    /// Connects to metad at `endpoints` with the secret in `secret_file`.
    pub fn connect(endpoints: Vec<String>, secret_file: &Path) -> Result<Store, StoreError> {
        let secret = Secret::load(secret_file).map_err(|e| StoreError::Secret(e.to_string()))?;
        Ok(Store {
            client: Arc::new(Client::new(ClientConfig::new(endpoints, secret))),
        })
    }

    /// Declares (or redeclares) an application: its record, appliances and
    /// connections in one transaction; a tunnel key is made on first apply.
    /// Appliances and connections no longer declared are removed.
    pub async fn apply(&self, spec: &AppSpec) -> Result<Resolved, StoreError> {
        let r = spec.resolve()?;
        let app = &r.app.name;
        let mut ops = Vec::new();
        let mut keep = BTreeSet::new();
        ops.push(Op::Put {
            key: model::app_key(app).into(),
            value: json(&r.app),
            lease: 0,
        });
        for a in &r.appliances {
            let k = model::appliance_key(app, &a.name);
            keep.insert(k.clone());
            ops.push(Op::Put {
                key: k.into(),
                value: json(a),
                lease: 0,
            });
        }
        for c in &r.connections {
            let k = model::connection_key(app, c);
            keep.insert(k.clone());
            ops.push(Op::Put {
                key: k.into(),
                value: json(c),
                lease: 0,
            });
        }
        for p in [
            model::appliances_prefix(app),
            model::connections_prefix(app),
        ] {
            for kv in self.client.get_prefix(p).await?.0 {
                if !keep.contains(&*String::from_utf8_lossy(&kv.key)) {
                    ops.push(Op::Delete { key: kv.key });
                }
            }
        }
        if self.client.get(model::tunnel_key_key(app)).await?.is_none() {
            let key: [u8; 32] = rand::random();
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            ops.push(Op::Put {
                key: model::tunnel_key_key(app).into(),
                value: hex.into(),
                lease: 0,
            });
        }
        self.client
            .txn(Txn {
                success: ops,
                ..Txn::default()
            })
            .await?;
        Ok(r)
    }

    /// Removes an application and everything of it.
    pub async fn delete_app(&self, app: &str) -> Result<(), StoreError> {
        let ops = vec![
            Op::Delete {
                key: model::app_key(app).into(),
            },
            Op::Delete {
                key: model::tunnel_key_key(app).into(),
            },
            Op::DeletePrefix {
                prefix: model::appliances_prefix(app).into(),
            },
            Op::DeletePrefix {
                prefix: model::connections_prefix(app).into(),
            },
        ];
        self.client
            .txn(Txn {
                success: ops,
                ..Txn::default()
            })
            .await?;
        Ok(())
    }

    /// Every appliance, in key order.
    pub async fn appliances(&self) -> Result<Vec<Appliance>, StoreError> {
        let kvs = self.client.get_prefix("lcm/appliances/").await?.0;
        kvs.iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&kv.key).into(),
                    why: e.to_string(),
                })
            })
            .collect()
    }

    /// Moves an appliance to another node: its NIC and tunnels follow (no
    /// write when it is there already, so repeating it costs no reload).
    pub async fn move_appliance(
        &self,
        app: &str,
        name: &str,
        node: &str,
    ) -> Result<Appliance, StoreError> {
        let key = model::appliance_key(app, name);
        let kv = self
            .client
            .get(key.clone())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("appliance {app}/{name}")))?;
        let mut a: Appliance =
            serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
                key: key.clone(),
                why: e.to_string(),
            })?;
        if a.node != node {
            a.node = node.into();
            self.client.put(key, json(&a)).await?;
        }
        Ok(a)
    }

    /// Records where a node's lcmd receives tunnel packets.
    pub async fn register_node(&self, n: &NodeRecord) -> Result<(), StoreError> {
        self.client.put(model::node_key(&n.name), json(n)).await?;
        Ok(())
    }

    /// The stored high-water mark of a node's tunnel sequence numbers.
    pub async fn seq_mark(&self, node: &str) -> Result<Option<u64>, StoreError> {
        let key = model::seq_mark_key(node);
        let Some(kv) = self.client.get(key.clone()).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key,
                why: e.to_string(),
            })
    }

    /// Stores the high-water mark of a node's tunnel sequence numbers.
    pub async fn put_seq_mark(&self, node: &str, mark: u64) -> Result<(), StoreError> {
        self.client
            .put(model::seq_mark_key(node), json(&mark))
            .await?;
        Ok(())
    }

    /// Appends a security event to the grid's event log.
    pub async fn put_event(&self, ev: &SecurityEvent) -> Result<(), StoreError> {
        events::append(&self.client, &ev.to_event()).await?;
        Ok(())
    }

    /// The security events in the grid's event log (LCM's drops).
    pub async fn events(&self) -> Result<Vec<GridEvent>, StoreError> {
        let (evs, _) = events::list(&self.client).await?;
        Ok(evs
            .into_iter()
            .filter(|e| e.source == Source::Lcm)
            .collect())
    }

    /// Publishes a node's statistics.
    pub async fn put_stats(&self, s: &NodeStats) -> Result<(), StoreError> {
        self.client.put(model::stats_key(&s.node), json(s)).await?;
        Ok(())
    }

    /// Every node's statistics.
    pub async fn node_stats(&self) -> Result<Vec<NodeStats>, StoreError> {
        let kvs = self.client.get_prefix(model::STATS_PREFIX).await?.0;
        Ok(kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }

    /// Every connection with its counters summed over nodes.
    pub async fn connections(&self) -> Result<Vec<ConnRow>, StoreError> {
        let kvs = self.client.get_prefix("lcm/connections/").await?.0;
        let stats = self.node_stats().await?;
        let mut rows = Vec::new();
        for kv in kvs {
            let conn: Connection =
                serde_json::from_slice(&kv.value).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&kv.key).into(),
                    why: e.to_string(),
                })?;
            let id = conn.id();
            let mut s = ConnStats::default();
            for n in &stats {
                if let Some(c) = n.conns.get(&id) {
                    s.add(c);
                }
            }
            rows.push(ConnRow { id, conn, stats: s });
        }
        Ok(rows)
    }
}
