//! The project's daemons as the grid in a box runs them, and where their
//! binaries are found.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::grid::DaemonSpec;

/// How many nodes run a metad member: three give a quorum that survives one
/// failure; more members only slow writes down.
pub const METAD_MEMBERS: usize = 3;

/// The port metad serves peers and clients on.
pub const METAD_PORT: u16 = 2380;

/// The daemons every grid runs, in start order. Each service adds itself
/// here as it comes to exist.
pub fn default_daemons() -> Vec<DaemonSpec> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    vec![
        DaemonSpec {
            name: "metad".into(),
            on_first: Some(METAD_MEMBERS),
            // node1 creates the cluster and its secret, shared with every node
            // through /etc/grid; the others join it, one at a time. A member
            // that has its data (a host grid brought up again) just runs.
            prepare: Some(strings(&[
                "sh",
                "-c",
                "set -e; [ -d /var/lib/grid/metad ] && exit 0; \
             if [ {i} = 1 ]; then \
               {bin}/metad init --data-dir /var/lib/grid/metad --advertise {node}:2380; \
               cp /var/lib/grid/metad/secret /etc/grid/secret; \
             else \
               {bin}/metad join --data-dir /var/lib/grid/metad --advertise {node}:2380; \
             fi",
            ])),
            argv: strings(&["{bin}/metad", "run", "--data-dir", "/var/lib/grid/metad"]),
            // Serving: the member answers.
            ready: Some(strings(&[
                "{bin}/metad",
                "--endpoints",
                "{node}:2380",
                "--timeout-ms",
                "1000",
                "status",
            ])),
        },
        // gvsfs: the /gvs mount and the node's chunk store, on every node.
        DaemonSpec {
            name: "gvsfs".into(),
            on_first: None,
            prepare: None,
            argv: strings(&[
                "{bin}/gvsfs",
                "mount",
                "--mountpoint",
                "/gvs",
                "--data-dir",
                "/var/lib/grid/gvsfs",
            ]),
            ready: Some(strings(&["mountpoint", "-q", "/gvs"])),
        },
        // lcmd: appliance TAPs, tunnels and enforcement, on every node.
        DaemonSpec {
            name: "lcmd".into(),
            on_first: None,
            prepare: None,
            argv: strings(&[
                "{bin}/lcmd",
                "run",
                "--node",
                "{node}",
                "--advertise",
                "{addr}",
            ]),
            ready: None,
        },
        // vmctl agent: the node's capacity and heartbeat, its VMs, and the
        // elected scheduler, on every node.
        DaemonSpec {
            name: "vmctl".into(),
            on_first: None,
            prepare: None,
            argv: strings(&["{bin}/vmctl", "agent", "--node", "{node}"]),
            ready: None,
        },
    ]
}

/// The environment of every daemon and command in a grid whose nodes are
/// named `nodes`: where metad is, so that clients on any node find it.
pub fn grid_env(nodes: &[String]) -> BTreeMap<String, String> {
    let endpoints: Vec<String> = nodes
        .iter()
        .take(METAD_MEMBERS)
        .map(|n| format!("{n}:{METAD_PORT}"))
        .collect();
    BTreeMap::from([
        ("METAD_ENDPOINTS".to_string(), endpoints.join(",")),
        (
            "METAD_SECRET_FILE".to_string(),
            "/etc/grid/secret".to_string(),
        ),
    ])
}

/// The directory holding the grid's binaries: `$DEVGRID_BIN_DIR` when set,
/// else the directory of the running executable (for a test binary in
/// `target/<profile>/deps`, its parent: where cargo puts the workspace's
/// binaries).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEVGRID_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(PathBuf::from).unwrap_or(dir)
    } else {
        dir
    }
}
