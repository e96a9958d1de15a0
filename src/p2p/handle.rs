//! The cloneable handle everything else uses to talk to the swarm's event loop.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

use super::monitor::PeerInfo;
use super::routing::{Outbound, RequestError, RequestProtocol};
use crate::content_id::ContentId;

/// Capacity of the command channel; senders wait when the event loop is behind.
pub const COMMAND_QUEUE: usize = 256;

/// A request to the event loop. Commands that need an answer carry a `oneshot` sender.
#[derive(Debug)]
pub enum Command {
    /// List monitored peers (connected and recently disconnected).
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// List connected peer ids.
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    /// Announce this node as a provider of some content and withdraw it for other content.
    UpdateProvided {
        /// Content now held.
        provide: Vec<ContentId>,
        /// Content no longer held.
        withdraw: Vec<ContentId>,
        /// Done.
        reply: oneshot::Sender<()>,
    },
    /// Find providers of content through Kademlia.
    FindProviders(ContentId, oneshot::Sender<Vec<PeerId>>),
    /// Send a request to a peer over one of our request-response protocols.
    Request(Outbound),
    /// Make sure there is a connection to a peer: now, or after finding its addresses
    /// through Kademlia and dialing them. The answer comes once connected or failed.
    Connect(PeerId, oneshot::Sender<Result<(), String>>),
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
        reply: oneshot::Sender<Result<(), PublishError>>,
    },
}

/// Why a gossip message was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The topic is not one of ours.
    #[error("`{0}` is not one of the node's topics")]
    UnknownTopic(String),
    /// No peer subscribed to the topic is connected.
    #[error("no connected peer is subscribed to the topic")]
    NoPeers,
    /// The message is over the gossip size limit.
    #[error("the message is larger than the gossip limit")]
    TooLarge,
    /// The same message was published recently.
    #[error("the same message was published recently")]
    Duplicate,
    /// Any other gossipsub error.
    #[error("{0}")]
    Other(String),
    /// The event loop has stopped.
    #[error("the p2p event loop has stopped")]
    Stopped,
}

impl From<HandleError> for PublishError {
    fn from(_: HandleError) -> Self {
        Self::Stopped
    }
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

/// How long a caller waits for the event loop to answer a local command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a command that goes over the network (the protocols' own
/// timeouts end it sooner).
const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a caller waits for room in the command queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

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
        self.ask_within(ANSWER_TIMEOUT, make).await
    }

    async fn ask_within<T>(
        &self,
        limit: Duration,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, HandleError> {
        let (tx, rx) = oneshot::channel();
        let send = self.commands.send(make(tx));
        tokio::time::timeout(SEND_TIMEOUT, send)
            .await
            .map_err(|_| HandleError::Timeout(SEND_TIMEOUT))?
            .map_err(|_| HandleError::Stopped)?;
        tokio::time::timeout(limit, rx)
            .await
            .map_err(|_| HandleError::Timeout(limit))?
            .map_err(|_| HandleError::Stopped)
    }

    /// Ids of connected peers.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, HandleError> {
        self.ask(Command::ConnectedPeers).await
    }

    /// Announces this node as a provider of `provide` and withdraws its provider records for
    /// `withdraw` (Kademlia provider records).
    pub async fn update_provided(
        &self,
        provide: Vec<ContentId>,
        withdraw: Vec<ContentId>,
    ) -> Result<(), HandleError> {
        self.ask(|reply| Command::UpdateProvided {
            provide,
            withdraw,
            reply,
        })
        .await
    }

    /// Providers of `id` found through Kademlia (possibly none).
    pub async fn find_providers(&self, id: ContentId) -> Result<Vec<PeerId>, HandleError> {
        self.ask_within(NETWORK_TIMEOUT, |tx| Command::FindProviders(id, tx))
            .await
    }

    /// Sends `request` to `peer` over protocol `P` and waits for the response (bounded by
    /// the protocol's request timeout; callers may give up sooner by dropping the future).
    pub async fn request<P: RequestProtocol>(
        &self,
        peer: PeerId,
        request: P::Request,
    ) -> Result<P::Response, RequestError> {
        self.ask_within(NETWORK_TIMEOUT, |reply| {
            Command::Request(P::outbound(peer, request, reply))
        })
        .await
        .map_err(|e| match e {
            HandleError::Stopped => RequestError::Stopped,
            HandleError::Timeout(_) => RequestError::Timeout,
        })?
    }

    /// Connects to `peer` unless already connected, finding its addresses through Kademlia
    /// if needed. `Err` says why not (not found, dial failed).
    pub async fn connect(&self, peer: PeerId) -> Result<(), String> {
        self.ask_within(NETWORK_TIMEOUT, |tx| Command::Connect(peer, tx))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Monitored peers: state, addresses, protocols, RTT.
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
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), PublishError> {
        let topic = topic.to_owned();
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }
}
