//! Control files: the virtual `/gvs/.grid` tree, in the style of Plan 9,
//! `/proc` and sysfs. A directory is an object; `spec` holds its
//! declarative definition, `ctl` takes one-line commands, `state` reads
//! what is true now and `error` the reason of the last refusal.
//!
//! ```text
//! /gvs/.grid/apps/NAME/{spec,ctl,state,error}   applications
//! /gvs/.grid/vms/APP.COMP/{ctl,state,error,console}  VMs
//! /gvs/.grid/nodes/NODE/state                   nodes (their agents)
//! /gvs/.grid/events                             the grid's event log
//! ```
//!
//! Everything lives in metad (DVM's records under `dvm/`, the event log
//! of every service under `events/`) and goes through vmctl's library, so the tree is the same on
//! every node. `mkdir apps/NAME` makes an empty object (`grid/pending/NAME`
//! in metad) until its `spec` is written; writing `spec` validates the
//! descriptor and creates the application at close (EINVAL from close, the
//! reason in `error`, when it is refused). A `spec` holds at most 1 MiB
//! (EFBIG past it, at any offset). A `ctl` command line holds at most
//! 4 KiB; a quick command (`destroy`) runs in the write, EINVAL when
//! refused; a long one (`start`, `stop`, `migrate`) is checked at once
//! (EINVAL for what needs no scheduler: an unknown command, a node that is
//! not up, a VM whose application is not running), then runs on a task of
//! its own, one per object at a time (EBUSY for another meanwhile), and
//! the write returns: no FUSE worker, which VM disks need too, waits for
//! the scheduler. `state` says it is under way on the node that took it;
//! its outcome lands in `error` (empty when it succeeded). `error` is kept in
//! metad (`grid/error/<object>`), so it reads the same from every node.
//! `console` is the VM's console tail as its agent copies it to metad
//! ([`vmctl::console`]).
//!
//! Files have size 0 and are opened with direct I/O: their content is
//! made when they are opened (one read of metad per record kind).
//!
//! Inode numbers: `2^61 | i`, `i` indexing an interned path (real inode
//! numbers stay far below 2^61; snapshots use bits 62 and 63).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use metad::events::{self, clock};
use metad::{Op, Txn};
use vmctl::commands::{self as cmd, CmdError};
use vmctl::model::{self, NodeRecord};
use vmctl::store::{at_rev, put_op, Store};

/// The control directory's name at the root of /gvs.
pub const GRID: &str = ".grid";
const GRID_BIT: u64 = 1 << 61;
const HIGH_BITS: u64 = 0b111 << 61;
/// How long `ctl` waits for the scheduler's answer to `start`/`migrate`.
const START_WAIT: Duration = Duration::from_secs(20);
/// How long `ctl` waits for `stop` to release every reservation.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// The most a `spec` holds (a descriptor is a few KiB): its buffer is
/// never sized by a writer's offset past this.
const MAX_SPEC: u64 = 1 << 20;
/// The longest `ctl` command line.
const MAX_CTL_LINE: usize = 4 << 10;

/// Whether `ino` is in the control tree.
pub fn is_grid(ino: u64) -> bool {
    ino & HIGH_BITS == GRID_BIT
}

/// What a path of the tree names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Obj {
    Root,
    Apps,
    App(String),
    AppFile(String, File),
    Vms,
    Vm(String),
    VmFile(String, File),
    Nodes,
    Node(String),
    NodeState(String),
    Events,
}

/// Keys of the tree's own state in metad.
const PENDING: &str = "grid/pending/";
const ERRORS: &str = "grid/error/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    Spec,
    Ctl,
    State,
    Error,
    Console,
}

impl File {
    fn parse(s: &str) -> Option<File> {
        Some(match s {
            "spec" => File::Spec,
            "ctl" => File::Ctl,
            "state" => File::State,
            "error" => File::Error,
            "console" => File::Console,
            _ => return None,
        })
    }
}

