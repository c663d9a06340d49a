//! Each node's own mount and UTS namespaces, kept alive by bind-mounted
//! namespace files (`unshare --mount=FILE`), so that a node has its own
//! `/gvs`, `/etc/hosts`, `/var/lib/grid`, `/run/grid` and hostname while no
//! process runs in it.

use std::fs;

use crate::cmd::run;
use crate::error::{IoContext, Result};
use crate::layout::{node_paths, Layout};

/// Makes the grid's namespace directory a private mount point: `unshare`
/// refuses to bind a mount namespace file on a shared mount, because the
/// namespace would then contain its own file.
pub(crate) fn prepare_ns_dir(l: &Layout) -> Result<()> {
    let dir = l.ns_dir();
    fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    let d = dir.to_string_lossy();
    run(&["mount", "--bind", &d, &d])?;
    run(&["mount", "--make-private", &d])?;
    Ok(())
}

/// Creates node `i`'s mount and UTS namespaces and mounts the node's private
/// directories over the well-known paths inside them.
pub(crate) fn create_node(l: &Layout, i: usize) -> Result<()> {
    for dir in [l.node_data_dir(i), l.node_run_dir(i), l.etc_dir()] {
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    // The mount points must exist in the host's tree to be mounted over.
    for dir in [
        node_paths::DATA,
        node_paths::RUN,
        node_paths::ETC,
        node_paths::GVS,
    ] {
        fs::create_dir_all(dir).ctx(|| format!("creating mount point {dir}"))?;
    }
    for f in [l.mntns_path(i), l.utsns_path(i)] {
        fs::write(&f, b"").ctx(|| format!("creating {}", f.display()))?;
    }
    let setup = format!(
        "set -e; mount --bind {hosts} /etc/hosts; \
         mount --bind {data} {DATA}; mount --bind {runs} {RUN}; mount --bind {etc} {ETC}; \
         hostname node{i}",
        hosts = l.hosts_file().display(),
        data = l.node_data_dir(i).display(),
        runs = l.node_run_dir(i).display(),
        etc = l.etc_dir().display(),
        DATA = node_paths::DATA,
        RUN = node_paths::RUN,
        ETC = node_paths::ETC,
    );
    run(&[
        "unshare",
        &format!("--mount={}", l.mntns_path(i).display()),
        &format!("--uts={}", l.utsns_path(i).display()),
        "--propagation",
        "private",
        "sh",
        "-c",
        &setup,
    ])?;
    Ok(())
}

/// Creates the node paths in the host's own tree: mount points for nodes
/// in namespaces, and the real directories of a host grid.
pub(crate) fn create_host_paths() -> Result<()> {
    for dir in [
        node_paths::DATA,
        node_paths::RUN,
        node_paths::ETC,
        node_paths::GVS,
    ] {
        fs::create_dir_all(dir).ctx(|| format!("creating {dir}"))?;
    }
    Ok(())
}

/// Unmounts a host grid's `/gvs` if its daemon, killed, left it mounted
/// (a dead FUSE mount answers every access with ENOTCONN).
pub(crate) fn release_host_paths() {
    if crate::process::is_mounted(std::path::Path::new(node_paths::GVS)) {
        let _ = run(&["umount", "-l", node_paths::GVS]);
    }
}

/// Writes the grid's `/etc/hosts`: every node's name and address.
pub(crate) fn write_hosts(l: &Layout, nodes: usize) -> Result<()> {
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
    for i in 1..=nodes {
        hosts.push_str(&format!("{}\tnode{i}\n", l.addr(i)));
    }
    let path = l.hosts_file();
    fs::create_dir_all(l.run_dir()).ctx(|| format!("creating {}", l.run_dir().display()))?;
    fs::write(&path, hosts).ctx(|| format!("writing {}", path.display()))
}

/// Releases node `i`'s namespace files: once no process is inside, the
/// kernel frees the namespaces and every mount in them (FUSE included).
pub(crate) fn delete_node(l: &Layout, i: usize) {
    for f in [l.mntns_path(i), l.utsns_path(i)] {
        let _ = run(&["umount", &f.to_string_lossy()]);
    }
}

/// Unmounts the private namespace directory.
pub(crate) fn release_ns_dir(l: &Layout) {
    let _ = run(&["umount", &l.ns_dir().to_string_lossy()]);
}
