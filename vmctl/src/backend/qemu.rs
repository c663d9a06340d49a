//! The QEMU backend: a command line built from the [`VmConfig`], QMP over a
//! unix socket for status, stop and migration, the serial console to a
//! file, a cgroup per VM where the host's cgroups allow. KVM only when a probe
//! shows a guest actually runs under it (on some hosts /dev/kvm exists but
//! guests stall); TCG otherwise.

use super::cgroup::Cgroups;
use super::qmp::Qmp;
use super::{io, BackendError, Hypervisor, Instance, MigrationStats, Nic, RunState, VmConfig};
use serde_json::json;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// Its `-accel` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// QEMU's command line for `vm` (without the binary), refused when a
/// value would not reach QEMU as itself (see [`crate::values`]).
pub fn qemu_argv(vm: &VmConfig, accel: Accel) -> Result<Vec<String>, BackendError> {
    // Every value below that stands inside an option string is checked
    // to hold no ',' or '=': none needs escaping.
    crate::values::check_config(vm)?;
    let mut a: Vec<String> = Vec::new();
    let mut push = |v: &[&str]| a.extend(v.iter().map(|s| s.to_string()));
    let qmp = vm.run_dir.join("qmp.sock");
    push(&["-name", &name_arg(&vm.name)]);
    push(&["-machine", "pc", "-accel", accel.as_str()]);
    if accel == Accel::Kvm {
        push(&["-cpu", "host"]);
    }
    push(&["-m", &format!("{}M", vm.mem_mib)]);
    push(&["-smp", &vm.vcpus.max(1).to_string()]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-kernel", &vm.kernel.to_string_lossy()]);
    if let Some(i) = &vm.initrd {
        push(&["-initrd", &i.to_string_lossy()]);
    }
    push(&["-append", &vm.cmdline]);
    for (i, d) in vm.disks.iter().enumerate() {
        // The volume is a file in /gvs; gvsfs has no byte-range locks.
        // cache=writeback: QEMU flushes (fsync) every disk when the guest
        // asks, on `quit`, and when a live migration completes (the source
        // stops the VM, flushes and inactivates its disks before the target
        // resumes), so gvsfs has every write before the target's first
        // write takes the volume's write lease over.
        push(&[
            "-drive",
            &format!(
                "file={},format=raw,if=virtio,cache=writeback,file.locking=off,id=disk{i}",
                d.to_string_lossy()
            ),
        ]);
    }
    if vm.nics.is_empty() {
        push(&["-nic", "none"]);
    }
    for (i, n) in vm.nics.iter().enumerate() {
        match n {
            Nic::User { mac } => push(&["-nic", &format!("user,model=virtio-net-pci,mac={mac},id=nic{i}")]),
            Nic::Tap { ifname, mac } => push(&[
                "-nic",
                &format!("tap,ifname={ifname},script=no,downscript=no,model=virtio-net-pci,mac={mac},id=nic{i}"),
            ]),
            Nic::Socket { local, remote, mac } => push(&[
                "-netdev",
                &format!(
                    "dgram,id=net{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
                    local.to_string_lossy(),
                    remote.to_string_lossy()
                ),
                "-device",
                &format!("virtio-net-pci,netdev=net{i},mac={mac},id=nic{i}"),
            ]),
        }
    }
    push(&[
        "-chardev",
        &format!(
            "file,id=console,path={},append=on",
            vm.console.to_string_lossy()
        ),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.to_string_lossy()),
    ]);
    push(&["-pidfile", &vm.run_dir.join("qemu.pid").to_string_lossy()]);
    if let Some(p) = vm.incoming_port {
        push(&["-incoming", &format!("tcp:0.0.0.0:{p}")]);
    }
    Ok(a)
}

/// Whether a guest kernel runs under KVM here: boots `kernel` with
/// `-accel kvm` and waits up to `timeout` for its first console line.
pub fn probe_kvm(kernel: &Path, timeout: Duration) -> Result<bool, String> {
    if !Path::new("/dev/kvm").exists() {
        return Ok(false);
    }
    let mut child = Command::new(QEMU)
        .args([
            "-accel",
            "kvm",
            "-m",
            "64",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-nic", "none", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("running {QEMU}: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        let _ = tx.send(out.read(&mut b).unwrap_or(0));
    });
    let ok = matches!(rx.recv_timeout(timeout), Ok(n) if n > 0);
    let _ = child.kill();
    let _ = child.wait();
    Ok(ok)
}

