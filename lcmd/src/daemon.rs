//! `lcmd run`: registers the node, follows the model in metad with a watch
//! (no polling), keeps the datapath's topology and TAPs in step with it,
//! and writes events and statistics back.

use crate::engine::{self, Engine};
use crate::model::{self, NodeRecord};
use crate::store::Store;
use crate::topology::Topology;
use crate::tunnel::SeqSource;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The tunnel port could not be bound.
    #[error("binding the tunnel port {port}: {source}")]
    Bind {
        /// Port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
}

/// What `lcmd run` is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name, as appliances' `node` fields say it.
    pub node: String,
    /// This node's underlay address, where peers send tunnel packets.
    pub advertise: Ipv4Addr,
    /// The tunnel port.
    pub port: u16,
    /// Where VM appliances' NIC sockets are bound (see [`crate::vmnic`]).
    pub nic_dir: PathBuf,
}

/// The tunnel's sequence numbers, starting past the mark the last run
/// stored (see [`SeqSource`]), with the first block reserved: no datagram
/// is sent before the mark covering its number is stored.
async fn start_seq(store: &Store, node: &str) -> SeqSource {
    let mark = loop {
        match store.seq_mark(node).await {
            Ok(m) => break m,
            Err(e) => tracing::warn!("reading the tunnel sequence mark: {e}; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let clock_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seq = SeqSource::start(clock_ns, mark);
    while !reserve_seq(store, node, &seq).await {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    seq
}

/// Stores the next reservation of sequence numbers when one is due;
/// false if storing it failed (the numbers reserved so far still last).
async fn reserve_seq(store: &Store, node: &str, seq: &SeqSource) -> bool {
    let Some(mark) = seq.wanted_mark() else {
        return true;
    };
    match store.put_seq_mark(node, mark).await {
        Ok(()) => {
            seq.reserved(mark);
            true
        }
        Err(e) => {
            tracing::warn!("storing the tunnel sequence mark: {e}");
            false
        }
    }
}

/// Runs the daemon until the process is killed.
pub async fn run(store: Store, opts: Options) -> Result<(), DaemonError> {
    let store = Arc::new(store);
    let udp = engine::bind_tunnel(opts.port).map_err(|source| DaemonError::Bind {
        port: opts.port,
        source,
    })?;
    let seq = start_seq(&store, &opts.node).await;
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::new(&opts.node, opts.advertise, &opts.nic_dir, udp, seq, ev_tx);
    {
        let e = engine.clone();
        std::thread::Builder::new()
            .name("tunnel-rx".into())
            .spawn(move || e.tunnel_receiver())
            .expect("spawning a thread");
    }
    let rec = NodeRecord {
        name: opts.node.clone(),
        addr: opts.advertise,
        port: opts.port,
    };
    while let Err(e) = store.register_node(&rec).await {
        tracing::warn!("registering node {}: {e}; retrying", opts.node);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::info!(
        "node {} registered at {}:{}",
        opts.node,
        opts.advertise,
        opts.port
    );

    let s = store.clone();
    tokio::spawn(async move {
        while let Some(ev) = ev_rx.recv().await {
            while let Err(e) = s.put_event(&ev).await {
                tracing::warn!("writing event: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });

    let (s, e, node) = (store.clone(), engine.clone(), opts.node.clone());
    tokio::spawn(async move {
        let mut last = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            reserve_seq(&s, &node, e.seq()).await;
            e.expire();
            let now = e.stats();
            if last.as_ref() != Some(&now) && s.put_stats(&now).await.is_ok() {
                last = Some(now);
            }
        }
    });

    loop {
        let (kvs, rev) = match store.client.get_prefix(model::PREFIX).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading the model: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (topo, errors) = Topology::from_kvs(&kvs);
        for err in errors {
            tracing::warn!("skipping {err}");
        }
        engine.install(topo);
        let mut watch = match store.client.watch(model::PREFIX, rev + 1).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("watching the model: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Wait for a change of the model (statistics do not count), take
        // every change already queued with it, then read the model again.
        loop {
            match watch.next().await {
                Some(Ok(ev)) if ev.kv.key.starts_with(model::STATS_PREFIX.as_bytes()) => continue,
                Some(Ok(_)) => {
                    while let Ok(Some(Ok(_))) =
                        tokio::time::timeout(Duration::from_millis(5), watch.next()).await
                    {
                    }
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!("watch ended: {e}");
                    break;
                }
                None => break,
            }
        }
    }
}
