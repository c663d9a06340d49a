//! Outbound Raft messages: one tokio task per peer keeps an authenticated
//! TCP connection and writes `eraftpb::Message` frames, batching whatever is
//! queued. Messages to a peer that cannot be reached are dropped (Raft
//! retransmits) and the Raft loop is told, so it probes the peer gently.

use crate::auth::{connect_handshake, Role, Secret};
use crate::protocol::Sealer;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Time allowed to connect and authenticate to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Time allowed to write a batch of messages (a partitioned peer stalls).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a peer task tells the Raft loop.
#[derive(Debug)]
pub enum PeerReport {
    /// The peer could not be reached; messages were dropped.
    Unreachable(u64),
    /// A snapshot message to the peer was dropped.
    SnapshotFailed(u64),
}

/// The outbound half of the member-to-member transport, owned by the Raft
/// loop.
pub struct Transport {
    my_id: u64,
    secret: Secret,
    rt: tokio::runtime::Handle,
    report: std::sync::mpsc::Sender<crate::node::Msg>,
    addrs: BTreeMap<u64, String>,
    peers: HashMap<u64, mpsc::UnboundedSender<Message>>,
}

impl Transport {
    /// A transport for member `my_id`, spawning its tasks on `rt` and
    /// reporting to the Raft loop through `report`.
    pub fn new(
        my_id: u64,
        secret: Secret,
        rt: tokio::runtime::Handle,
        report: std::sync::mpsc::Sender<crate::node::Msg>,
    ) -> Transport {
        Transport {
            my_id,
            secret,
            rt,
            report,
            addrs: BTreeMap::new(),
            peers: HashMap::new(),
        }
    }

    /// Sets the address book (member id → address); connections to members
    /// that left or moved are dropped.
    pub fn set_addrs(&mut self, addrs: BTreeMap<u64, String>) {
        self.peers
            .retain(|id, _| addrs.contains_key(id) && addrs.get(id) == self.addrs.get(id));
        self.addrs = addrs;
    }

    /// Queues messages for their recipients.
    pub fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            if to == self.my_id {
                continue;
            }
            if !self.peers.contains_key(&to) {
                let Some(addr) = self.addrs.get(&to).cloned() else {
                    tracing::debug!(to, "no address for member; message dropped");
                    continue;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let task = PeerTask {
                    to,
                    addr,
                    my_id: self.my_id,
                    secret: self.secret.clone(),
                    report: self.report.clone(),
                };
                self.rt.spawn(task.run(rx));
                self.peers.insert(to, tx);
            }
            if let Some(tx) = self.peers.get(&to) {
                if tx.send(m).is_err() {
                    self.peers.remove(&to);
                }
            }
        }
    }
}

struct PeerTask {
    to: u64,
    addr: String,
    my_id: u64,
    secret: Secret,
    report: std::sync::mpsc::Sender<crate::node::Msg>,
}

impl PeerTask {
    fn fail(&self, dropped: &[Message]) {
        let _ = self
            .report
            .send(crate::node::Msg::Peer(PeerReport::Unreachable(self.to)));
        if dropped
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        {
            let _ = self
                .report
                .send(crate::node::Msg::Peer(PeerReport::SnapshotFailed(self.to)));
        }
    }

    async fn connect(&self) -> Result<(TcpStream, Sealer), String> {
        let fut = async {
            let mut s = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            let session = connect_handshake(&mut s, &self.secret, Role::Peer, self.my_id)
                .await
                .map_err(|e| e.to_string())?;
            Ok((s, session.send))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| "timed out".to_string())?
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut warned = false;
        loop {
            let (stream, mut sealer) = match self.connect().await {
                Ok(s) => s,
                Err(e) => {
                    if !warned {
                        tracing::warn!(to = self.to, addr = %self.addr, "cannot reach peer: {e}");
                        warned = true;
                    }
                    let mut dropped = Vec::new();
                    while let Ok(m) = rx.try_recv() {
                        dropped.push(m);
                    }
                    self.fail(&dropped);
                    if rx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if warned {
                tracing::info!(to = self.to, addr = %self.addr, "peer reachable again");
                warned = false;
            }
            let mut w = BufWriter::new(stream);
            loop {
                let Some(first) = rx.recv().await else { return };
                let mut batch = vec![first];
                while batch.len() < 512 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let write = async {
                    for m in &batch {
                        let bytes = m.write_to_bytes().map_err(|e| e.to_string())?;
                        sealer
                            .write(&mut w, &bytes)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    w.flush().await.map_err(|e| e.to_string())
                };
                let res = tokio::time::timeout(WRITE_TIMEOUT, write)
                    .await
                    .unwrap_or_else(|_| Err("write timed out".into()));
                if let Err(e) = res {
                    tracing::warn!(to = self.to, addr = %self.addr, "peer connection lost: {e}");
                    self.fail(&batch);
                    break;
                }
            }
        }
    }
}
