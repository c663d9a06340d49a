//! Control files under /gvs/.grid: a spec written on one node creates the
//! application everywhere; a bad spec and a bad ctl command are refused
//! with EINVAL and the reason in `error`, which reads the same on every
//! node, as does an object made with mkdir; nodes, VMs and events read; a
//! VM is stopped and started through its ctl and its console read from
//! another node. Writes are bounded (a spec at 1 MiB, a ctl line at 4 KiB),
//! errors keep their errno, and a long ctl command returns at once and
//! runs on its own, so that many of them never hold the mount.

#[path = "../../vmctl/tests/common/appliance.rs"]
mod appliance;
mod common;

use appliance::import_appliance;
use common::{eventually, run, sh, wait_mounted};
use devgrid::GridGuard;

const SHOP: &str = r#"name = "shop"

[components.web]
image = "/gvs/catalog/fake"
mem = "64M"

[components.db]
image = "/gvs/catalog/fake"
mem = "64M"
"#;

#[test]
fn control_files_create_refuse_and_read() {
    let grid = GridGuard::up("grctl", 3).unwrap();
    wait_mounted(&grid, 3);
    eventually(&grid, 1, "test $(ls /gvs/.grid/nodes | wc -l) -eq 3", 60);
    // A fake image: enough for `create` (no VM is booted here).
    sh(&grid, 1, "mkdir -p /gvs/catalog/fake && cd /gvs/catalog/fake && echo k > vmlinuz && printf 'kernel = \"vmlinuz\"\\n' > image.toml && truncate -s 1M root.vol");

    // The tree.
    let top = sh(&grid, 2, "ls /gvs/.grid");
    assert_eq!(
        top.split_whitespace().collect::<Vec<_>>(),
        ["apps", "events", "nodes", "vms"],
        "{top}"
    );
    let nodes = sh(&grid, 3, "ls /gvs/.grid/nodes");
    assert_eq!(nodes.split_whitespace().count(), 3, "{nodes}");
    let n1 = nodes.split_whitespace().next().unwrap().to_string();
    let st = sh(&grid, 3, &format!("cat /gvs/.grid/nodes/{n1}/state"));
    assert!(
        st.contains(&format!("node {n1}:")) && st.contains("cpus"),
        "{st}"
    );

    // A good spec written on node 2.
    let dir = "/tmp/grctl";
    sh(
        &grid,
        2,
        &format!("mkdir -p {dir} && cat > {dir}/shop.toml <<'EOF'\n{SHOP}EOF"),
    );
    sh(
        &grid,
        2,
        &format!("mkdir /gvs/.grid/apps/shop && cat {dir}/shop.toml > /gvs/.grid/apps/shop/spec"),
    );
    let list = sh(&grid, 3, "vmctl app list");
    assert!(list.contains("shop"), "{list}");
    let state = sh(&grid, 3, "cat /gvs/.grid/apps/shop/state");
    assert!(
        state.contains("app shop") && state.contains("shop.web"),
        "{state}"
    );
    let spec = sh(&grid, 1, "cat /gvs/.grid/apps/shop/spec");
    assert_eq!(spec, SHOP);
    assert_eq!(
        sh(&grid, 3, "ls /gvs/.grid/vms")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["shop.db", "shop.web"]
    );
    let vm = sh(&grid, 1, "cat /gvs/.grid/vms/shop.web/state");
    assert!(vm.contains("vm shop.web: stopped"), "{vm}");

    // A bad spec: the write (close) fails with EINVAL, the reason names
    // the line and the field.
    let bad = SHOP.replace("name = \"shop\"", "name = \"bad\"").replace(
        "mem = \"64M\"\n\n[components.db]",
        "mem = \"lots\"\n\n[components.db]",
    );
    sh(&grid, 2, &format!("cat > {dir}/bad.toml <<'EOF'\n{bad}EOF"));
    let (ok, out) = run(
        &grid,
        2,
        &format!("mkdir /gvs/.grid/apps/bad && cat {dir}/bad.toml > /gvs/.grid/apps/bad/spec"),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("Invalid argument"), "{out}");
    let err = sh(&grid, 2, "cat /gvs/.grid/apps/bad/error");
    assert!(err.contains("line 5, field `components.web.mem`"), "{err}");
    // The refusal and the spec-less object read the same on another node.
    assert_eq!(sh(&grid, 3, "cat /gvs/.grid/apps/bad/error"), err);
    assert!(sh(&grid, 1, "ls /gvs/.grid/apps").contains("bad"));
    let st = sh(&grid, 1, "cat /gvs/.grid/apps/bad/state");
    assert!(st.contains("no spec written yet"), "{st}");
    let (ok, out) = run(&grid, 3, "mkdir /gvs/.grid/apps/bad");
    assert!(!ok && out.contains("File exists"), "{out}");
    assert!(!sh(&grid, 1, "vmctl app list").contains("bad"));
    sh(&grid, 1, "rmdir /gvs/.grid/apps/bad");
    assert!(!sh(&grid, 2, "ls /gvs/.grid/apps").contains("bad"));

    // A bad ctl command: EINVAL from the write, the reason in error.
    // (coreutils' echo: dash's builtin reports any failed write as "I/O
    // error".)
    let (ok, out) = run(&grid, 1, "/bin/echo frobnicate > /gvs/.grid/apps/shop/ctl");
    assert!(!ok, "{out}");
    assert!(out.contains("Invalid argument"), "{out}");
    let err = sh(&grid, 1, "cat /gvs/.grid/apps/shop/error");
    assert!(err.contains("unknown command \"frobnicate\""), "{err}");
    // A migrate to a node that does not exist is refused the same way.
    let (ok, _) = run(
        &grid,
        3,
        "echo migrate nowhere > /gvs/.grid/vms/shop.web/ctl",
    );
    assert!(!ok);
    let err = sh(&grid, 3, "cat /gvs/.grid/vms/shop.web/error");
    assert!(err.contains("node nowhere is not up"), "{err}");
    assert_eq!(sh(&grid, 1, "cat /gvs/.grid/vms/shop.web/error"), err);
    // A VM of an application that is not running does not start alone.
    let (ok, _) = run(&grid, 2, "/bin/echo start > /gvs/.grid/vms/shop.web/ctl");
    assert!(!ok);
    let err = sh(&grid, 1, "cat /gvs/.grid/vms/shop.web/error");
    assert!(err.contains("application shop is not running"), "{err}");
    // Not run yet: an empty console.
    assert_eq!(sh(&grid, 3, "cat /gvs/.grid/vms/shop.web/console"), "");

    // Events: the creation is there.
    let ev = sh(&grid, 3, "cat /gvs/.grid/events");
    assert!(
        ev.lines()
            .any(|l| l.contains("create") && l.contains("shop")),
        "{ev}"
    );

    // destroy through ctl, seen by a `vmctl events --follow` on node 1.
    sh(
        &grid,
        1,
        &format!(
            "mkdir -p {dir} && timeout 60 vmctl events --follow > {dir}/follow 2>&1 < /dev/null &"
        ),
    );
    eventually(&grid, 1, &format!("grep -q 'create' {dir}/follow"), 30);
    sh(&grid, 2, "echo destroy > /gvs/.grid/apps/shop/ctl");
    eventually(&grid, 1, "! vmctl app list | grep -q shop", 10);
    eventually(
        &grid,
        1,
        &format!("grep -q 'shop.*destroyed' {dir}/follow"),
        30,
    );
}

