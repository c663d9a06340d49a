//! `gvsfs rollback DIR SNAPSHOT`: brings every volume below DIR back to
//! its state in `DIR/.snapshots/SNAPSHOT`. Each volume of the snapshot is
//! cloned back onto its live path with the clone ioctl's replace flag
//! (what `gvsfs clone --force` does), so a rollback moves no data and
//! costs one metad transaction per volume. Directories missing from DIR
//! are recreated. Volumes and directories created after the snapshot are
//! left alone unless `prune` is set, when they are removed (their own
//! `.snapshots/` are kept, so a directory holding snapshots stays).
//!
//! The volumes are restored one after another, not as one transaction,
//! and a restore takes each volume's write lease (fencing a writer): so a
//! rollback is refused while a VM the grid runs has a volume below DIR
//! ([`refuse_if_vms_use`]); stop the application first.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::snapshot::SNAPSHOTS;

/// What a rollback did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Volumes cloned back from the snapshot.
    pub restored: u64,
    /// Directories recreated.
    pub dirs_created: u64,
    /// Volumes (and directories) removed by `prune`.
    pub pruned: u64,
}

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
    let mut report = Report::default();
    restore_tree(&snap, dir, &mut report)?;
    if prune {
        prune_tree(&snap, dir, &mut report)?;
    }
    Ok(report)
}

/// The entries of `dir` other than `.snapshots`, sorted.
fn entries(dir: &Path) -> Result<Vec<(String, std::fs::FileType)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == SNAPSHOTS {
            continue;
        }
        out.push((name, e.file_type()?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Clones every volume of the snapshot tree `from` onto `to`.
fn restore_tree(from: &Path, to: &Path, report: &mut Report) -> Result<()> {
    for (name, ty) in entries(from)? {
        let src = from.join(&name);
        let dst = to.join(&name);
        if ty.is_dir() {
            if !dst.exists() {
                std::fs::create_dir(&dst).with_context(|| format!("creating {}", dst.display()))?;
                report.dirs_created += 1;
            } else if !dst.is_dir() {
                bail!(
                    "{} is a directory in the snapshot but not now; remove it first",
                    dst.display()
                );
            }
            restore_tree(&src, &dst, report)?;
        } else if ty.is_file() {
            if dst.is_dir() {
                bail!(
                    "{} is a volume in the snapshot but a directory now; remove it first",
                    dst.display()
                );
            }
            crate::clone::clone_path(&src, &dst, true)
                .with_context(|| format!("restoring {}", dst.display()))?;
            report.restored += 1;
        }
        // Symlinks: left as they are (not volumes).
    }
    Ok(())
}

/// Removes what is below `live` but not below the snapshot tree `snap`.
fn prune_tree(snap: &Path, live: &Path, report: &mut Report) -> Result<()> {
    for (name, ty) in entries(live)? {
        let s = snap.join(&name);
        let l = live.join(&name);
        if ty.is_dir() {
            if s.is_dir() {
                prune_tree(&s, &l, report)?;
            } else {
                remove_tree(&l, report)?;
            }
        } else if !s.exists() {
            std::fs::remove_file(&l).with_context(|| format!("removing {}", l.display()))?;
            report.pruned += 1;
        }
    }
    Ok(())
}

/// Removes the volumes and directories below `dir`, and `dir` itself
/// unless it keeps snapshots.
fn remove_tree(dir: &Path, report: &mut Report) -> Result<()> {
    for (name, ty) in entries(dir)? {
        let p: PathBuf = dir.join(&name);
        if ty.is_dir() {
            remove_tree(&p, report)?;
        } else {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            report.pruned += 1;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {
            report.pruned += 1;
            Ok(())
        }
        // Snapshots of its own keep it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}