fn parse(path: &str) -> Option<Obj> {
    let parts: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    Some(match parts.as_slice() {
        [] => Obj::Root,
        ["apps"] => Obj::Apps,
        ["apps", a] => Obj::App(a.to_string()),
        ["apps", a, f] => match File::parse(f)? {
            File::Console => return None,
            f => Obj::AppFile(a.to_string(), f),
        },
        ["vms"] => Obj::Vms,
        ["vms", v] => Obj::Vm(v.to_string()),
        ["vms", v, f] => match File::parse(f)? {
            File::Spec => return None,
            f => Obj::VmFile(v.to_string(), f),
        },
        ["nodes"] => Obj::Nodes,
        ["nodes", n] => Obj::Node(n.to_string()),
        ["nodes", n, "state"] => Obj::NodeState(n.to_string()),
        ["events"] => Obj::Events,
        _ => return None,
    })
}

/// An open control file: its content as of the open, or what is written.
struct Open {
    path: String,
    data: Vec<u8>,
    /// Written and not applied yet (`spec`).
    dirty: bool,
}

#[derive(Default)]
struct Paths {
    by_path: HashMap<String, u64>,
    by_idx: Vec<String>,
}

/// The long `ctl` commands under way on this node: object -> command line.
type UnderWay = Arc<Mutex<HashMap<String, String>>>;

/// The control tree of one node's mount.
pub struct Grid {
    store: Arc<Store>,
    rt: tokio::runtime::Handle,
    paths: Mutex<Paths>,
    open: Mutex<HashMap<u64, Open>>,
    next_fh: AtomicU64,
    under_way: UnderWay,
}

/// Why a `ctl` line is refused.
#[derive(Debug, thiserror::Error)]
enum CtlError {
    /// The command refused it (or failed).
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// A long command runs for this object (the one named).
    #[error("{0:?} is under way; its outcome shows in error")]
    Busy(String),
    /// A line past [`MAX_CTL_LINE`].
    #[error("a ctl command is at most {MAX_CTL_LINE} bytes; this one has {0}")]
    TooLong(usize),
}

impl CtlError {
    fn errno(&self) -> Errno {
        match self {
            CtlError::Cmd(e) => refusal(e),
            CtlError::Busy(_) => Errno::EBUSY,
            CtlError::TooLong(_) => Errno::EINVAL,
        }
    }
}

/// A `ctl` command that waits for the scheduler or an agent: it runs on a
/// task of its own once its quick checks pass.
#[derive(Debug, Clone)]
enum Long {
    AppStart(String),
    AppStop(String),
    VmStart(String),
    VmStop(String),
    Migrate(String, String),
}

impl Long {
    /// The refusals that need no scheduler, given to the writer at once.
    async fn check(&self, s: &Store) -> Result<(), CmdError> {
        match self {
            Long::VmStart(vm) => cmd::vm_start_check(s, vm).await.map(drop),
            Long::Migrate(_, node) => cmd::node_up(s, node).await,
            // The object exists (checked at open); nothing else is quick.
            _ => Ok(()),
        }
    }

    async fn run(&self, s: &Store) -> Result<String, CmdError> {
        match self {
            Long::AppStart(a) => cmd::app_start(s, a, START_WAIT).await,
            Long::AppStop(a) => cmd::app_stop(s, a, STOP_WAIT).await,
            Long::VmStart(v) => cmd::vm_start(s, v, START_WAIT).await,
            Long::VmStop(v) => cmd::vm_stop(s, v, STOP_WAIT).await,
            Long::Migrate(v, node) => match cmd::vm_migrate(s, v, node, START_WAIT).await {
                // Accepted and under way: it goes on; `state` follows it.
                Err(CmdError::Timeout(m)) => Ok(m),
                r => r,
            },
        }
    }
}

/// A parsed `ctl` line.
enum Ctl {
    Destroy(String),
    Long(Long),
}

/// Records (or clears) the reason of an object's last refusal.
async fn put_error(
    store: &Store,
    object: &str,
    e: Option<String>,
) -> Result<(), metad::ClientError> {
    let key = format!("{ERRORS}{object}").into_bytes();
    let op = match e {
        Some(e) => Op::Put {
            key,
            value: (e + "\n").into_bytes(),
            lease: 0,
        },
        None => Op::Delete { key },
    };
    store
        .client
        .txn(Txn {
            success: vec![op],
            ..Txn::default()
        })
        .await
        .map(drop)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The errno of a refused command, and its reason.
fn refusal(e: &CmdError) -> Errno {
    match e {
        CmdError::NotFound(_) => Errno::ENOENT,
        CmdError::Timeout(_) => Errno::ETIMEDOUT,
        CmdError::Descriptor { .. } | CmdError::Refused(_) | CmdError::Volume(_) => Errno::EINVAL,
        // What failed below the command (metad, the store, I/O, ...).
        _ => Errno::EIO,
    }
}

/// A line written to an application's `ctl`, parsed (public for its fuzz
/// target: anyone who may write the file reaches this grammar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppCommand {
    /// `start`: schedule and start every VM.
    Start,
    /// `stop`: stop every VM and release its reservations.
    Stop,
    /// `destroy`: remove the application.
    Destroy,
}

