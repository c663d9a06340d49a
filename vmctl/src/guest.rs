//! Guest networking: an application's QEMU VMs as lcmd appliances.
//!
//! One source of truth: the vmctl descriptor. An application that declares
//! connections becomes an lcmd application ([`plan`]): each QEMU component
//! is an appliance with the descriptor's terminals and bandwidth, whose
//! NIC is a VM socket ([`lcmd::vmnic`]), and the descriptor's connections
//! are lcmd's. `vmctl app create` stores it (with no node yet), the agent
//! that runs a VM claims its appliance for its node before starting QEMU
//! ([`claim`]: placement, restarts, failover) and again when a live
//! migration switches the VM to it, so lcmd on that node serves the NIC
//! and the tunnels follow; `vmctl app destroy` removes it ([`forget`]).
//!
//! The guest learns its address, gateway and DNS server (lcmd answers on
//! the range's gateway address) from its kernel command line
//! (`vmctl.ip=ADDR/PREFIX vmctl.gw=GW vmctl.dns=GW`), with the component's
//! properties (`vmctl.NAME=VALUE`). Xen components get no NIC, and a
//! connection to one is refused: a Xen domain cannot join a unix socket
//! (and Xen never runs here).

use crate::descriptor::AppSpec;
use lcmd::bandwidth::{Bandwidth, Rate};
use lcmd::model::{self as lcm, ApplianceSpec, ConnectionSpec, ModelError, NicKind};
use lcmd::store::{Store as LcmStore, StoreError as LcmStoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The address range of every application's guests. Applications are
/// isolated from each other by lcmd (addresses are looked up per
/// application), so they can all use the same one.
pub const GUEST_RANGE: &str = "10.250.0.0/24";

/// A VM's NIC, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNic {
    /// The guest NIC's MAC (lcmd drops frames from any other).
    pub mac: String,
    /// Its address with the prefix length, e.g. `10.250.0.10/24`.
    pub ip: String,
}

/// Errors wiring guests.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The descriptor does not make a valid lcmd application.
    #[error("connections: {0}")]
    Model(#[from] ModelError),
    /// lcmd's records in metad could not be read or written.
    #[error("lcmd: {0}")]
    Lcm(#[from] LcmStoreError),
    /// A connection ends at a component that cannot have an lcmd NIC.
    #[error("connection {from} -> {to}: {component} runs on {hypervisor}, and only QEMU guests get an lcmd NIC")]
    NoNic {
        /// Output terminal.
        from: String,
        /// Input terminal.
        to: String,
        /// The component.
        component: String,
        /// Its backend.
        hypervisor: String,
    },
}

/// How an application's guests are wired: the lcmd application and, per
/// component with a NIC, the NIC and the kernel command-line words that
/// tell the guest its address.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// The lcmd application to store.
    pub lcm: lcm::AppSpec,
    /// NICs and command-line words by component.
    pub nics: BTreeMap<String, (GuestNic, String)>,
}

fn mbit(n: u64) -> Option<Rate> {
    (n > 0).then(|| Rate(n * 1_000_000))
}

/// The wiring of `spec`, or `None` when it declares no connections (its
/// guests then get no NIC).
pub fn plan(spec: &AppSpec) -> Result<Option<Wiring>, GuestError> {
    if spec.connections.is_empty() {
        return Ok(None);
    }
    for c in &spec.connections {
        for end in [&c.from, &c.to] {
            let component = end.split('.').next().unwrap_or_default();
            match spec.components.get(component) {
                Some(comp) if comp.hypervisor != "qemu" => {
                    return Err(GuestError::NoNic {
                        from: c.from.clone(),
                        to: c.to.clone(),
                        component: component.to_string(),
                        hypervisor: comp.hypervisor.clone(),
                    })
                }
                _ => {}
            }
        }
    }
    let range: lcm::Range = GUEST_RANGE.parse()?;
    let mut appliances = BTreeMap::new();
    for (name, c) in spec
        .components
        .iter()
        .filter(|(_, c)| c.hypervisor == "qemu")
    {
        let inputs = c
            .inputs
            .iter()
            .map(|(t, p)| Ok((t.clone(), p.parse()?)))
            .collect::<Result<_, ModelError>>()?;
        appliances.insert(
            name.clone(),
            ApplianceSpec {
                // No node until an agent runs it (see `claim`).
                node: String::new(),
                ip: None,
                mac: None,
                inputs,
                outputs: c.outputs.clone(),
                bw: Bandwidth {
                    min: mbit(c.bw_min),
                    max: mbit(c.bw_max),
                },
                nic: NicKind::Vm,
            },
        );
    }
    let connections = spec
        .connections
        .iter()
        .map(|c| {
            Ok(ConnectionSpec {
                from: c.from.parse()?,
                to: c.to.parse()?,
                protocol: None,
            })
        })
        .collect::<Result<_, ModelError>>()?;
    let lcm = lcm::AppSpec {
        name: spec.name.clone(),
        range,
        appliances,
        connections,
    };
    let resolved = lcm.resolve()?;
    let gw = range.gateway();
    let nics = resolved
        .appliances
        .iter()
        .map(|a| {
            let nic = GuestNic {
                mac: a.mac.to_string(),
                ip: format!("{}/{}", a.ip, range.len),
            };
            let words = format!("vmctl.ip={} vmctl.gw={gw} vmctl.dns={gw}", nic.ip);
            (a.name.clone(), (nic, words))
        })
        .collect();
    Ok(Some(Wiring { lcm, nics }))
}

