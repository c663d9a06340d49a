//! Resource limits for QEMU processes: a cgroup directory per VM with a
//! memory limit, a CPU cap and, where asked, dedicated CPUs. cgroup v2
//! (`memory.max`, `cpu.max`, `cpuset.cpus`) where `/sys/fs/cgroup` is
//! unified with those controllers; on a hybrid or v1 host, the v1
//! memory, cpu and cpuset hierarchies (`memory.limit_in_bytes`,
//! `cpu.cfs_quota_us`, `cpuset.cpus`). Where neither works the agent says
//! limits are not enforced, in the node record and every VM status.

use super::{io, BackendError};
use std::fs;
use std::path::{Path, PathBuf};

/// QEMU's own memory beyond the guest's RAM (code, device state, TCG's
/// translation cache). Measured here: a 128 MiB TCG guest's QEMU holds
/// about 200 MiB resident once booted; the margin keeps a busy guest
/// clear of the OOM killer while a runaway one is still stopped.
pub const QEMU_OVERHEAD_MIB: u64 = 160;

/// The CFS period the CPU caps are expressed in (100 ms, the default).
const CFS_PERIOD_US: u64 = 100_000;

/// The parent directories of the VMs' cgroups on this node.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// One unified directory per VM below `root`.
    V2 { root: PathBuf },
    /// One directory per VM in each v1 hierarchy, below these parents.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuset: PathBuf,
    },
}

/// The memory a VM may use, QEMU's overhead included, in bytes.
fn mem_bytes(mem_mib: u64) -> u64 {
    (mem_mib + QEMU_OVERHEAD_MIB) << 20
}

/// The CFS quota for a cap of `cpu_cap` whole CPUs.
fn quota_us(cpu_cap: u32) -> u64 {
    u64::from(cpu_cap.max(1)) * CFS_PERIOD_US
}

fn cpu_list(pinned: &[u32]) -> String {
    pinned
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The cgroup v2 limit files of one VM, as (file, value).
pub fn limit_files(mem_mib: u64, cpu_cap: u32, pinned: &[u32]) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("memory.max", mem_bytes(mem_mib).to_string()),
        ("memory.swap.max", "0".to_string()),
        ("cpu.max", format!("{} {CFS_PERIOD_US}", quota_us(cpu_cap))),
    ];
    if !pinned.is_empty() {
        v.push(("cpuset.cpus", cpu_list(pinned)));
    }
    v
}

/// Writes `value` to `dir/file`.
fn write(dir: &Path, file: &str, value: &str) -> Result<(), BackendError> {
    let p = dir.join(file);
    fs::write(&p, value).map_err(io(format!("writing {value} to {}", p.display())))
}

/// Creates the v1 cpuset directory `dir` and every missing parent below
/// the hierarchy's root, each with the CPUs and memory nodes of its
/// parent (a v1 cpuset starts empty and takes no task until both are set).
fn make_cpuset(dir: &Path) -> std::io::Result<()> {
    if dir.join("cpuset.cpus").exists() {
        return Ok(());
    }
    let Some(parent) = dir.parent() else {
        return Err(std::io::Error::other("no cpuset hierarchy above"));
    };
    make_cpuset(parent)?;
    fs::create_dir_all(dir)?;
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let have = fs::read_to_string(dir.join(f)).unwrap_or_default();
        if have.trim().is_empty() {
            fs::write(dir.join(f), fs::read_to_string(parent.join(f))?.trim())?;
        }
    }
    Ok(())
}

impl Cgroups {
    /// This node's VM cgroups under `fs_root` (normally /sys/fs/cgroup):
    /// cgroup v2 with the cpu and memory controllers, else the v1
    /// memory, cpu and cpuset hierarchies, or why neither works.
    pub fn detect(fs_root: &Path, node: &str) -> Result<Cgroups, String> {
        match Self::detect_v2(fs_root, node) {
            Ok(c) => Ok(c),
            Err(v2) => Self::detect_v1(fs_root, node).map_err(|v1| format!("{v2}; {v1}")),
        }
    }

