//! vmctl: DVM, the grid's distributed VM manager: the CLI and the node
//! agent. Modules, one job each:
//!
//! - [`descriptor`]: application descriptors (TOML), validated with line and field;
//! - [`units`]: sizes and rates as written and printed;
//! - [`model`]: the records in metad under `dvm/` and their keys;
//! - [`store`]: metad access (JSON records, compare-and-swap, events);
//! - [`scheduler`]: placement, pure and unit-tested;
//! - [`controller`]: the elected scheduler loop (placement, release, failover);
//! - [`agent`]: the node agent (heartbeat, running VMs, crash restarts);
//! - [`backend`]: hypervisors behind one trait (QEMU with QMP, Xen's xl);
//! - [`values`]: the checks of every value a hypervisor is given;
//! - [`console`]: console tails in metad, readable from any node;
//! - [`volumes`]: images in /gvs/catalog and cloned volumes;
//! - [`guest`]: guests' NICs on lcmd (the application as lcmd appliances);
//! - [`cli`] and [`commands`]: the command line and what it does.

pub mod agent;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod console;
pub mod controller;
pub mod descriptor;
pub mod guest;
pub mod model;
pub mod scheduler;
pub mod store;
pub mod units;
pub mod values;
pub mod volumes;