impl AppCommand {
    /// Parses one line (surrounding and repeated whitespace ignored).
    pub fn parse(line: &str) -> Result<AppCommand, CmdError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["start"] => Ok(AppCommand::Start),
            ["stop"] => Ok(AppCommand::Stop),
            ["destroy"] => Ok(AppCommand::Destroy),
            _ => Err(CmdError::Refused(format!(
                "unknown command {line:?}; an application's ctl takes start, stop or destroy"
            ))),
        }
    }
}

/// A line written to a VM's `ctl`, parsed (public for its fuzz target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmCommand<'a> {
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `migrate NODE`: move the VM to that node.
    Migrate(&'a str),
}

impl<'a> VmCommand<'a> {
    /// Parses one line (surrounding and repeated whitespace ignored).
    pub fn parse(line: &'a str) -> Result<VmCommand<'a>, CmdError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["start"] => Ok(VmCommand::Start),
            ["stop"] => Ok(VmCommand::Stop),
            ["migrate", node] => Ok(VmCommand::Migrate(node)),
            _ => Err(CmdError::Refused(format!(
                "unknown command {line:?}; a VM's ctl takes start, stop or migrate NODE"
            ))),
        }
    }
}

/// Parses a line of an application's `ctl` into what to run.
fn app_ctl(app: &str, line: &str) -> Result<Ctl, CmdError> {
    let app = app.to_string();
    Ok(match AppCommand::parse(line)? {
        AppCommand::Start => Ctl::Long(Long::AppStart(app)),
        AppCommand::Stop => Ctl::Long(Long::AppStop(app)),
        AppCommand::Destroy => Ctl::Destroy(app),
    })
}

/// Parses a line of a VM's `ctl` into what to run.
fn vm_ctl(vm: &str, line: &str) -> Result<Ctl, CmdError> {
    let vm = vm.to_string();
    Ok(Ctl::Long(match VmCommand::parse(line)? {
        VmCommand::Start => Long::VmStart(vm),
        VmCommand::Stop => Long::VmStop(vm),
        VmCommand::Migrate(node) => Long::Migrate(vm, node.to_string()),
    }))
}

fn object_of(path: &str) -> String {
    path.rsplit_once('/').map_or("", |(o, _)| o).to_string()
}

impl Grid {
    /// The tree over DVM's records, run on `rt` (a runtime of this process
    /// that FUSE threads may block on).
    pub fn new(store: Store, rt: tokio::runtime::Handle) -> Grid {
        let g = Grid {
            store: Arc::new(store),
            rt,
            paths: Mutex::new(Paths::default()),
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            under_way: UnderWay::default(),
        };
        g.ino_of("");
        g
    }

    /// The inode number of `/gvs/.grid`.
    pub fn root_ino(&self) -> u64 {
        GRID_BIT
    }

    fn ino_of(&self, path: &str) -> u64 {
        let mut p = lock(&self.paths);
        if let Some(i) = p.by_path.get(path) {
            return *i;
        }
        let i = GRID_BIT | p.by_idx.len() as u64;
        p.by_idx.push(path.to_string());
        p.by_path.insert(path.to_string(), i);
        i
    }