    fn detect_v2(fs_root: &Path, node: &str) -> Result<Cgroups, String> {
        let controllers = fs::read_to_string(fs_root.join("cgroup.controllers"))
            .map_err(|_| format!("not enforced: {} is not cgroup v2", fs_root.display()))?;
        let have: Vec<&str> = controllers.split_whitespace().collect();
        for c in ["cpu", "memory"] {
            if !have.contains(&c) {
                return Err(format!("not enforced: cgroup v2 has no {c} controller"));
            }
        }
        let root = fs_root.join("vmctl.slice").join(node);
        let make = || -> std::io::Result<()> {
            fs::create_dir_all(&root)?;
            let enable = "+cpu +memory +cpuset";
            for dir in [
                fs_root.to_path_buf(),
                fs_root.join("vmctl.slice"),
                root.clone(),
            ] {
                let _ = fs::write(dir.join("cgroup.subtree_control"), enable)
                    .or_else(|_| fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory"));
            }
            Ok(())
        };
        make().map_err(|e| format!("not enforced: creating {}: {e}", root.display()))?;
        Ok(Cgroups {
            layout: Layout::V2 { root },
        })
    }

    fn detect_v1(fs_root: &Path, node: &str) -> Result<Cgroups, String> {
        let hierarchy = |name: &str, probe: &str| {
            let h = fs_root.join(name);
            if h.join(probe).exists() {
                Ok(h.join("vmctl").join(node))
            } else {
                Err(format!("no cgroup v1 {name} hierarchy at {}", h.display()))
            }
        };
        let memory = hierarchy("memory", "memory.limit_in_bytes")?;
        let cpu = hierarchy("cpu", "cpu.cfs_quota_us")?;
        let cpuset = hierarchy("cpuset", "cpuset.cpus")?;
        let made = fs::create_dir_all(&memory)
            .and_then(|()| fs::create_dir_all(&cpu))
            .and_then(|()| make_cpuset(&cpuset));
        made.map_err(|e| format!("not enforced: creating the v1 cgroups of {node}: {e}"))?;
        Ok(Cgroups {
            layout: Layout::V1 {
                memory,
                cpu,
                cpuset,
            },
        })
    }

    /// How limits are enforced, for the node record and VM status.
    pub fn describe(&self) -> &'static str {
        match self.layout {
            Layout::V2 { .. } => "cgroup v2 (memory.max, cpu.max, cpuset)",
            Layout::V1 { .. } => "cgroup v1 (memory.limit_in_bytes, cpu.cfs_quota_us, cpuset)",
        }
    }

