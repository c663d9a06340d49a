//! Placement: which node runs which VM. Pure functions over capacities and
//! requests, so the rules are unit-tested without a grid:
//!
//! - never reserve more CPU, memory or bandwidth on a node than it has
//!   (DESIGN.md invariant 6);
//! - anti-affinity: VMs that must not share a node do not;
//! - `pack` fills the fullest node that fits, `spread` the emptiest;
//! - nodes holding a mirror of a VM's volumes are preferred;
//! - a whole set is placed or none of it, and a refusal says why
//!   ("db needs 4 GiB; the most free on any node is 3 GiB").

use crate::descriptor::Placement;
use crate::units::{fmt_cpus, fmt_mib};
use std::collections::{BTreeMap, BTreeSet};

/// A node's capacity and what is already reserved on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCap {
    /// Name.
    pub name: String,
    /// CPUs.
    pub cpus: u64,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Bandwidth, Mbit/s.
    pub bw_mbit: u64,
    /// CPUs reserved.
    pub used_cpus: u64,
    /// Memory reserved, MiB.
    pub used_mem: u64,
    /// Bandwidth reserved.
    pub used_bw: u64,
    /// VMs reserved here (for anti-affinity).
    pub vms: BTreeSet<String>,
}

impl NodeCap {
    /// An empty node.
    pub fn new(name: &str, cpus: u64, mem_mib: u64) -> NodeCap {
        NodeCap {
            name: name.into(),
            cpus,
            mem_mib,
            bw_mbit: 1000,
            used_cpus: 0,
            used_mem: 0,
            used_bw: 0,
            vms: BTreeSet::new(),
        }
    }
    fn free_cpus(&self) -> u64 {
        self.cpus.saturating_sub(self.used_cpus)
    }
    fn free_mem(&self) -> u64 {
        self.mem_mib.saturating_sub(self.used_mem)
    }
    fn free_bw(&self) -> u64 {
        self.bw_mbit.saturating_sub(self.used_bw)
    }
    fn fits(&self, r: &Request) -> bool {
        self.free_cpus() >= r.cpus && self.free_mem() >= r.mem_mib && self.free_bw() >= r.bw_mbit
    }
    fn reserve(&mut self, r: &Request) {
        self.used_cpus += r.cpus;
        self.used_mem += r.mem_mib;
        self.used_bw += r.bw_mbit;
        self.vms.insert(r.vm.clone());
    }
    fn release(&mut self, r: &Request) {
        self.used_cpus -= r.cpus;
        self.used_mem -= r.mem_mib;
        self.used_bw -= r.bw_mbit;
        self.vms.remove(&r.vm);
    }
}

/// One VM to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// VM name (`app.component`).
    pub vm: String,
    /// Its component name (for messages).
    pub component: String,
    /// CPUs to reserve.
    pub cpus: u64,
    /// MiB to reserve.
    pub mem_mib: u64,
    /// Mbit/s to reserve.
    pub bw_mbit: u64,
    /// VM names it must not share a node with (either side may declare it).
    pub anti: BTreeSet<String>,
    /// Nodes holding a mirror of its volumes.
    pub mirrors: BTreeSet<String>,
    /// The only node it may go to (asked for by a cold migrate).
    pub only: Option<String>,
}

impl Request {
    /// A request with no constraints.
    pub fn new(vm: &str, cpus: u64, mem_mib: u64) -> Request {
        Request {
            vm: vm.into(),
            component: vm.rsplit('.').next().unwrap_or(vm).into(),
            cpus,
            mem_mib,
            bw_mbit: 0,
            anti: BTreeSet::new(),
            mirrors: BTreeSet::new(),
            only: None,
        }
    }
}

/// Why a set of VMs cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Bound on the backtracking search (it is only reached by pathological
/// sets; a refusal then says so).
const SEARCH_BUDGET: usize = 200_000;

/// Whether `r` may not go to `n`: `n` holds a VM that `r` names in its
/// anti-affinity, or one that names `r` (`avoid`: both, precomputed).
fn conflicts(avoid: &BTreeSet<&str>, n: &NodeCap) -> bool {
    !avoid.is_empty() && n.vms.iter().any(|v| avoid.contains(v.as_str()))
}

