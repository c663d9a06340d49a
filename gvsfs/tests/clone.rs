//! Copy-on-write clones: `cp` (copy_file_range) and `gvsfs clone` (the
//! clone ioctl) share every chunk, writes to either side stay on that
//! side, clones of clones work, and the work of a clone does not grow
//! with the volume's size.

mod common;

use common::{md5, run, sh, stat, wait_mounted, xattr};
use devgrid::GridGuard;

/// Writes 1 MiB of `byte` at `mib` MiB into `file` on `node`, fsynced,
/// and the same into the local reference copy `reference` on node 1.
fn write_both(grid: &GridGuard, node: usize, file: &str, reference: &str, byte: char, mib: u64) {
    let cmd = |f: &str| {
        format!(
            "head -c 1048576 /dev/zero | tr '\\0' {byte} | dd of={f} bs=1M seek={mib} conv=notrunc,fsync status=none"
        )
    };
    sh(grid, node, &cmd(file));
    sh(grid, 1, &cmd(reference));
}

/// Sum of a counter over the three nodes.
fn total(grid: &GridGuard, key: &str) -> u64 {
    (1..=3).map(|i| stat(grid, i, key)).sum()
}

#[test]
fn clones_share_chunks_and_writes_stay_on_their_side() {
    let grid = GridGuard::up("gvcln", 3).unwrap();
    wait_mounted(&grid, 3);
    // 6 MiB of random data, fully written (not sparse).
    sh(&grid, 1, "mkdir -p /gvs/cat /gvs/app && head -c 6291456 /dev/urandom > /tmp/base && dd if=/tmp/base of=/gvs/cat/base.vol bs=1M conv=fsync status=none");
    let base = md5(&grid, 1, "/tmp/base");

    // cp reaches gvsfs as copy_file_range and becomes a clone: no chunk
    // is stored anywhere.
    let stored = total(&grid, "store_put_bytes");
    let trace = sh(
        &grid,
        2,
        "strace -f -e trace=copy_file_range cp /gvs/cat/base.vol /gvs/app/cp.vol 2>&1",
    );
    assert!(
        trace.contains("copy_file_range(") && trace.contains("= 6291456"),
        "cp did not clone through copy_file_range:\n{trace}"
    );
    assert_eq!(
        total(&grid, "store_put_bytes"),
        stored,
        "cp stored chunks: not a clone"
    );
    assert_eq!(stat(&grid, 2, "clones"), 1);

    // gvsfs clone (the ioctl), and a clone of the clone, and a clone of that.
    sh(&grid, 3, "gvsfs clone /gvs/cat/base.vol /gvs/app/c1.vol && gvsfs clone /gvs/app/c1.vol /gvs/app/c2.vol && cd /gvs/app && gvsfs clone c2.vol /gvs/cat/");
    let (ok, text) = run(&grid, 3, "gvsfs clone /gvs/cat/base.vol /gvs/app/c1.vol");
    assert!(!ok && text.contains("exists"), "clone onto a file: {text}");
    let (ok, text) = run(&grid, 3, "gvsfs clone /gvs/cat /gvs/app/d");
    assert!(
        !ok && text.contains("directory"),
        "clone of a directory: {text}"
    );
    let (ok, text) = run(&grid, 3, "gvsfs clone /gvs/cat/base.vol /tmp/x");
    assert!(
        !ok && text.contains("same gvs mount"),
        "clone off /gvs: {text}"
    );
    assert_eq!(
        total(&grid, "store_put_bytes"),
        stored,
        "clones stored chunks"
    );
    for f in ["cp", "c1", "c2"] {
        assert_eq!(md5(&grid, 1, &format!("/gvs/app/{f}.vol")), base, "{f}");
    }

    // Different writes on each side, from different nodes.
    sh(
        &grid,
        1,
        "for f in base cp c1 c2; do cp /tmp/base /tmp/$f; done",
    );
    write_both(&grid, 1, "/gvs/cat/base.vol", "/tmp/base", 'B', 1);
    write_both(&grid, 2, "/gvs/app/cp.vol", "/tmp/cp", 'P', 2);
    write_both(&grid, 3, "/gvs/app/c1.vol", "/tmp/c1", 'C', 3);
    write_both(&grid, 2, "/gvs/app/c2.vol", "/tmp/c2", 'D', 4);
    // Growing one side does not grow the other.
    write_both(&grid, 3, "/gvs/app/c2.vol", "/tmp/c2", 'E', 7);
    for (file, reference) in [
        ("/gvs/cat/base.vol", "/tmp/base"),
        ("/gvs/app/cp.vol", "/tmp/cp"),
        ("/gvs/app/c1.vol", "/tmp/c1"),
        ("/gvs/app/c2.vol", "/tmp/c2"),
    ] {
        let want = md5(&grid, 1, reference);
        for i in 1..=3 {
            assert_eq!(md5(&grid, i, file), want, "node{i} reads {file}");
        }
    }
    assert_eq!(sh(&grid, 2, "stat -c %s /gvs/app/c1.vol").trim(), "6291456");
    assert_eq!(sh(&grid, 2, "stat -c %s /gvs/app/c2.vol").trim(), "8388608");

    // --force replaces an existing volume by a clone.
    sh(
        &grid,
        1,
        "gvsfs clone --force /gvs/cat/base.vol /gvs/app/c1.vol",
    );
    assert_eq!(md5(&grid, 2, "/gvs/app/c1.vol"), md5(&grid, 1, "/tmp/base"));
    // A partial copy_file_range is an ordinary copy.
    sh(&grid, 1, "python3 -c \"import os; a=os.open('/gvs/cat/base.vol', os.O_RDONLY); b=os.open('/gvs/app/part.vol', os.O_WRONLY|os.O_CREAT, 0o644); n=os.copy_file_range(a, b, 100000, 4096, 8192); assert n == 100000, n\"");
    assert_eq!(
        sh(&grid, 3, "stat -c %s /gvs/app/part.vol").trim(),
        "108192"
    );
    assert_eq!(
        md5(&grid, 3, "/gvs/app/part.vol"),
        sh(&grid, 1, "(head -c 8192 /dev/zero; dd if=/tmp/base bs=4096 skip=1 count=25 status=none | head -c 100000) > /tmp/part && md5sum < /tmp/part").split_whitespace().next().unwrap()
    );
}

