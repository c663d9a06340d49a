//! The model as one node's datapath looks things up: built from a read of
//! every key under `lcm/`, replaced whole on every change (the datapath
//! holds an `Arc` to one version and never sees half an update).

use crate::model::{self, Appliance, Application, Connection, NodeRecord};
use metad::KeyValue;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// An application with its tunnel key.
#[derive(Debug, Clone)]
pub struct AppView {
    /// The record.
    pub app: Application,
    /// Its tunnel key, once stored.
    pub key: Option<[u8; 32]>,
}

/// Everything the datapath looks up.
#[derive(Debug, Default, Clone)]
pub struct Topology {
    /// Applications by name.
    pub apps: HashMap<String, AppView>,
    /// Application names by tunnel id.
    pub app_by_id: HashMap<u64, String>,
    /// Appliances by (application, name).
    pub appliances: HashMap<(String, String), Appliance>,
    /// Appliance names by (application, address).
    pub by_ip: HashMap<(String, Ipv4Addr), String>,
    /// Connections by application.
    pub connections: HashMap<String, Vec<Connection>>,
    /// Nodes by name.
    pub nodes: HashMap<String, NodeRecord>,
    /// Node names by tunnel id.
    pub node_by_id: HashMap<u64, String>,
}

/// Parses a 64-hex-digit key.
pub fn parse_key(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

impl Topology {
    /// Builds the view from the keys under `lcm/`; records that do not
    /// parse are skipped and returned as messages.
    pub fn from_kvs(kvs: &[KeyValue]) -> (Topology, Vec<String>) {
        let mut t = Topology::default();
        let mut errors = Vec::new();
        let mut keys = HashMap::new();
        for kv in kvs {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let parts: Vec<&str> = key.splitn(3, '/').collect();
            let what = parts.get(1).copied().unwrap_or("");
            let res: Result<(), String> = (|| {
                match what {
                    "apps" => {
                        let a: Application =
                            serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
                        t.app_by_id.insert(model::app_id(&a.name), a.name.clone());
                        t.apps.insert(a.name.clone(), AppView { app: a, key: None });
                    }
                    "appliances" => {
                        let a: Appliance =
                            serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
                        t.by_ip.insert((a.app.clone(), a.ip), a.name.clone());
                        t.appliances.insert((a.app.clone(), a.name.clone()), a);
                    }
                    "connections" => {
                        let c: Connection =
                            serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
                        t.connections.entry(c.app.clone()).or_default().push(c);
                    }
                    "keys" => {
                        let app = parts.get(2).copied().unwrap_or("").to_string();
                        let k = parse_key(&String::from_utf8_lossy(&kv.value)).ok_or("bad key")?;
                        keys.insert(app, k);
                    }
                    "nodes" => {
                        let n: NodeRecord =
                            serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
                        t.node_by_id.insert(model::node_id(&n.name), n.name.clone());
                        t.nodes.insert(n.name.clone(), n);
                    }
                    _ => {}
                }
                Ok(())
            })();
            if let Err(e) = res {
                errors.push(format!("{key}: {e}"));
            }
        }
        for (app, k) in keys {
            if let Some(a) = t.apps.get_mut(&app) {
                a.key = Some(k);
            }
        }
        (t, errors)
    }

    /// The appliances whose TAPs `node` holds.
    pub fn local<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Appliance> + 'a {
        self.appliances.values().filter(move |a| a.node == node)
    }

    /// The appliance of `app` at `ip`.
    pub fn at(&self, app: &str, ip: Ipv4Addr) -> Option<&Appliance> {
        let name = self.by_ip.get(&(app.to_string(), ip))?;
        self.appliances.get(&(app.to_string(), name.clone()))
    }

    /// An appliance by name.
    pub fn appliance(&self, app: &str, name: &str) -> Option<&Appliance> {
        self.appliances.get(&(app.to_string(), name.to_string()))
    }

    /// The connections of `app`.
    pub fn connections(&self, app: &str) -> &[Connection] {
        self.connections.get(app).map_or(&[], |v| v.as_slice())
    }

    /// Whether `c` is still declared.
    pub fn has_connection(&self, c: &Connection) -> bool {
        self.connections(&c.app).iter().any(|x| x == c)
    }

    /// What `name` resolves to inside appliance `a`: the address of the
    /// peer at the other end of `a`'s output terminal `name`.
    pub fn resolve(&self, a: &Appliance, name: &str) -> Option<Ipv4Addr> {
        let c = self
            .connections(&a.app)
            .iter()
            .find(|c| c.from.appliance == a.name && c.from.terminal == name)?;
        Some(self.appliance(&a.app, &c.to.appliance)?.ip)
    }
}
