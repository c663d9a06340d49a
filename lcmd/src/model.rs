//! The LCM model as it is kept in metad: applications with their address
//! range, appliances with their terminals, connections between terminals,
//! per-application tunnel keys and the nodes' underlay addresses; and the
//! key layout under `lcm/` (security events go to the grid's event log,
//! `metad::events`).

use crate::bandwidth::Bandwidth;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Prefix of every key of the LCM model; lcmd watches it.
pub const PREFIX: &str = "lcm/";
/// Prefix of per-node statistics (under [`PREFIX`], but not model: ignored
/// by the watch so that statistics never cause a reload).
pub const STATS_PREFIX: &str = "lcm/stats/";
/// UDP port of the inter-node tunnels.
pub const TUNNEL_PORT: u16 = 2395;

/// Key of an application record.
pub fn app_key(app: &str) -> String {
    format!("lcm/apps/{app}")
}
/// Key of an appliance record.
pub fn appliance_key(app: &str, name: &str) -> String {
    format!("lcm/appliances/{app}/{name}")
}
/// Prefix of an application's appliances.
pub fn appliances_prefix(app: &str) -> String {
    format!("lcm/appliances/{app}/")
}
/// Key of a connection record.
pub fn connection_key(app: &str, c: &Connection) -> String {
    format!("lcm/connections/{app}/{}->{}", c.from, c.to)
}
/// Prefix of an application's connections.
pub fn connections_prefix(app: &str) -> String {
    format!("lcm/connections/{app}/")
}
/// Key of an application's tunnel key.
pub fn tunnel_key_key(app: &str) -> String {
    format!("lcm/keys/{app}")
}
/// Key of a node's underlay address.
pub fn node_key(node: &str) -> String {
    format!("lcm/nodes/{node}")
}
/// Key of the high-water mark of a node's tunnel sequence numbers (see
/// [`crate::tunnel::SeqSource`]); outside [`PREFIX`], which the daemons
/// watch for changes of the model.
pub fn seq_mark_key(node: &str) -> String {
    format!("lcm-seq/{node}")
}
/// Key of a node's statistics.
pub fn stats_key(node: &str) -> String {
    format!("{STATS_PREFIX}{node}")
}

/// Errors in a declaration (a spec file or a stored record).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A protocol string that is none of `tcp/PORT`, `udp/PORT`, `http`.
    #[error("bad protocol {0:?}: expected tcp/PORT, udp/PORT or http")]
    BadProtocol(String),
    /// A terminal reference that is not `appliance.terminal`.
    #[error("bad terminal {0:?}: expected APPLIANCE.TERMINAL")]
    BadTerminal(String),
    /// An address range that is not `a.b.c.d/len` with 8 ≤ len ≤ 30.
    #[error("bad address range {0:?}: expected a.b.c.d/LEN (8..=30)")]
    BadRange(String),
    /// A MAC address that is not six hex bytes.
    #[error("bad MAC address {0:?}")]
    BadMac(String),
    /// A name with characters that do not fit in a key.
    #[error("bad name {0:?}: use letters, digits, '-' and '_'")]
    BadName(String),
    /// A connection names an appliance or terminal that is not declared.
    #[error("connection {from} -> {to}: {why}")]
    BadConnection {
        /// Output terminal.
        from: String,
        /// Input terminal.
        to: String,
        /// What is wrong.
        why: String,
    },
    /// An address outside the range, or taken twice.
    #[error("appliance {0}: {1}")]
    BadAddress(String, String),
    /// A bandwidth whose `min` is above its `max`.
    #[error("appliance {0}: bw min is above bw max")]
    BadBandwidth(String),
    /// The spec file does not parse.
    #[error("spec: {0}")]
    Parse(String),
}

/// The protocol a connection admits; more checkers can be added as variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Protocol {
    /// TCP to this port.
    Tcp(u16),
    /// UDP to this port.
    Udp(u16),
    /// TCP to port 80 whose first client segment is a well-formed HTTP request.
    Http,
}

impl Protocol {
    /// IP protocol number and destination port this protocol admits.
    pub fn ip_proto_port(&self) -> (u8, u16) {
        match self {
            Protocol::Tcp(p) => (6, *p),
            Protocol::Udp(p) => (17, *p),
            Protocol::Http => (6, 80),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp(p) => write!(f, "tcp/{p}"),
            Protocol::Udp(p) => write!(f, "udp/{p}"),
            Protocol::Http => write!(f, "http"),
        }
    }
}