/// Places every request or none. `nodes` carry what is already reserved
/// (VMs of other applications, and placed VMs of this one, which count for
/// anti-affinity). Returns VM -> node.
pub fn place(
    nodes: &[NodeCap],
    reqs: &[Request],
    policy: Placement,
) -> Result<BTreeMap<String, String>, Refusal> {
    if nodes.is_empty() {
        return Err(Refusal("no node is up (no vmctl agent heartbeats)".into()));
    }
    // Alone, does each request fit anywhere?
    for r in reqs {
        explain_alone(nodes, r)?;
    }
    let mut order: Vec<&Request> = reqs.iter().collect();
    // Most constrained first: pinned, then anti-affine, then biggest.
    order.sort_by(|a, b| {
        (b.only.is_some(), b.anti.len(), b.mem_mib, b.cpus, &a.vm).cmp(&(
            a.only.is_some(),
            a.anti.len(),
            a.mem_mib,
            a.cpus,
            &b.vm,
        ))
    });
    // Anti-affinity either way round, once per request.
    let avoid: BTreeMap<&str, BTreeSet<&str>> = reqs
        .iter()
        .map(|r| {
            let mut a: BTreeSet<&str> = r.anti.iter().map(String::as_str).collect();
            a.extend(
                reqs.iter()
                    .filter(|o| o.anti.contains(&r.vm))
                    .map(|o| o.vm.as_str()),
            );
            (r.vm.as_str(), a)
        })
        .collect();
    let mut work = nodes.to_vec();
    let mut chosen: Vec<usize> = Vec::new();
    let mut budget = SEARCH_BUDGET;
    // Each node's position by name (the last tie-break).
    let mut by_name: Vec<usize> = (0..nodes.len()).collect();
    by_name.sort_by(|&a, &b| nodes[a].name.cmp(&nodes[b].name));
    let mut rank = vec![0; nodes.len()];
    for (pos, &i) in by_name.iter().enumerate() {
        rank[i] = pos;
    }
    if search(
        &mut work,
        &rank,
        &order,
        &avoid,
        policy,
        &mut chosen,
        &mut budget,
    ) {
        return Ok(order
            .iter()
            .zip(chosen)
            .map(|(r, i)| (r.vm.clone(), work[i].name.clone()))
            .collect());
    }
    Err(explain_together(nodes, reqs, budget == 0))
}

fn search(
    work: &mut Vec<NodeCap>,
    rank: &[usize],
    order: &[&Request],
    avoid: &BTreeMap<&str, BTreeSet<&str>>,
    policy: Placement,
    chosen: &mut Vec<usize>,
    budget: &mut usize,
) -> bool {
    let Some(r) = order.get(chosen.len()) else {
        return true;
    };
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    let no_avoid = BTreeSet::new();
    let avoid_r = avoid.get(r.vm.as_str()).unwrap_or(&no_avoid);
    let cands: Vec<usize> = (0..work.len())
        .filter(|&i| {
            let n = &work[i];
            r.only.as_ref().is_none_or(|o| *o == n.name) && n.fits(r) && !conflicts(avoid_r, n)
        })
        .collect();
    // Sort keys, computed once (the node table is back to this state
    // whenever the next candidate is tried): mirrors first, then by
    // policy on the free memory after placing, in per-mille of the node,
    // then free CPUs; then by name (`rank`), so the order is total.
    let key = |i: usize| {
        let n = &work[i];
        let load = (
            (n.free_mem() - r.mem_mib) * 1000 / n.mem_mib.max(1),
            n.free_cpus() - r.cpus,
        );
        let load = match policy {
            Placement::Spread => (u64::MAX - load.0, u64::MAX - load.1),
            Placement::Pack => load,
        };
        (!r.mirrors.contains(&n.name), load, rank[i])
    };
    let mut keyed: Vec<_> = cands.iter().map(|&i| (key(i), i)).collect();
    // Try the best candidate first; sort the rest only when backtracking
    // needs them.
    let Some(best) = (0..keyed.len()).min_by_key(|&x| keyed[x].0) else {
        return false;
    };
    let first = keyed.swap_remove(best).1;
    let mut sorted = false;
    let mut k = 0;
    loop {
        let i = if k == 0 {
            first
        } else {
            if !sorted {
                keyed.sort_unstable();
                sorted = true;
            }
            match keyed.get(k - 1) {
                Some(&(_, i)) => i,
                None => return false,
            }
        };
        k += 1;
        work[i].reserve(r);
        chosen.push(i);
        if search(work, rank, order, avoid, policy, chosen, budget) {
            return true;
        }
        chosen.pop();
        work[i].release(r);
    }
}

