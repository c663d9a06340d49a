//! The scheduling controller: one agent at a time (the holder of the
//! `dvm/scheduler` key, attached to its heartbeat lease) turns wanted state
//! into reservations. It places started applications whole or refuses them
//! with a reason, releases what stopped VMs and dead nodes held, and
//! re-places the VMs of a node that stopped heartbeating (failover).
//!
//! Why in the agent and not in metad: metad's owner kept metad a generic
//! replicated store; a controller elected through a metad lease is as
//! available (it moves when its node dies) and every write it makes is
//! fenced by a compare on the election key, so a deposed scheduler's
//! writes fail instead of double-booking a node.

use crate::model::{
    self, AppRecord, Desired, MigrationPhase, MigrationReport, NodeRecord, Outcome, VmRecord,
    VmState, VmStatus,
};
use crate::scheduler::{self, NodeCap, Request};
use crate::store::{at_rev, put_op, Store, StoreError, Versioned};
use metad::{Compare, CompareTarget, Op, Txn};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Tries to become (or stay) the scheduler; whether this agent is it.
pub async fn elect(store: &Store, me: &str, lease: u64) -> Result<bool, StoreError> {
    if let Some(kv) = store.client.get(model::SCHEDULER).await? {
        return Ok(kv.value == me.as_bytes() && kv.lease == lease);
    }
    let txn = Txn {
        compare: vec![Compare {
            key: model::SCHEDULER.as_bytes().to_vec(),
            target: CompareTarget::Exists(false),
        }],
        success: vec![Op::Put {
            key: model::SCHEDULER.as_bytes().to_vec(),
            value: me.as_bytes().to_vec(),
            lease,
        }],
        failure: vec![],
    };
    let won = store.client.txn(txn).await?.succeeded;
    if won {
        store
            .event(me, "scheduler", me, format!("{me} schedules"))
            .await;
    }
    Ok(won)
}

fn fence(me: &str) -> Compare {
    Compare {
        key: model::SCHEDULER.as_bytes().to_vec(),
        target: CompareTarget::Value(me.as_bytes().to_vec()),
    }
}

/// The grid as the controller reads it.
struct World {
    nodes: BTreeMap<String, NodeRecord>,
    apps: BTreeMap<String, Versioned<AppRecord>>,
    vms: BTreeMap<String, Versioned<VmRecord>>,
    status: BTreeMap<String, VmStatus>,
}

async fn read_world(store: &Store) -> Result<World, StoreError> {
    let nodes = store.list::<NodeRecord>(model::NODES).await?.0;
    let apps = store.list::<AppRecord>(model::APPS).await?.0;
    let vms = store.list::<VmRecord>(model::VMS).await?.0;
    let status = store.list::<VmStatus>(model::STATUS).await?.0;
    Ok(World {
        nodes: nodes.into_iter().map(|(k, v)| (k, v.value)).collect(),
        apps: apps.into_iter().collect(),
        vms: vms.into_iter().collect(),
        status: status.into_iter().map(|(k, v)| (k, v.value)).collect(),
    })
}

/// Capacities of the live nodes minus every reservation in `vms`. A VM
/// being live-migrated is reserved on both nodes once the scheduler has
/// accepted the migration.
pub fn capacities<'a>(
    nodes: &BTreeMap<String, NodeRecord>,
    vms: impl Iterator<Item = &'a VmRecord>,
) -> Vec<NodeCap> {
    let mut caps: BTreeMap<&str, NodeCap> = nodes
        .values()
        .map(|n| {
            let mut c = NodeCap::new(&n.name, u64::from(n.cpus), n.mem_mib);
            c.bw_mbit = n.bw_mbit;
            (n.name.as_str(), c)
        })
        .collect();
    for vm in vms {
        if let Some(c) = vm.node.as_deref().and_then(|n| caps.get_mut(n)) {
            c.used_cpus += u64::from(vm.cpu_min);
            c.used_mem += vm.mem_mib;
            c.used_bw += vm.bw_min;
            c.vms.insert(vm.name.clone());
        }
        let incoming = vm
            .migration
            .as_ref()
            .filter(|m| m.phase != MigrationPhase::Requested && vm.node.as_ref() != Some(&m.to));
        if let Some(c) = incoming.and_then(|m| caps.get_mut(m.to.as_str())) {
            c.used_cpus += u64::from(vm.cpu_min);
            c.used_mem += vm.mem_mib;
            c.used_bw += vm.bw_min;
            c.vms.insert(vm.name.clone());
        }
    }
    caps.into_values().collect()
}