impl FromStr for Protocol {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::BadProtocol(s.to_string());
        if s == "http" {
            return Ok(Protocol::Http);
        }
        let (kind, port) = s.split_once('/').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        match kind {
            "tcp" => Ok(Protocol::Tcp(port)),
            "udp" => Ok(Protocol::Udp(port)),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Protocol {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        s.parse()
    }
}

impl From<Protocol> for String {
    fn from(p: Protocol) -> String {
        p.to_string()
    }
}

/// One end of a connection: `appliance.terminal`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TerminalRef {
    /// The appliance.
    pub appliance: String,
    /// Its terminal.
    pub terminal: String,
}

impl fmt::Display for TerminalRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.appliance, self.terminal)
    }
}

impl FromStr for TerminalRef {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let (a, t) = s
            .split_once('.')
            .ok_or_else(|| ModelError::BadTerminal(s.into()))?;
        check_name(a)
            .and(check_name(t))
            .map_err(|_| ModelError::BadTerminal(s.into()))?;
        Ok(TerminalRef {
            appliance: a.into(),
            terminal: t.into(),
        })
    }
}

impl TryFrom<String> for TerminalRef {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        s.parse()
    }
}

impl From<TerminalRef> for String {
    fn from(t: TerminalRef) -> String {
        t.to_string()
    }
}

/// An IPv4 prefix, an application's address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Range {
    /// Network address.
    pub net: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl Range {
    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.len)
    }
    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.net)
    }
    /// The `n`th address of the range.
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + n)
    }
    /// The gateway address lcmd answers for (DNS, ARP): the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }
    /// Number of addresses in the range.
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.len)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

impl FromStr for Range {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::BadRange(s.into());
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let net: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&len) {
            return Err(bad());
        }
        let r = Range { net, len };
        if u32::from(net) & r.mask() != u32::from(net) {
            return Err(bad());
        }
        Ok(r)
    }
}

impl TryFrom<String> for Range {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        s.parse()
    }
}

impl From<Range> for String {
    fn from(r: Range) -> String {
        r.to_string()
    }
}

/// A MAC address, stored as `02:4c:..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let mut m = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(ModelError::BadMac(s.into()));
        }
        for (b, p) in m.iter_mut().zip(parts) {
            *b = u8::from_str_radix(p, 16).map_err(|_| ModelError::BadMac(s.into()))?;
        }
        Ok(Mac(m))
    }
}

impl TryFrom<String> for Mac {
    type Error = ModelError;
    fn try_from(s: String) -> Result<Self, ModelError> {
        s.parse()
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

/// The MAC lcmd answers with for every address an appliance asks about
/// (lcmd routes, so every peer and the gateway sit behind this one MAC).
pub const GATEWAY_MAC: Mac = Mac([0x02, 0x4c, 0x43, 0x4d, 0x00, 0x01]);

/// How an appliance's NIC reaches lcmd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicKind {
    /// A TAP device lcmd creates and holds; its netdev side is the
    /// appliance's NIC (a container appliance's only interface).
    #[default]
    Tap,
    /// A unix datagram socket pair for a QEMU guest's `-netdev dgram`
    /// (see [`crate::vmnic`]): one datagram is one Ethernet frame.
    Vm,
}

/// An application: the unit LCM wires, with its address range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// Its name.
    pub name: String,
    /// Where its appliances' addresses come from.
    pub range: Range,
}

/// An appliance: one NIC of one component instance, on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appliance {
    /// Its application.
    pub app: String,
    /// Its name (the component's).
    pub name: String,
    /// The node whose lcmd holds its TAP.
    pub node: String,
    /// Its NIC's MAC.
    pub mac: Mac,
    /// Its address, inside the application's range.
    pub ip: Ipv4Addr,
    /// Input terminals and the protocol each admits.
    #[serde(default)]
    pub inputs: BTreeMap<String, Protocol>,
    /// Output terminals.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Bandwidth: `max` enforced, `min` recorded (see [`crate::bandwidth`]).
    #[serde(default, skip_serializing_if = "is_default_bw")]
    pub bw: Bandwidth,
    /// What its NIC is (records written before VM NICs existed are TAPs).
    #[serde(default)]
    pub nic: NicKind,
}

