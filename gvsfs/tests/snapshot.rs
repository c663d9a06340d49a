//! Snapshot directories: a snapshot of a directory taken while writers
//! on three nodes write sequence numbers is one consistent cut; a writer
//! that never fsyncs is flushed first; the tree is read-only, keeps
//! sizes, modes and times, reads with tar, restores with cp, and `rmdir`
//! deletes it.

mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};

use common::{md5, run, sh, wait_mounted};
use devgrid::GridGuard;

/// Writes counter K (16 digits, repeated over 64 KiB) at offset 0 of
/// argv[1] for argv[2] seconds, K = 1, 2, ...; with argv[3] == "fsync",
/// fsyncs each and logs `K START DONE` (ns), else logs `K WRITTEN`.
const WRITER: &str = r#"
import os, sys, time
path, secs, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
fd = os.open(path, os.O_WRONLY)
end = time.time() + secs
k = 0
log = []
while time.time() < end:
    k += 1
    start = time.time_ns()
    os.pwrite(fd, (b"%016d" % k) * 4096, 0)
    if mode == "fsync":
        os.fsync(fd)
    log.append("%d %d %d" % (k, start, time.time_ns()))
    if mode != "fsync":
        time.sleep(0.002)
os.close(fd)
print("\n".join(log))
"#;

fn spawn_writer(grid: &GridGuard, node: usize, file: &str, secs: u32, mode: &str) -> Child {
    grid.command(node, "python3")
        .args(["-c", WRITER, file, &secs.to_string(), mode])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting a writer")
}

/// k -> (start, done) of a writer's log.
fn parse(out: &str) -> HashMap<u64, (u128, u128)> {
    out.lines()
        .filter_map(|l| {
            let v: Vec<u128> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 3).then(|| (v[0] as u64, (v[1], v[2])))
        })
        .collect()
}

/// The counter a snapshot file holds; the whole block must be that one
/// counter (no torn write).
fn counter(grid: &GridGuard, path: &str) -> u64 {
    let out = sh(
        grid,
        2,
        &format!("python3 -c \"import sys; b=open('{path}','rb').read(); c=b[:16]; assert b==c*4096, 'torn'; print(int(c))\""),
    );
    out.trim().parse().expect("a counter")
}