/// The scheduler's request for `vm`.
pub fn request_of(vm: &VmRecord) -> Request {
    let mut r = Request::new(&vm.name, u64::from(vm.cpu_min), vm.mem_mib);
    r.component = vm.component.clone();
    r.bw_mbit = vm.bw_min;
    r.anti = vm
        .anti_affinity
        .iter()
        .map(|c| model::vm_name(&vm.app, c))
        .collect();
    r.only = vm.target.clone();
    if let Some(root) = vm.disks.first() {
        r.mirrors = crate::volumes::replicas(Path::new(root))
            .into_iter()
            .collect();
    }
    r
}

/// One pass of the controller. Each write is a transaction fenced by the
/// election key and the revisions it read.
pub async fn reconcile(store: &Store, me: &str) -> Result<(), StoreError> {
    let mut w = read_world(store).await?;

    // 1. Release reservations that no longer hold: dead nodes (failover)
    // and VMs their agent has stopped.
    for (name, v) in w.vms.clone() {
        let vm = &v.value;
        let Some(node) = vm.node.clone() else {
            continue;
        };
        let live = w.nodes.contains_key(&node);
        let stopped_there = w.status.get(&name).is_some_and(|s| {
            s.node == node && matches!(s.state, VmState::Stopped | VmState::Failed)
        });
        let (release, why) = if !live {
            (true, Some(format!("{node} stopped heartbeating")))
        } else if vm.desired == Desired::Stopped && stopped_there {
            (true, None)
        } else {
            (false, None)
        };
        if !release {
            continue;
        }
        let mut nv = vm.clone();
        nv.node = None;
        nv.migration = None;
        if let Some(why) = &why {
            if vm.desired == Desired::Running {
                nv.reason = Some(format!("failover: {why}"));
            }
        }
        let key = model::vm_key(&name);
        let txn = Txn {
            compare: vec![fence(me), at_rev(&key, v.rev)],
            success: vec![put_op(&key, &nv)],
            failure: vec![],
        };
        if store.client.txn(txn).await?.succeeded {
            if let (Some(why), Desired::Running) = (why, vm.desired) {
                store
                    .event(
                        me,
                        "failover",
                        &name,
                        format!("{why}; placing {name} elsewhere"),
                    )
                    .await;
            }
            w.vms.get_mut(&name).expect("listed").value = nv;
        } else {
            return Ok(()); // something moved: start over on the next pass
        }
    }

    // 1b. Live migrations: check the target's room, or give up on one whose
    // target died.
    if !migrations(store, me, &mut w).await? {
        return Ok(());
    }

    // 2. Applications started and not yet answered: whole or nothing.
    for (app, a) in w.apps.clone() {
        let rec = &a.value;
        if rec.desired != Desired::Running
            || rec.outcome.as_ref().is_some_and(|o| o.gen == rec.start_gen)
        {
            continue;
        }
        let mine: Vec<(String, Versioned<VmRecord>)> = w
            .vms
            .iter()
            .filter(|(_, v)| v.value.app == app)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let todo: Vec<&VmRecord> = mine
            .iter()
            .map(|(_, v)| &v.value)
            .filter(|v| v.desired == Desired::Running && v.node.is_none())
            .collect();
        let caps = capacities(&w.nodes, w.vms.values().map(|v| &v.value));
        let reqs: Vec<Request> = todo.iter().map(|v| request_of(v)).collect();
        let result = scheduler::place(&caps, &reqs, rec.spec.placement);
        let app_key = model::app_key(&app);
        let mut compare = vec![fence(me), at_rev(&app_key, a.rev)];
        let mut success = Vec::new();
        let mut new_app = rec.clone();
        let mut updates = Vec::new();
        let (kind, msg) = match &result {
            Ok(p) => {
                for (k, v) in &mine {
                    if let Some(n) = p.get(k) {
                        let mut nv = v.value.clone();
                        nv.node = Some(n.clone());
                        nv.reason = None;
                        nv.target = None;
                        compare.push(at_rev(&model::vm_key(k), v.rev));
                        success.push(put_op(&model::vm_key(k), &nv));
                        updates.push((k.clone(), nv));
                    }
                }
                let where_: Vec<String> = p.iter().map(|(v, n)| format!("{v} on {n}")).collect();
                let msg = if where_.is_empty() {
                    "nothing to place".to_string()
                } else {
                    where_.join(", ")
                };
                new_app.outcome = Some(Outcome {
                    gen: rec.start_gen,
                    placed: true,
                    reason: msg.clone(),
                });
                ("placed", msg)
            }
            Err(refusal) => {
                // Nothing is reserved; the application goes back to stopped.
                new_app.desired = Desired::Stopped;
                new_app.outcome = Some(Outcome {
                    gen: rec.start_gen,
                    placed: false,
                    reason: refusal.0.clone(),
                });
                for (k, v) in &mine {
                    if v.value.desired == Desired::Running && v.value.node.is_none() {
                        let mut nv = v.value.clone();
                        nv.desired = Desired::Stopped;
                        nv.reason = Some(format!("not started: {}", refusal.0));
                        compare.push(at_rev(&model::vm_key(k), v.rev));
                        success.push(put_op(&model::vm_key(k), &nv));
                        updates.push((k.clone(), nv));
                    }
                }
                ("refused", refusal.0.clone())
            }
        };
        success.push(put_op(&app_key, &new_app));
        let txn = Txn {
            compare,
            success,
            failure: vec![],
        };
        if !store.client.txn(txn).await?.succeeded {
            return Ok(());
        }
        store.event(me, kind, &app, msg).await;
        for (k, nv) in updates {
            w.vms.get_mut(&k).expect("listed").value = nv;
        }
    }

    // 3. Running applications' VMs without a node (failover, a VM started
    // again): placed one by one, next to their placed peers.
    let started: BTreeSet<&String> = w
        .apps
        .iter()
        .filter(|(_, a)| {
            a.value.desired == Desired::Running
                && a.value
                    .outcome
                    .as_ref()
                    .is_some_and(|o| o.gen == a.value.start_gen && o.placed)
        })
        .map(|(k, _)| k)
        .collect();
    let pending: Vec<(String, Versioned<VmRecord>)> = w
        .vms
        .iter()
        .filter(|(_, v)| {
            v.value.desired == Desired::Running
                && v.value.node.is_none()
                && started.contains(&v.value.app)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in pending {
        let policy = w
            .apps
            .get(&v.value.app)
            .map(|a| a.value.spec.placement)
            .unwrap_or_default();
        let caps = capacities(&w.nodes, w.vms.values().map(|v| &v.value));
        let key = model::vm_key(&k);
        let mut nv = v.value.clone();
        let msg = match scheduler::place(&caps, &[request_of(&v.value)], policy) {
            Ok(p) => {
                nv.node = p.get(&k).cloned();
                nv.reason = None;
                nv.target = None;
                format!("{k} on {}", nv.node.clone().unwrap_or_default())
            }
            Err(r) => {
                let reason = format!("waiting for room: {}", r.0);
                if nv.reason.as_deref() == Some(reason.as_str()) {
                    continue;
                }
                nv.reason = Some(reason.clone());
                reason
            }
        };
        let txn = Txn {
            compare: vec![fence(me), at_rev(&key, v.rev)],
            success: vec![put_op(&key, &nv)],
            failure: vec![],
        };
        if !store.client.txn(txn).await?.succeeded {
            return Ok(());
        }
        store
            .event(
                me,
                if nv.node.is_some() {
                    "placed"
                } else {
                    "pending"
                },
                &k,
                msg,
            )
            .await;
        w.vms.get_mut(&k).expect("listed").value = nv;
    }
    Ok(())
}

/// The scheduler's part in live migrations: a `Requested` one is accepted
/// when the target has room for the VM (the same capacity and
/// anti-affinity check as any placement; the VM is then reserved on both
/// nodes) or refused with the reason; one whose target stopped
/// heartbeating is given up. False when a write lost a race (start over).
async fn migrations(store: &Store, me: &str, w: &mut World) -> Result<bool, StoreError> {
    for (name, v) in w.vms.clone() {
        let vm = &v.value;
        let Some(m) = vm.migration.clone() else {
            continue;
        };
        let from = vm.node.clone().unwrap_or_default();
        let refusal = if !w.nodes.contains_key(&m.to) {
            Some(format!("{} is not up", m.to))
        } else if vm.desired != Desired::Running || vm.node.is_none() {
            Some(format!("{name} is not running"))
        } else if m.phase == MigrationPhase::Requested {
            let others = w.vms.values().map(|x| &x.value).filter(|x| x.name != name);
            let caps = capacities(&w.nodes, others);
            let mut req = request_of(vm);
            req.only = Some(m.to.clone());
            req.mirrors.clear();
            let policy = w
                .apps
                .get(&vm.app)
                .map(|a| a.value.spec.placement)
                .unwrap_or_default();
            scheduler::place(&caps, &[req], policy).err().map(|r| r.0)
        } else {
            continue;
        };
        let mut nv = vm.clone();
        let (kind, msg) = match refusal {
            None => {
                nv.migration.as_mut().expect("some").phase = MigrationPhase::Accepted;
                (
                    "migrate",
                    format!("live-migrating {name} from {from} to {}", m.to),
                )
            }
            Some(why) => {
                nv.migration = None;
                let error = format!("migration of {name} to {} refused: {why}", m.to);
                nv.last_migration = Some(MigrationReport {
                    id: m.id,
                    from: from.clone(),
                    to: m.to.clone(),
                    at_ms: model::now_ms(),
                    error: Some(error.clone()),
                    downtime_ms: None,
                    total_ms: None,
                });
                ("migrate-refused", error)
            }
        };
        let key = model::vm_key(&name);
        let txn = Txn {
            compare: vec![fence(me), at_rev(&key, v.rev)],
            success: vec![put_op(&key, &nv)],
            failure: vec![],
        };
        if !store.client.txn(txn).await?.succeeded {
            return Ok(false);
        }
        store.event(me, kind, &name, msg).await;
        w.vms.get_mut(&name).expect("listed").value = nv;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BootSpec, Migration};

    fn node(n: &str) -> NodeRecord {
        NodeRecord {
            name: n.into(),
            cpus: 2,
            mem_mib: 1024,
            bw_mbit: 1000,
            accel: "tcg".into(),
            hypervisors: vec!["qemu".into()],
            limits: String::new(),
            since_ms: 0,
        }
    }

    fn vm(phase: Option<MigrationPhase>) -> VmRecord {
        VmRecord {
            name: "a.x".into(),
            app: "a".into(),
            component: "x".into(),
            cpu_min: 1,
            cpu_max: 1,
            mem_mib: 256,
            bw_min: 0,
            pin: false,
            hypervisor: "qemu".into(),
            anti_affinity: vec![],
            boot: BootSpec {
                kernel: "k".into(),
                initrd: None,
                cmdline: String::new(),
            },
            disks: vec![],
            desired: Desired::Running,
            node: Some("n1".into()),
            target: None,
            reason: None,
            migration: phase.map(|phase| Migration {
                id: 1,
                to: "n2".into(),
                phase,
                port: None,
            }),
            last_migration: None,
            nic: None,
        }
    }

    #[test]
    fn an_accepted_migration_reserves_on_both_nodes() {
        let nodes: BTreeMap<String, NodeRecord> =
            ["n1", "n2"].map(|n| (n.to_string(), node(n))).into();
        let used = |v: &VmRecord| -> Vec<(u64, u64)> {
            capacities(&nodes, std::iter::once(v))
                .iter()
                .map(|c| (c.used_cpus, c.used_mem))
                .collect()
        };
        assert_eq!(used(&vm(None)), vec![(1, 256), (0, 0)]);
        assert_eq!(
            used(&vm(Some(MigrationPhase::Requested))),
            vec![(1, 256), (0, 0)]
        );
        assert_eq!(
            used(&vm(Some(MigrationPhase::Accepted))),
            vec![(1, 256), (1, 256)]
        );
        assert_eq!(
            used(&vm(Some(MigrationPhase::Incoming))),
            vec![(1, 256), (1, 256)]
        );
    }
}