fn is_default_bw(b: &Bandwidth) -> bool {
    *b == Bandwidth::default()
}

impl Appliance {
    /// The name of its TAP device.
    pub fn tap_name(&self) -> String {
        tap_name(&self.app, &self.name)
    }
}

/// A declared connection from an output terminal to an input terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Its application.
    pub app: String,
    /// Output terminal (the side that opens flows).
    pub from: TerminalRef,
    /// Input terminal (the side that accepts them).
    pub to: TerminalRef,
    /// What it admits.
    pub protocol: Protocol,
}

impl Connection {
    /// A stable identifier, `app/from->to`, used in statistics.
    pub fn id(&self) -> String {
        format!("{}/{}->{}", self.app, self.from, self.to)
    }
}

/// A node's underlay endpoint, where its lcmd receives tunnel packets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub addr: Ipv4Addr,
    /// Tunnel port.
    pub port: u16,
}

/// The TAP device name of an appliance: short (IFNAMSIZ), unique per
/// appliance, the same on every node so that a moved appliance keeps it.
pub fn tap_name(app: &str, name: &str) -> String {
    let h = blake3::hash(format!("{app}/{name}").as_bytes());
    format!("lc{}", &h.to_hex()[..12])
}

/// The MAC assigned to an appliance that declares none: locally
/// administered, derived from its name.
pub fn default_mac(app: &str, name: &str) -> Mac {
    let h = blake3::hash(format!("mac/{app}/{name}").as_bytes());
    let b = h.as_bytes();
    Mac([0x02, 0x4c, b[0], b[1], b[2], b[3]])
}