    fn path_of(&self, ino: u64) -> Result<String, Errno> {
        lock(&self.paths)
            .by_idx
            .get((ino & !GRID_BIT) as usize)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn exists(&self, prefix: &str, name: &str) -> Result<bool, Errno> {
        let key = format!("{prefix}{name}");
        self.rt
            .block_on(self.store.client.get(key.as_str()))
            .map(|v| v.is_some())
            .map_err(Self::metad_err)
    }

    /// A metad failure, logged, as the errno the caller sees.
    fn metad_err(e: impl std::fmt::Display) -> Errno {
        tracing::warn!("{GRID}: metad: {e}");
        Errno::EIO
    }

    /// Runs a transaction; whether it applied.
    fn txn(&self, txn: Txn) -> Result<bool, Errno> {
        self.rt
            .block_on(self.store.client.txn(txn))
            .map(|r| r.succeeded)
            .map_err(Self::metad_err)
    }

    /// Whether `mkdir apps/NAME` made an object whose spec is not written.
    fn pending(&self, app: &str) -> Result<bool, Errno> {
        self.exists(PENDING, app)
    }

    /// Forgets a pending object (its spec was written, or it was removed).
    fn unpend(&self, app: &str) -> Result<(), Errno> {
        self.txn(Txn {
            success: vec![Op::Delete {
                key: format!("{PENDING}{app}").into_bytes(),
            }],
            ..Txn::default()
        })
        .map(drop)
    }

    /// Whether the object a path names exists now.
    fn check(&self, obj: &Obj) -> Result<(), Errno> {
        let ok = match obj {
            Obj::App(a) | Obj::AppFile(a, _) => self.pending(a)? || self.exists(model::APPS, a)?,
            Obj::Vm(v) | Obj::VmFile(v, _) => self.exists(model::VMS, v)?,
            Obj::Node(n) | Obj::NodeState(n) => self.exists(model::NODES, n)?,
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Errno::ENOENT)
        }
    }

    fn attr_of(&self, ino: u64, obj: &Obj) -> FileAttr {
        let (kind, perm) = match obj {
            Obj::Root | Obj::Apps | Obj::Vms | Obj::Nodes => (FileType::Directory, 0o755),
            Obj::App(_) | Obj::Vm(_) | Obj::Node(_) => (FileType::Directory, 0o755),
            Obj::AppFile(_, File::Spec) => (FileType::RegularFile, 0o644),
            Obj::AppFile(_, File::Ctl) | Obj::VmFile(_, File::Ctl) => {
                (FileType::RegularFile, 0o200)
            }
            _ => (FileType::RegularFile, 0o444),
        };
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let path = self.path_of(ino)?;
        let obj = parse(&path).ok_or(Errno::ENOENT)?;
        if matches!(obj, Obj::App(_) | Obj::Vm(_) | Obj::Node(_)) {
            self.check(&obj)?;
        }
        Ok(self.attr_of(ino, &obj))
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Result<FileAttr, Errno> {
        let dir = self.path_of(parent)?;
        let path = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        let obj = parse(&path).ok_or(Errno::ENOENT)?;
        if matches!(obj, Obj::App(_) | Obj::Vm(_) | Obj::Node(_)) {
            self.check(&obj)?;
        }
        let ino = self.ino_of(&path);
        Ok(self.attr_of(ino, &obj))
    }

    fn names(&self, prefix: &str) -> Result<Vec<String>, Errno> {
        let (kvs, _) = self
            .rt
            .block_on(self.store.client.get_prefix(prefix))
            .map_err(Self::metad_err)?;
        Ok(kvs
            .into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
            .collect())
    }

    /// The entries of directory `ino` (without `.` and `..`).
    pub fn readdir(&self, ino: u64) -> Result<Vec<(u64, FileType, String)>, Errno> {
        let path = self.path_of(ino)?;
        let obj = parse(&path).ok_or(Errno::ENOENT)?;
        let (dirs, files): (Vec<String>, &[&str]) = match &obj {
            Obj::Root => (
                vec!["apps".into(), "vms".into(), "nodes".into()],
                &["events"],
            ),
            Obj::Apps => {
                let mut v: BTreeSet<String> = self.names(model::APPS)?.into_iter().collect();
                v.extend(self.names(PENDING)?);
                (v.into_iter().collect(), &[])
            }
            Obj::Vms => (self.names(model::VMS)?, &[]),
            Obj::Nodes => (self.names(model::NODES)?, &[]),
            Obj::App(_) => (vec![], &["spec", "ctl", "state", "error"]),
            Obj::Vm(_) => (vec![], &["ctl", "state", "error", "console"]),
            Obj::Node(_) => (vec![], &["state"]),
            _ => return Err(Errno::ENOTDIR),
        };
        let join = |n: &str| {
            if path.is_empty() {
                n.to_string()
            } else {
                format!("{path}/{n}")
            }
        };
        let mut out = Vec::new();
        for d in dirs {
            out.push((self.ino_of(&join(&d)), FileType::Directory, d));
        }
        for f in files {
            out.push((self.ino_of(&join(f)), FileType::RegularFile, f.to_string()));
        }
        Ok(out)
    }

    /// `mkdir apps/NAME`: an empty application object, until its spec is
    /// written.
    pub fn mkdir(&self, parent: u64, name: &str) -> Result<FileAttr, Errno> {
        if self.path_of(parent)? != "apps" {
            return Err(Errno::EPERM);
        }
        vmctl::descriptor::check_name(name).map_err(|_| Errno::EINVAL)?;
        let key = format!("{PENDING}{name}");
        let made = self.txn(Txn {
            compare: vec![at_rev(&model::app_key(name), 0), at_rev(&key, 0)],
            success: vec![put_op(&key, &vmctl::model::now_ms())],
            failure: vec![],
        })?;
        if !made {
            return Err(Errno::EEXIST);
        }
        self.lookup(parent, name)
    }

    /// `rmdir apps/NAME` of an object whose spec was never written (an
    /// application is removed with `destroy` in its `ctl`).
    pub fn rmdir(&self, parent: u64, name: &str) -> Result<(), Errno> {
        if self.path_of(parent)? != "apps" {
            return Err(Errno::EPERM);
        }
        if self.pending(name)? {
            self.set_error(&format!("apps/{name}"), None)?;
            return self.unpend(name);
        }
        if self.exists(model::APPS, name)? {
            return Err(Errno::EBUSY);
        }
        Err(Errno::ENOENT)
    }

    /// Opens a control file; its content is made now.
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let path = self.path_of(ino)?;
        let obj = parse(&path).ok_or(Errno::ENOENT)?;
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let writable = matches!(
            obj,
            Obj::AppFile(_, File::Spec | File::Ctl) | Obj::VmFile(_, File::Ctl)
        );
        if matches!(obj, Obj::Root | Obj::Apps | Obj::Vms | Obj::Nodes)
            || matches!(obj, Obj::App(_) | Obj::Vm(_) | Obj::Node(_))
        {
            return Err(Errno::EISDIR);
        }
        if write && !writable {
            return Err(Errno::EACCES);
        }
        self.check(&obj)?;
        let data = if write {
            Vec::new()
        } else {
            self.content(&path, &obj)?.into_bytes()
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.open).insert(
            fh,
            Open {
                path,
                data,
                dirty: false,
            },
        );
        Ok(fh)
    }