fn explain_alone(nodes: &[NodeCap], r: &Request) -> Result<(), Refusal> {
    let c = &r.component;
    let pool: Vec<&NodeCap> = match &r.only {
        Some(o) => {
            let n: Vec<&NodeCap> = nodes.iter().filter(|n| n.name == *o).collect();
            if n.is_empty() {
                return Err(Refusal(format!("{c} must run on {o}, which is not up")));
            }
            n
        }
        None => nodes.iter().collect(),
    };
    let where_ = match &r.only {
        Some(o) => format!("{o} has"),
        None => "the most free on any node is".into(),
    };
    if pool.iter().any(|n| n.fits(r)) {
        return Ok(());
    }
    let max_mem = pool.iter().map(|n| n.free_mem()).max().unwrap_or(0);
    let max_cpu = pool.iter().map(|n| n.free_cpus()).max().unwrap_or(0);
    let max_bw = pool.iter().map(|n| n.free_bw()).max().unwrap_or(0);
    if max_mem < r.mem_mib {
        return Err(Refusal(format!(
            "{c} needs {}; {where_} {}",
            fmt_mib(r.mem_mib),
            fmt_mib(max_mem)
        )));
    }
    if max_cpu < r.cpus {
        return Err(Refusal(format!(
            "{c} needs {}; {where_} {}",
            fmt_cpus(r.cpus),
            fmt_cpus(max_cpu)
        )));
    }
    if max_bw < r.bw_mbit {
        return Err(Refusal(format!(
            "{c} needs {} Mbit/s; {where_} {} Mbit/s",
            r.bw_mbit, max_bw
        )));
    }
    Err(Refusal(format!(
        "{c} needs {} and {} on one node; no node has both free",
        fmt_cpus(r.cpus),
        fmt_mib(r.mem_mib)
    )))
}

