//! What programs rely on of a POSIX file system, on /gvs: a name over 255
//! bytes is ENAMETOOLONG in every call that takes one; a file unlinked
//! while open stays usable through its descriptors until the last close;
//! link(2) is refused with EPERM; user attributes are bounded per file,
//! and a refused one does not stop the file's data from committing.

mod common;

use common::{eventually, md5, sh, wait_mounted};
use devgrid::GridGuard;

/// Runs a python3 script on node `i`; its stdout.
fn py(grid: &GridGuard, i: usize, script: &str) -> String {
    sh(
        grid,
        i,
        &format!("/usr/bin/python3 - <<'EOF'\nimport os, errno\n{script}\nEOF"),
    )
}

/// Prints `OP ok` or `OP ERRNO-NAME` for each call.
const TRY: &str = r#"
def t(op, f):
    try:
        f()
        print(op, "ok")
    except OSError as e:
        print(op, errno.errorcode[e.errno])
"#;

/// Files on /gvs as node `i` counts them (statfs's f_files).
fn files(grid: &GridGuard, i: usize) -> u64 {
    sh(grid, i, "stat -f -c %c /gvs").trim().parse().unwrap()
}

#[test]
fn long_names_are_enametoolong_and_link_is_eperm() {
    let grid = GridGuard::up("ctpxname", 1).unwrap();
    wait_mounted(&grid, 1);
    sh(&grid, 1, "mkdir -p /gvs/px && echo a > /gvs/px/f");

    // Names over 255 bytes, in every call that takes a name.
    let out = py(
        &grid,
        1,
        &format!(
            "{TRY}
d = '/gvs/px/'
long = d + 'n' * 256
t('lookup', lambda: os.stat(long))
t('create', lambda: os.close(os.open(long, os.O_CREAT | os.O_WRONLY)))
t('mkdir', lambda: os.mkdir(long))
t('rename', lambda: os.rename(d + 'f', long))
t('rename-from', lambda: os.rename(long, d + 'g'))
t('symlink', lambda: os.symlink('f', long))
t('link', lambda: os.link(d + 'f', long))
t('unlink', lambda: os.unlink(long))
t('rmdir', lambda: os.rmdir(long))
t('ok-255', lambda: os.close(os.open(d + 'm' * 255, os.O_CREAT | os.O_WRONLY)))
t('plain-link', lambda: os.link(d + 'f', d + 'f2'))
"
        ),
    );
    for op in [
        "lookup",
        "create",
        "mkdir",
        "rename",
        "rename-from",
        "symlink",
        "link",
        "unlink",
        "rmdir",
    ] {
        assert!(
            out.contains(&format!("{op} ENAMETOOLONG\n")),
            "{op}:\n{out}"
        );
    }
    assert!(out.contains("ok-255 ok\n"), "{out}");
    // No hard links: EPERM, as link(2) documents for a file system
    // without them; `ln` says so.
    assert!(out.contains("plain-link EPERM\n"), "{out}");
    let (ok, text) = common::run(&grid, 1, "ln /gvs/px/f /gvs/px/f3");
    assert!(!ok && text.contains("Operation not permitted"), "{text}");
}