/// Chooses the accelerator: `VMCTL_ACCEL` (kvm|tcg) when set, else a
/// probe result cached in `cache` (one probe per machine and day), else a
/// probe with `kernel`.
pub fn choose_accel(kernel: Option<&Path>, cache: &Path) -> Accel {
    match std::env::var("VMCTL_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    let fresh = fs::metadata(cache)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(86_400));
    if fresh {
        if let Ok(s) = fs::read_to_string(cache) {
            match s.trim() {
                "kvm" => return Accel::Kvm,
                "tcg" => return Accel::Tcg,
                _ => {}
            }
        }
    }
    let Some(kernel) = kernel else {
        return Accel::Tcg;
    };
    let accel = match probe_kvm(kernel, Duration::from_secs(4)) {
        Ok(true) => Accel::Kvm,
        Ok(false) => Accel::Tcg,
        Err(e) => {
            tracing::warn!("KVM probe: {e}");
            Accel::Tcg
        }
    };
    tracing::info!("KVM probe: using {}", accel.as_str());
    if let Some(d) = cache.parent() {
        let _ = fs::create_dir_all(d);
    }
    let _ = fs::write(cache, accel.as_str());
    accel
}

/// Kills a QEMU of this VM left by an earlier agent (one that crashed or
/// was restarted): two QEMUs must never write one volume.
fn kill_leftover(vm: &VmConfig) {
    let Ok(pid) = fs::read_to_string(vm.run_dir.join("qemu.pid")) else {
        return;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return;
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if runs_vm(&cmdline, &vm.name) {
        tracing::warn!(
            "{}: killing the QEMU an earlier agent left (pid {pid})",
            vm.name
        );
        // SAFETY: kill(2) on a pid whose command line names this VM.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// QEMU's `-name` value for VM `name`: the guest's name and its process
/// name, by which [`kill_leftover`] knows the QEMU of a VM.
fn name_arg(name: &str) -> String {
    format!("{name},process=vm-{name}")
}

/// Whether `cmdline` (as /proc/PID/cmdline holds it: NUL-terminated
/// arguments) is that of a QEMU running VM `name`: its `-name` argument is
/// exactly this VM's, so neither a VM whose name starts with `name` nor a
/// process that merely mentions it matches.
fn runs_vm(cmdline: &[u8], name: &str) -> bool {
    let want = name_arg(name);
    let mut args = cmdline.split(|b| *b == 0);
    while let Some(a) = args.next() {
        if a == b"-name" {
            return args.next() == Some(want.as_bytes());
        }
    }
    false
}

/// Runs VMs with QEMU.
pub struct QemuBackend {
    accel: Accel,
    cgroups: Result<Cgroups, String>,
}

impl QemuBackend {
    /// A backend using `accel`, putting VMs in `cgroups` when available.
    pub fn new(accel: Accel, cgroups: Result<Cgroups, String>) -> QemuBackend {
        QemuBackend { accel, cgroups }
    }
}

impl Hypervisor for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }
    fn accel(&self) -> String {
        self.accel.as_str().into()
    }
    fn limits(&self) -> String {
        match &self.cgroups {
            Ok(cg) => cg.describe().into(),
            Err(e) => e.clone(),
        }
    }

    fn start(&self, vm: &VmConfig) -> Result<Box<dyn Instance>, BackendError> {
        fs::create_dir_all(&vm.run_dir)
            .map_err(io(format!("creating {}", vm.run_dir.display())))?;
        kill_leftover(vm);
        // QEMU binds its end of a socket NIC; lcmd may not have made the
        // directory yet (no appliance of this node so far).
        for n in &vm.nics {
            if let Nic::Socket { local, .. } = n {
                if let Some(dir) = local.parent() {
                    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
                }
            }
        }
        let qmp_path = vm.run_dir.join("qmp.sock");
        let _ = fs::remove_file(&qmp_path);
        let log_path = vm.run_dir.join("qemu.log");
        let log =
            fs::File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
        let log2 = log.try_clone().map_err(io("duplicating the log"))?;
        let argv = qemu_argv(vm, self.accel)?;
        fs::write(
            vm.run_dir.join("cmdline"),
            format!("{QEMU} {}\n", argv.join(" ")),
        )
        .map_err(io("writing the command line"))?;
        let mut child = Command::new(QEMU)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(format!("running {QEMU}")))?;
        let mut cgroup = None;
        if let Ok(cg) = &self.cgroups {
            match cg.apply(
                &vm.name,
                child.id(),
                vm.mem_mib,
                vm.cpu_cap,
                &vm.pinned_cpus,
            ) {
                Ok(_) => cgroup = Some(cg.clone()),
                Err(e) => tracing::warn!("{}: limits not applied: {e}", vm.name),
            }
        }
        let qmp = match Qmp::connect(&qmp_path, Duration::from_secs(10)) {
            Ok(q) => q,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                return Err(BackendError::Hypervisor(format!(
                    "QEMU did not start: {e}; {}",
                    log.lines().last().unwrap_or("(no output)")
                )));
            }
        };
        Ok(Box::new(QemuInstance {
            name: vm.name.clone(),
            child,
            qmp: Some(qmp),
            cgroup,
            log: log_path,
        }))
    }
}

