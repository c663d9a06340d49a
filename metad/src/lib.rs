//! metad: the grid's replicated metadata service, a Raft group (raft-rs)
//! whose log and state machine live in RocksDB.
//!
//! The library half holds the service ([`node`], [`server`]) and the client
//! every other part of the grid uses ([`client::Client`]).
//!
//! Modules, one job each:
//! - [`state`]: the key-value state machine (revisions, history, CAS
//!   transactions, leases, member addresses);
//! - [`storage`]: raft-rs `Storage` on RocksDB, snapshots and compaction;
//! - [`node`]: the Raft loop thread (batching, ReadIndex, conf changes,
//!   lease expiry);
//! - [`protocol`]: frames and the client request/response types;
//! - [`args`]: the command-line flags every grid binary finds metad with;
//! - [`auth`]: the cluster secret and the mutual challenge-response;
//! - [`transport`]: outbound Raft messages to peers;
//! - [`server`]: the listening port for peers and clients;
//! - [`client`]: the client;
//! - [`events`]: the grid's one event log (DVM, LCM and GVS events);
//! - [`member`]: a member's data directory (identity, secret, database);
//! - [`logging`]: the log format of every grid binary;
//! - [`limits`]: what every grid daemon raises about its process at start;
//! - [`linearizability`]: a checker for histories of register operations.

pub mod args;
pub mod auth;
pub mod client;
pub mod events;
pub mod limits;
pub mod linearizability;
pub mod logging;
pub mod member;
pub mod node;
pub mod protocol;
pub mod server;
pub mod state;
pub mod storage;
pub mod transport;

pub use args::MetadArgs;
pub use auth::Secret;
pub use client::{
    BlockingClient, Client, ClientConfig, ClientError, ClusterStatus, MemberHealth, Watch,
};
pub use state::{Compare, CompareTarget, Event, EventKind, KeyValue, Op, Txn, TxnResult};