/// A short identifier of an application carried in tunnel headers.
pub fn app_id(app: &str) -> u64 {
    let h = blake3::hash(format!("app/{app}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A short identifier of a node carried in tunnel headers.
pub fn node_id(node: &str) -> u64 {
    let h = blake3::hash(format!("node/{node}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Checks that a name fits in a key and a DNS label.
pub fn check_name(s: &str) -> Result<(), ModelError> {
    if s.is_empty()
        || s.len() > 63
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ModelError::BadName(s.into()));
    }
    Ok(())
}

/// An application as an operator declares it (`lcmd app apply FILE`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Application name.
    pub name: String,
    /// Address range, e.g. `10.200.1.0/24`.
    pub range: Range,
    /// Appliances by name.
    pub appliances: BTreeMap<String, ApplianceSpec>,
    /// Connections.
    #[serde(default)]
    pub connections: Vec<ConnectionSpec>,
}

/// One appliance of an [`AppSpec`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceSpec {
    /// Node it runs on.
    pub node: String,
    /// Address (default: assigned from the range, from `.10` on).
    pub ip: Option<Ipv4Addr>,
    /// MAC (default: derived from the name).
    pub mac: Option<Mac>,
    /// Input terminals.
    #[serde(default)]
    pub inputs: BTreeMap<String, Protocol>,
    /// Output terminals.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Bandwidth, e.g. `bw = { min = "50M", max = "200M" }`.
    #[serde(default)]
    pub bw: Bandwidth,
    /// Its NIC: `tap` (default) or `vm` (a QEMU guest's socket NIC).
    #[serde(default)]
    pub nic: NicKind,
}

/// One connection of an [`AppSpec`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// Output terminal, `appliance.terminal`.
    pub from: TerminalRef,
    /// Input terminal, `appliance.terminal`.
    pub to: TerminalRef,
    /// Protocol (default: the input terminal's).
    pub protocol: Option<Protocol>,
}

/// Everything an [`AppSpec`] turns into, ready to store.
#[derive(Clone, Debug, Serialize)]
pub struct Resolved {
    /// The application record.
    pub app: Application,
    /// Its appliances.
    pub appliances: Vec<Appliance>,
    /// Its connections.
    pub connections: Vec<Connection>,
}

impl AppSpec {
    /// Parses a TOML spec.
    pub fn from_toml(s: &str) -> Result<AppSpec, ModelError> {
        toml::from_str(s).map_err(|e| ModelError::Parse(e.to_string()))
    }

    /// Validates the spec and assigns addresses and MACs.
    pub fn resolve(&self) -> Result<Resolved, ModelError> {
        check_name(&self.name)?;
        let r = self.range;
        let mut used: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for (n, a) in &self.appliances {
            check_name(n)?;
            if let Some(ip) = a.ip {
                if !r.contains(ip) || ip == r.gateway() || ip == r.net || ip == r.host(r.size() - 1)
                {
                    return Err(ModelError::BadAddress(
                        n.clone(),
                        format!(
                            "{ip} is not a host address of {r} (other than the gateway {})",
                            r.gateway()
                        ),
                    ));
                }
                if let Some(o) = used.insert(ip, n.clone()) {
                    return Err(ModelError::BadAddress(
                        n.clone(),
                        format!("{ip} is also {o}'s"),
                    ));
                }
            }
        }
        let mut next = 10u32;
        let mut appliances = Vec::new();
        for (n, a) in &self.appliances {
            let ip = match a.ip {
                Some(ip) => ip,
                None => loop {
                    if next >= r.size() - 1 {
                        return Err(ModelError::BadAddress(
                            n.clone(),
                            format!("no free address in {r}"),
                        ));
                    }
                    let ip = r.host(next);
                    next += 1;
                    if let std::collections::btree_map::Entry::Vacant(e) = used.entry(ip) {
                        e.insert(n.clone());
                        break ip;
                    }
                },
            };
            for t in a.inputs.keys().chain(a.outputs.iter()) {
                check_name(t)?;
            }
            if !a.bw.is_consistent() {
                return Err(ModelError::BadBandwidth(n.clone()));
            }
            appliances.push(Appliance {
                app: self.name.clone(),
                name: n.clone(),
                node: a.node.clone(),
                mac: a.mac.unwrap_or_else(|| default_mac(&self.name, n)),
                ip,
                inputs: a.inputs.clone(),
                outputs: a.outputs.clone(),
                bw: a.bw,
                nic: a.nic,
            });
        }
        let mut connections = Vec::new();
        for c in &self.connections {
            let bad = |why: &str| ModelError::BadConnection {
                from: c.from.to_string(),
                to: c.to.to_string(),
                why: why.into(),
            };
            let from = self
                .appliances
                .get(&c.from.appliance)
                .ok_or_else(|| bad("no such output appliance"))?;
            if !from.outputs.contains(&c.from.terminal) {
                return Err(bad("no such output terminal"));
            }
            let to = self
                .appliances
                .get(&c.to.appliance)
                .ok_or_else(|| bad("no such input appliance"))?;
            let declared = *to
                .inputs
                .get(&c.to.terminal)
                .ok_or_else(|| bad("no such input terminal"))?;
            if c.from.appliance == c.to.appliance {
                return Err(bad("an appliance cannot connect to itself"));
            }
            connections.push(Connection {
                app: self.name.clone(),
                from: c.from.clone(),
                to: c.to.clone(),
                protocol: c.protocol.unwrap_or(declared),
            });
        }
        Ok(Resolved {
            app: Application {
                name: self.name.clone(),
                range: r,
            },
            appliances,
            connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_resolves_with_addresses_and_protocols() {
        let spec = AppSpec::from_toml(
            r#"
            name = "shop"
            range = "10.200.1.0/24"
            [appliances.web]
            node = "node1"
            outputs = ["db"]
            [appliances.db]
            node = "node2"
            ip = "10.200.1.20"
            inputs = { sql = "tcp/3306" }
            [[connections]]
            from = "web.db"
            to = "db.sql"
            "#,
        )
        .unwrap();
        let r = spec.resolve().unwrap();
        assert_eq!(r.appliances.len(), 2);
        let web = r.appliances.iter().find(|a| a.name == "web").unwrap();
        assert_eq!(web.ip, "10.200.1.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(r.connections[0].protocol, Protocol::Tcp(3306));
        assert_eq!(r.connections[0].id(), "shop/web.db->db.sql");
        assert!(web.tap_name().len() <= 15);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!("tcp/0".parse::<Protocol>().is_err());
        assert!("sctp/1".parse::<Protocol>().is_err());
        assert!("10.0.0.1/24".parse::<Range>().is_err());
        let spec = AppSpec::from_toml(
            r#"
            name = "x"
            range = "10.200.1.0/24"
            [appliances.a]
            node = "n"
            outputs = ["b"]
            [[connections]]
            from = "a.b"
            to = "c.d"
            "#,
        )
        .unwrap();
        assert!(matches!(
            spec.resolve(),
            Err(ModelError::BadConnection { .. })
        ));
    }
}
