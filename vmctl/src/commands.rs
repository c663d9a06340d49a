//! What each `vmctl` command does, over the [`Store`]. Errors are one line
//! for people; `--json` output is for scripts.

use crate::console;
use crate::controller::capacities;
use crate::descriptor::{self, DescriptorError};
use crate::guest::{self, GuestError};
use crate::model::{self, AppRecord, Desired, NodeRecord, VmRecord, VmState, VmStatus};
use crate::store::{at_rev, put_op, Store, StoreError, Versioned};
use crate::units::fmt_mib;
use crate::volumes::{self, VolumeError};
use metad::events::{self, GridEvent};
use metad::{Op, Txn};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where applications' volumes live.
pub const APPS_DIR: &str = "/gvs/apps";

/// Errors of commands.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// metad.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad descriptor.
    #[error("{file}: {err}")]
    Descriptor {
        /// The file.
        file: String,
        /// What is wrong, where.
        err: DescriptorError,
    },
    /// metad, directly.
    #[error("metad: {0}")]
    Metad(#[from] metad::ClientError),
    /// Images or volumes.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A file could not be read.
    #[error("{0}")]
    Io(String),
    /// Not found.
    #[error("no such {0}")]
    NotFound(String),
    /// Refused (with the reason).
    #[error("{0}")]
    Refused(String),
    /// Timed out waiting.
    #[error("{0}")]
    Timeout(String),
    /// The guests' NICs could not be declared to lcmd.
    #[error(transparent)]
    Guest(#[from] GuestError),
}

/// Appends a line to a command's output (a `String`).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn json_text<T: Serialize>(v: &T) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).expect("serializes"))
}