fn explain_together(nodes: &[NodeCap], reqs: &[Request], exhausted: bool) -> Refusal {
    if exhausted {
        return Refusal("no placement found within the search budget".into());
    }
    // Anti-affinity: VMs that must each be on their own node.
    for r in reqs.iter().filter(|r| !r.anti.is_empty()) {
        let group: BTreeSet<&str> = std::iter::once(r.vm.as_str())
            .chain(r.anti.iter().map(String::as_str))
            .collect();
        let room = nodes.iter().filter(|n| n.fits(r)).count();
        if group.len() > room {
            let names: Vec<&str> = group
                .iter()
                .map(|v| v.rsplit('.').next().unwrap_or(v))
                .collect();
            return Refusal(format!(
                "{} must each run on a different node; only {room} node{} ha{} room for {}",
                names.join(", "),
                if room == 1 { "" } else { "s" },
                if room == 1 { "s" } else { "ve" },
                r.component
            ));
        }
    }
    let mem: u64 = reqs.iter().map(|r| r.mem_mib).sum();
    let cpus: u64 = reqs.iter().map(|r| r.cpus).sum();
    let free_mem: u64 = nodes.iter().map(|n| n.free_mem()).sum();
    let free_cpus: u64 = nodes.iter().map(|n| n.free_cpus()).sum();
    Refusal(format!(
        "together they need {} and {}; the grid has {} and {} free, but not in pieces that fit",
        fmt_cpus(cpus),
        fmt_mib(mem),
        fmt_cpus(free_cpus),
        fmt_mib(free_mem)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(spec: &[(u64, u64)]) -> Vec<NodeCap> {
        spec.iter()
            .enumerate()
            .map(|(i, &(c, m))| NodeCap::new(&format!("node{}", i + 1), c, m))
            .collect()
    }

    #[test]
    fn over_reservation_is_refused_with_the_reason() {
        let ns = nodes(&[(4, 3072), (4, 2048)]);
        let e = place(&ns, &[Request::new("shop.db", 1, 4096)], Placement::Spread).unwrap_err();
        assert_eq!(e.0, "db needs 4 GiB; the most free on any node is 3 GiB");
        let e = place(&ns, &[Request::new("shop.web", 8, 256)], Placement::Spread).unwrap_err();
        assert_eq!(e.0, "web needs 8 CPUs; the most free on any node is 4 CPUs");
    }

    #[test]
    fn existing_reservations_count() {
        let mut ns = nodes(&[(2, 1024)]);
        ns[0].used_cpus = 1;
        ns[0].used_mem = 768;
        let e = place(&ns, &[Request::new("a.x", 1, 512)], Placement::Pack).unwrap_err();
        assert_eq!(e.0, "x needs 512 MiB; the most free on any node is 256 MiB");
        assert!(place(&ns, &[Request::new("a.x", 1, 256)], Placement::Pack).is_ok());
    }

    #[test]
    fn whole_app_or_nothing_never_over_reserves() {
        // Each fits alone, all three do not: refused, with a reason.
        let ns = nodes(&[(2, 1024), (2, 1024)]);
        let reqs: Vec<Request> = ["a", "b", "c"]
            .iter()
            .map(|c| Request::new(&format!("app.{c}"), 1, 700))
            .collect();
        let e = place(&ns, &reqs, Placement::Spread).unwrap_err();
        assert!(
            e.0.contains("together they need 3 CPUs and 2.1 GiB"),
            "{}",
            e.0
        );
        // Exhaustive check on small random sets: a placement never exceeds capacity.
        let mut seed = 7u64;
        let mut rnd = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for _ in 0..300 {
            let ns = nodes(&[
                (1 + rnd(4), 256 * (1 + rnd(8))),
                (1 + rnd(4), 256 * (1 + rnd(8))),
            ]);
            let reqs: Vec<Request> = (0..1 + rnd(5))
                .map(|i| Request::new(&format!("a.c{i}"), 1 + rnd(2), 128 * (1 + rnd(6))))
                .collect();
            if let Ok(p) = place(&ns, &reqs, Placement::Pack) {
                for n in &ns {
                    let on: Vec<&Request> = reqs.iter().filter(|r| p[&r.vm] == n.name).collect();
                    assert!(on.iter().map(|r| r.cpus).sum::<u64>() <= n.cpus);
                    assert!(on.iter().map(|r| r.mem_mib).sum::<u64>() <= n.mem_mib);
                }
            }
        }
    }

    #[test]
    fn anti_affinity_is_honoured() {
        let ns = nodes(&[(8, 8192), (8, 8192)]);
        let web = Request::new("shop.web", 1, 256);
        let mut db = Request::new("shop.db", 1, 256);
        db.anti.insert("shop.web".into());
        let p = place(&ns, &[web.clone(), db.clone()], Placement::Pack).unwrap();
        assert_ne!(
            p["shop.web"], p["shop.db"],
            "pack would have put them together"
        );
        // Declared on one side only, it binds both.
        let mut cache = Request::new("shop.cache", 1, 256);
        cache.anti.insert("shop.db".into());
        cache.anti.insert("shop.web".into());
        let e = place(&ns, &[web, db, cache], Placement::Pack).unwrap_err();
        assert!(
            e.0.contains("must each run on a different node; only 2 nodes have room"),
            "{}",
            e.0
        );
    }

    #[test]
    fn pack_fills_and_spread_spreads() {
        let ns = nodes(&[(4, 4096), (4, 4096), (4, 4096)]);
        let reqs: Vec<Request> = ["a", "b", "c"]
            .iter()
            .map(|c| Request::new(&format!("app.{c}"), 1, 512))
            .collect();
        let p = place(&ns, &reqs, Placement::Pack).unwrap();
        let used: BTreeSet<&String> = p.values().collect();
        assert_eq!(used.len(), 1, "pack used {used:?}");
        let p = place(&ns, &reqs, Placement::Spread).unwrap();
        let used: BTreeSet<&String> = p.values().collect();
        assert_eq!(used.len(), 3, "spread used {used:?}");
        // Pack prefers the node already fullest.
        let mut ns2 = ns.clone();
        ns2[1].used_mem = 2048;
        ns2[1].used_cpus = 1;
        let p = place(&ns2, &reqs[..1], Placement::Pack).unwrap();
        assert_eq!(p["app.a"], "node2");
        let p = place(&ns2, &reqs[..1], Placement::Spread).unwrap();
        assert_ne!(p["app.a"], "node2");
    }

    #[test]
    fn mirrors_are_preferred_and_targets_obeyed() {
        let ns = nodes(&[(4, 4096), (4, 4096), (4, 4096)]);
        let mut r = Request::new("app.web", 1, 512);
        r.mirrors = ["node3".to_string()].into();
        assert_eq!(
            place(&ns, &[r.clone()], Placement::Spread).unwrap()["app.web"],
            "node3"
        );
        r.only = Some("node2".into());
        assert_eq!(
            place(&ns, &[r.clone()], Placement::Spread).unwrap()["app.web"],
            "node2"
        );
        r.only = Some("node9".into());
        let e = place(&ns, &[r.clone()], Placement::Spread).unwrap_err();
        assert_eq!(e.0, "web must run on node9, which is not up");
        r.only = Some("node1".into());
        r.mem_mib = 8192;
        let e = place(&ns, &[r], Placement::Spread).unwrap_err();
        assert_eq!(e.0, "web needs 8 GiB; node1 has 4 GiB");
    }

    #[test]
    fn no_nodes() {
        let e = place(&[], &[Request::new("a.b", 1, 64)], Placement::Spread).unwrap_err();
        assert!(e.0.contains("no node is up"));
    }
}
