//! The project's daemons as the grid in a box runs them, and where their
//! binaries are found.

use std::path::PathBuf;

use crate::grid::DaemonSpec;

/// The daemons every grid runs, in start order. Each service adds itself
/// here as it comes to exist.
pub fn default_daemons() -> Vec<DaemonSpec> {
    Vec::new()
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