fn table(rows: Vec<Vec<String>>) -> String {
    let mut out = String::new();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        outln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

async fn app(store: &Store, name: &str) -> Result<Versioned<AppRecord>, CmdError> {
    store
        .get::<AppRecord>(&model::app_key(name))
        .await?
        .ok_or_else(|| CmdError::NotFound(format!("application {name}")))
}

async fn app_vms(
    store: &Store,
    name: &str,
) -> Result<Vec<(String, Versioned<VmRecord>)>, CmdError> {
    Ok(store
        .list::<VmRecord>(model::VMS)
        .await?
        .0
        .into_iter()
        .filter(|(_, v)| v.value.app == name)
        .collect())
}

/// `vmctl app create FILE`.
pub async fn app_create(store: &Store, file: &Path, json: bool) -> Result<String, CmdError> {
    let src = std::fs::read_to_string(file)
        .map_err(|e| CmdError::Io(format!("{}: {e}", file.display())))?;
    app_create_from(store, src, &file.display().to_string(), None, json).await
}

/// Creates an application from descriptor text `src` (read from `origin`,
/// named in errors); with `name`, the descriptor must name that
/// application (a control file `apps/NAME/spec` is written).
pub async fn app_create_from(
    store: &Store,
    src: String,
    origin: &str,
    name: Option<&str>,
    json: bool,
) -> Result<String, CmdError> {
    let mut out = String::new();
    let spec = descriptor::parse(&src).map_err(|err| CmdError::Descriptor {
        file: origin.to_string(),
        err,
    })?;
    if let Some(n) = name.filter(|n| *n != spec.name) {
        return Err(CmdError::Refused(format!(
            "{origin}: the descriptor names application {}, not {n}",
            spec.name
        )));
    }
    let key = model::app_key(&spec.name);
    if store.client.get(key.as_str()).await?.is_some() {
        return Err(CmdError::Refused(format!(
            "application {} exists",
            spec.name
        )));
    }
    // The guests' NICs (when the application declares connections),
    // checked before anything is cloned.
    let wiring = guest::plan(&spec)?;
    // Read every image before cloning anything.
    let mut images = BTreeMap::new();
    for (c, comp) in &spec.components {
        let img = volumes::read_image(Path::new(&comp.image), comp.volumes.as_deref())?;
        images.insert(c.clone(), img);
    }
    let app_dir = PathBuf::from(APPS_DIR).join(&spec.name);
    if app_dir.exists() {
        return Err(CmdError::Refused(format!(
            "{} exists but no application {} is recorded; remove it first",
            app_dir.display(),
            spec.name
        )));
    }
    let mut vms = Vec::new();
    // Every component's directory, and (volume, its clone) of each.
    let (mut dirs, mut clones) = (Vec::new(), Vec::new());
    for (c, comp) in &spec.components {
        let img = &images[c];
        let nic = wiring.as_ref().and_then(|w| w.nics.get(c));
        let dir = app_dir.join(c);
        let mut disks = Vec::new();
        for v in &img.volumes {
            let dst = dir.join(v.file_name().expect("a file"));
            disks.push(dst.display().to_string());
            clones.push((v, dst));
        }
        dirs.push(dir);
        vms.push(VmRecord {
            name: model::vm_name(&spec.name, c),
            app: spec.name.clone(),
            component: c.clone(),
            cpu_min: comp.cpu_min,
            cpu_max: comp.cpu_max,
            mem_mib: comp.mem_mib,
            bw_min: comp.bw_min,
            pin: comp.pin,
            hypervisor: comp.hypervisor.clone(),
            anti_affinity: comp.anti_affinity.clone(),
            boot: model::BootSpec {
                cmdline: guest::boot_cmdline(
                    &img.boot.cmdline,
                    nic.map(|n| n.1.as_str()),
                    &comp.properties,
                ),
                ..img.boot.clone()
            },
            disks,
            desired: Desired::Stopped,
            node: None,
            target: None,
            migration: None,
            last_migration: None,
            reason: None,
            nic: nic.map(|n| n.0.clone()),
        });
    }
    // What the agents will hand QEMU, checked before anything is cloned.
    for v in &vms {
        crate::values::check_record(v)
            .map_err(|e| CmdError::Refused(format!("{}: {e}", v.name)))?;
    }
    for dir in &dirs {
        std::fs::create_dir_all(dir)
            .map_err(|e| CmdError::Io(format!("creating {}: {e}", dir.display())))?;
    }
    for (v, dst) in &clones {
        volumes::clone_volume(v, dst)?;
    }
    let rec = AppRecord {
        spec: spec.clone(),
        source: src,
        desired: Desired::Stopped,
        start_gen: 0,
        outcome: None,
        created_ms: model::now_ms(),
    };
    let mut success = vec![put_op(&key, &rec)];
    for v in &vms {
        success.push(put_op(&model::vm_key(&v.name), v));
    }
    let txn = Txn {
        compare: vec![at_rev(&key, 0)],
        success,
        failure: vec![],
    };
    if !store.client.txn(txn).await?.succeeded {
        return Err(CmdError::Refused(format!(
            "application {} exists",
            spec.name
        )));
    }
    if let Some(w) = &wiring {
        guest::declare(&store.client, w).await?;
    }
    store
        .event(
            "cli",
            "create",
            &spec.name,
            format!("created with {} components", vms.len()),
        )
        .await;
    if json {
        out.push_str(&json_text(&rec));
    } else {
        outln!(
            out,
            "created {} ({} components, volumes in {})",
            spec.name,
            vms.len(),
            app_dir.display()
        );
    }
    Ok(out)
}

/// `vmctl app start NAME`: asks the scheduler and waits for its answer.
pub async fn app_start(store: &Store, name: &str, timeout: Duration) -> Result<String, CmdError> {
    let mut out = String::new();
    let gen = loop {
        let a = app(store, name).await?;
        let vms = app_vms(store, name).await?;
        let mut rec = a.value.clone();
        rec.desired = Desired::Running;
        rec.start_gen += 1;
        let key = model::app_key(name);
        let mut compare = vec![at_rev(&key, a.rev)];
        let mut success = vec![put_op(&key, &rec)];
        for (k, v) in &vms {
            let mut nv = v.value.clone();
            nv.desired = Desired::Running;
            nv.reason = None;
            compare.push(at_rev(&model::vm_key(k), v.rev));
            success.push(put_op(&model::vm_key(k), &nv));
        }
        let txn = Txn {
            compare,
            success,
            failure: vec![],
        };
        if store.client.txn(txn).await?.succeeded {
            break rec.start_gen;
        }
    };
    let deadline = Instant::now() + timeout;
    loop {
        let a = app(store, name).await?;
        if let Some(o) = a.value.outcome.filter(|o| o.gen == gen) {
            if o.placed {
                outln!(out, "started {name}: {}", o.reason);
                return Ok(out);
            }
            return Err(CmdError::Refused(format!(
                "cannot start {name}: {}",
                o.reason
            )));
        }
        if Instant::now() > deadline {
            return Err(CmdError::Timeout(format!(
                "no answer from the scheduler in {timeout:?} (is a vmctl agent running?)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// `vmctl app stop NAME`: waits until every reservation is released.
pub async fn app_stop(store: &Store, name: &str, timeout: Duration) -> Result<String, CmdError> {
    let mut out = String::new();
    loop {
        let a = app(store, name).await?;
        let vms = app_vms(store, name).await?;
        let mut rec = a.value.clone();
        rec.desired = Desired::Stopped;
        let key = model::app_key(name);
        let mut compare = vec![at_rev(&key, a.rev)];
        let mut success = vec![put_op(&key, &rec)];
        for (k, v) in &vms {
            let mut nv = v.value.clone();
            nv.desired = Desired::Stopped;
            compare.push(at_rev(&model::vm_key(k), v.rev));
            success.push(put_op(&model::vm_key(k), &nv));
        }
        if store
            .client
            .txn(Txn {
                compare,
                success,
                failure: vec![],
            })
            .await?
            .succeeded
        {
            break;
        }
    }
    store.event("cli", "stop", name, "stop requested").await;
    let deadline = Instant::now() + timeout;
    loop {
        let vms = app_vms(store, name).await?;
        let held: Vec<String> = vms
            .iter()
            .filter(|(_, v)| v.value.node.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        if held.is_empty() {
            outln!(out, "stopped {name}");
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(CmdError::Timeout(format!(
                "{} still running after {timeout:?}",
                held.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `vmctl app destroy NAME`.
pub async fn app_destroy(store: &Store, name: &str, force: bool) -> Result<String, CmdError> {
    let mut out = String::new();
    let vms = app_vms(store, name).await?;
    let a = app(store, name).await?;
    if vms.iter().any(|(_, v)| v.value.node.is_some()) || a.value.desired == Desired::Running {
        if !force {
            return Err(CmdError::Refused(format!(
                "{name} is running; stop it first (or --force)"
            )));
        }
        out.push_str(&app_stop(store, name, Duration::from_secs(60)).await?);
    }
    let a = app(store, name).await?;
    let vms = app_vms(store, name).await?;
    let key = model::app_key(name);
    let mut compare = vec![at_rev(&key, a.rev)];
    let mut success = vec![Op::Delete {
        key: key.clone().into_bytes(),
    }];
    for (k, v) in &vms {
        compare.push(at_rev(&model::vm_key(k), v.rev));
        success.push(Op::Delete {
            key: model::vm_key(k).into_bytes(),
        });
        success.push(Op::Delete {
            key: model::status_key(k).into_bytes(),
        });
        success.push(Op::Delete {
            key: model::console_key(k).into_bytes(),
        });
    }
    if !store
        .client
        .txn(Txn {
            compare,
            success,
            failure: vec![],
        })
        .await?
        .succeeded
    {
        return Err(CmdError::Refused(format!(
            "{name} changed while being destroyed; try again"
        )));
    }
    guest::forget(&store.client, name).await?;
    let dir = PathBuf::from(APPS_DIR).join(name);
    let mut note = String::new();
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            note = format!(" (its volumes in {} remain: {e})", dir.display());
        }
    }
    store.event("cli", "destroy", name, "destroyed").await;
    outln!(out, "destroyed {name}{note}");
    Ok(out)
}

/// One VM as `vm list` and `app show` present it.
#[derive(Debug, Serialize)]
pub struct VmView {
    /// Name.
    pub name: String,
    /// Wanted state.
    pub desired: Desired,
    /// Reserved on.
    pub node: Option<String>,
    /// What is true (the status is the node's own report, when it is for
    /// the node the VM is reserved on).
    pub state: String,
    /// vCPUs reserved / seen.
    pub cpu: String,
    /// Memory.
    pub mem: String,
    /// Why (stopped, pending, failed).
    pub reason: Option<String>,
    /// Its record.
    pub record: VmRecord,
    /// Its node's report.
    pub status: Option<VmStatus>,
}

fn view(v: VmRecord, st: Option<VmStatus>) -> VmView {
    let state = match (&v.node, &st) {
        (Some(n), Some(s)) if &s.node == n => format!("{:?}", s.state).to_lowercase(),
        (Some(_), _) => "starting".into(),
        (None, Some(s)) if s.state == VmState::Failed => "failed".into(),
        (None, _) if v.desired == Desired::Running => "pending".into(),
        (None, _) => "stopped".into(),
    };
    let state = match &v.migration {
        Some(m) if state == "running" && m.phase != model::MigrationPhase::Requested => {
            format!("migrating to {}", m.to)
        }
        _ => state,
    };
    let reason = v
        .reason
        .clone()
        .or_else(|| st.as_ref().and_then(|s| s.reason.clone()));
    VmView {
        name: v.name.clone(),
        desired: v.desired,
        node: v.node.clone(),
        state,
        cpu: format!("{}/{}", v.cpu_min, v.cpu_max),
        mem: fmt_mib(v.mem_mib),
        reason,
        record: v,
        status: st,
    }
}

async fn views(store: &Store, app: Option<&str>) -> Result<Vec<VmView>, CmdError> {
    let vms = store.list::<VmRecord>(model::VMS).await?.0;
    let status: BTreeMap<String, VmStatus> = store
        .list::<VmStatus>(model::STATUS)
        .await?
        .0
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    Ok(vms
        .into_iter()
        .filter(|(_, v)| app.is_none_or(|a| v.value.app == a))
        .map(|(k, v)| view(v.value, status.get(&k).cloned()))
        .collect())
}

fn vm_table(vs: &[VmView]) -> String {
    let mut rows = vec![vec!["VM", "NODE", "STATE", "WANT", "CPU", "MEM", "REASON"]
        .into_iter()
        .map(String::from)
        .collect()];
    for v in vs {
        rows.push(vec![
            v.name.clone(),
            v.node.clone().unwrap_or_else(|| "-".into()),
            v.state.clone(),
            format!("{:?}", v.desired).to_lowercase(),
            v.cpu.clone(),
            v.mem.clone(),
            v.reason.clone().unwrap_or_default(),
        ]);
    }
    table(rows)
}

/// `vmctl app list`.
pub async fn app_list(store: &Store, json: bool) -> Result<String, CmdError> {
    let mut out = String::new();
    let apps = store.list::<AppRecord>(model::APPS).await?.0;
    let vms = views(store, None).await?;
    #[derive(Serialize)]
    struct Row {
        name: String,
        desired: Desired,
        components: usize,
        running: usize,
        outcome: Option<model::Outcome>,
    }
    let rows: Vec<Row> = apps
        .into_iter()
        .map(|(k, a)| Row {
            components: a.value.spec.components.len(),
            running: vms
                .iter()
                .filter(|v| {
                    v.record.app == k && (v.state == "running" || v.state.starts_with("migrating"))
                })
                .count(),
            name: k,
            desired: a.value.desired,
            outcome: a.value.outcome,
        })
        .collect();
    if json {
        out.push_str(&json_text(&rows));
        return Ok(out);
    }
    let mut t = vec![vec!["APP", "WANT", "RUNNING", "LAST START"]
        .into_iter()
        .map(String::from)
        .collect()];
    for r in rows {
        t.push(vec![
            r.name,
            format!("{:?}", r.desired).to_lowercase(),
            format!("{}/{}", r.running, r.components),
            r.outcome.map_or(String::new(), |o| {
                if o.placed {
                    format!("placed: {}", o.reason)
                } else {
                    format!("refused: {}", o.reason)
                }
            }),
        ]);
    }
    out.push_str(&table(t));
    Ok(out)
}

/// `vmctl app show NAME`.
pub async fn app_show(store: &Store, name: &str, json: bool) -> Result<String, CmdError> {
    let mut out = String::new();
    let a = app(store, name).await?;
    let vms = views(store, Some(name)).await?;
    if json {
        out.push_str(&json_text(
            &serde_json::json!({ "app": a.value, "vms": vms }),
        ));
        return Ok(out);
    }
    let r = &a.value;
    outln!(
        out,
        "app {name}: wanted {:?}, placement {:?}",
        r.desired,
        r.spec.placement
    );
    if let Some(o) = &r.outcome {
        outln!(
            out,
            "last start: {} ({})",
            if o.placed { "placed" } else { "refused" },
            o.reason
        );
    }
    for c in &r.spec.connections {
        outln!(out, "connection {} -> {}", c.from, c.to);
    }
    out.push_str(&vm_table(&vms));
    Ok(out)
}

/// `vmctl vm list`.
pub async fn vm_list(store: &Store, app: Option<&str>, json: bool) -> Result<String, CmdError> {
    let mut out = String::new();
    let vs = views(store, app).await?;
    if json {
        out.push_str(&json_text(&vs));
    } else {
        out.push_str(&vm_table(&vs));
    }
    Ok(out)
}

async fn vm_view(store: &Store, name: &str) -> Result<VmView, CmdError> {
    views(store, None)
        .await?
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| CmdError::NotFound(format!("VM {name} (VMs are named APP.COMPONENT)")))
}

/// `vmctl vm show NAME`.
pub async fn vm_show(store: &Store, name: &str, json: bool) -> Result<String, CmdError> {
    let mut out = String::new();
    let v = vm_view(store, name).await?;
    if json {
        out.push_str(&json_text(&v));
        return Ok(out);
    }
    outln!(
        out,
        "vm {}: {} on {} (wanted {:?})",
        v.name,
        v.state,
        v.node.as_deref().unwrap_or("-"),
        v.desired
    );
    outln!(
        out,
        "cpu {} (reserved/seen), mem {}, disks {}",
        v.cpu,
        v.mem,
        v.record.disks.join(", ")
    );
    if let Some(s) = &v.status {
        outln!(
            out,
            "backend {} ({}), pid {}, limits: {}, console {}:{}",
            s.backend,
            s.accel,
            s.pid.map_or("-".into(), |p| p.to_string()),
            s.limits,
            s.node,
            s.console
        );
        if !s.crashes.is_empty() {
            outln!(out, "crashes within the hour: {}", s.crashes.len());
        }
    }
    if let Some(m) = &v.record.migration {
        outln!(out, "migrating to {} ({:?})", m.to, m.phase);
    }
    if let Some(r) = &v.record.last_migration {
        match &r.error {
            None => outln!(
                out,
                "last live migration: {} -> {}, downtime {} ms (total {} ms)",
                r.from,
                r.to,
                r.downtime_ms.map_or("?".into(), |d| d.to_string()),
                r.total_ms.map_or("?".into(), |d| d.to_string()),
            ),
            Some(e) => outln!(out, "last live migration: {e}"),
        }
    }
    if let Some(r) = &v.reason {
        outln!(out, "reason: {r}");
    }
    Ok(out)
}

/// `vmctl vm console NAME`: the console file itself on the VM's node;
/// elsewhere the tail its agent copies to metad ([`console`]).
pub async fn vm_console(store: &Store, name: &str, follow: bool) -> Result<(), CmdError> {
    let v = vm_view(store, name).await?;
    let st = v
        .status
        .ok_or_else(|| CmdError::Refused(format!("{name} has not run yet: no console")))?;
    let path = PathBuf::from(&st.console);
    use std::io::{Read, Write};
    let mut out = std::io::stdout();
    if !path.exists() {
        let mut last: Option<console::ConsoleTail> = None;
        loop {
            if let Some(t) = console::tail(store, name).await? {
                let _ = out.write_all(console::added(last.as_ref(), &t).as_bytes());
                let _ = out.flush();
                last = Some(t);
            } else if last.is_none() && !follow {
                return Err(CmdError::Refused(format!(
                    "{name}'s console is on {} and not copied yet (this is {})",
                    st.node,
                    nix_hostname()
                )));
            }
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(console::EVERY).await;
        }
    }
    let mut f =
        std::fs::File::open(&path).map_err(|e| CmdError::Io(format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        f.read_to_end(&mut buf)
            .map_err(|e| CmdError::Io(e.to_string()))?;
        let _ = out.write_all(&buf);
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sets a VM's wanted state (compare-and-swap, re-read on a race).
async fn set_desired(store: &Store, name: &str, desired: Desired) -> Result<(), CmdError> {
    let key = model::vm_key(name);
    loop {
        let v = store.get::<VmRecord>(&key).await?.ok_or_else(|| {
            CmdError::NotFound(format!("VM {name} (VMs are named APP.COMPONENT)"))
        })?;
        let mut nv = v.value.clone();
        nv.desired = desired;
        if desired == Desired::Running {
            nv.reason = None;
        }
        if store.cas(&key, v.rev, &nv).await? {
            return Ok(());
        }
    }
}

/// The refusals of `vm start` that need no scheduler (a few reads): the
/// VM exists and its application runs. The control files give them to
/// the writer at once and leave the wait to a task of their own.
pub async fn vm_start_check(store: &Store, name: &str) -> Result<VmView, CmdError> {
    let v = vm_view(store, name).await?;
    let app_name = &v.record.app;
    let a = app(store, app_name).await?;
    let placed = a
        .value
        .outcome
        .as_ref()
        .is_some_and(|o| o.gen == a.value.start_gen && o.placed);
    if a.value.desired != Desired::Running || !placed {
        return Err(CmdError::Refused(format!(
            "application {app_name} is not running; start it first"
        )));
    }
    Ok(v)
}

/// `start` of one VM of a running application (one that was stopped, or
/// failed): the scheduler places it next to its peers; this waits for the
/// placement. When there is no room it is refused with the reason and
/// stays stopped.
pub async fn vm_start(store: &Store, name: &str, timeout: Duration) -> Result<String, CmdError> {
    let v = vm_start_check(store, name).await?;
    if let (Desired::Running, Some(n)) = (v.desired, &v.node) {
        return Ok(format!("{name} runs on {n} already\n"));
    }
    set_desired(store, name, Desired::Running).await?;
    store.event("cli", "start", name, "start requested").await;
    let key = model::vm_key(name);
    let deadline = Instant::now() + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let v = store
            .get::<VmRecord>(&key)
            .await?
            .ok_or_else(|| CmdError::NotFound(format!("VM {name}")))?;
        if let Some(n) = &v.value.node {
            return Ok(format!("started {name} on {n}\n"));
        }
        let waiting = v
            .value
            .reason
            .clone()
            .filter(|r| r.starts_with("waiting for room"));
        if waiting.is_some() || Instant::now() > deadline {
            // Not placed: back to stopped, unless placed meanwhile.
            let mut nv = v.value.clone();
            nv.desired = Desired::Stopped;
            if !store.cas(&key, v.rev, &nv).await? {
                continue;
            }
            return Err(match waiting {
                Some(why) => CmdError::Refused(format!("cannot start {name}: {why}")),
                None => CmdError::Timeout(format!(
                    "no answer from the scheduler in {timeout:?} (is a vmctl agent running?)"
                )),
            });
        }
    }
}

/// `stop` of one VM: its agent stops it and the scheduler releases its
/// reservation; this waits for the release.
pub async fn vm_stop(store: &Store, name: &str, timeout: Duration) -> Result<String, CmdError> {
    set_desired(store, name, Desired::Stopped).await?;
    store.event("cli", "stop", name, "stop requested").await;
    let deadline = Instant::now() + timeout;
    loop {
        let v = vm_view(store, name).await?;
        if v.node.is_none() {
            return Ok(format!("stopped {name}\n"));
        }
        if Instant::now() > deadline {
            return Err(CmdError::Timeout(format!(
                "{name} still holds {} after {timeout:?}",
                v.node.unwrap_or_default()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

/// `vmctl vm migrate NAME NODE`: a running VM is live-migrated (the
/// scheduler checks NODE's room first; this waits for the outcome); a
/// stopped one starts on NODE next time (cold move).
pub async fn vm_migrate(
    store: &Store,
    name: &str,
    node: &str,
    timeout: Duration,
) -> Result<String, CmdError> {
    let mut out = String::new();
    let key = model::vm_key(name);
    let v = store
        .get::<VmRecord>(&key)
        .await?
        .ok_or_else(|| CmdError::NotFound(format!("VM {name}")))?;
    node_up(store, node).await?;
    if v.value.node.is_some() || v.value.desired == Desired::Running {
        return live_migrate(store, v, node, timeout).await;
    }
    let mut nv = v.value.clone();
    nv.target = Some(node.to_string());
    if !store.cas(&key, v.rev, &nv).await? {
        return Err(CmdError::Refused(format!(
            "{name} changed meanwhile; try again"
        )));
    }
    outln!(out, "{name} will start on {node}");
    Ok(out)
}

/// Refuses a node that is not up: the check of `vm migrate` that needs no
/// scheduler, which the control files give the writer at once.
pub async fn node_up(store: &Store, node: &str) -> Result<(), CmdError> {
    if store.client.get(model::node_key(node)).await?.is_none() {
        return Err(CmdError::Refused(format!("node {node} is not up")));
    }
    Ok(())
}

async fn live_migrate(
    store: &Store,
    v: Versioned<VmRecord>,
    node: &str,
    timeout: Duration,
) -> Result<String, CmdError> {
    let mut out = String::new();
    let name = v.value.name.clone();
    let key = model::vm_key(&name);
    let from = v.value.node.clone();
    let st = store.get::<VmStatus>(&model::status_key(&name)).await?;
    let running = st
        .is_some_and(|s| Some(&s.value.node) == from.as_ref() && s.value.state == VmState::Running);
    let Some(from) = from.filter(|_| running && v.value.desired == Desired::Running) else {
        return Err(CmdError::Refused(format!(
            "{name} is starting or stopping; live migration needs it running"
        )));
    };
    if from == node {
        return Err(CmdError::Refused(format!("{name} already runs on {node}")));
    }
    if v.value.hypervisor != "qemu" {
        return Err(CmdError::Refused(format!(
            "{name} runs on {}; live migration is implemented for QEMU only",
            v.value.hypervisor
        )));
    }
    if let Some(m) = &v.value.migration {
        return Err(CmdError::Refused(format!(
            "{name} is already being migrated to {}",
            m.to
        )));
    }
    let id = model::now_ms();
    let mut nv = v.value.clone();
    nv.migration = Some(model::Migration {
        id,
        to: node.to_string(),
        phase: model::MigrationPhase::Requested,
        port: None,
    });
    if !store.cas(&key, v.rev, &nv).await? {
        return Err(CmdError::Refused(format!(
            "{name} changed meanwhile; try again"
        )));
    }
    let deadline = Instant::now() + timeout;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cur = store
            .get::<VmRecord>(&key)
            .await?
            .ok_or_else(|| CmdError::NotFound(format!("VM {name}")))?
            .value;
        if let Some(r) = cur.last_migration.filter(|r| r.id == id) {
            if let Some(e) = r.error {
                return Err(CmdError::Refused(e));
            }
            outln!(
                out,
                "{name} live-migrated from {} to {}: downtime {} ms (total {} ms)",
                r.from,
                r.to,
                r.downtime_ms.map_or("?".into(), |d| d.to_string()),
                r.total_ms.map_or("?".into(), |d| d.to_string()),
            );
            return Ok(out);
        }
        if cur.migration.as_ref().is_none_or(|m| m.id != id) {
            return Err(CmdError::Refused(format!(
                "the migration of {name} to {node} was given up (its node or the target went away)"
            )));
        }
        if Instant::now() > deadline {
            return Err(CmdError::Timeout(format!(
                "{name}: the migration to {node} has not finished in {timeout:?}; it goes on"
            )));
        }
    }
}

/// One row of `vmctl node list`.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// The node as registered.
    #[serde(flatten)]
    pub node: NodeRecord,
    /// CPUs reserved.
    pub used_cpus: u64,
    /// MiB reserved.
    pub used_mem_mib: u64,
    /// VMs reserved here.
    pub vms: Vec<String>,
    /// Whether its agent is the scheduler.
    pub scheduler: bool,
}

/// `vmctl node list`.
pub async fn node_list(store: &Store, json: bool) -> Result<String, CmdError> {
    let mut out = String::new();
    let nodes: BTreeMap<String, NodeRecord> = store
        .list::<NodeRecord>(model::NODES)
        .await?
        .0
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    let vms: Vec<VmRecord> = store
        .list::<VmRecord>(model::VMS)
        .await?
        .0
        .into_iter()
        .map(|(_, v)| v.value)
        .collect();
    let sched = store
        .client
        .get(model::SCHEDULER)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    let caps = capacities(&nodes, vms.iter());
    let rows: Vec<NodeView> = caps
        .into_iter()
        .map(|c| NodeView {
            node: nodes[&c.name].clone(),
            used_cpus: c.used_cpus,
            used_mem_mib: c.used_mem,
            vms: c.vms.into_iter().collect(),
            scheduler: sched.as_deref() == Some(c.name.as_str()),
        })
        .collect();
    if json {
        out.push_str(&json_text(&rows));
        return Ok(out);
    }
    let mut t = vec![vec!["NODE", "CPUS", "MEM", "ACCEL", "VMS", "LIMITS"]
        .into_iter()
        .map(String::from)
        .collect()];
    for r in rows {
        t.push(vec![
            format!("{}{}", r.node.name, if r.scheduler { " *" } else { "" }),
            format!("{}/{}", r.used_cpus, r.node.cpus),
            format!("{}/{}", fmt_mib(r.used_mem_mib), fmt_mib(r.node.mem_mib)),
            r.node.accel.clone(),
            r.vms.join(","),
            r.node.limits.clone(),
        ]);
    }
    out.push_str(&table(t));
    outln!(out, "(* schedules)");
    Ok(out)
}

fn print_event(e: &GridEvent, json: bool) {
    if json {
        println!("{}", serde_json::to_string(e).expect("serializes"));
    } else {
        println!("{}", e.line());
    }
}

/// `vmctl events [--follow]`: the grid's whole event log (DVM, LCM and
/// GVS), oldest first, then what is appended.
pub async fn events(store: &Store, follow: bool, json: bool) -> Result<(), CmdError> {
    let (evs, rev) = events::list(&store.client)
        .await
        .map_err(StoreError::from)?;
    for e in &evs {
        print_event(e, json);
    }
    if !follow {
        return Ok(());
    }
    let mut f = events::follow(&store.client, rev + 1)
        .await
        .map_err(StoreError::from)?;
    while let Some(e) = f.next().await {
        print_event(&e.map_err(StoreError::from)?, json);
    }
    Ok(())
}