/// A QEMU process and its QMP connection.
pub struct QemuInstance {
    name: String,
    child: Child,
    qmp: Option<Qmp>,
    cgroup: Option<Cgroups>,
    log: PathBuf,
}

impl QemuInstance {
    fn exit_reason(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                let last = log
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                Some(format!(
                    "QEMU exited ({st}){}",
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                ))
            }
            Ok(None) => None,
            Err(e) => Some(format!("QEMU: {e}")),
        }
    }
}

impl Instance for QemuInstance {
    fn state(&mut self) -> RunState {
        if let Some(r) = self.exit_reason() {
            return RunState::Exited(r);
        }
        match self.qmp.as_mut().map(|q| q.status()) {
            Some(Ok(s)) if s == "running" => RunState::Running,
            Some(Ok(s)) => RunState::Paused(s),
            Some(Err(e)) => {
                self.qmp = None;
                RunState::Paused(format!("QMP lost: {e}"))
            }
            None => RunState::Paused("QMP lost".into()),
        }
    }

    fn stop(&mut self, grace: Duration) -> Result<(), BackendError> {
        // quit: QEMU flushes its disks and closes them (gvsfs then commits).
        if let Some(q) = self.qmp.as_mut() {
            // A QEMU stuck in I/O does not answer: wait no longer than grace.
            q.set_timeout(grace);
            let _ = q.execute("quit", None);
            q.set_timeout(Duration::from_secs(30));
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = self.child.try_wait() {
            tracing::warn!("{}: QEMU did not quit in {grace:?}; killing it", self.name);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(cg) = &self.cgroup {
            cg.remove(&self.name);
        }
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(cg) = &self.cgroup {
            cg.remove(&self.name);
        }
    }

    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }

    fn migrate(
        &mut self,
        dest_host: &str,
        port: u16,
        max_bps: u64,
    ) -> Result<MigrationStats, BackendError> {
        let q = self
            .qmp
            .as_mut()
            .ok_or_else(|| BackendError::Qmp("not connected".into()))?;
        // QEMU's default cap is 32 MiB/s; the node's own bandwidth instead.
        q.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": max_bps.max(1 << 20) })),
        )?;
        q.execute(
            "migrate",
            Some(json!({ "uri": format!("tcp:{dest_host}:{port}") })),
        )?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = q.execute("query-migrate", None)?;
            match r.get("status").and_then(|s| s.as_str()).unwrap_or("") {
                "completed" => {
                    let ms = |k: &str| r.get(k).and_then(serde_json::Value::as_u64);
                    return Ok(MigrationStats {
                        downtime_ms: ms("downtime"),
                        total_ms: ms("total-time"),
                    });
                }
                "failed" | "cancelled" => {
                    return Err(BackendError::Hypervisor(format!(
                        "migration {}",
                        r.get("error-desc")
                            .and_then(|s| s.as_str())
                            .unwrap_or("failed")
                    )))
                }
                _ if Instant::now() > deadline => {
                    let _ = q.execute("migrate_cancel", None);
                    return Err(BackendError::Hypervisor(
                        "migration did not finish in 120 s".into(),
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for QemuInstance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmConfig {
        VmConfig {
            name: "shop.web".into(),
            vcpus: 2,
            cpu_cap: 2,
            mem_mib: 256,
            pinned_cpus: vec![],
            kernel: "/gvs/catalog/tiny/vmlinuz".into(),
            initrd: Some("/gvs/catalog/tiny/initrd.img".into()),
            cmdline: "console=ttyS0 vmctl.name=shop.web".into(),
            disks: vec!["/gvs/apps/shop/web/root.vol".into()],
            nics: vec![],
            run_dir: "/run/grid/vmctl/shop.web".into(),
            console: "/run/grid/vmctl/shop.web/console.log".into(),
            incoming_port: None,
        }
    }

    fn has(a: &[String], pair: [&str; 2]) -> bool {
        a.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1])
    }

    #[test]
    fn command_line_follows_the_spec() {
        let a = qemu_argv(&vm(), Accel::Tcg).unwrap();
        assert!(has(&a, ["-accel", "tcg"]));
        assert!(has(&a, ["-m", "256M"]));
        assert!(has(&a, ["-smp", "2"]));
        assert!(has(&a, ["-kernel", "/gvs/catalog/tiny/vmlinuz"]));
        assert!(has(&a, ["-append", "console=ttyS0 vmctl.name=shop.web"]));
        assert!(has(&a, ["-drive", "file=/gvs/apps/shop/web/root.vol,format=raw,if=virtio,cache=writeback,file.locking=off,id=disk0"]));
        assert!(has(&a, ["-nic", "none"]));
        assert!(has(
            &a,
            [
                "-qmp",
                "unix:/run/grid/vmctl/shop.web/qmp.sock,server=on,wait=off"
            ]
        ));
        assert!(has(
            &a,
            [
                "-chardev",
                "file,id=console,path=/run/grid/vmctl/shop.web/console.log,append=on"
            ]
        ));
        assert!(!a.contains(&"-incoming".to_string()));
        let a = qemu_argv(
            &VmConfig {
                incoming_port: Some(4444),
                ..vm()
            },
            Accel::Kvm,
        )
        .unwrap();
        assert!(has(&a, ["-accel", "kvm"]) && has(&a, ["-cpu", "host"]));
        assert!(has(&a, ["-incoming", "tcp:0.0.0.0:4444"]));
    }

    #[test]
    fn nics_are_the_lcmd_seam() {
        let mut v = vm();
        v.nics = vec![Nic::Tap {
            ifname: "lc-shop-web".into(),
            mac: "52:54:00:00:00:01".into(),
        }];
        let a = qemu_argv(&v, Accel::Tcg).unwrap();
        assert!(has(&a, ["-nic", "tap,ifname=lc-shop-web,script=no,downscript=no,model=virtio-net-pci,mac=52:54:00:00:00:01,id=nic0"]));
        assert!(!has(&a, ["-nic", "none"]));
        v.nics = vec![Nic::Socket {
            local: "/run/grid/lcmd/lcx.vm".into(),
            remote: "/run/grid/lcmd/lcx.lcmd".into(),
            mac: "02:4c:00:00:00:01".into(),
        }];
        let a = qemu_argv(&v, Accel::Tcg).unwrap();
        assert!(has(&a, ["-netdev", "dgram,id=net0,local.type=unix,local.path=/run/grid/lcmd/lcx.vm,remote.type=unix,remote.path=/run/grid/lcmd/lcx.lcmd"]));
        assert!(has(
            &a,
            [
                "-device",
                "virtio-net-pci,netdev=net0,mac=02:4c:00:00:00:01,id=nic0"
            ]
        ));
    }

    /// The field a refusal of `v`'s command line names.
    fn refused_field(v: &VmConfig) -> String {
        match qemu_argv(v, Accel::Tcg) {
            Err(BackendError::Invalid(e)) => e.field,
            other => panic!("built: {other:?}"),
        }
    }

    #[test]
    fn hostile_values_never_reach_the_command_line() {
        let with = |f: &dyn Fn(&mut VmConfig)| {
            let mut v = vm();
            f(&mut v);
            refused_field(&v)
        };
        let socket = |mac: &str, local: &str| Nic::Socket {
            local: local.into(),
            remote: "/run/grid/lcmd/lcx.lcmd".into(),
            mac: mac.into(),
        };
        // A comma or '=' in a disk path would add QEMU options.
        assert_eq!(with(&|v| v.disks = vec!["/gvs/a,b.vol".into()]), "disks[0]");
        assert_eq!(
            with(&|v| v.disks.push("/gvs/a.vol,file.locking=on".into())),
            "disks[1]"
        );
        assert_eq!(with(&|v| v.disks = vec!["/gvs/a=b.vol".into()]), "disks[0]");
        // Disks are in /gvs, named canonically.
        assert_eq!(with(&|v| v.disks = vec!["/etc/shadow".into()]), "disks[0]");
        assert_eq!(
            with(&|v| v.disks = vec!["/gvs/apps/../../etc/shadow".into()]),
            "disks[0]"
        );
        assert_eq!(with(&|v| v.disks = vec!["/gvs/./a.vol".into()]), "disks[0]");
        assert_eq!(with(&|v| v.disks = vec!["gvs/a.vol".into()]), "disks[0]");
        assert_eq!(with(&|v| v.disks = vec!["/gvsx/a.vol".into()]), "disks[0]");
        assert_eq!(
            with(&|v| v.kernel = "/gvs/../boot/vmlinuz".into()),
            "kernel"
        );
        assert_eq!(
            with(&|v| v.initrd = Some("/tmp/initrd.img".into())),
            "initrd"
        );
        // A MAC is a MAC.
        assert_eq!(
            with(&|v| v.nics = vec![socket(
                "52:54:00:00:00:01,romfile=/x",
                "/run/grid/lcmd/lcx.vm"
            )]),
            "nics[0].mac"
        );
        assert_eq!(
            with(&|v| v.nics = vec![Nic::User {
                mac: "52:54:00:00:00".into()
            }]),
            "nics[0].mac"
        );
        assert_eq!(
            with(&|v| v.nics = vec![socket("52:54:00:00:00:01", "/run/x,y.vm")]),
            "nics[0].local"
        );
        assert_eq!(
            with(&|v| v.nics = vec![Nic::Tap {
                ifname: "lc,script=/x".into(),
                mac: "52:54:00:00:00:01".into()
            }]),
            "nics[0].ifname"
        );
        // The name is app.component, as descriptors name them.
        assert_eq!(
            with(&|v| v.name = "shop.web,debug-threads=on".into()),
            "name"
        );
        assert_eq!(with(&|v| v.name = "shop".into()), "name");
        assert_eq!(with(&|v| v.name = "Shop.web".into()), "name");
        assert_eq!(
            with(&|v| v.console = "/run/grid/vmctl/a,append=off".into()),
            "console"
        );
        assert_eq!(
            with(&|v| v.run_dir = "/run/grid/vmctl/a=b".into()),
            "run_dir"
        );
        // The error says what is wrong.
        let mut v = vm();
        v.disks = vec!["/gvs/a,b.vol".into()];
        let e = qemu_argv(&v, Accel::Tcg).unwrap_err().to_string();
        assert!(e.contains("disks[0]") && e.contains("','"), "{e}");
    }

    #[test]
    fn a_leftover_qemu_is_recognised_by_its_exact_name() {
        let cmdline = |name: &str| {
            let mut v = vm();
            v.name = name.into();
            let mut b = QEMU.as_bytes().to_vec();
            for a in qemu_argv(&v, Accel::Tcg).unwrap() {
                b.push(0);
                b.extend_from_slice(a.as_bytes());
            }
            b.push(0);
            b
        };
        let db = cmdline("shop.db");
        assert!(runs_vm(&db, "shop.db"));
        // A name that is a prefix of another VM's is not that VM.
        assert!(!runs_vm(&db, "shop.d"), "shop.d matched shop.db's QEMU");
        assert!(!runs_vm(&cmdline("shop.dbx"), "shop.db"));
        assert!(!runs_vm(&cmdline("xshop.db"), "shop.db"));
        // Nor is a process that merely mentions the name elsewhere.
        let other = b"sh\0-c\0echo shop.db,process=vm-shop.db\0".to_vec();
        assert!(!runs_vm(&other, "shop.db"));
        assert!(!runs_vm(b"", "shop.db"));
    }
}