    fn content(&self, path: &str, obj: &Obj) -> Result<String, Errno> {
        let run = |r: Result<String, CmdError>| {
            r.or_else(|e| match e {
                CmdError::NotFound(_) => Err(Errno::ENOENT),
                e => Ok(format!("error: {e}\n")),
            })
        };
        match obj {
            Obj::AppFile(_, File::Error) | Obj::VmFile(_, File::Error) => {
                let key = format!("{ERRORS}{}", object_of(path));
                let v = self
                    .rt
                    .block_on(self.store.client.get(key))
                    .map_err(Self::metad_err)?;
                Ok(v.map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                    .unwrap_or_default())
            }
            Obj::VmFile(v, File::Console) => {
                let t = self
                    .rt
                    .block_on(vmctl::console::tail(&self.store, v))
                    .map_err(Self::metad_err)?;
                Ok(t.map(|t| t.tail).unwrap_or_default())
            }
            Obj::AppFile(_, File::Ctl) | Obj::VmFile(_, File::Ctl) => Err(Errno::EACCES),
            Obj::AppFile(a, File::Spec) => {
                let rec = self
                    .rt
                    .block_on(self.store.get::<model::AppRecord>(&model::app_key(a)))
                    .map_err(|_| Errno::EIO)?;
                Ok(rec.map(|r| r.value.source).unwrap_or_default())
            }
            Obj::AppFile(a, File::State) => {
                if !self.exists(model::APPS, a)? && self.pending(a)? {
                    return Ok(format!("app {a}: no spec written yet\n"));
                }
                let s = run(self.rt.block_on(cmd::app_show(&self.store, a, false)))?;
                Ok(s + &self.under_way_line(path))
            }
            Obj::VmFile(v, File::State) => {
                let s = run(self.rt.block_on(cmd::vm_show(&self.store, v, false)))?;
                Ok(s + &self.under_way_line(path))
            }
            Obj::NodeState(n) => {
                let rec = self
                    .rt
                    .block_on(self.store.get::<NodeRecord>(&model::node_key(n)))
                    .map_err(|_| Errno::EIO)?
                    .ok_or(Errno::ENOENT)?
                    .value;
                Ok(format!(
                    "node {}: up since {}, cpus {}, mem {}, bw {} Mbit/s, accel {}, hypervisors {}, limits: {}\n",
                    rec.name,
                    clock(rec.since_ms),
                    rec.cpus,
                    vmctl::units::fmt_mib(rec.mem_mib),
                    rec.bw_mbit,
                    rec.accel,
                    rec.hypervisors.join(","),
                    rec.limits
                ))
            }
            Obj::Events => self.events(),
            _ => Err(Errno::EISDIR),
        }
    }