/// The kernel command line of a component: the image's, then the NIC's
/// words (if any), then its properties as `vmctl.NAME=VALUE`.
pub fn boot_cmdline(
    image: &str,
    nic_words: Option<&str>,
    properties: &BTreeMap<String, String>,
) -> String {
    let mut words: Vec<String> = vec![image.to_string()];
    words.extend(nic_words.map(str::to_string));
    words.extend(properties.iter().map(|(k, v)| format!("vmctl.{k}={v}")));
    words.retain(|w| !w.is_empty());
    words.join(" ")
}

/// A handle on lcmd's records through vmctl's metad client.
fn lcm_store(client: &Arc<metad::Client>) -> LcmStore {
    LcmStore {
        client: client.clone(),
    }
}

/// Stores the lcmd application of `w`.
pub async fn declare(client: &Arc<metad::Client>, w: &Wiring) -> Result<(), GuestError> {
    lcm_store(client).apply(&w.lcm).await?;
    Ok(())
}

/// Makes `node` the node whose lcmd serves appliance `app/component`.
pub async fn claim(
    client: &Arc<metad::Client>,
    app: &str,
    component: &str,
    node: &str,
) -> Result<(), GuestError> {
    lcm_store(client)
        .move_appliance(app, component, node)
        .await?;
    Ok(())
}

/// Removes application `app` from lcmd (nothing happens if it has none).
pub async fn forget(client: &Arc<metad::Client>, app: &str) -> Result<(), GuestError> {
    lcm_store(client).delete_app(app).await?;
    Ok(())
}

/// The QEMU NIC of VM `app/component` with `nic`, its sockets in `dir`
/// (the node's lcmd binds its end there).
pub fn qemu_nic(dir: &Path, app: &str, component: &str, nic: &GuestNic) -> crate::backend::Nic {
    crate::backend::Nic::Socket {
        local: lcmd::vmnic::guest_socket(dir, app, component),
        remote: lcmd::vmnic::lcmd_socket(dir, app, component),
        mac: nic.mac.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor;

    const APP: &str = r#"name = "shop"
[components.web]
image = "/gvs/catalog/tiny"
mem = "128M"
outputs = ["db"]
properties = { probe = "db:80" }
[components.db]
image = "/gvs/catalog/tiny"
mem = "128M"
inputs = { http = "tcp/80" }
[[connections]]
from = "web.db"
to = "db.http"
"#;

    #[test]
    fn an_app_with_connections_is_an_lcmd_app() {
        let spec = descriptor::parse(APP).unwrap();
        let w = plan(&spec).unwrap().expect("wired");
        let r = w.lcm.resolve().unwrap();
        assert_eq!(r.connections.len(), 1);
        assert_eq!(r.connections[0].protocol, lcm::Protocol::Tcp(80));
        assert!(r.appliances.iter().all(|a| a.nic == NicKind::Vm));
        let (db, words) = &w.nics["db"];
        assert_eq!(db.ip, "10.250.0.10/24");
        assert_eq!(
            words,
            "vmctl.ip=10.250.0.10/24 vmctl.gw=10.250.0.1 vmctl.dns=10.250.0.1"
        );
        let web = &spec.components["web"];
        assert_eq!(
            boot_cmdline("console=ttyS0", Some(&w.nics["web"].1), &web.properties),
            "console=ttyS0 vmctl.ip=10.250.0.11/24 vmctl.gw=10.250.0.1 vmctl.dns=10.250.0.1 vmctl.probe=db:80"
        );
    }

    #[test]
    fn a_connection_to_a_xen_component_is_refused() {
        let spec = descriptor::parse(&APP.replace(
            "inputs = { http = \"tcp/80\" }",
            "inputs = { http = \"tcp/80\" }\nhypervisor = \"xen\"",
        ))
        .unwrap();
        let e = plan(&spec).unwrap_err().to_string();
        assert!(e.contains("web.db -> db.http: db runs on xen"), "{e}");
    }

    #[test]
    fn an_app_without_connections_has_no_nics() {
        let spec = descriptor::parse(
            &APP.replace("[[connections]]\nfrom = \"web.db\"\nto = \"db.http\"\n", ""),
        )
        .unwrap();
        assert!(plan(&spec).unwrap().is_none());
        assert_eq!(
            boot_cmdline("console=ttyS0", None, &BTreeMap::new()),
            "console=ttyS0"
        );
    }
}