#[test]
fn the_work_of_a_clone_does_not_grow_with_the_volume_size() {
    let grid = GridGuard::up("gvclw", 3).unwrap();
    wait_mounted(&grid, 3);
    // The same 32 MiB of data in a 1 GiB and in a 64 GiB sparse volume.
    sh(&grid, 1, "head -c 33554432 /dev/urandom > /tmp/d && for v in small:1G huge:64G; do f=/gvs/${v%%:*}.vol; truncate -s ${v#*:} $f && dd if=/tmp/d of=$f bs=1M conv=notrunc,fsync status=none && dd if=/tmp/d of=$f bs=1M seek=1000 conv=notrunc,fsync status=none; done");
    let mut work = Vec::new();
    for v in ["small", "huge"] {
        let before: Vec<_> = (1..=3).map(|i| common::stats(&grid, i)).collect();
        sh(
            &grid,
            1,
            &format!("gvsfs clone /gvs/{v}.vol /gvs/{v}.clone"),
        );
        let after: Vec<_> = (1..=3).map(|i| common::stats(&grid, i)).collect();
        let delta = |k: &str| -> u64 {
            (0..3)
                .map(|n| {
                    after[n].get(k).copied().unwrap_or(0) - before[n].get(k).copied().unwrap_or(0)
                })
                .sum()
        };
        let w = (
            delta("metad_ops"),
            delta("store_put_bytes") + delta("pushed_bytes"),
            delta("fetched_bytes"),
        );
        eprintln!("clone of {v}: metad keys written, bytes stored or pushed, bytes fetched: {w:?}");
        work.push(w);
    }
    assert_eq!(
        work[0], work[1],
        "the clone of the 64 GiB volume did more work"
    );
    assert_eq!(work[0].1, 0, "a clone moves no chunk");
    assert_eq!(work[0].2, 0, "a clone reads no chunk");
    assert!(work[0].0 <= 8, "metad keys written: {}", work[0].0);
    for v in ["small", "huge"] {
        assert_eq!(
            sh(&grid, 2, &format!("stat -c '%s %b' /gvs/{v}.vol")),
            sh(&grid, 2, &format!("stat -c '%s %b' /gvs/{v}.clone"))
        );
        // The first 1032 MiB hold both copies of the data.
        let head = |f: &str| sh(&grid, 3, &format!("head -c 1082130432 {f} | md5sum"));
        assert_eq!(
            head(&format!("/gvs/{v}.clone")),
            head(&format!("/gvs/{v}.vol"))
        );
    }
}

/// A commit of the destination still on its way to a mirror when a clone
/// replaces the destination must not overwrite the clone when it lands.
#[test]
fn a_clone_into_a_volume_whose_commit_is_in_flight_is_not_overwritten() {
    let grid = GridGuard::up("gvcfl", 3).unwrap();
    wait_mounted(&grid, 3);
    sh(
        &grid,
        1,
        "head -c 8388608 /dev/zero | tr '\\0' S > /tmp/src && \
         dd if=/tmp/src of=/gvs/src.vol bs=1M conv=fsync status=none && \
         head -c 1048576 /dev/zero | tr '\\0' A | dd of=/gvs/dst.vol bs=1M conv=fsync status=none",
    );
    // Cut a mirror of dst other than node1: a push to it stalls until the
    // chunk connection gives up on it (10 s without progress).
    let replicas = xattr(&grid, 1, "/gvs/dst.vol", "gvs.replicas");
    let cut: usize = replicas
        .trim()
        .split(',')
        .filter_map(|n| n.strip_prefix("node")?.parse().ok())
        .find(|n| *n != 1)
        .expect("a mirror other than node1");
    grid.cut(cut, false).unwrap();
    // node1 buffers 8 MiB of B in dst and keeps it open; the background
    // commit (every second) takes them on their way and stalls.
    let mut writer = grid
        .command(1, "python3")
        .args([
            "-c",
            "import os, time\n\
             fd = os.open('/gvs/dst.vol', os.O_WRONLY)\n\
             for i in range(8): os.pwrite(fd, b'B' * (1 << 20), i << 20)\n\
             print('written', flush=True)\n\
             time.sleep(60)",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the writer");
    let mut out = std::io::BufReader::new(writer.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("the writer's answer");
    assert_eq!(line.trim(), "written");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // The clone replaces dst while that commit is still travelling.
    sh(&grid, 1, "gvsfs clone --force /gvs/src.vol /gvs/dst.vol");
    let _ = writer.kill();
    let _ = writer.wait();
    grid.heal(cut).unwrap();
    // The stalled commit has given up on the cut mirror and ended by now
    // (the writer's close waited for it): dst is the clone everywhere.
    let want = md5(&grid, 1, "/tmp/src");
    for node in 1..=3 {
        common::eventually(
            &grid,
            node,
            &format!("test \"$(md5sum < /gvs/dst.vol | cut -c1-32)\" = {want}"),
            30,
        );
    }
}