#[test]
fn a_snapshot_is_one_consistent_cut_read_only_and_deletable() {
    let grid = GridGuard::up("gvsnp", 3).unwrap();
    wait_mounted(&grid, 3);
    sh(&grid, 1, "mkdir -p /gvs/app/sub && for v in a b c d; do python3 -c \"open('/gvs/app/$v.vol','wb').write(b'%016d' % 0 * 4096)\"; done && chmod 640 /gvs/app/b.vol && touch -d 2021-05-06T07:08:09Z /gvs/app/c.vol && echo hello > /gvs/app/sub/notes && truncate -s 1G /gvs/app/sub/sparse.vol && printf data | dd of=/gvs/app/sub/sparse.vol bs=1 seek=536870912 conv=notrunc,fsync status=none");
    let stat_c = sh(&grid, 2, "stat -c '%s %a %Y' /gvs/app/c.vol");
    // Three fsyncing writers, one per node, and one that never fsyncs.
    let writers = vec![
        ("a", spawn_writer(&grid, 1, "/gvs/app/a.vol", 7, "fsync")),
        ("b", spawn_writer(&grid, 2, "/gvs/app/b.vol", 7, "fsync")),
        ("c", spawn_writer(&grid, 3, "/gvs/app/c.vol", 7, "fsync")),
        ("d", spawn_writer(&grid, 3, "/gvs/app/d.vol", 7, "buffered")),
    ];
    // Three snapshots while they write, each timed.
    let times = sh(
        &grid,
        1,
        "python3 -c \"
import os, time
time.sleep(1.5)
for s in ['s1', 's2', 's3']:
    t0 = time.time_ns(); os.mkdir('/gvs/app/.snapshots/' + s); t1 = time.time_ns()
    print(s, t0, t1)
    time.sleep(1.2)
\"",
    );
    let logs: HashMap<&str, HashMap<u64, (u128, u128)>> = writers
        .into_iter()
        .map(|(v, c)| {
            let out = c.wait_with_output().expect("writer output");
            assert!(out.status.success(), "writer {v} failed");
            (v, parse(&String::from_utf8_lossy(&out.stdout)))
        })
        .collect();
    for line in times.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (s, t0, t1): (&str, u128, u128) = (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
        // The cut instant T lies in [t0, t1], and for each volume with
        // counter k in the snapshot, in [start(k), done(k+1)].
        let (mut lo, mut hi) = (t0, t1);
        let mut seen = Vec::new();
        for v in ["a", "b", "c"] {
            let k = counter(&grid, &format!("/gvs/app/.snapshots/{s}/{v}.vol"));
            let log = &logs[v];
            let start = log.get(&k).map_or(0, |e| e.0);
            let next_done = log.get(&(k + 1)).map_or(u128::MAX, |e| e.1);
            lo = lo.max(start);
            hi = hi.min(next_done);
            seen.push((v, k));
        }
        assert!(
            lo <= hi,
            "snapshot {s}: counters {seen:?} are not one instant within [{t0}, {t1}]"
        );
        // The writer that never fsyncs was flushed: the snapshot holds at
        // least what it had written when the mkdir began.
        let d = counter(&grid, &format!("/gvs/app/.snapshots/{s}/d.vol"));
        let before = logs["d"]
            .iter()
            .filter(|(_, (_, done))| *done < t0)
            .map(|(k, _)| *k)
            .max()
            .unwrap_or(0);
        assert!(
            d >= before,
            "snapshot {s}: d holds {d}, but {before} was written before it"
        );
        eprintln!("snapshot {s}: {seen:?}, d={d} (written before: {before})");
    }

    // Listed by ls -a, not by ls; read-only; sizes, modes and times kept.
    assert!(sh(&grid, 3, "ls -a /gvs/app").contains(".snapshots"));
    assert!(!sh(&grid, 3, "ls /gvs/app").contains(".snapshots"));
    assert_eq!(
        sh(&grid, 3, "ls /gvs/app/.snapshots")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["s1", "s2", "s3"]
    );
    let snap = "/gvs/app/.snapshots/s2";
    // Times as they were at the cut: c.vol was written after s2 and s3,
    // so s2's mtime is older than the live one, and no older than s1's.
    let mtime = |p: &str| -> u64 {
        sh(&grid, 3, &format!("stat -c %Y {p}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(mtime(&format!("{snap}/c.vol")) <= mtime("/gvs/app/c.vol"));
    assert!(mtime("/gvs/app/.snapshots/s1/c.vol") <= mtime(&format!("{snap}/c.vol")));
    assert_ne!(sh(&grid, 3, "stat -c '%s %a %Y' /gvs/app/c.vol"), stat_c);
    assert_eq!(
        sh(&grid, 3, &format!("stat -c '%s %b' {snap}/sub/sparse.vol")).trim(),
        "1073741824 128",
        "the sparse volume's size and blocks"
    );
    assert_eq!(
        sh(&grid, 3, &format!("stat -c '%a' {snap}/b.vol")).trim(),
        "640"
    );
    for cmd in [
        format!("echo x > {snap}/a.vol"),
        format!("touch {snap}/new"),
        format!("rm {snap}/a.vol"),
        format!("mkdir {snap}/dir"),
        format!("chmod 600 {snap}/a.vol"),
        format!("truncate -s 0 {snap}/a.vol"),
        format!("mv {snap}/a.vol {snap}/z.vol"),
        format!("setfattr -n user.x -v 1 {snap}/a.vol"),
    ] {
        let (ok, text) = run(&grid, 2, &cmd);
        assert!(
            !ok && text.contains("Read-only file system"),
            "`{cmd}`: {text}"
        );
    }
    let (ok, text) = run(&grid, 1, "mkdir /gvs/app/.snapshots/s1");
    assert!(!ok && text.contains("File exists"), "{text}");
    let (ok, text) = run(&grid, 1, "rmdir /gvs/app");
    assert!(
        !ok && text.contains("not empty"),
        "a directory with snapshots: {text}"
    );

    // tar -S of the snapshot, unpacked elsewhere, is the snapshot, sparse.
    sh(&grid, 2, &format!("tar -C {snap} -cSf /tmp/s2.tar . && mkdir -p /tmp/un && tar -C /tmp/un -xSf /tmp/s2.tar"));
    for f in [
        "a.vol",
        "b.vol",
        "c.vol",
        "d.vol",
        "sub/notes",
        "sub/sparse.vol",
    ] {
        assert_eq!(
            md5(&grid, 2, &format!("/tmp/un/{f}")),
            md5(&grid, 2, &format!("{snap}/{f}")),
            "{f}"
        );
    }
    let du: u64 = sh(&grid, 2, "du -k /tmp/un/sub/sparse.vol")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(du < 1024, "tar -S read the holes: {du} KiB");
    assert_eq!(
        sh(&grid, 2, "cat /gvs/app/.snapshots/s1/sub/notes").trim(),
        "hello"
    );

    // Restore is a clone out of the snapshot.
    let want = md5(&grid, 3, &format!("{snap}/a.vol"));
    sh(
        &grid,
        1,
        &format!(
            "cp {snap}/a.vol /gvs/app/a.vol && gvsfs clone --force {snap}/b.vol /gvs/app/b.vol"
        ),
    );
    assert_eq!(md5(&grid, 3, "/gvs/app/a.vol"), want);
    assert_eq!(
        md5(&grid, 3, "/gvs/app/b.vol"),
        md5(&grid, 1, &format!("{snap}/b.vol"))
    );

    // rmdir deletes one; the others stay.
    sh(&grid, 3, "rmdir /gvs/app/.snapshots/s1");
    common::eventually(
        &grid,
        1,
        "test \"$(ls /gvs/app/.snapshots)\" = \"$(printf 's2\\ns3')\"",
        5,
    );
    let (ok, _) = run(&grid, 2, "test -e /gvs/app/.snapshots/s1/a.vol");
    assert!(!ok, "a deleted snapshot still reads");
    sh(&grid, 1, "rmdir /gvs/app/.snapshots/s2 /gvs/app/.snapshots/s3 && rm -r /gvs/app/sub /gvs/app/*.vol && rmdir /gvs/app");
}

#[test]
fn a_snapshot_of_more_files_than_one_metad_value_holds_is_whole_everywhere() {
    let grid = GridGuard::up("gvsnbig", 2).unwrap();
    wait_mounted(&grid, 2);
    // 8,000 entries encode to well over one metad value (1 MiB): the
    // record goes to metad in parts, in one transaction.
    sh(
        &grid,
        1,
        "mkdir /gvs/many && cd /gvs/many && seq -f f%05g 8000 | xargs touch \
         && echo last > f08000 && mkdir .snapshots/s",
    );
    for i in 1..=2 {
        let n = sh(&grid, i, "ls /gvs/many/.snapshots/s | wc -l");
        assert_eq!(n.trim(), "8000", "node{i} lists the snapshot");
        let last = sh(&grid, i, "cat /gvs/many/.snapshots/s/f08000");
        assert_eq!(last.trim(), "last", "node{i}");
    }
    let parts = sh(&grid, 1, "metad list gvs/snap/ | wc -l");
    assert!(
        parts.trim().parse::<u32>().unwrap() > 1,
        "one part only: {parts}"
    );
    sh(&grid, 2, "rmdir /gvs/many/.snapshots/s");
    let left = sh(&grid, 1, "metad list gvs/snap/ | wc -l");
    assert_eq!(left.trim(), "0", "parts left after rmdir");
    sh(&grid, 1, "test ! -e /gvs/many/.snapshots/s");
}
