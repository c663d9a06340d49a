//! The Xen backend: an `xl.cfg` written per VM (xl.cfg(5)) and `xl`
//! commands (xl(1)) run through `duct`. Xen cannot run on the development
//! machines (xl fails without a hypervisor, even for a dry run), so the
//! configuration and the command lines are unit-tested against the
//! documentation; nothing here has booted a Xen guest.

use super::{io, BackendError, Hypervisor, Instance, Nic, RunState, VmConfig};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `xl` binary.
pub const XL: &str = "xl";

/// Quotes a string for xl.cfg (a double-quoted string; `\` and `"` escaped).
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A disk spec (xl-disk-configuration(5)): positional-free `key=value`
/// form, `target=` last because it may contain commas.
pub fn disk_spec(i: usize, path: &Path) -> String {
    let vdev = format!("xvd{}", (b'a' + i as u8) as char);
    format!(
        "format=raw, vdev={vdev}, access=rw, target={}",
        path.display()
    )
}

/// The xl.cfg of `vm`: a PVH guest booted directly from the image's kernel.
pub fn xl_cfg(vm: &VmConfig) -> String {
    let mut c = String::new();
    let mut kv = |k: &str, v: String| c.push_str(&format!("{k} = {v}\n"));
    kv("name", q(&vm.name));
    kv("type", q("pvh"));
    kv("kernel", q(&vm.kernel.to_string_lossy()));
    if let Some(i) = &vm.initrd {
        kv("ramdisk", q(&i.to_string_lossy()));
    }
    // PVH guests' console is hvc0, not the emulated UART.
    let cmdline = vm.cmdline.replace("console=ttyS0", "console=hvc0");
    kv("cmdline", q(&cmdline));
    kv("memory", vm.mem_mib.to_string());
    kv("maxmem", vm.mem_mib.to_string());
    kv("vcpus", vm.vcpus.max(1).to_string());
    kv("maxvcpus", vm.vcpus.max(1).to_string());
    if !vm.pinned_cpus.is_empty() {
        let l: Vec<String> = vm.pinned_cpus.iter().map(u32::to_string).collect();
        kv("cpus", q(&l.join(",")));
    }
    // cap: percent of one physical CPU (credit schedulers).
    kv("cap", (vm.cpu_cap.max(1) * 100).to_string());
    let disks: Vec<String> = vm
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| q(&disk_spec(i, d)))
        .collect();
    kv("disk", format!("[ {} ]", disks.join(", ")));
    let vifs: Vec<String> = vm
        .nics
        .iter()
        .filter_map(|n| match n {
            // lcmd's seam: the backend names the vif after lcmd's device.
            Nic::Tap { ifname, mac } => {
                Some(q(&format!("mac={mac}, vifname={ifname}, script=vif-lcmd")))
            }
            Nic::User { mac } => Some(q(&format!("mac={mac}"))),
            // A domain cannot join a unix socket; vmctl gives Xen
            // components no socket NIC (see `crate::guest`).
            Nic::Socket { .. } => None,
        })
        .collect();
    kv("vif", format!("[ {} ]", vifs.join(", ")));
    kv("on_poweroff", q("destroy"));
    kv("on_reboot", q("destroy"));
    kv("on_crash", q("destroy"));
    c
}

/// The `xl` commands the backend runs, as argv (without `xl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XlCommand {
    /// `xl create CFG`: start the domain.
    Create(PathBuf),
    /// `xl shutdown -w NAME`: orderly shutdown, waiting for it.
    Shutdown(String),
    /// `xl destroy NAME`: immediate termination.
    Destroy(String),
    /// `xl list -l NAME`: the domain's state as JSON.
    List(String),
    /// `xl migrate NAME HOST`: live migration (over ssh to HOST).
    Migrate(String, String),
    /// `xl -f migrate-receive`-style incoming is driven by the sender; kept
    /// for completeness of `xl console NAME`.
    Console(String),
}

