//! The values vmctl hands a hypervisor, checked. A VM record is read from
//! metad, where anything holding the grid's secret may write, and its
//! values end up in QEMU's argv, most of them inside QEMU option strings
//! (`key=value,key=value`): a comma or an `=` in a value would add options
//! of the writer's choosing, a `..` would reach outside /gvs. So each value
//! is checked against what vmctl itself makes: when a record is created
//! ([`check_record`]) and again when a command line is built from it
//! ([`check_config`]).

use crate::backend::{Nic, VmConfig};
use crate::model::VmRecord;
use std::path::Path;

/// A value that may not reach a hypervisor, and the field it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct ValueError {
    /// The field, as `disks[1]` or `nics[0].mac`.
    pub field: String,
    /// What is wrong with it.
    pub why: String,
}

/// The root every VM's kernel, initrd and disks are under.
const GVS: &str = "/gvs";

fn refuse(field: &str, why: impl Into<String>) -> ValueError {
    ValueError {
        field: field.to_string(),
        why: why.into(),
    }
}

/// A path that can stand in a QEMU option value as itself: absolute,
/// canonical (no `.`, `..` or empty component, no trailing '/'), of
/// printable characters, without ',' or '=' (refused rather than doubled:
/// vmctl never makes such a path, so one is someone else's).
pub fn check_path(field: &str, p: &str) -> Result<(), ValueError> {
    if let Some(c) = p.chars().find(|c| matches!(c, ',' | '=') || c.is_control()) {
        return Err(refuse(
            field,
            format!("{p:?}: {c:?} is not allowed in a path given to the hypervisor"),
        ));
    }
    let canonical = p.len() > 1
        && p.starts_with('/')
        && p[1..].split('/').all(|c| !matches!(c, "" | "." | ".."));
    if !canonical {
        return Err(refuse(
            field,
            format!("{p:?} is not a canonical absolute path (no '.', '..' or '//')"),
        ));
    }
    Ok(())
}

/// A [`check_path`] path inside /gvs, where every kernel, initrd and disk
/// of a VM is.
pub fn check_gvs_path(field: &str, p: &str) -> Result<(), ValueError> {
    check_path(field, p)?;
    if !p
        .strip_prefix(GVS)
        .is_some_and(|rest| rest.starts_with('/'))
    {
        return Err(refuse(field, format!("{p:?} is not inside {GVS}")));
    }
    Ok(())
}

/// A MAC address: six pairs of hex digits separated by ':'.
pub fn check_mac(field: &str, mac: &str) -> Result<(), ValueError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(refuse(
            field,
            format!("{mac:?} is not a MAC address (six hex pairs separated by ':')"),
        ))
    }
}

/// A VM's name: `app.component`, each a descriptor name.
pub fn check_vm_name(field: &str, name: &str) -> Result<(), ValueError> {
    let (app, component) = name
        .split_once('.')
        .ok_or_else(|| refuse(field, format!("{name:?} is not APP.COMPONENT")))?;
    check_name(field, app)?;
    check_name(field, component)
}

/// A descriptor name ([`crate::descriptor::check_name`]).
fn check_name(field: &str, name: &str) -> Result<(), ValueError> {
    crate::descriptor::check_name(name).map_err(|why| refuse(field, why))
}

/// A network interface's name as the kernel takes it: 1 to 15 letters,
/// digits, '-' and '_'.
pub fn check_ifname(field: &str, name: &str) -> Result<(), ValueError> {
    let ok = (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(refuse(
            field,
            format!("{name:?} is not an interface name (1 to 15 letters, digits, '-' and '_')"),
        ))
    }
}

/// Checks the values of a VM record that its hypervisor will be given:
/// what `vmctl app create` writes, so that a record that is not vmctl's
/// own is refused with the field at fault.
pub fn check_record(rec: &VmRecord) -> Result<(), ValueError> {
    check_name("app", &rec.app)?;
    check_name("component", &rec.component)?;
    if rec.name != crate::model::vm_name(&rec.app, &rec.component) {
        return Err(refuse(
            "name",
            format!("{:?} is not {}.{}", rec.name, rec.app, rec.component),
        ));
    }
    check_gvs_path("boot.kernel", &rec.boot.kernel)?;
    if let Some(i) = &rec.boot.initrd {
        check_gvs_path("boot.initrd", i)?;
    }
    for (i, d) in rec.disks.iter().enumerate() {
        check_gvs_path(&format!("disks[{i}]"), d)?;
    }
    if let Some(n) = &rec.nic {
        check_mac("nic.mac", &n.mac)?;
    }
    Ok(())
}

