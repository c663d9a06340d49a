//! Resource limits for QEMU processes: a cgroup v2 directory per VM with
//! `memory.max`, `cpu.max` and `cpuset.cpus`, when this machine has cgroup
//! v2 with those controllers (a hybrid v1 host does not: the agent then
//! says limits are not enforced, in the node record and every VM status).

use super::{io, BackendError};
use std::fs;
use std::path::{Path, PathBuf};

/// QEMU's own memory beyond the guest's RAM (code, device state, caches).
pub const QEMU_OVERHEAD_MIB: u64 = 96;

/// The parent directory of the VMs' cgroups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: PathBuf,
}

/// The limit files of one VM, as (file, value).
pub fn limit_files(mem_mib: u64, cpu_cap: u32, pinned: &[u32]) -> Vec<(&'static str, String)> {
    let mut v = vec![
        (
            "memory.max",
            ((mem_mib + QEMU_OVERHEAD_MIB) * 1024 * 1024).to_string(),
        ),
        ("memory.swap.max", "0".to_string()),
        (
            "cpu.max",
            format!("{} 100000", u64::from(cpu_cap.max(1)) * 100_000),
        ),
    ];
    if !pinned.is_empty() {
        let list: Vec<String> = pinned.iter().map(u32::to_string).collect();
        v.push(("cpuset.cpus", list.join(",")));
    }
    v
}

impl Cgroups {
    /// cgroup v2 with the cpu and memory controllers under `fs_root`
    /// (normally /sys/fs/cgroup), or why not.
    pub fn detect(fs_root: &Path, node: &str) -> Result<Cgroups, String> {
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
        Ok(Cgroups { root })
    }

    /// Creates VM `name`'s cgroup with its limits and moves `pid` into it.
    pub fn apply(
        &self,
        name: &str,
        pid: u32,
        mem_mib: u64,
        cpu_cap: u32,
        pinned: &[u32],
    ) -> Result<PathBuf, BackendError> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        for (file, value) in limit_files(mem_mib, cpu_cap, pinned) {
            let p = dir.join(file);
            if let Err(e) = fs::write(&p, &value) {
                // swap accounting may be off; the others must work.
                if file != "memory.swap.max" {
                    return Err(io(format!("writing {value} to {}", p.display()))(e));
                }
            }
        }
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .map_err(io(format!("moving {pid} into {}", dir.display())))?;
        Ok(dir)
    }

    /// Removes VM `name`'s cgroup (once its processes are gone).
    pub fn remove(&self, name: &str) {
        let _ = fs::remove_dir(self.root.join(name));
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

    #[test]
    fn v1_hosts_are_detected() {
        let d = std::env::temp_dir().join(format!("vmctl-cg-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        assert!(Cgroups::detect(&d, "n")
            .unwrap_err()
            .contains("not cgroup v2"));
        fs::write(d.join("cgroup.controllers"), "cpuset io pids").unwrap();
        assert!(Cgroups::detect(&d, "n")
            .unwrap_err()
            .contains("no cpu controller"));
        fs::remove_dir_all(&d).unwrap();
    }
}
