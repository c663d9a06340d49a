//! `vmctl agent`, on every node: registers the node's capacity on a metad
//! lease and keeps it alive (the heartbeat), runs the VMs reserved on this
//! node through a backend, reports their real state, restarts crashed ones
//! with a flapping guard, and takes its turn as the scheduler
//! ([`crate::controller`]). If it cannot renew its lease it stops its VMs:
//! the scheduler is about to start them elsewhere.

use crate::backend::cgroup::Cgroups;
use crate::backend::qemu::{choose_accel, Accel, QemuBackend};
use crate::backend::xl::XlBackend;
use crate::backend::{Hypervisor, Instance, RunState, VmConfig};
use crate::controller;
use crate::guest;
use crate::model::{
    self, Desired, MigrationPhase, MigrationReport, NodeRecord, VmRecord, VmState, VmStatus,
};
use crate::store::{Store, StoreError, Versioned};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The heartbeat task's view of the lease, shared with the main loop: the
/// heartbeat runs on its own task so that a slow VM start (a KVM probe, a
/// QEMU that takes seconds to answer) never lets the lease lapse.
#[derive(Default)]
struct Beat {
    /// The lease being kept alive.
    lease: AtomicU64,
    /// When the last renewal that metad answered was sent (None: none
    /// yet), on the monotonic clock: a wall clock stepped back (NTP, an
    /// operator) would keep a cut-off node's guests running past the
    /// lease's end, one stepped forward would fence a healthy node.
    renewed: std::sync::Mutex<Option<Instant>>,
    /// metad says the lease is gone, or it could not be renewed in time.
    lost: AtomicBool,
    /// Hypervisor pids of the local VMs, killed by the heartbeat task
    /// itself when the lease is about to lapse.
    pids: std::sync::Mutex<BTreeMap<String, u32>>,
}

/// Fencing margin: local VMs are killed this long before the lease could
/// expire on metad's side, so a VM never runs on two nodes at once.
const FENCE_MARGIN: Duration = Duration::from_millis(1500);

/// Whether a node whose lease was last renewed at `renewed` must kill its
/// guests at `now`: the lease may lapse on metad's side within
/// [`FENCE_MARGIN`], and the scheduler then starts them elsewhere.
fn must_fence(renewed: Instant, now: Instant) -> bool {
    now.saturating_duration_since(renewed) + FENCE_MARGIN >= LEASE_TTL
}

impl Beat {
    /// Notes a renewal sent at `sent` and answered.
    fn renewed_at(&self, sent: Instant) {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent);
    }

    /// When the last answered renewal was sent.
    fn last_renewal(&self) -> Option<Instant> {
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill_all(&self) {
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        for (vm, pid) in pids.iter() {
            tracing::warn!("fencing: killing {vm} (pid {pid})");
            // SAFETY: kill(2) with a pid this agent started and has not reaped.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

async fn heartbeat_task(store: Arc<Store>, beat: Arc<Beat>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lease = beat.lease.load(Ordering::SeqCst);
        if lease == 0 || beat.lost.load(Ordering::SeqCst) {
            continue;
        }
        let now = Instant::now();
        let renewed = beat.last_renewal();
        if renewed.is_none_or(|t| must_fence(t, now)) {
            let silent = renewed.map(|t| now.saturating_duration_since(t));
            tracing::warn!("heartbeat: no renewal for {silent:?}; fencing");
            beat.lost.store(true, Ordering::SeqCst);
            beat.kill_all();
            continue;
        }
        // Renew once a second (a Raft write each): check twice as often.
        if renewed.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            continue;
        }
        // The lease runs from no earlier than the renewal was sent.
        let sent = Instant::now();
        match tokio::time::timeout(
            Duration::from_millis(800),
            store.client.lease_keepalive(lease),
        )
        .await
        {
            Ok(Ok(_)) => beat.renewed_at(sent),
            Ok(Err(e)) => {
                tracing::warn!("heartbeat: {e}");
                if matches!(
                    e.state_error(),
                    Some(metad::state::StateError::NoSuchLease(_))
                ) && beat.lease.load(Ordering::SeqCst) == lease
                {
                    beat.lost.store(true, Ordering::SeqCst);
                    beat.kill_all();
                }
            }
            Err(_) => tracing::warn!("heartbeat: no answer in 800 ms"),
        }
    }
}

/// The heartbeat lease's time to live: a node silent this long is dead to
/// the scheduler (failover target: VMs running again within 15 s).
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// Crashes within [`FLAP_WINDOW_MS`] after which a VM stays stopped.
pub const FLAP_LIMIT: usize = 3;
/// The flapping guard's window.
pub const FLAP_WINDOW_MS: u64 = 3_600_000;

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name.
    pub node: String,
    /// CPUs offered.
    pub cpus: u32,
    /// Memory offered, MiB.
    pub mem_mib: u64,
    /// Bandwidth offered, Mbit/s.
    pub bw_mbit: u64,
    /// Per-VM runtime directories (sockets, console files).
    pub run_root: PathBuf,
    /// Where the KVM probe's result is cached (shared by the machine).
    pub accel_cache: PathBuf,
    /// Where guests' NIC sockets meet the node's lcmd (its `--nic-dir`).
    pub nic_dir: PathBuf,
}