/// A file unlinked while open: usable through its descriptor until the
/// last close; the name is gone everywhere meanwhile; freed at close.
#[test]
fn a_file_unlinked_while_open_lives_until_its_last_close() {
    let grid = GridGuard::up("ctpxopen", 2).unwrap();
    wait_mounted(&grid, 2);
    sh(&grid, 1, "mkdir -p /gvs/px");
    let before = files(&grid, 1);
    sh(&grid, 1, "rm -f /tmp/ctposix.*");
    sh(
        &grid,
        1,
        r#"cat > /tmp/ctposix.py <<'EOF'
import os, errno, time
def t(op, f):
    try:
        r = f()
        print(op, "ok", r, flush=True)
    except OSError as e:
        print(op, errno.errorcode[e.errno], flush=True)
fd = os.open('/gvs/px/u', os.O_CREAT | os.O_RDWR)
os.write(fd, b'hello world')
os.fsync(fd)
os.unlink('/gvs/px/u')
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
t('fstat-size', lambda: os.fstat(fd).st_size)
t('fstat-nlink', lambda: os.fstat(fd).st_nlink)
t('pread', lambda: os.pread(fd, 11, 0))
t('pwrite', lambda: os.pwrite(fd, b'HELLO', 0))
t('fsync', lambda: os.fsync(fd))
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
t('pread2', lambda: os.pread(fd, 11, 0))
t('gone', lambda: os.stat('/gvs/px/u'))
open('/tmp/ctposix.unlinked', 'w').close()
while not os.path.exists('/tmp/ctposix.checked'):
    time.sleep(0.05)
t('close', lambda: os.close(fd))
EOF
/usr/bin/python3 /tmp/ctposix.py > /tmp/ctposix.out 2>&1 &"#,
    );
    eventually(&grid, 1, "test -e /tmp/ctposix.unlinked", 120);
    eventually(&grid, 2, "! ls /gvs/px | grep -qx u", 60);
    let during = files(&grid, 1);
    sh(&grid, 1, "touch /tmp/ctposix.checked");
    let out = eventually(
        &grid,
        1,
        "grep -q '^close' /tmp/ctposix.out && cat /tmp/ctposix.out",
        120,
    );
    for want in [
        "fstat-size ok 11\n",
        "fstat-nlink ok 0\n",
        "pread ok b'hello world'\n",
        "pwrite ok 5\n",
        "fsync ok None\n",
        "pread2 ok b'HELLO world'\n",
        "gone ENOENT\n",
        "close ok None\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(during, before + 1, "the open file's inode is kept");
    // Freed at the last close, as unlink frees a closed file.
    eventually(
        &grid,
        1,
        &format!("test $(stat -f -c %c /gvs) -eq {before}"),
        60,
    );
}

/// User attributes are bounded per file: past the bound ENOSPC (E2BIG
/// for one value past 64 KiB), and the file's data still commits.
#[test]
fn user_xattrs_are_bounded_and_the_data_still_commits() {
    let grid = GridGuard::up("ctpxattr", 2).unwrap();
    wait_mounted(&grid, 2);
    sh(&grid, 1, "mkdir -p /gvs/px");
    let out = py(
        &grid,
        1,
        "p = '/gvs/px/x'
fd = os.open(p, os.O_CREAT | os.O_RDWR)
for i in range(40):
    try:
        os.setxattr(p, 'user.big%d' % i, b'v' * 60000)
    except OSError as e:
        print('setxattr', i, errno.errorcode[e.errno])
        break
else:
    print('setxattr all 40 ok')
os.write(fd, b'data after the attributes')
try:
    os.fsync(fd)
    print('fsync ok')
except OSError as e:
    print('fsync', errno.errorcode[e.errno])
os.close(fd)
print('count', len([n for n in os.listxattr(p) if n.startswith('user.')]))
",
    );
    assert!(out.contains("fsync ok\n"), "{out}");
    let refused = out
        .lines()
        .find(|l| l.starts_with("setxattr"))
        .unwrap_or_default();
    assert!(
        refused.starts_with("setxattr ") && refused.ends_with(" ENOSPC"),
        "{out}"
    );
    let (ok, text) = common::run(
        &grid,
        1,
        "/usr/bin/python3 -c \"import os; os.setxattr('/gvs/px/x', 'user.one', b'v' * 70000)\"",
    );
    assert!(!ok && text.contains("Argument list too long"), "{text}");
    eventually(
        &grid,
        2,
        "grep -qx 'data after the attributes' /gvs/px/x",
        60,
    );
    assert_eq!(md5(&grid, 2, "/gvs/px/x"), md5(&grid, 1, "/gvs/px/x"));
    let n = sh(
        &grid,
        2,
        "getfattr --absolute-names -d -m '^user\\.' /gvs/px/x | grep -c '^user'",
    );
    let count: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("count "))
        .and_then(|c| c.trim().parse().ok())
        .unwrap();
    assert_eq!(n.trim().parse::<usize>().unwrap(), count, "{out}");
}
