//! fio with `--verify=crc32c` over a 1 GiB volume, sequential and random:
//! one node writes (and verifies what it wrote), another node reads every
//! block back and verifies it; then the same (256 MiB) with the kernel's
//! writeback cache on, and with asynchronous direct I/O (libaio, 16 in
//! flight, O_DIRECT), whose requests reach gvsfs concurrently.

mod common;

use common::{run, sh, wait_mounted};
use devgrid::{GridConfig, GridGuard};

/// Synchronous buffered I/O, one request at a time.
const PSYNC: &str = "--ioengine=psync";

/// Asynchronous direct I/O: the kernel sends gvsfs 16 requests at once.
const AIO: &str = "--ioengine=libaio --iodepth=16 --direct=1";

/// One verified fio workload: `mib` MiB of `file`, written `rw` in
/// blocks of `bs` with `engine`.
struct Workload<'a> {
    file: &'a str,
    mib: u64,
    rw: &'a str,
    bs: &'a str,
    engine: &'a str,
}

impl Workload<'_> {
    /// fio's options for it.
    fn args(&self) -> String {
        let Workload {
            file,
            mib,
            rw,
            bs,
            engine,
        } = self;
        format!(
            "fio --name=verify --filename={file} --size={mib}m --rw={rw} --bs={bs} \
             {engine} --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
             --end_fsync=1 --randrepeat=1 --group_reporting --minimal"
        )
    }
}

/// Writes the workload's file with fio on node `writer` (which verifies
/// it as it goes on), then verifies every block on node `reader`.
fn write_then_verify_elsewhere(grid: &GridGuard, writer: usize, reader: usize, w: &Workload) {
    let (file, rw) = (w.file, w.rw);
    let args = w.args();
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
    assert_eq!(size_bytes.trim(), (w.mib << 20).to_string());
}

/// A workload with synchronous buffered I/O.
fn psync<'a>(file: &'a str, mib: u64, rw: &'a str, bs: &'a str) -> Workload<'a> {
    Workload {
        file,
        mib,
        rw,
        bs,
        engine: PSYNC,
    }
}

#[test]
fn fio_verify_over_a_1g_volume_sequential_and_random_read_back_on_another_node() {
    let grid = GridGuard::up("gvfio", 3).unwrap();
    wait_mounted(&grid, 3);
    sh(&grid, 1, "mkdir -p /gvs/fio");
    let seq = psync("/gvs/fio/seq.vol", 1024, "write", "1m");
    write_then_verify_elsewhere(&grid, 1, 2, &seq);
    let rand = psync("/gvs/fio/rand.vol", 1024, "randwrite", "4k");
    write_then_verify_elsewhere(&grid, 1, 3, &rand);
    // A corrupted volume must fail the verification: the check can fail.
    sh(
        &grid,
        2,
        "printf XXXXXXXX | dd of=/gvs/fio/seq.vol bs=1 seek=5242880 conv=notrunc,fsync status=none",
    );
    let (ok, out) = run(&grid, 3, &format!("{} --verify_only", seq.args()));
    assert!(!ok, "fio verified a corrupted volume:\n{out}");
}

#[test]
fn fio_verify_with_the_kernel_writeback_cache() {
    let mut cfg = GridConfig::new("gvwbc", 3);
    cfg.env.insert("GVSFS_WRITEBACK".into(), "true".into());
    let grid = GridGuard::up_with(&cfg).unwrap();
    wait_mounted(&grid, 3);
    write_then_verify_elsewhere(&grid, 1, 2, &psync("/gvs/seq.vol", 256, "write", "1m"));
    write_then_verify_elsewhere(&grid, 2, 3, &psync("/gvs/rand.vol", 256, "randwrite", "4k"));
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

#[test]
fn fio_verify_with_asynchronous_direct_io() {
    let grid = GridGuard::up("gvaio", 3).unwrap();
    wait_mounted(&grid, 3);
    // 4 KiB writes land 16 at a time in the same 64 KiB blocks.
    let aio = |file, rw, bs| Workload {
        file,
        mib: 128,
        rw,
        bs,
        engine: AIO,
    };
    write_then_verify_elsewhere(&grid, 1, 2, &aio("/gvs/rand.vol", "randwrite", "4k"));
    write_then_verify_elsewhere(&grid, 2, 3, &aio("/gvs/seq.vol", "write", "128k"));
}