    /// The grid's event log (DVM, LCM and GVS), oldest first, one a line.
    fn events(&self) -> Result<String, Errno> {
        let (evs, _) = self
            .rt
            .block_on(events::list(&self.store.client))
            .map_err(Self::metad_err)?;
        Ok(evs.iter().map(|e| e.line() + "\n").collect())
    }

    /// Reads an open file's content.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let open = lock(&self.open);
        let o = open.get(&fh).ok_or(Errno::EBADF)?;
        let start = (offset as usize).min(o.data.len());
        let end = (start + size as usize).min(o.data.len());
        Ok(o.data[start..end].to_vec())
    }

    /// What `state` adds while a long `ctl` command of the object at
    /// `path` runs on this node.
    fn under_way_line(&self, path: &str) -> String {
        lock(&self.under_way)
            .get(&object_of(path))
            .map(|l| format!("ctl: {l:?} under way\n"))
            .unwrap_or_default()
    }

    /// Records (or clears) the reason of an object's last refusal.
    fn set_error(&self, object: &str, e: Option<String>) -> Result<(), Errno> {
        self.rt
            .block_on(put_error(&self.store, object, e))
            .map_err(Self::metad_err)
    }

    /// Buffers a write to `spec`, refusing what passes [`MAX_SPEC`].
    fn write_spec(o: &mut Open, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= MAX_SPEC)
            .ok_or(Errno::EFBIG)?;
        let (off, end) = (offset as usize, end as usize);
        if o.data.len() < end {
            o.data.resize(end, 0);
        }
        o.data[off..end].copy_from_slice(data);
        o.dirty = true;
        Ok(data.len() as u32)
    }

    /// Writes to `spec` (buffered until close, at most [`MAX_SPEC`]) or
    /// `ctl` (each line is checked now, and runs now or on its own task; a
    /// refused command fails the write with its reason in `error`).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let path = {
            let mut open = lock(&self.open);
            let o = open.get_mut(&fh).ok_or(Errno::EBADF)?;
            if !o.path.ends_with("/spec") {
                o.path.clone()
            } else {
                let r = Self::write_spec(o, offset, data);
                let object = object_of(&o.path);
                drop(open);
                if r.is_err() {
                    let why = format!(
                        "a spec holds at most {MAX_SPEC} bytes; a write reached {offset} + {}",
                        data.len()
                    );
                    tracing::info!("{GRID}/{object}/spec: {why}");
                    self.set_error(&object, Some(why))?;
                }
                return r;
            }
        };
        let obj = parse(&path).ok_or(Errno::ENOENT)?;
        let object = object_of(&path);
        let text = String::from_utf8_lossy(data);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match self.ctl_line(&obj, &object, line) {
                Ok(msg) => {
                    tracing::info!("{GRID}/{path}: {line}: {}", msg.trim_end());
                }
                Err(e) => {
                    tracing::info!("{GRID}/{path}: refused: {e}");
                    let why = match e {
                        CtlError::TooLong(_) => e.to_string(),
                        _ => format!("{line}: {e}"),
                    };
                    self.set_error(&object, Some(why))?;
                    return Err(e.errno());
                }
            }
        }
        Ok(data.len() as u32)
    }

    /// Runs one `ctl` line: a quick command now, a long one (once its
    /// quick checks pass) on a task of its own.
    fn ctl_line(&self, obj: &Obj, object: &str, line: &str) -> Result<String, CtlError> {
        if line.len() > MAX_CTL_LINE {
            return Err(CtlError::TooLong(line.len()));
        }
        let c = match obj {
            Obj::AppFile(a, File::Ctl) => app_ctl(a, line)?,
            Obj::VmFile(v, File::Ctl) => vm_ctl(v, line)?,
            _ => return Err(CmdError::Refused("not a ctl file".into()).into()),
        };
        if let Some(cur) = lock(&self.under_way).get(object) {
            return Err(CtlError::Busy(cur.clone()));
        }
        match c {
            Ctl::Destroy(app) => Ok(self.destroy(&app)?),
            Ctl::Long(long) => {
                self.rt.block_on(long.check(&self.store))?;
                self.spawn(object, line, long)?;
                Ok("accepted".into())
            }
        }
    }

    /// Runs a long command on its own task, one per object at a time; its
    /// outcome goes to `error` before `state` stops saying it is under way.
    fn spawn(&self, object: &str, line: &str, long: Long) -> Result<(), CtlError> {
        {
            let mut u = lock(&self.under_way);
            if let Some(cur) = u.get(object) {
                return Err(CtlError::Busy(cur.clone()));
            }
            u.insert(object.to_string(), line.to_string());
        }
        let (store, under_way) = (self.store.clone(), self.under_way.clone());
        let (object, line) = (object.to_string(), line.to_string());
        self.rt.spawn(async move {
            let outcome = match long.run(&store).await {
                Ok(msg) => {
                    tracing::info!("{GRID}/{object}: {line}: {}", msg.trim_end());
                    None
                }
                Err(e) => {
                    tracing::info!("{GRID}/{object}: {line}: refused: {e}");
                    Some(format!("{line}: {e}"))
                }
            };
            if let Err(e) = put_error(&store, &object, outcome).await {
                tracing::warn!("{GRID}/{object}: {line}: recording its outcome: {e}");
            }
            lock(&under_way).remove(&object);
        });
        Ok(())
    }

    /// `destroy`: quick (a running application is refused, not stopped).
    fn destroy(&self, app: &str) -> Result<String, CmdError> {
        let r = self
            .rt
            .block_on(cmd::app_destroy(&self.store, app, false))?;
        // The errors of the app and its VMs go with it.
        let gone = [format!("{ERRORS}apps/{app}"), format!("{ERRORS}vms/{app}.")];
        let _ = self.txn(Txn {
            success: gone
                .into_iter()
                .map(|p| Op::DeletePrefix {
                    prefix: p.into_bytes(),
                })
                .collect(),
            ..Txn::default()
        });
        Ok(r)
    }

    /// Applies a written `spec` (at flush and close); a refused one is
    /// EINVAL with its reason in `error`.
    pub fn flush(&self, fh: u64) -> Result<(), Errno> {
        let (path, src) = {
            let mut open = lock(&self.open);
            let Some(o) = open.get_mut(&fh) else {
                return Ok(());
            };
            if !o.dirty {
                return Ok(());
            }
            o.dirty = false;
            (
                o.path.clone(),
                String::from_utf8_lossy(&o.data).into_owned(),
            )
        };
        let Some(Obj::AppFile(app, File::Spec)) = parse(&path) else {
            return Ok(());
        };
        let origin = format!("/gvs/{GRID}/{path}");
        let r = self.rt.block_on(cmd::app_create_from(
            &self.store,
            src,
            &origin,
            Some(&app),
            false,
        ));
        let object = object_of(&path);
        match r {
            Ok(msg) => {
                tracing::info!("{origin}: {}", msg.trim_end());
                self.unpend(&app)?;
                self.set_error(&object, None)
            }
            Err(e) => {
                tracing::info!("{origin}: refused: {e}");
                self.set_error(&object, Some(e.to_string()))?;
                Err(refusal(&e))
            }
        }
    }

    /// Closes a file (a spec not applied yet is applied now).
    pub fn release(&self, fh: u64) -> Result<(), Errno> {
        let r = self.flush(fh);
        lock(&self.open).remove(&fh);
        r
    }
}
