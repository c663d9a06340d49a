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
use crate::model::{self, Desired, NodeRecord, VmRecord, VmState, VmStatus};
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The heartbeat task's view of the lease, shared with the main loop: the
/// heartbeat runs on its own task so that a slow VM start (a KVM probe, a
/// QEMU that takes seconds to answer) never lets the lease lapse.
#[derive(Default)]
struct Beat {
    /// The lease being kept alive.
    lease: AtomicU64,
    /// When it was last renewed, ms since the epoch.
    renewed_ms: AtomicU64,
    /// metad says the lease is gone, or it could not be renewed in time.
    lost: AtomicBool,
    /// Hypervisor pids of the local VMs, killed by the heartbeat task
    /// itself when the lease is about to lapse.
    pids: std::sync::Mutex<BTreeMap<String, u32>>,
}

/// Fencing margin: local VMs are killed this long before the lease could
/// expire on metad's side, so a VM never runs on two nodes at once.
const FENCE_MARGIN: Duration = Duration::from_millis(1500);

impl Beat {
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
        let silent = model::now_ms().saturating_sub(beat.renewed_ms.load(Ordering::SeqCst));
        if silent + FENCE_MARGIN.as_millis() as u64 >= LEASE_TTL.as_millis() as u64 {
            tracing::warn!("heartbeat: no renewal for {silent} ms; fencing");
            beat.lost.store(true, Ordering::SeqCst);
            beat.kill_all();
            continue;
        }
        // Renew once a second (a Raft write each): check twice as often.
        if silent < 1000 {
            continue;
        }
        match tokio::time::timeout(
            Duration::from_millis(800),
            store.client.lease_keepalive(lease),
        )
        .await
        {
            Ok(Ok(_)) => beat.renewed_ms.store(model::now_ms(), Ordering::SeqCst),
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
}

struct Local {
    inst: Box<dyn Instance>,
    rec: VmRecord,
    /// Physical CPUs dedicated to it.
    pinned: Vec<u32>,
}

/// The agent's state.
pub struct Agent {
    cfg: AgentConfig,
    store: Arc<Store>,
    lease: u64,
    beat: Arc<Beat>,
    qemu: Option<QemuBackend>,
    accel: Option<Accel>,
    limits: String,
    locals: BTreeMap<String, Local>,
    /// Crash timestamps by VM (the flapping guard).
    crashes: BTreeMap<String, Vec<u64>>,
    /// The last status written, by VM.
    reported: BTreeMap<String, VmStatus>,
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Agent {
    /// An agent; nothing happens until [`Agent::run`].
    pub fn new(cfg: AgentConfig, store: Store) -> Agent {
        let store = Arc::new(store);
        let limits = match Cgroups::detect(Path::new("/sys/fs/cgroup"), &cfg.node) {
            Ok(_) => "cgroup v2 (memory.max, cpu.max, cpuset)".to_string(),
            Err(e) => e,
        };
        Agent {
            cfg,
            store,
            lease: 0,
            beat: Arc::default(),
            qemu: None,
            accel: None,
            limits,
            locals: BTreeMap::new(),
            crashes: BTreeMap::new(),
            reported: BTreeMap::new(),
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
            limits: self.limits.clone(),
            since_ms: model::now_ms(),
        }
    }

    async fn register(&mut self) -> Result<(), StoreError> {
        self.lease = self.store.client.lease_grant(LEASE_TTL).await?;
        let rec = crate::store::to_json(&self.node_record());
        self.store
            .client
            .put_with_lease(model::node_key(&self.cfg.node), rec, self.lease)
            .await?;
        self.beat
            .renewed_ms
            .store(model::now_ms(), Ordering::SeqCst);
        self.beat.lease.store(self.lease, Ordering::SeqCst);
        self.beat.lost.store(false, Ordering::SeqCst);
        tracing::info!("registered {} (lease {})", self.cfg.node, self.lease);
        Ok(())
    }

    /// Checks the heartbeat: when the lease is gone (or could not be
    /// renewed for its whole TTL), stops every local VM (fencing: the
    /// scheduler is placing them elsewhere) and registers again.
    async fn check_heartbeat(&mut self) {
        let silent = model::now_ms().saturating_sub(self.beat.renewed_ms.load(Ordering::SeqCst));
        let lost = self.beat.lost.load(Ordering::SeqCst);
        if !lost && silent < LEASE_TTL.as_millis() as u64 {
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

    fn backend(&mut self, vm: &VmRecord) -> &dyn Hypervisor {
        if self.qemu.is_none() {
            let accel = choose_accel(Some(Path::new(&vm.boot.kernel)), &self.cfg.accel_cache);
            self.accel = Some(accel);
            let cg = Cgroups::detect(Path::new("/sys/fs/cgroup"), &self.cfg.node);
            self.qemu = Some(QemuBackend::new(accel, cg));
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
            nics: vec![],
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
            limits: self.limits.clone(),
            since_ms: model::now_ms(),
        }
    }

    async fn report(&mut self, vm: &str, st: VmStatus) {
        if let Some(old) = self.reported.get(vm) {
            if old.state == st.state
                && old.pid == st.pid
                && old.reason == st.reason
                && old.crashes == st.crashes
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

    /// Makes this node run exactly the VMs reserved on it that should run.
    async fn reconcile_local(&mut self) -> Result<(), StoreError> {
        let (vms, _) = self.store.list::<VmRecord>(model::VMS).await?;
        let me = self.cfg.node.clone();
        let wanted: BTreeMap<String, VmRecord> = vms
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .filter(|(_, v)| {
                v.node.as_deref() == Some(me.as_str()) && v.desired == Desired::Running
            })
            .collect();
        // Stop what should not run here.
        let unwanted: Vec<String> = self
            .locals
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in unwanted {
            let mut l = self.take_local(&name).expect("listed");
            let r = block(|| l.inst.stop(Duration::from_secs(10)));
            if let Err(e) = r {
                tracing::warn!("stopping {name}: {e}");
            }
            self.store
                .event(&me, "stop", &name, format!("stopped on {me}"))
                .await;
            let st = self.status(&name, VmState::Stopped, None, None);
            self.report(&name, st).await;
        }
        // Check what runs.
        let mut flapped = Vec::new();
        let names: Vec<String> = self.locals.keys().cloned().collect();
        for name in names {
            let state = {
                let l = self.locals.get_mut(&name).expect("listed");
                block(|| l.inst.state())
            };
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
                    self.locals
                        .insert(name.clone(), Local { inst, rec, pinned });
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
        tokio::spawn(heartbeat_task(self.store.clone(), self.beat.clone()));
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
