//! Importing the tiny appliance, for the tests of every crate that starts
//! VMs (included by path from outside vmctl, so it names its script from
//! the workspace root).

use devgrid::GridGuard;

/// Builds the appliance on the host (cached) and imports it into
/// /gvs/catalog/tiny from node 1.
pub fn import_appliance(grid: &GridGuard) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../vmctl/appliance/build.sh");
    let out = std::process::Command::new("sh")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = grid
        .command(1, "sh")
        .arg(script)
        .args(["import", "/gvs/catalog/tiny"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
