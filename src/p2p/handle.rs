//! The cloneable handle everything else uses to talk to the swarm's event loop.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

/// Capacity of the command channel; senders wait when the event loop is behind.
pub const COMMAND_QUEUE: usize = 256;

/// A request to the event loop. Commands that need an answer carry a `oneshot` sender.
#[derive(Debug)]
pub enum Command {
    /// List connected peers.
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Dial an address (must end in `/p2p/<peer id>`).
    Dial(Multiaddr, oneshot::Sender<Result<(), String>>),
    /// Add a peer to the block list and disconnect it.
    Block(PeerId, oneshot::Sender<bool>),
    /// Remove a peer from the block list.
    Unblock(PeerId, oneshot::Sender<bool>),
    /// Publish a message on one of our gossipsub topics.
    Publish {
        /// Topic name (one of [`super::TOPICS`]).
        topic: String,
        /// Payload.
        data: Vec<u8>,
        /// The outcome.
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What the API shows about one connected peer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerInfo {
    /// The peer's id.
    pub peer_id: String,
    /// Remote addresses of our connections to it.
    pub addresses: Vec<String>,
    /// Protocols it announced through identify (capped).
    pub protocols: Vec<String>,
    /// Agent version it announced.
    pub agent_version: Option<String>,
    /// Last ping round-trip time in milliseconds.
    pub last_rtt_ms: Option<f64>,
    /// Seconds since the first connection to it was established.
    pub connected_secs: f64,
}

/// The swarm's state as readiness checks need it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStatus {
    /// Addresses the swarm listens on (without `/p2p/`).
    pub listen_addrs: Vec<Multiaddr>,
    /// Number of connected peers.
    pub connected_peers: usize,
}

/// Errors talking to the event loop.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The event loop has stopped (the node is shutting down).
    #[error("the p2p event loop has stopped")]
    Stopped,
    /// The event loop did not answer in time.
    #[error("the p2p event loop did not answer within {0:?}")]
    Timeout(Duration),
}

/// How long a caller waits for the event loop to answer a command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Cheap, cloneable handle to the swarm's event loop.
#[derive(Debug, Clone)]
pub struct P2pHandle {
    local_peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<NetStatus>,
}

impl P2pHandle {
    pub(crate) fn new(
        local_peer_id: PeerId,
        commands: mpsc::Sender<Command>,
        status: watch::Receiver<NetStatus>,
    ) -> Self {
        Self {
            local_peer_id,
            commands,
            status,
        }
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The current network status.
    pub fn status(&self) -> NetStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<NetStatus> {
        self.status.clone()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, HandleError> {
        let (tx, rx) = oneshot::channel();
        let send = self.commands.send(make(tx));
        tokio::time::timeout(ANSWER_TIMEOUT, send)
            .await
            .map_err(|_| HandleError::Timeout(ANSWER_TIMEOUT))?
            .map_err(|_| HandleError::Stopped)?;
        tokio::time::timeout(ANSWER_TIMEOUT, rx)
            .await
            .map_err(|_| HandleError::Timeout(ANSWER_TIMEOUT))?
            .map_err(|_| HandleError::Stopped)
    }

    /// Connected peers with their addresses, protocols and last RTT.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, HandleError> {
        self.ask(Command::Peers).await
    }

    /// Dials `addr`; the answer says whether the dial was started, not whether it connected.
    pub async fn dial(&self, addr: Multiaddr) -> Result<Result<(), String>, HandleError> {
        self.ask(|tx| Command::Dial(addr, tx)).await
    }

    /// Blocks `peer` (and disconnects it). Returns whether it was newly blocked.
    pub async fn block(&self, peer: PeerId) -> Result<bool, HandleError> {
        self.ask(|tx| Command::Block(peer, tx)).await
    }

    /// Unblocks `peer`. Returns whether it was blocked.
    pub async fn unblock(&self, peer: PeerId) -> Result<bool, HandleError> {
        self.ask(|tx| Command::Unblock(peer, tx)).await
    }

    /// Publishes `data` on `topic`.
    pub async fn publish(
        &self,
        topic: &str,
        data: Vec<u8>,
    ) -> Result<Result<(), String>, HandleError> {
        let topic = topic.to_owned();
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await
    }
}