struct Local {
    inst: Box<dyn Instance>,
    rec: VmRecord,
    /// Physical CPUs dedicated to it.
    pinned: Vec<u32>,
    /// Set while it is the target of a live migration: its QEMU waits on
    /// this `-incoming` port (the VM's record still names the source).
    incoming_port: Option<u16>,
}

/// A free TCP port for an incoming migration (the kernel picks it; QEMU
/// binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("0.0.0.0:0")?
        .local_addr()?
        .port())
}

/// The agent's state.
pub struct Agent {
    cfg: AgentConfig,
    store: Arc<Store>,
    lease: u64,
    beat: Arc<Beat>,
    qemu: Option<QemuBackend>,
    accel: Option<Accel>,
    /// Where the VMs' cgroups go (or why limits cannot be enforced here),
    /// found once at start: the heartbeat reports it and the backend uses it.
    cgroups: Result<Cgroups, String>,
    locals: BTreeMap<String, Local>,
    /// Crash timestamps by VM (the flapping guard); kept in the VMs' status
    /// records and read back at start ([`Agent::load_crashes`]).
    crashes: BTreeMap<String, Vec<u64>>,
    /// The last status written, by VM.
    reported: BTreeMap<String, VmStatus>,
    /// The last live migration of each VM, as its record says.
    migrations: BTreeMap<String, MigrationReport>,
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Agent {
    /// An agent; nothing happens until [`Agent::run`].
    pub fn new(cfg: AgentConfig, store: Store) -> Agent {
        let store = Arc::new(store);
        let cgroups = Cgroups::detect(Path::new("/sys/fs/cgroup"), &cfg.node);
        Agent {
            cfg,
            store,
            lease: 0,
            beat: Arc::default(),
            qemu: None,
            accel: None,
            cgroups,
            locals: BTreeMap::new(),
            crashes: BTreeMap::new(),
            reported: BTreeMap::new(),
            migrations: BTreeMap::new(),
        }
    }

    /// Forgets a local VM (and its pid, before anyone reaps it).
    fn take_local(&mut self, name: &str) -> Option<Local> {
        self.beat
            .pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.locals.remove(name)
    }

    fn node_record(&self) -> NodeRecord {
        NodeRecord {
            name: self.cfg.node.clone(),
            cpus: self.cfg.cpus,
            mem_mib: self.cfg.mem_mib,
            bw_mbit: self.cfg.bw_mbit,
            accel: self.accel.map_or("unprobed".into(), |a| a.as_str().into()),
            hypervisors: vec!["qemu".into()],
            limits: self.limits(),
            since_ms: model::now_ms(),
        }
    }

    async fn register(&mut self) -> Result<(), StoreError> {
        let sent = Instant::now();
        self.lease = self.store.client.lease_grant(LEASE_TTL).await?;
        let rec = crate::store::to_json(&self.node_record());
        self.store
            .client
            .put_with_lease(model::node_key(&self.cfg.node), rec, self.lease)
            .await?;
        self.beat.renewed_at(sent);
        self.beat.lease.store(self.lease, Ordering::SeqCst);
        self.beat.lost.store(false, Ordering::SeqCst);
        tracing::info!("registered {} (lease {})", self.cfg.node, self.lease);
        Ok(())
    }

    /// Takes back the crash history of this node's VMs from their status
    /// records (the agent writes it there with every report), so that a
    /// restarted agent still stops a flapping VM.
    async fn load_crashes(&mut self) -> Result<(), StoreError> {
        let (status, _) = self.store.list::<VmStatus>(model::STATUS).await?;
        for (vm, st) in status {
            if st.value.node == self.cfg.node && !st.value.crashes.is_empty() {
                self.crashes.insert(vm, st.value.crashes);
            }
        }
        Ok(())
    }

    /// Checks the heartbeat: when the lease is gone (or could not be
    /// renewed for its whole TTL), stops every local VM (fencing: the
    /// scheduler is placing them elsewhere) and registers again.
    async fn check_heartbeat(&mut self) {
        let lapsed = self
            .beat
            .last_renewal()
            .is_none_or(|t| t.elapsed() >= LEASE_TTL);
        let lost = self.beat.lost.load(Ordering::SeqCst);
        if !lost && !lapsed {
            return;
        }
        let why = if lost {
            "lost its heartbeat lease"
        } else {
            "could not renew its heartbeat lease"
        };
        self.fence(why).await;
        if let Err(e) = self.register().await {
            tracing::warn!("registering again: {e}");
        }
    }

    async fn fence(&mut self, why: &str) {
        if self.locals.is_empty() {
            return;
        }
        tracing::warn!(
            "{} {why}: stopping its VMs (they run elsewhere now)",
            self.cfg.node
        );
        let names: Vec<String> = self.locals.keys().cloned().collect();
        for n in names {
            if let Some(mut l) = self.take_local(&n) {
                block(|| l.inst.kill());
            }
        }
        self.reported.clear();
        let node = self.cfg.node.clone();
        self.store
            .event(
                &node,
                "fenced",
                &node,
                format!("{node} {why}; stopped its VMs"),
            )
            .await;
    }

    /// How VM limits are enforced on this node, for the node record.
    fn limits(&self) -> String {
        match &self.cgroups {
            Ok(cg) => cg.describe().to_string(),
            Err(e) => e.clone(),
        }
    }

    fn backend(&mut self, vm: &VmRecord) -> &dyn Hypervisor {
        if self.qemu.is_none() {
            let accel = choose_accel(Some(Path::new(&vm.boot.kernel)), &self.cfg.accel_cache);
            self.accel = Some(accel);
            self.qemu = Some(QemuBackend::new(accel, self.cgroups.clone()));
        }
        self.qemu.as_ref().expect("set")
    }

    fn vm_config(&self, vm: &VmRecord) -> VmConfig {
        let run_dir = self.cfg.run_root.join(&vm.name);
        VmConfig {
            name: vm.name.clone(),
            vcpus: vm.cpu_max.max(1),
            cpu_cap: vm.cpu_max.max(1),
            mem_mib: vm.mem_mib,
            pinned_cpus: if vm.pin {
                self.free_cpus(vm.cpu_min)
            } else {
                vec![]
            },
            kernel: vm.boot.kernel.clone().into(),
            initrd: vm.boot.initrd.clone().map(Into::into),
            cmdline: format!(
                "{} vmctl.name={} vmctl.node={}",
                vm.boot.cmdline, vm.name, self.cfg.node
            )
            .trim()
            .to_string(),
            disks: vm.disks.iter().map(Into::into).collect(),
            nics: vm
                .nic
                .iter()
                .map(|n| guest::qemu_nic(&self.cfg.nic_dir, &vm.app, &vm.component, n))
                .collect(),
            console: run_dir.join("console.log"),
            run_dir,
            incoming_port: None,
        }
    }

    /// CPUs not dedicated to another local VM (highest first, leaving CPU 0
    /// to the node's daemons).
    fn free_cpus(&self, n: u32) -> Vec<u32> {
        let taken: Vec<u32> = self
            .locals
            .values()
            .flat_map(|l| l.pinned.clone())
            .collect();
        (0..self.cfg.cpus)
            .rev()
            .filter(|c| !taken.contains(c))
            .take(n as usize)
            .collect()
    }

    fn status(
        &self,
        vm: &str,
        state: VmState,
        pid: Option<u32>,
        reason: Option<String>,
    ) -> VmStatus {
        VmStatus {
            node: self.cfg.node.clone(),
            state,
            backend: "qemu".into(),
            accel: self.accel.map_or("unprobed".into(), |a| a.as_str().into()),
            pid,
            console: self
                .cfg
                .run_root
                .join(vm)
                .join("console.log")
                .display()
                .to_string(),
            crashes: self.crashes.get(vm).cloned().unwrap_or_default(),
            reason,
            limits: self.limits(),
            since_ms: model::now_ms(),
            last_migration: self.migrations.get(vm).cloned(),
        }
    }

    async fn report(&mut self, vm: &str, st: VmStatus) {
        if let Some(old) = self.reported.get(vm) {
            if old.state == st.state
                && old.pid == st.pid
                && old.reason == st.reason
                && old.crashes == st.crashes
                && old.last_migration == st.last_migration
            {
                return;
            }
        }
        match self.store.put(&model::status_key(vm), &st).await {
            Ok(()) => {
                self.reported.insert(vm.to_string(), st);
            }
            Err(e) => tracing::warn!("reporting {vm}: {e}"),
        }
    }

    /// Records a crash; true when the VM is now flapping (it stays stopped).
    async fn crashed(&mut self, rec: &VmRecord, why: &str) -> bool {
        let now = model::now_ms();
        let c = self.crashes.entry(rec.name.clone()).or_default();
        c.retain(|t| now.saturating_sub(*t) < FLAP_WINDOW_MS);
        c.push(now);
        let n = c.len();
        let node = self.cfg.node.clone();
        if n >= FLAP_LIMIT {
            let reason = format!("failed {n} times within an hour (last: {why}); left stopped");
            self.store
                .event(&node, "flapping", &rec.name, reason.clone())
                .await;
            // Stays stopped: the record says so, with the reason.
            if let Ok(Some(v)) = self.store.get::<VmRecord>(&model::vm_key(&rec.name)).await {
                let mut nv = v.value;
                nv.desired = Desired::Stopped;
                nv.reason = Some(reason.clone());
                let _ = self.store.cas(&model::vm_key(&rec.name), v.rev, &nv).await;
            }
            let st = self.status(&rec.name, VmState::Failed, None, Some(reason));
            self.report(&rec.name, st).await;
            true
        } else {
            self.store
                .event(
                    &node,
                    "crash",
                    &rec.name,
                    format!("{why}; restarting ({n} of {FLAP_LIMIT} within an hour)"),
                )
                .await;
            let st = self.status(&rec.name, VmState::Crashed, None, Some(why.to_string()));
            self.report(&rec.name, st).await;
            false
        }
    }

    /// Makes `node`'s lcmd serve the NIC of `rec` (if it has one): before
    /// its QEMU starts there, and when a live migration moves it there.
    /// False when lcmd's record could not be written (the caller retries).
    async fn claim_nic(&self, rec: &VmRecord, node: &str) -> bool {
        if rec.nic.is_none() {
            return true;
        }
        match guest::claim(&self.store.client, &rec.app, &rec.component, node).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{}: its NIC on {node}: {e}", rec.name);
                false
            }
        }
    }

    /// Changes a VM's record with compare-and-swap, re-reading on a race.
    async fn update_record(&self, name: &str, f: impl Fn(&mut VmRecord)) {
        let key = model::vm_key(name);
        for _ in 0..10 {
            let Ok(Some(v)) = self.store.get::<VmRecord>(&key).await else {
                return;
            };
            let mut nv = v.value.clone();
            f(&mut nv);
            match self.store.cas(&key, v.rev, &nv).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!("updating {name}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tracing::warn!("updating {name}: gave up after 10 races");
    }

    /// Ends live migration `id` of `name` (if it is still the one in
    /// flight): on success the record's node becomes `to`.
    async fn end_migration(&self, name: &str, id: u64, to: &str, report: MigrationReport) {
        let me = self.cfg.node.clone();
        self.update_record(name, |nv| {
            if nv.migration.as_ref().is_some_and(|m| m.id == id) {
                nv.migration = None;
            }
            if report.error.is_none() && nv.node.as_deref() == Some(me.as_str()) {
                nv.node = Some(to.to_string());
                nv.target = None;
                nv.reason = None;
            }
            nv.last_migration = Some(report.clone());
        })
        .await;
    }

    /// Source side of a live migration: QMP `migrate` to the target's
    /// `-incoming` port, then the paused source is stopped (its disks were
    /// flushed and inactivated when the migration completed) and the
    /// record moves to the target.
    /// True when the VM has left this node.
    async fn migrate_out(&mut self, name: &str, id: u64, to: &str, port: u16) -> bool {
        let me = self.cfg.node.clone();
        tracing::info!("{name}: live-migrating to {to}:{port}");
        // Megabits a second to bytes.
        let max_bps = self.cfg.bw_mbit * 125_000;
        let (res, rec) = {
            let l = self.locals.get_mut(name).expect("local");
            (block(|| l.inst.migrate(to, port, max_bps)), l.rec.clone())
        };
        let mut report = MigrationReport {
            id,
            from: me.clone(),
            to: to.to_string(),
            at_ms: model::now_ms(),
            error: None,
            downtime_ms: None,
            total_ms: None,
        };
        match res {
            Ok(stats) => {
                if let Some(mut l) = self.take_local(name) {
                    if let Err(e) = block(|| l.inst.stop(Duration::from_secs(5))) {
                        tracing::warn!("stopping the migrated-out {name}: {e}");
                    }
                }
                self.reported.remove(name);
                report.downtime_ms = stats.downtime_ms;
                report.total_ms = stats.total_ms;
                let msg = format!(
                    "live-migrated from {me} to {to}: downtime {} ms, total {} ms",
                    stats.downtime_ms.map_or("?".into(), |d| d.to_string()),
                    stats.total_ms.map_or("?".into(), |d| d.to_string()),
                );
                self.end_migration(name, id, to, report).await;
                self.claim_nic(&rec, to).await;
                self.store.event(&me, "migrated", name, msg).await;
                true
            }
            Err(e) => {
                let error = format!("migration of {name} to {to} failed: {e}");
                tracing::warn!("{error}");
                report.error = Some(error.clone());
                self.end_migration(name, id, to, report).await;
                self.store.event(&me, "migrate-failed", name, error).await;
                false
            }
        }
    }

    /// Target side of a live migration: QEMU started with `-incoming` on a
    /// free port (same disks: the volumes are files in /gvs; the same
    /// kernel command line as on the source, so the machines match).
    async fn migrate_in(&mut self, v: &Versioned<VmRecord>) {
        let me = self.cfg.node.clone();
        let rec = &v.value;
        let Some(m) = rec.migration.clone() else {
            return;
        };
        let from = rec.node.clone().unwrap_or_default();
        let started = match free_port() {
            Err(e) => Err(format!("no free port: {e}")),
            Ok(port) => {
                let mut cfg = self.vm_config(rec);
                cfg.incoming_port = Some(port);
                cfg.cmdline = format!(
                    "{} vmctl.name={} vmctl.node={from}",
                    rec.boot.cmdline, rec.name
                )
                .trim()
                .to_string();
                let r = if rec.hypervisor == "xen" {
                    Err("live migration is implemented for QEMU only".to_string())
                } else {
                    let backend = self.backend(rec);
                    block(|| backend.start(&cfg)).map_err(|e| e.to_string())
                };
                r.map(|inst| (inst, cfg, port))
            }
        };
        match started {
            Ok((inst, cfg, port)) => {
                if let Some(p) = inst.pid() {
                    self.beat
                        .pids
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rec.name.clone(), p);
                }
                self.locals.insert(
                    rec.name.clone(),
                    Local {
                        inst,
                        rec: rec.clone(),
                        pinned: cfg.pinned_cpus,
                        incoming_port: Some(port),
                    },
                );
                tracing::info!("{}: waiting for the migration on port {port}", rec.name);
            }
            Err(e) => {
                let error = format!("migration of {} to {me} failed: {e}", rec.name);
                tracing::warn!("{error}");
                let report = MigrationReport {
                    id: m.id,
                    from,
                    to: me.clone(),
                    at_ms: model::now_ms(),
                    error: Some(error.clone()),
                    downtime_ms: None,
                    total_ms: None,
                };
                self.end_migration(&rec.name, m.id, &me, report).await;
                self.store
                    .event(&me, "migrate-failed", &rec.name, error)
                    .await;
            }
        }
    }

    /// Whether the incoming half of a live migration runs (the migration
    /// completed).
    fn incoming_runs(&mut self, name: &str) -> bool {
        match self.locals.get_mut(name) {
            Some(l) => block(|| l.inst.state()) == RunState::Running,
            None => false,
        }
    }

    /// Makes this node run exactly the VMs reserved on it that should run,
    /// plus the incoming halves of live migrations to it.
    async fn reconcile_local(&mut self) -> Result<(), StoreError> {
        let (vms, _) = self.store.list::<VmRecord>(model::VMS).await?;
        let me = self.cfg.node.clone();
        let records: BTreeMap<String, Versioned<VmRecord>> = vms.into_iter().collect();
        self.migrations = records
            .iter()
            .filter_map(|(k, v)| v.value.last_migration.clone().map(|m| (k.clone(), m)))
            .collect();
        let wanted: BTreeMap<String, VmRecord> = records
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .filter(|(_, v)| {
                v.node.as_deref() == Some(me.as_str()) && v.desired == Desired::Running
            })
            .collect();
        // Live migrations to this node, accepted by the scheduler.
        let incoming: BTreeMap<String, Versioned<VmRecord>> = records
            .iter()
            .filter(|(_, v)| {
                let v = &v.value;
                v.desired == Desired::Running
                    && v.node.is_some()
                    && v.node.as_deref() != Some(me.as_str())
                    && v.migration
                        .as_ref()
                        .is_some_and(|m| m.to == me && m.phase != MigrationPhase::Requested)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Whether the record says this node runs the VM (not a migration
        // target): only then does this node report its status.
        let owned = |name: &str| {
            records
                .get(name)
                .is_none_or(|v| v.value.node.is_none() || v.value.node.as_deref() == Some(&me))
        };
        // Stop what should not run here.
        let unwanted: Vec<String> = self
            .locals
            .keys()
            .filter(|k| !wanted.contains_key(*k) && !incoming.contains_key(*k))
            .cloned()
            .collect();
        for name in unwanted {
            let mut l = self.take_local(&name).expect("listed");
            let r = block(|| l.inst.stop(Duration::from_secs(10)));
            if let Err(e) = r {
                tracing::warn!("stopping {name}: {e}");
            }
            if !owned(&name) {
                // The incoming half of a migration that did not happen.
                continue;
            }
            self.store
                .event(&me, "stop", &name, format!("stopped on {me}"))
                .await;
            let st = self.status(&name, VmState::Stopped, None, None);
            self.report(&name, st).await;
        }
        // Live migrations: start the incoming QEMUs, tell the source
        // where they listen; migrate out what the target waits for.
        for (name, v) in &incoming {
            match self.locals.get(name).map(|l| l.incoming_port) {
                None => self.migrate_in(v).await,
                Some(Some(port)) => {
                    let m = v.value.migration.as_ref().expect("incoming");
                    if m.phase == MigrationPhase::Accepted {
                        let mut nv = v.value.clone();
                        let nm = nv.migration.as_mut().expect("incoming");
                        nm.phase = MigrationPhase::Incoming;
                        nm.port = Some(port);
                        // A lost race is retried on the next pass.
                        let _ = self.store.cas(&model::vm_key(name), v.rev, &nv).await;
                    } else if self.incoming_runs(name) {
                        // The guest runs here: the migration completed (a
                        // source QEMU never resumes after completing). The
                        // target moves the record itself, so that a source
                        // agent dying now does not cost the guest a reboot;
                        // the source adds the downtime when it gets there.
                        let mut nv = v.value.clone();
                        nv.node = Some(me.clone());
                        nv.migration = None;
                        nv.target = None;
                        nv.reason = None;
                        if let Ok(true) = self.store.cas(&model::vm_key(name), v.rev, &nv).await {
                            tracing::info!("{name}: migrated in; the record names {me} now");
                        }
                        self.claim_nic(&nv, &me).await;
                    }
                }
                Some(None) => {}
            }
        }
        let mut gone = Vec::new();
        for (name, rec) in &wanted {
            let Some(m) = rec.migration.as_ref() else {
                continue;
            };
            if let (MigrationPhase::Incoming, Some(port), true) = (
                m.phase,
                m.port,
                self.locals.contains_key(name) && m.to != me,
            ) {
                let (id, to) = (m.id, m.to.clone());
                if self.migrate_out(name, id, &to, port).await {
                    gone.push(name.clone());
                }
            }
        }
        // Migrated out just now: the record has moved on.
        let wanted: BTreeMap<String, VmRecord> = wanted
            .into_iter()
            .filter(|(name, _)| !gone.contains(name))
            .collect();
        for (name, rec) in &wanted {
            if let Some(l) = self.locals.get_mut(name) {
                l.rec = rec.clone();
                l.incoming_port = None;
            }
        }
        // Check what runs.
        let mut flapped = Vec::new();
        let names: Vec<String> = self.locals.keys().cloned().collect();
        for name in names {
            let state = {
                let l = self.locals.get_mut(&name).expect("listed");
                block(|| l.inst.state())
            };
            if !owned(&name) {
                // A migration target: the source reports until the switch.
                if let RunState::Exited(why) = state {
                    tracing::warn!("{name}: the incoming QEMU exited: {why}");
                    self.take_local(&name);
                }
                continue;
            }
            match state {
                RunState::Running => {
                    let pid = self.locals[&name].inst.pid();
                    let st = self.status(&name, VmState::Running, pid, None);
                    self.report(&name, st).await;
                }
                RunState::Paused(why) => {
                    let pid = self.locals[&name].inst.pid();
                    let st = self.status(&name, VmState::Starting, pid, Some(why));
                    self.report(&name, st).await;
                }
                RunState::Exited(why) => {
                    let l = self.take_local(&name).expect("listed");
                    if self.crashed(&l.rec, &why).await {
                        flapped.push(name);
                    }
                }
            }
        }
        // Start what should run here and does not.
        for (name, rec) in wanted {
            // A VM that just failed for good is not started again (its
            // record, read before, still says running).
            if self.locals.contains_key(&name) || flapped.contains(&name) {
                continue;
            }
            // Its NIC first, so that lcmd serves it from the guest's boot
            // (tried again on the next pass when metad does not answer).
            if !self.claim_nic(&rec, &me).await {
                continue;
            }
            let cfg = self.vm_config(&rec);
            let started = {
                let backend: &dyn Hypervisor = if rec.hypervisor == "xen" {
                    &XlBackend
                } else {
                    self.backend(&rec)
                };
                block(|| backend.start(&cfg))
            };
            match started {
                Ok(inst) => {
                    let pid = inst.pid();
                    self.store
                        .event(
                            &me,
                            "start",
                            &name,
                            format!("started on {me} (pid {})", pid.unwrap_or(0)),
                        )
                        .await;
                    let pinned = cfg.pinned_cpus.clone();
                    if let Some(p) = pid {
                        self.beat
                            .pids
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name.clone(), p);
                    }
                    self.locals.insert(
                        name.clone(),
                        Local {
                            inst,
                            rec,
                            pinned,
                            incoming_port: None,
                        },
                    );
                    let st = self.status(&name, VmState::Running, pid, None);
                    self.report(&name, st).await;
                }
                Err(e) => {
                    tracing::warn!("starting {name}: {e}");
                    self.crashed(&rec, &format!("could not start: {e}")).await;
                }
            }
        }
        Ok(())
    }

    /// Runs until the process is killed.
    pub async fn run(mut self) -> Result<(), StoreError> {
        loop {
            match self.register().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!("registering: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        while let Err(e) = self.load_crashes().await {
            tracing::warn!("reading the crash history: {e}; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tokio::spawn(heartbeat_task(self.store.clone(), self.beat.clone()));
        tokio::spawn(crate::console::mirror(
            self.store.clone(),
            self.cfg.node.clone(),
        ));
        let mut watch = None;
        loop {
            if watch.is_none() {
                watch = self.store.client.watch(model::PREFIX, 0).await.ok();
            }
            // Wake on any change under dvm/, or after a second.
            let woke = match watch.as_mut() {
                Some(w) => tokio::time::timeout(Duration::from_secs(1), w.next()).await,
                None => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(None)
                }
            };
            match woke {
                Ok(None) => watch = None,
                Ok(Some(_)) => {
                    // Drain the burst: one pass handles them all.
                    while let Some(w) = watch.as_mut() {
                        match tokio::time::timeout(Duration::from_millis(20), w.next()).await {
                            Ok(Some(_)) => {}
                            Ok(None) => watch = None,
                            Err(_) => break,
                        }
                    }
                }
                Err(_) => {}
            }
            self.check_heartbeat().await;
            if let Err(e) = self.reconcile_local().await {
                tracing::warn!("reconcile: {e}");
            }
            match controller::elect(&self.store, &self.cfg.node, self.lease).await {
                Ok(true) => {
                    if let Err(e) = controller::reconcile(&self.store, &self.cfg.node).await {
                        tracing::warn!("scheduler: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("scheduler election: {e}"),
            }
            // Coalesce bursts of events.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_fences_before_its_lease_can_lapse_by_the_monotonic_clock() {
        let renewed = Instant::now();
        let at = |d: Duration| renewed + d;
        assert!(!must_fence(renewed, renewed));
        assert!(!must_fence(renewed, at(Duration::from_secs(1))));
        // Within the margin of the lease's end, and past it: fenced.
        assert!(must_fence(renewed, at(LEASE_TTL - FENCE_MARGIN)));
        assert!(must_fence(renewed, at(LEASE_TTL)));
        assert!(must_fence(renewed, at(LEASE_TTL * 10)));
        // Just short of the margin: not yet.
        let just_before = LEASE_TTL - FENCE_MARGIN - Duration::from_millis(1);
        assert!(!must_fence(renewed, at(just_before)));
        // A renewal noted after `now` (another thread's) is no silence.
        assert!(!must_fence(at(Duration::from_secs(1)), renewed));
    }
}