impl XlCommand {
    /// Its arguments.
    pub fn argv(&self) -> Vec<String> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match self {
            XlCommand::Create(p) => s(&["create", &p.to_string_lossy()]),
            XlCommand::Shutdown(n) => s(&["shutdown", "-w", n]),
            XlCommand::Destroy(n) => s(&["destroy", n]),
            XlCommand::List(n) => s(&["list", "-l", n]),
            XlCommand::Migrate(n, h) => s(&["migrate", n, h]),
            XlCommand::Console(n) => s(&["console", n]),
        }
    }

    /// Runs it with duct, returning stdout, or stderr as the error.
    pub fn run(&self) -> Result<String, BackendError> {
        let out = duct::cmd(XL, self.argv())
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .map_err(io(format!("running {XL}")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(BackendError::Hypervisor(format!(
                "xl {}: {}",
                self.argv().join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// Runs VMs with Xen's xl.
pub struct XlBackend;

impl Hypervisor for XlBackend {
    fn name(&self) -> &'static str {
        "xen"
    }
    fn accel(&self) -> String {
        "xen".into()
    }
    fn limits(&self) -> String {
        "xl.cfg (memory, cap, cpus)".into()
    }
    fn start(&self, vm: &VmConfig) -> Result<Box<dyn Instance>, BackendError> {
        fs::create_dir_all(&vm.run_dir)
            .map_err(io(format!("creating {}", vm.run_dir.display())))?;
        let cfg = vm.run_dir.join("xl.cfg");
        fs::write(&cfg, xl_cfg(vm)).map_err(io(format!("writing {}", cfg.display())))?;
        XlCommand::Create(cfg).run()?;
        Ok(Box::new(XlInstance {
            name: vm.name.clone(),
        }))
    }
}

/// A Xen domain.
pub struct XlInstance {
    name: String,
}

impl Instance for XlInstance {
    fn state(&mut self) -> RunState {
        match XlCommand::List(self.name.clone()).run() {
            Ok(_) => RunState::Running,
            Err(e) => RunState::Exited(e.to_string()),
        }
    }
    fn stop(&mut self, _grace: Duration) -> Result<(), BackendError> {
        if XlCommand::Shutdown(self.name.clone()).run().is_err() {
            XlCommand::Destroy(self.name.clone()).run()?;
        }
        Ok(())
    }
    fn kill(&mut self) {
        let _ = XlCommand::Destroy(self.name.clone()).run();
    }
    fn pid(&self) -> Option<u32> {
        None
    }
    fn migrate(
        &mut self,
        dest_host: &str,
        _port: u16,
        _max_bps: u64,
    ) -> Result<super::MigrationStats, BackendError> {
        XlCommand::Migrate(self.name.clone(), dest_host.to_string())
            .run()
            .map(|_| super::MigrationStats::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Every key xl.cfg(5) documents that this backend may write.
    const DOCUMENTED: &[&str] = &[
        "name",
        "type",
        "kernel",
        "ramdisk",
        "cmdline",
        "memory",
        "maxmem",
        "vcpus",
        "maxvcpus",
        "cpus",
        "cap",
        "disk",
        "vif",
        "on_poweroff",
        "on_reboot",
        "on_crash",
    ];

    fn vm() -> VmConfig {
        VmConfig {
            name: "shop.db".into(),
            vcpus: 2,
            cpu_cap: 2,
            mem_mib: 512,
            pinned_cpus: vec![2, 3],
            kernel: "/gvs/catalog/tiny/vmlinuz".into(),
            initrd: Some("/gvs/catalog/tiny/initrd.img".into()),
            cmdline: "console=ttyS0 quiet vmctl.name=shop.db".into(),
            disks: vec![
                "/gvs/apps/shop/db/root.vol".into(),
                "/gvs/apps/shop/db/data,1.vol".into(),
            ],
            nics: vec![Nic::Tap {
                ifname: "lcshopdb0".into(),
                mac: "00:16:3e:00:00:01".into(),
            }],
            run_dir: "/run/grid/vmctl/shop.db".into(),
            console: "/run/grid/vmctl/shop.db/console.log".into(),
            incoming_port: None,
        }
    }

    /// Parses the subset of the xl.cfg grammar we emit: `KEY = VALUE`
    /// lines, VALUE a number, a quoted string or a list of quoted strings.
    fn parse(cfg: &str) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for line in cfg.lines() {
            let (k, v) = line.split_once(" = ").expect("KEY = VALUE");
            assert!(
                k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "key {k}"
            );
            let v = v.trim();
            let ok = v.parse::<u64>().is_ok()
                || (v.starts_with('"') && v.ends_with('"') && !v[1..v.len() - 1].contains('"'))
                || (v.starts_with("[ ") && v.ends_with(']'));
            assert!(ok, "value of {k}: {v}");
            assert!(
                m.insert(k.to_string(), v.to_string()).is_none(),
                "{k} twice"
            );
        }
        m
    }

    #[test]
    fn xl_cfg_uses_only_documented_keys_and_forms() {
        let m = parse(&xl_cfg(&vm()));
        for k in m.keys() {
            assert!(DOCUMENTED.contains(&k.as_str()), "undocumented key {k}");
        }
        assert_eq!(m["name"], "\"shop.db\"");
        assert_eq!(m["type"], "\"pvh\"");
        assert_eq!(m["memory"], "512");
        assert_eq!(m["maxmem"], "512");
        assert_eq!(m["vcpus"], "2");
        assert_eq!(m["cpus"], "\"2,3\"");
        // cap is a percentage of one physical CPU.
        assert_eq!(m["cap"], "200");
        assert_eq!(m["cmdline"], "\"console=hvc0 quiet vmctl.name=shop.db\"");
        // xl-disk-configuration(5): target= comes last (it may hold commas).
        assert_eq!(
            m["disk"],
            "[ \"format=raw, vdev=xvda, access=rw, target=/gvs/apps/shop/db/root.vol\", \
             \"format=raw, vdev=xvdb, access=rw, target=/gvs/apps/shop/db/data,1.vol\" ]"
        );
        assert_eq!(
            m["vif"],
            "[ \"mac=00:16:3e:00:00:01, vifname=lcshopdb0, script=vif-lcmd\" ]"
        );
        for k in ["on_poweroff", "on_reboot", "on_crash"] {
            assert_eq!(m[k], "\"destroy\"");
        }
    }

    #[test]
    fn unpinned_vms_have_no_cpus_key_and_quotes_are_escaped() {
        let mut v = vm();
        v.pinned_cpus.clear();
        v.cmdline = "a=\"b\"".into();
        let cfg = xl_cfg(&v);
        assert!(!cfg.contains("\ncpus ="));
        assert!(cfg.contains("cmdline = \"a=\\\"b\\\"\""), "{cfg}");
    }

    #[test]
    fn command_lines_follow_xl_1() {
        assert_eq!(
            XlCommand::Create("/run/x.cfg".into()).argv(),
            ["create", "/run/x.cfg"]
        );
        assert_eq!(
            XlCommand::Shutdown("a.b".into()).argv(),
            ["shutdown", "-w", "a.b"]
        );
        assert_eq!(XlCommand::Destroy("a.b".into()).argv(), ["destroy", "a.b"]);
        assert_eq!(XlCommand::List("a.b".into()).argv(), ["list", "-l", "a.b"]);
        assert_eq!(
            XlCommand::Migrate("a.b".into(), "node2".into()).argv(),
            ["migrate", "a.b", "node2"]
        );
    }

    #[test]
    fn without_xen_xl_fails_with_a_clear_error() {
        // xl is not installed (or finds no hypervisor) here: the error says so.
        let e = XlCommand::List("nope".into())
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.contains("xl"), "{e}");
    }
}