const MIG: &str = r#"name = "gmig"
placement = "spread"

[components.ticker]
image = "/gvs/catalog/tiny"
cpu = 1
mem = "128M"

[components.hog]
image = "/gvs/catalog/tiny"
cpu = NCPU
mem = "128M"
anti_affinity = ["ticker"]
"#;

/// The node number a VM's `state` names ("... on nodeN ...").
fn node_of(state: &str) -> Option<usize> {
    let rest = state.split(" on node").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn ctl_starts_and_a_migrate_to_a_full_node_is_refused() {
    let grid = GridGuard::up("grctlvm", 3).unwrap();
    wait_mounted(&grid, 3);
    import_appliance(&grid);
    eventually(&grid, 1, "test $(ls /gvs/.grid/nodes | wc -l) -eq 3", 60);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let desc = MIG.replace("NCPU", &ncpu.to_string());
    let dir = "/tmp/grctlvm";
    sh(
        &grid,
        1,
        &format!("mkdir -p {dir} && cat > {dir}/gmig.toml <<'EOF'\n{desc}EOF"),
    );
    sh(
        &grid,
        1,
        &format!("mkdir /gvs/.grid/apps/gmig && cat {dir}/gmig.toml > /gvs/.grid/apps/gmig/spec"),
    );
    // start is accepted by the write; the scheduler places it meanwhile.
    sh(&grid, 2, "/bin/echo start > /gvs/.grid/apps/gmig/ctl");
    let t = eventually(
        &grid,
        3,
        "cat /gvs/.grid/vms/gmig.ticker/state | grep 'vm gmig.ticker: running'",
        120,
    );
    let h = sh(&grid, 3, "cat /gvs/.grid/vms/gmig.hog/state");
    let (src, full) = (node_of(&t).unwrap(), node_of(&h).unwrap());
    assert_ne!(src, full, "{t}\n{h}");

    // The hog's node has no CPU left: the scheduler refuses; the write
    // does not wait for its answer, which lands in error.
    sh(
        &grid,
        3,
        &format!("/bin/echo migrate node{full} > /gvs/.grid/vms/gmig.ticker/ctl"),
    );
    let err = eventually(
        &grid,
        3,
        "grep 'ticker needs' /gvs/.grid/vms/gmig.ticker/error",
        120,
    );
    assert!(err.contains(&format!("migrate node{full}:")), "{err}");
    let t = sh(&grid, 1, "cat /gvs/.grid/vms/gmig.ticker/state");
    assert_eq!(node_of(&t), Some(src), "{t}");

    // Its console, read on the hog's node.
    eventually(
        &grid,
        full,
        "grep -q 'VMCTL-BOOT gmig.ticker' /gvs/.grid/vms/gmig.ticker/console",
        120,
    );

    // One VM stopped and started again through its ctl; the app goes on.
    sh(
        &grid,
        full,
        "/bin/echo stop > /gvs/.grid/vms/gmig.ticker/ctl",
    );
    eventually(
        &grid,
        2,
        "grep -q 'vm gmig.ticker: stopped' /gvs/.grid/vms/gmig.ticker/state",
        120,
    );
    let h = sh(&grid, 2, "cat /gvs/.grid/vms/gmig.hog/state");
    assert!(h.contains("vm gmig.hog: running"), "{h}");
    sh(&grid, 1, "/bin/echo start > /gvs/.grid/vms/gmig.ticker/ctl");
    eventually(
        &grid,
        3,
        "cat /gvs/.grid/vms/gmig.ticker/state | grep 'vm gmig.ticker: running'",
        120,
    );

    // A snapshot of the running application (its writers flush); a
    // rollback onto it is refused while its VMs run, naming one, and
    // works once the application is stopped.
    sh(&grid, 1, "mkdir /gvs/apps/gmig/.snapshots/s1");
    let (ok, out) = run(&grid, 2, "gvsfs rollback /gvs/apps/gmig s1");
    assert!(!ok, "{out}");
    assert!(
        out.trim().lines().count() == 1
            && out.contains("VM gmig.")
            && out.contains("stop it first"),
        "{out}"
    );

    // stop and destroy through ctl; a destroy of a running app is refused.
    let (ok, _) = run(&grid, 1, "/bin/echo destroy > /gvs/.grid/apps/gmig/ctl");
    assert!(!ok);
    assert!(sh(&grid, 1, "cat /gvs/.grid/apps/gmig/error").contains("stop it first"));
    sh(&grid, 1, "/bin/echo stop > /gvs/.grid/apps/gmig/ctl");
    eventually(
        &grid,
        1,
        "! grep -q 'under way' /gvs/.grid/apps/gmig/state",
        120,
    );
    assert_eq!(sh(&grid, 1, "cat /gvs/.grid/apps/gmig/error"), "");
    let out = sh(&grid, 2, "gvsfs rollback /gvs/apps/gmig s1");
    assert!(out.contains("volumes restored from s1"), "{out}");
    sh(&grid, 1, "/bin/echo destroy > /gvs/.grid/apps/gmig/ctl");
    eventually(&grid, 2, "! ls /gvs/.grid/apps | grep -q gmig", 10);
}

/// A spec for application `name` of the fake image.
fn small_app(name: &str) -> String {
    SHOP.replace("name = \"shop\"", &format!("name = \"{name}\""))
}

/// Runs a python3 script on node `i`; its stdout.
fn py(grid: &GridGuard, i: usize, script: &str) -> String {
    sh(
        grid,
        i,
        &format!("/usr/bin/python3 - <<'EOF'\nimport os, errno, threading\n{script}\nEOF"),
    )
}

/// A one-node grid with the fake image and a plain file, /gvs/data/f.
fn one_node(name: &str) -> GridGuard {
    let grid = GridGuard::up(name, 1).unwrap();
    wait_mounted(&grid, 1);
    eventually(&grid, 1, "test $(ls /gvs/.grid/nodes | wc -l) -eq 1", 60);
    sh(&grid, 1, "mkdir -p /gvs/catalog/fake && cd /gvs/catalog/fake && echo k > vmlinuz && printf 'kernel = \"vmlinuz\"\\n' > image.toml && truncate -s 1M root.vol");
    sh(
        &grid,
        1,
        "mkdir -p /gvs/data && echo still served > /gvs/data/f",
    );
    grid
}

#[test]
fn control_writes_are_bounded_and_keep_their_errno() {
    let grid = one_node("ctctlb");

    // One byte at 1 TiB into a spec: EFBIG, and the mount goes on serving.
    sh(&grid, 1, "mkdir /gvs/.grid/apps/huge");
    let out = py(
        &grid,
        1,
        "def t(op, f):
    try:
        f()
        print(op, 'ok')
    except OSError as e:
        print(op, errno.errorcode[e.errno])
def pwrite(path, data, off):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, off)
    finally:
        os.close(fd)
spec = '/gvs/.grid/apps/huge/spec'
t('pwrite-1TiB', lambda: pwrite(spec, b'x', 1 << 40))
t('pwrite-past-1MiB', lambda: pwrite(spec, b'#' * 20, (1 << 20) - 10))
t('long-ctl', lambda: pwrite('/gvs/.grid/apps/huge/ctl', b's' * 8192 + b'\\n', 0))
t('enoent', lambda: open('/gvs/.grid/apps/nope/state').read())
t('bad-spec', lambda: pwrite(spec, b'name = 3\\n', 0))
",
    );
    for want in [
        "pwrite-1TiB EFBIG\n",
        "pwrite-past-1MiB EFBIG\n",
        "long-ctl EINVAL\n",
        "enoent ENOENT\n",
        "bad-spec EINVAL\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(sh(&grid, 1, "cat /gvs/data/f"), "still served\n");
    let err = sh(&grid, 1, "cat /gvs/.grid/apps/huge/error");
    assert!(!err.is_empty() && err.len() < 4096, "{err}");
    let (ok, out) = run(&grid, 1, "rmdir /gvs/.grid/apps/huge");
    assert!(ok, "{out}");
}

#[test]
fn long_ctl_commands_return_at_once_and_never_hold_the_mount() {
    let grid = one_node("ctctl");

    // More long commands at once than the mount has FUSE workers (8),
    // with no agent to answer them: every write returns at once, a file
    // on /gvs reads meanwhile, and `state` shows each command under way;
    // the outcome comes later, in `error`.
    let apps: Vec<String> = (1..=10).map(|i| format!("a{i}")).collect();
    let dir = "/tmp/ctctl";
    for a in &apps {
        sh(
            &grid,
            1,
            &format!(
                "mkdir -p {dir} && cat > {dir}/{a}.toml <<'EOF'\n{}EOF\nmkdir /gvs/.grid/apps/{a} && cat {dir}/{a}.toml > /gvs/.grid/apps/{a}/spec",
                small_app(a)
            ),
        );
    }
    grid.kill(1, Some("vmctl")).unwrap();
    let out = py(
        &grid,
        1,
        "res = {}
def start(a):
    try:
        with open('/gvs/.grid/apps/%s/ctl' % a, 'w') as f:
            f.write('start\\n')
        res[a] = 'ok'
    except OSError as e:
        res[a] = errno.errorcode[e.errno]
ts = [threading.Thread(target=start, args=('a%d' % i,)) for i in range(1, 11)]
for t in ts: t.start()
for t in ts: t.join()
for a in sorted(res): print('write', a, res[a])
print('read', open('/gvs/data/f').read().strip())
for i in range(1, 11):
    st = open('/gvs/.grid/apps/a%d/state' % i).read()
    print('state', i, 'under way' if 'under way' in st else st)
try:
    with open('/gvs/.grid/apps/a1/ctl', 'w') as f:
        f.write('stop\\n')
    print('second ok')
except OSError as e:
    print('second', errno.errorcode[e.errno])
",
    );
    for a in &apps {
        assert!(out.contains(&format!("write {a} ok\n")), "{a}:\n{out}");
    }
    assert!(out.contains("read still served\n"), "{out}");
    for i in 1..=10 {
        assert!(
            out.contains(&format!("state {i} under way\n")),
            "{i}:\n{out}"
        );
    }
    assert!(out.contains("second EBUSY\n"), "{out}");
    let busy = sh(&grid, 1, "cat /gvs/.grid/apps/a1/error");
    assert!(busy.contains("under way"), "{busy}");
    // The outcome: no scheduler answered.
    for a in &apps {
        eventually(
            &grid,
            1,
            &format!("grep -q 'no answer from the scheduler' /gvs/.grid/apps/{a}/error"),
            120,
        );
    }
    let st = sh(&grid, 1, "cat /gvs/.grid/apps/a1/state");
    assert!(!st.contains("under way"), "{st}");
}
