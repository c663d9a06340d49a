//! lcmd, the grid's Logical Connection Manager on one node: appliance NICs
//! are TAP devices it holds; it answers ARP and DNS for them, forwards
//! only what declared connections admit (with connection tracking),
//! carries traffic between nodes in authenticated, replay-protected UDP
//! tunnels, and reports everything it drops as a security event.
//!
//! Modules, one job each:
//! - [`model`]: the records in metad and their key layout;
//! - [`store`]: reading and writing them (the CLI's library API);
//! - [`topology`]: the model as the datapath looks it up;
//! - [`packet`]: frame parsing and building;
//! - [`responder`]: ARP and DNS answers;
//! - [`bandwidth`]: rates, `bw` declarations and the token bucket;
//! - [`conntrack`]: tracked flows (and their SYN -> SYN/ACK round trip);
//! - [`policy`]: the forwarding decision and its reasons;
//! - [`tunnel`]: encapsulation, MAC and replay window;
//! - [`tap`]: TAP devices (with vnet headers: checksum and TSO offload);
//! - [`vmnic`]: a QEMU guest's NIC, a unix datagram socket pair;
//! - [`nic`]: an appliance NIC, either of the two;
//! - [`udp`]: the tunnel socket, sendmsg from pieces, recvmmsg batches;
//! - [`events`]: security events and their rate limit;
//! - [`stats`]: per-connection counters;
//! - [`engine`]: the datapath threads;
//! - [`daemon`]: `lcmd run`.

pub mod bandwidth;
pub mod conntrack;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod http;
pub mod model;
pub mod nic;
pub mod packet;
pub mod pieces;
pub mod policy;
pub mod responder;
pub mod stats;
pub mod store;
pub mod tap;
pub mod topology;
pub mod tunnel;
pub mod udp;
pub mod vmnic;
