//! fio with `--verify=crc32c` over a 1 GiB volume, sequential and random:
//! one node writes (and verifies what it wrote), another node reads every
//! block back and verifies it; then the same (256 MiB) with the kernel's
//! writeback cache on.

mod common;

use common::{run, sh, wait_mounted};
use devgrid::{GridConfig, GridGuard};

/// fio's options for one verified workload on `file`.
fn fio_args(file: &str, size: &str, rw: &str, bs: &str) -> String {
    format!(
        "fio --name=verify --filename={file} --size={size} --rw={rw} --bs={bs} \
         --ioengine=psync --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
         --end_fsync=1 --randrepeat=1 --group_reporting --minimal"
    )
}

/// Writes `file` with fio on node `writer` (which verifies it as it goes
/// on), then verifies every block on node `reader`.
fn write_then_verify_elsewhere(
    grid: &GridGuard,
    writer: usize,
    reader: usize,
    file: &str,
    mib: u64,
    rw: &str,
    bs: &str,
) {
    let args = fio_args(file, &format!("{mib}m"), rw, bs);
    let out = sh(grid, writer, &args);
    // --minimal: field 5 is the error count.
    let fields: Vec<&str> = out.lines().last().unwrap_or_default().split(';').collect();
    assert_eq!(
        fields.get(4).copied(),
        Some("0"),
        "node{writer}: fio {rw} reported errors:\n{out}"
    );
    // The exit status is printed: a fio killed by a signal says nothing.
    let (ok, out) = run(
        grid,
        reader,
        &format!("{args} --verify_only; rc=$?; echo \"fio exit $rc\"; exit $rc"),
    );
    assert!(ok, "node{reader}: verifying {file} ({rw}) failed:\n{out}");
    assert!(
        !out.contains("verify: bad") && !out.contains("crc32c: verify failed"),
        "node{reader}: {out}"
    );
    // The reader saw the whole volume, at its size.
    let size_bytes = sh(grid, reader, &format!("stat -c %s {file}"));
    assert_eq!(size_bytes.trim(), (mib << 20).to_string());
}

#[test]
fn fio_verify_over_a_1g_volume_sequential_and_random_read_back_on_another_node() {
    let grid = GridGuard::up("gvfio", 3).unwrap();
    wait_mounted(&grid, 3);
    sh(&grid, 1, "mkdir -p /gvs/fio");
    write_then_verify_elsewhere(&grid, 1, 2, "/gvs/fio/seq.vol", 1024, "write", "1m");
    write_then_verify_elsewhere(&grid, 1, 3, "/gvs/fio/rand.vol", 1024, "randwrite", "4k");
    // A corrupted volume must fail the verification: the check can fail.
    sh(
        &grid,
        2,
        "printf XXXXXXXX | dd of=/gvs/fio/seq.vol bs=1 seek=5242880 conv=notrunc,fsync status=none",
    );
    let (ok, out) = run(
        &grid,
        3,
        &format!(
            "{} --verify_only",
            fio_args("/gvs/fio/seq.vol", "1024m", "write", "1m")
        ),
    );
    assert!(!ok, "fio verified a corrupted volume:\n{out}");
}

#[test]
fn fio_verify_with_the_kernel_writeback_cache() {
    let mut cfg = GridConfig::new("gvwbc", 3);
    cfg.env.insert("GVSFS_WRITEBACK".into(), "true".into());
    let grid = GridGuard::up_with(&cfg).unwrap();
    wait_mounted(&grid, 3);
    write_then_verify_elsewhere(&grid, 1, 2, "/gvs/seq.vol", 256, "write", "1m");
    write_then_verify_elsewhere(&grid, 2, 3, "/gvs/rand.vol", 256, "randwrite", "4k");
    // Data written through the cache and fsynced is on the other nodes.
    sh(
        &grid,
        3,
        "head -c 3000000 /dev/urandom > /tmp/gvwbc.r && dd if=/tmp/gvwbc.r of=/gvs/small bs=64k conv=fsync status=none",
    );
    let want = sh(&grid, 3, "md5sum < /tmp/gvwbc.r");
    for i in [1, 2] {
        assert_eq!(sh(&grid, i, "md5sum < /gvs/small"), want, "node{i}");
    }
}
