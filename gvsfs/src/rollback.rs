//! `gvsfs rollback DIR SNAPSHOT`: brings every volume below DIR back to
//! its state in `DIR/.snapshots/SNAPSHOT`, in one metad transaction (the
//! mounted daemon does it: see [`crate::restore`]), so that no reader
//! ever sees some volumes rolled back and others not, and a rollback that
//! cannot complete changes nothing. Each volume of the snapshot is cloned
//! back over its live path (no data is copied). Directories missing from
//! DIR are recreated. Volumes and directories created after the snapshot
//! are left alone unless `prune` is set, when they are removed (their own
//! `.snapshots/` are kept, so a directory holding snapshots stays).
//!
//! A restore takes each volume's write lease (fencing its writer): so a
//! rollback is refused while a VM the grid runs has a volume below DIR
//! ([`refuse_if_vms_use`]); stop the application first.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::restore::Report;
use crate::snapshot::SNAPSHOTS;

/// Fails, naming the VM, when a VM the grid has placed (running,
/// starting or migrating) boots from or writes a volume below `dir`:
/// rolling back under it would fence its writes and change its disk
/// under the guest.
pub fn refuse_if_vms_use(dir: &Path, metad: &metad::MetadArgs) -> Result<()> {
    use vmctl::model::{VmRecord, VMS};
    // A directory that does not exist: the rollback itself says so.
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Ok(());
    };
    let store = vmctl::store::Store::connect(metad.endpoints.clone(), &metad.secret_file)
        .context("checking for VMs using the directory")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (vms, _) = rt
        .block_on(store.list::<VmRecord>(VMS))
        .context("checking for VMs using the directory")?;
    for (_, v) in vms {
        let vm = v.value;
        let Some(node) = &vm.node else { continue };
        if let Some(disk) = vm.disks.iter().find(|d| Path::new(d).starts_with(&dir)) {
            bail!(
                "{}: VM {} (on {node}) uses {disk}; stop it first (vmctl app stop {})",
                dir.display(),
                vm.name,
                vm.app
            );
        }
    }
    Ok(())
}

/// Rolls `dir` back to its snapshot `name`; with `prune`, removes what
/// the snapshot does not have.
pub fn rollback(dir: &Path, name: &str, prune: bool) -> Result<Report> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("bad snapshot name {name:?}");
    }
    if !dir.is_dir() {
        bail!("{}: not a directory", dir.display());
    }
    let snap = dir.join(SNAPSHOTS).join(name);
    if !snap.is_dir() {
        bail!(
            "{}: no snapshot {name:?} in {}",
            snap.display(),
            dir.display()
        );
    }
    // The daemon answers with an errno; the reason is in gvs.rollback.
    let attr = if prune {
        "gvs.rollback.prune"
    } else {
        "gvs.rollback"
    };
    let done = crate::xattr::set(dir, attr, name);
    let outcome = crate::xattr::get(dir, "gvs.rollback");
    if let Err(e) = done {
        match outcome {
            Ok(text) if text.starts_with("error: ") => {
                bail!("{}: {}", dir.display(), &text["error: ".len()..])
            }
            _ => bail!("{}: rollback to {name}: {e}", dir.display()),
        }
    }
    let text = outcome?;
    Report::decode(&text)
        .with_context(|| format!("{}: the daemon reported {text:?}", dir.display()))
}
