//! Processes inside nodes: starting a daemon detached inside a node's
//! namespaces, telling whether it still runs, and killing every process a
//! node holds so that nothing of a grid outlives `down`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::cmd::display;
use crate::error::{IoContext, Result};
use crate::layout::Layout;

/// A command that runs `program` inside node `i`'s network, mount and UTS
/// namespaces (`nsenter` execs it: the pid is the program's own).
pub(crate) fn in_node(l: &Layout, i: usize, program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", l.netns_path(i).display()))
        .arg(format!("--mount={}", l.mntns_path(i).display()))
        .arg(format!("--uts={}", l.utsns_path(i).display()))
        .arg("--")
        .arg(program);
    cmd
}

/// A running process, identified by pid and start time so that a recycled
/// pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcId {
    /// The process id.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

impl ProcId {
    /// Identifies `pid` if it is running now.
    pub fn of(pid: i32) -> Option<ProcId> {
        let (state, start) = stat(pid)?;
        (state != 'Z').then_some(ProcId { pid, start })
    }

    /// Whether this very process still runs (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        ProcId::of(self.pid) == Some(*self)
    }
}

/// The state letter and start time of `pid`, from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Starts `cmd` (made by [`in_node`]) detached, its output appended to `log`.
pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> Result<ProcId> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
    }
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ctx(|| format!("opening log {}", log.display()))?;
    let err = out
        .try_clone()
        .ctx(|| format!("opening log {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a ^C at the operator's shell does not reach
        // it, and a kill reaches its children too.
        .process_group(0);
    let line = display(cmd);
    let child = cmd.spawn().ctx(|| format!("starting `{line}`"))?;
    let pid = child.id() as i32;
    // The child is reaped by `reap`, not through the handle.
    drop(child);
    Ok(ProcId::of(pid).unwrap_or(ProcId { pid, start: 0 }))
}

/// SIGKILLs the process and its group, and waits until it is gone.
pub(crate) fn kill_and_wait(p: ProcId) {
    if !p.alive() {
        reap(p.pid);
        return;
    }
    let _ = kill(Pid::from_raw(-p.pid), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    reap(p.pid);
}

/// Waits for `pid` to end, collecting its status if it is our child so that
/// no zombie is left in the process table.
fn reap(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            Ok(_) => return,
            // Not our child: its parent reaps it; wait until it is no longer
            // running. A zombie leader is not enough: its other threads may
            // still be finishing a system call (a direct write, a FUSE
            // reply) and hold its files (a store's lock) until they end.
            Err(Errno::ECHILD) => match stat(pid) {
                None => return,
                Some(('Z', _)) if threads_left(pid) <= 1 => return,
                Some(_) => {}
            },
            Err(_) => return,
        }
        if Instant::now() > deadline {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// How many threads of `pid` still exist (0 once it is gone).
fn threads_left(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Kills every process whose network or mount namespace is node `i`'s: the
/// daemons, what they started, and anything an operator ran with `exec`.
pub(crate) fn kill_all_in_node(l: &Layout, i: usize) {
    let targets: Vec<u64> = [l.netns_path(i), l.mntns_path(i)]
        .iter()
        .filter_map(|p| ns_inode(p))
        .collect();
    if targets.is_empty() {
        return;
    }
    // Repeat: a dying process may have forked just before its signal.
    for _ in 0..5 {
        let victims: Vec<ProcId> = pids()
            .filter(|&pid| {
                ["net", "mnt"].iter().any(|kind| {
                    fs::metadata(format!("/proc/{pid}/ns/{kind}"))
                        .map(|m| targets.contains(&m.ino()))
                        .unwrap_or(false)
                })
            })
            .filter_map(ProcId::of)
            .collect();
        if victims.is_empty() {
            return;
        }
        for v in victims {
            kill_and_wait(v);
        }
    }
}

/// The inode that identifies the namespace a namespace file holds.
fn ns_inode(path: &Path) -> Option<u64> {
    // An unmounted placeholder file is a plain file, not a namespace.
    if !is_mounted(path) {
        return None;
    }
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Whether something (here: a namespace) is mounted on `path`.
pub(crate) fn is_mounted(path: &Path) -> bool {
    let p = path.to_string_lossy();
    fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|line| line.split(' ').nth(1) == Some(&*p)))
        .unwrap_or(false)
}

/// Every pid in /proc.
fn pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Removes the cgroups `vmctl agent` made for node `name`'s VMs
/// (`/sys/fs/cgroup/vmctl.slice/NAME/*` on cgroup v2,
/// `/sys/fs/cgroup/<hierarchy>/vmctl/NAME/*` on v1), once the node's
/// processes are gone: an agent killed with its VMs cannot remove them
/// itself. A cgroup that still holds a process (another grid's node of the
/// same name) refuses removal and stays.
pub(crate) fn remove_vm_cgroups(name: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut nodes = vec![root.join("vmctl.slice").join(name)];
    for h in fs::read_dir(root).into_iter().flatten().flatten() {
        nodes.push(h.path().join("vmctl").join(name));
    }
    for node in nodes.iter().filter(|n| n.is_dir()) {
        for vm in fs::read_dir(node).into_iter().flatten().flatten() {
            if vm.path().is_dir() {
                let _ = fs::remove_dir(vm.path());
            }
        }
        let _ = fs::remove_dir(node);
    }
}