    /// Creates VM `name`'s cgroup(s) with its limits and moves `pid` in.
    /// Returns the directory holding its memory limit.
    pub fn apply(
        &self,
        name: &str,
        pid: u32,
        mem_mib: u64,
        cpu_cap: u32,
        pinned: &[u32],
    ) -> Result<PathBuf, BackendError> {
        let pid = pid.to_string();
        match &self.layout {
            Layout::V2 { root } => {
                let dir = root.join(name);
                fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
                for (file, value) in limit_files(mem_mib, cpu_cap, pinned) {
                    // Swap accounting may be off; the others must work.
                    match write(&dir, file, &value) {
                        Err(_) if file == "memory.swap.max" => {}
                        r => r?,
                    }
                }
                write(&dir, "cgroup.procs", &pid)?;
                Ok(dir)
            }
            Layout::V1 {
                memory,
                cpu,
                cpuset,
            } => {
                let (mdir, cdir, sdir) = (memory.join(name), cpu.join(name), cpuset.join(name));
                for d in [&mdir, &cdir] {
                    fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
                }
                make_cpuset(&sdir).map_err(io(format!("creating {}", sdir.display())))?;
                let bytes = mem_bytes(mem_mib).to_string();
                write(&mdir, "memory.limit_in_bytes", &bytes)?;
                // Memory plus swap at the same limit: no swapping out
                // (absent when swap accounting is off).
                if mdir.join("memory.memsw.limit_in_bytes").exists() {
                    write(&mdir, "memory.memsw.limit_in_bytes", &bytes)?;
                }
                write(&cdir, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                write(&cdir, "cpu.cfs_quota_us", &quota_us(cpu_cap).to_string())?;
                if !pinned.is_empty() {
                    write(&sdir, "cpuset.cpus", &cpu_list(pinned))?;
                }
                for d in [&mdir, &cdir, &sdir] {
                    write(d, "cgroup.procs", &pid)?;
                }
                Ok(mdir)
            }
        }
    }

    /// Removes VM `name`'s cgroup(s) (once its processes are gone).
    pub fn remove(&self, name: &str) {
        let dirs = match &self.layout {
            Layout::V2 { root } => vec![root.join(name)],
            Layout::V1 {
                memory,
                cpu,
                cpuset,
            } => vec![memory.join(name), cpu.join(name), cpuset.join(name)],
        };
        for d in dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let l = limit_files(256, 2, &[]);
        assert_eq!(
            l[0],
            ("memory.max", ((256 + QEMU_OVERHEAD_MIB) << 20).to_string())
        );
        assert_eq!(l[2], ("cpu.max", "200000 100000".to_string()));
        let l = limit_files(256, 1, &[2, 3]);
        assert_eq!(l.last().unwrap(), &("cpuset.cpus", "2,3".to_string()));
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmctl-cg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap().trim().to_string()
    }

    #[test]
    fn hosts_without_usable_cgroups_say_why() {
        let d = scratch("none");
        let e = Cgroups::detect(&d, "n").unwrap_err();
        assert!(
            e.contains("not cgroup v2") && e.contains("no cgroup v1 memory"),
            "{e}"
        );
        fs::write(d.join("cgroup.controllers"), "cpuset io pids").unwrap();
        let e = Cgroups::detect(&d, "n").unwrap_err();
        assert!(e.contains("no cpu controller"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn v1_hierarchies_get_the_limits() {
        // A v1 host as this one: memory, cpu and cpuset hierarchies.
        let d = scratch("v1");
        for (h, files) in [
            ("memory", &["memory.limit_in_bytes"][..]),
            ("cpu", &["cpu.cfs_quota_us"][..]),
            ("cpuset", &["cpuset.cpus", "cpuset.mems"][..]),
        ] {
            fs::create_dir_all(d.join(h)).unwrap();
            for f in files {
                fs::write(d.join(h).join(f), "").unwrap();
            }
        }
        fs::write(d.join("cpuset/cpuset.cpus"), "0-3\n").unwrap();
        fs::write(d.join("cpuset/cpuset.mems"), "0\n").unwrap();
        let cg = Cgroups::detect(&d, "node1").unwrap();
        assert!(cg.describe().starts_with("cgroup v1"));
        // Every new cpuset level inherits its parent's CPUs and memory.
        assert_eq!(read(&d.join("cpuset/vmctl/node1/cpuset.cpus")), "0-3");
        assert_eq!(read(&d.join("cpuset/vmctl/node1/cpuset.mems")), "0");
        let mdir = cg.apply("shop.web", 4242, 256, 2, &[1, 3]).unwrap();
        assert_eq!(mdir, d.join("memory/vmctl/node1/shop.web"));
        assert_eq!(
            read(&mdir.join("memory.limit_in_bytes")),
            ((256 + QEMU_OVERHEAD_MIB) << 20).to_string()
        );
        let cdir = d.join("cpu/vmctl/node1/shop.web");
        assert_eq!(read(&cdir.join("cpu.cfs_quota_us")), "200000");
        assert_eq!(read(&cdir.join("cpu.cfs_period_us")), "100000");
        let sdir = d.join("cpuset/vmctl/node1/shop.web");
        assert_eq!(read(&sdir.join("cpuset.cpus")), "1,3");
        assert_eq!(read(&sdir.join("cpuset.mems")), "0");
        for dir in [&mdir, &cdir, &sdir] {
            assert_eq!(read(&dir.join("cgroup.procs")), "4242");
        }
        fs::remove_dir_all(&d).unwrap();
    }
}