/// Checks a VM's configuration before a command line is built from it:
/// the guard at the last moment, whatever the record said.
pub fn check_config(vm: &VmConfig) -> Result<(), ValueError> {
    check_vm_name("name", &vm.name)?;
    check_gvs_path("kernel", text("kernel", &vm.kernel)?)?;
    if let Some(i) = &vm.initrd {
        check_gvs_path("initrd", text("initrd", i)?)?;
    }
    for (i, d) in vm.disks.iter().enumerate() {
        let field = format!("disks[{i}]");
        check_gvs_path(&field, text(&field, d)?)?;
    }
    for (i, n) in vm.nics.iter().enumerate() {
        let field = |f: &str| format!("nics[{i}].{f}");
        match n {
            Nic::User { mac } => check_mac(&field("mac"), mac)?,
            Nic::Tap { ifname, mac } => {
                check_ifname(&field("ifname"), ifname)?;
                check_mac(&field("mac"), mac)?;
            }
            Nic::Socket { local, remote, mac } => {
                check_path(&field("local"), text(&field("local"), local)?)?;
                check_path(&field("remote"), text(&field("remote"), remote)?)?;
                check_mac(&field("mac"), mac)?;
            }
        }
    }
    check_path("run_dir", text("run_dir", &vm.run_dir)?)?;
    check_path("console", text("console", &vm.console)?)
}

/// A path as text: vmctl makes only UTF-8 ones.
fn text<'a>(field: &str, p: &'a Path) -> Result<&'a str, ValueError> {
    p.to_str()
        .ok_or_else(|| refuse(field, format!("{} is not UTF-8", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::GuestNic;
    use crate::model::{BootSpec, Desired};

    fn rec() -> VmRecord {
        VmRecord {
            name: "shop.web".into(),
            app: "shop".into(),
            component: "web".into(),
            cpu_min: 1,
            cpu_max: 1,
            mem_mib: 128,
            bw_min: 0,
            pin: false,
            hypervisor: "qemu".into(),
            anti_affinity: vec![],
            boot: BootSpec {
                kernel: "/gvs/catalog/tiny/vmlinuz".into(),
                initrd: Some("/gvs/catalog/tiny/initrd.img".into()),
                cmdline: "console=ttyS0".into(),
            },
            disks: vec!["/gvs/apps/shop/web/root.vol".into()],
            desired: Desired::Stopped,
            node: None,
            target: None,
            reason: None,
            migration: None,
            last_migration: None,
            nic: Some(GuestNic {
                mac: "02:4c:00:00:00:01".into(),
                ip: "10.250.0.10/24".into(),
            }),
        }
    }

    /// The field a refusal of `rec` changed by `f` names.
    fn refused(f: impl Fn(&mut VmRecord)) -> String {
        let mut r = rec();
        f(&mut r);
        check_record(&r).expect_err("a hostile record passed").field
    }

    #[test]
    fn a_record_with_hostile_values_is_refused_naming_the_field() {
        assert_eq!(check_record(&rec()), Ok(()));
        assert_eq!(
            refused(|r| r.disks[0] = "/gvs/a.vol,readonly=on".into()),
            "disks[0]"
        );
        assert_eq!(
            refused(|r| r.disks.push("/gvs/../etc/passwd".into())),
            "disks[1]"
        );
        assert_eq!(
            refused(|r| r.disks[0] = "/var/lib/x.vol".into()),
            "disks[0]"
        );
        assert_eq!(
            refused(|r| r.boot.kernel = "/gvs/k,x=y".into()),
            "boot.kernel"
        );
        assert_eq!(
            refused(|r| r.boot.initrd = Some("/gvs/a/../..".into())),
            "boot.initrd"
        );
        assert_eq!(
            refused(|r| r.nic.as_mut().unwrap().mac = "02:4c:00:00:00:zz".into()),
            "nic.mac"
        );
        assert_eq!(refused(|r| r.name = "shop.db".into()), "name");
        assert_eq!(refused(|r| r.app = "sh,op".into()), "app");
        assert_eq!(refused(|r| r.component = "../web".into()), "component");
    }
}
