//! Scheduling throughput, not a test: 10,000 VMs in applications of 10
//! placed onto 1,000 simulated nodes by the scheduler module itself
//! (`vmctl::scheduler::place`, whole application or nothing), in placements
//! per second, next to Nomad's published figure.
//!
//! Run: `cargo bench -p vmctl --bench schedule` (add `-- pack` for the pack
//! policy; spread is the default).
//!
//! Each application has 10 components of 1-4 CPUs and 256 MiB-4 GiB, two
//! of them anti-affine, and each VM prefers the 2 nodes holding a mirror
//! of its volumes (as GVS would report them). Nodes have 32 CPUs and
//! 128 GiB. Two timings: `place` alone with the node table kept up to date
//! incrementally, and `place` after rebuilding the table from every VM
//! record (`controller::capacities`), which is what one controller pass
//! does per application today.

use std::collections::BTreeMap;
use std::time::Instant;
use vmctl::controller::capacities;
use vmctl::descriptor::Placement;
use vmctl::model::{BootSpec, Desired, NodeRecord, VmRecord};
use vmctl::scheduler::{place, NodeCap, Request};

const NODES: usize = 1_000;
const VMS: usize = 10_000;
const PER_APP: usize = 10;
/// Nomad's published scheduling throughput (placements per second).
const NOMAD: f64 = 3_750.0;

/// A small deterministic generator (no dependency, same load every run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn node_name(i: usize) -> String {
    format!("node{i:04}")
}

fn apps() -> Vec<Vec<Request>> {
    let mut rng = Lcg(7);
    (0..VMS / PER_APP)
        .map(|a| {
            (0..PER_APP)
                .map(|c| {
                    let mut r =
                        Request::new(&format!("app{a}.c{c}"), 1 + rng.next(4), 256 << rng.next(5));
                    if c < 2 {
                        r.anti.insert(format!("app{a}.c{}", 1 - c));
                    }
                    for _ in 0..2 {
                        r.mirrors.insert(node_name(rng.next(NODES as u64) as usize));
                    }
                    r
                })
                .collect()
        })
        .collect()
}

fn record(r: &Request, node: &str) -> VmRecord {
    VmRecord {
        name: r.vm.clone(),
        app: r.vm.split('.').next().unwrap_or("").into(),
        component: r.component.clone(),
        cpu_min: r.cpus as u32,
        cpu_max: r.cpus as u32,
        mem_mib: r.mem_mib,
        bw_min: 0,
        pin: false,
        hypervisor: "qemu".into(),
        anti_affinity: vec![],
        boot: BootSpec {
            kernel: String::new(),
            initrd: None,
            cmdline: String::new(),
        },
        disks: vec![],
        desired: Desired::Running,
        node: Some(node.into()),
        target: None,
        reason: None,
        migration: None,
        last_migration: None,
        nic: None,
    }
}

fn main() {
    let policy = if std::env::args().any(|a| a == "pack") {
        Placement::Pack
    } else {
        Placement::Spread
    };
    let apps = apps();
    let node_recs: BTreeMap<String, NodeRecord> = (0..NODES)
        .map(|i| {
            let n = NodeRecord {
                name: node_name(i),
                cpus: 32,
                mem_mib: 128 * 1024,
                bw_mbit: 10_000,
                accel: "kvm".into(),
                hypervisors: vec!["qemu".into()],
                limits: String::new(),
                since_ms: 0,
            };
            (n.name.clone(), n)
        })
        .collect();
    println!(
        "scheduling {VMS} VMs in applications of {PER_APP} onto {NODES} simulated nodes ({policy:?})"
    );

    // 1. place() alone, the node table kept up to date incrementally.
    let mut caps: Vec<NodeCap> = capacities(&node_recs, std::iter::empty());
    let index: BTreeMap<String, usize> = caps
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), i))
        .collect();
    let t = Instant::now();
    let mut placed = 0usize;
    for app in &apps {
        let p = place(&caps, app, policy).expect("the grid has room for all");
        for r in app {
            let c = &mut caps[index[&p[&r.vm]]];
            c.used_cpus += r.cpus;
            c.used_mem += r.mem_mib;
            c.vms.insert(r.vm.clone());
            placed += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = placed as f64 / secs;
    println!(
        "place() only:                  {placed} placements in {secs:.2} s = {rate:>8.0}/s ({:.1}x Nomad's published ~{NOMAD:.0}/s)",
        rate / NOMAD
    );
    let used: u64 = caps.iter().map(|c| c.used_cpus).sum();
    let busiest = caps.iter().map(|c| c.used_cpus).max().unwrap_or(0);
    println!(
        "  CPUs reserved {used} of {}; busiest node {busiest}/32",
        NODES * 32
    );

    // 2. As one controller pass does it: the table rebuilt from every VM
    // record before each application.
    let mut recs: Vec<VmRecord> = Vec::with_capacity(VMS);
    let t = Instant::now();
    let mut placed = 0usize;
    for app in &apps {
        let caps = capacities(&node_recs, recs.iter());
        let p = place(&caps, app, policy).expect("the grid has room for all");
        for r in app {
            recs.push(record(r, &p[&r.vm]));
            placed += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = placed as f64 / secs;
    println!(
        "capacities() + place():        {placed} placements in {secs:.2} s = {rate:>8.0}/s ({:.1}x Nomad's published ~{NOMAD:.0}/s)",
        rate / NOMAD
    );
}
