//! Where a grid's pieces live: every interface name, namespace, path and
//! address is derived from the grid name here and nowhere else, which is what
//! keeps two grids with different names from colliding.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The most nodes one grid holds (one /24, minus the bridge's address).
pub const MAX_NODES: usize = 200;

/// Root of the runtime state of all grids (tmpfs: namespace files, pids).
pub const RUN_ROOT: &str = "/run/devgrid";
/// Root of the persistent state of all grids (node data and logs).
pub const DATA_ROOT: &str = "/var/lib/devgrid";

/// The paths a node's daemons see as their own, whichever grid they are in:
/// inside a node these are bind mounts of that node's private directories.
pub mod node_paths {
    /// The node's persistent state (metad's RocksDB, the chunk store).
    pub const DATA: &str = "/var/lib/grid";
    /// The node's runtime files (sockets, pid files).
    pub const RUN: &str = "/run/grid";
    /// The grid's shared configuration (cluster secret, endpoints).
    pub const ETC: &str = "/etc/grid";
    /// Where the node mounts the global volume store.
    pub const GVS: &str = "/gvs";
}

/// The derived names and paths of one grid.
#[derive(Debug, Clone)]
pub struct Layout {
    name: String,
    subnet: u8,
}

impl Layout {
    /// Checks `name` and derives the layout of grid `name` on subnet
    /// 10.77.`subnet`.0/24.
    pub fn new(name: &str, subnet: u8) -> Result<Self> {
        validate_name(name)?;
        Ok(Layout {
            name: name.to_string(),
            subnet,
        })
    }

    /// The grid's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The third octet of the grid's 10.77.x.0/24 subnet.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The host-side bridge joining the grid's nodes.
    pub fn bridge(&self) -> String {
        format!("dg{}br", self.name)
    }

    /// The host end of node `i`'s veth pair (its node end is `eth0`).
    pub fn veth(&self, i: usize) -> String {
        format!("dg{}v{}", self.name, i)
    }

    /// The network namespace of node `i` (as `ip netns` names it).
    pub fn netns(&self, i: usize) -> String {
        format!("dg-{}-node{}", self.name, i)
    }

    /// The bind-mounted file that keeps node `i`'s network namespace.
    pub fn netns_path(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(self.netns(i))
    }

    /// The node's address on the grid's bridge.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, i as u8)
    }

    /// The host's own address on the bridge.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 254)
    }

    /// The runtime directory of the grid.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(RUN_ROOT).join(&self.name)
    }

    /// The grid's state file, read by every `devgrid` command.
    pub fn state_file(&self) -> PathBuf {
        self.run_dir().join("state.json")
    }

    /// The private-propagation directory holding namespace files.
    pub fn ns_dir(&self) -> PathBuf {
        self.run_dir().join("ns")
    }

    /// The file keeping node `i`'s mount namespace alive.
    pub fn mntns_path(&self, i: usize) -> PathBuf {
        self.ns_dir().join(format!("node{i}.mnt"))
    }

    /// The file keeping node `i`'s UTS namespace (its hostname) alive.
    pub fn utsns_path(&self, i: usize) -> PathBuf {
        self.ns_dir().join(format!("node{i}.uts"))
    }

    /// The grid's `/etc/hosts`, bind-mounted into every node.
    pub fn hosts_file(&self) -> PathBuf {
        self.run_dir().join("hosts")
    }

    /// Node `i`'s runtime directory, seen inside the node as `/run/grid`.
    pub fn node_run_dir(&self, i: usize) -> PathBuf {
        self.run_dir().join(format!("node{i}"))
    }

    /// The persistent directory of the grid.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(DATA_ROOT).join(&self.name)
    }

    /// The grid's shared configuration, seen inside every node as `/etc/grid`.
    pub fn etc_dir(&self) -> PathBuf {
        self.data_dir().join("etc")
    }

    /// Node `i`'s persistent directory, seen inside the node as `/var/lib/grid`.
    pub fn node_data_dir(&self, i: usize) -> PathBuf {
        self.data_dir().join(format!("node{i}"))
    }

    /// Where node `i`'s daemon logs go (outside the node's view, so they
    /// survive the node for a post-mortem until `down`).
    pub fn log_file(&self, i: usize, daemon: &str) -> PathBuf {
        self.data_dir()
            .join("log")
            .join(format!("node{i}.{daemon}.log"))
    }
}

/// Accepts names that fit every derived interface name (15 bytes at most).
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = (1..=8).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_string()))
    }
}

/// Parses `nodeN` (or a bare `N`) into a node index of a grid of `nodes`.
pub fn parse_node(grid: &str, nodes: usize, s: &str) -> Result<usize> {
    let digits = s.strip_prefix("node").unwrap_or(s);
    match digits.parse::<usize>() {
        Ok(i) if (1..=nodes).contains(&i) => Ok(i),
        _ => Err(Error::NoSuchNode {
            grid: grid.to_string(),
            node: s.to_string(),
            nodes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        let l = Layout::new("abcdefgh", 1).unwrap();
        assert!(l.bridge().len() <= 15);
        assert!(l.veth(MAX_NODES).len() <= 15);
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "Dev", "1dev", "toolongname", "de-v", "dév"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_name("dev").unwrap();
        validate_name("t42").unwrap();
    }

    #[test]
    fn node_names_parse_within_the_grid() {
        assert_eq!(parse_node("g", 3, "node3").unwrap(), 3);
        assert_eq!(parse_node("g", 3, "2").unwrap(), 2);
        for bad in ["node0", "node4", "nodex", "host1"] {
            let err = parse_node("g", 3, bad).unwrap_err().to_string();
            assert!(err.contains("has no node"), "{err}");
        }
    }
}
