//! How inbound traffic reaches the services, and how services send requests out.
//!
//! The event loop never handles a request itself. An inbound request is handed to the
//! owning service's bounded inbox as an [`InboundRequest`] (peer, request, reply sender);
//! the loop sends the reply when it arrives. A full inbox means the request is refused at
//! once (the stream is dropped and the refusal counted), never waited on. Gossip goes the
//! same way as a [`GossipMessage`] whose verdict comes back over a oneshot within
//! [`GOSSIP_VERDICT_DEADLINE`]; a topic without a service rejects what arrives on it.
//!
//! Outbound, [`RequestProtocol`] ties a protocol's request and response types to the
//! command that carries them, so [`super::P2pHandle::request`] is one typed call for every
//! protocol.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::OutboundFailure;
use tokio::sync::{mpsc, oneshot};

pub use super::frame_protocol::FrameProtocol;

use super::content_protocol::{BudgetExhausted, ContentRequest, ContentResponse};

/// How long a service may take to answer an inbound request before the stream is dropped.
pub const INBOUND_REPLY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a topic's service may take to judge a gossip message; later, it is ignored.
pub const GOSSIP_VERDICT_DEADLINE: Duration = Duration::from_secs(2);
/// Most inbound requests and gossip verdicts the event loop waits on at once.
pub const MAX_PENDING_ANSWERS: usize = 2048;

/// A request from a peer, for a service to answer through `reply`.
#[derive(Debug)]
pub struct InboundRequest<Req, Resp> {
    /// Who asked.
    pub peer: PeerId,
    /// What they asked.
    pub request: Req,
    /// Where the answer goes. Dropping it refuses the request.
    pub reply: oneshot::Sender<Resp>,
}

/// What a topic's service decided about a gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: deliver and forward.
    Accept,
    /// Invalid: do not forward, and penalise the peer that sent it.
    Reject,
    /// Not for us (stale, duplicate): do not forward, no penalty.
    Ignore,
}

/// A gossip message for a topic's service.
#[derive(Debug)]
pub struct GossipMessage {
    /// The topic it arrived on (one of [`super::TOPICS`]).
    pub topic: &'static str,
    /// The author, as signed in the gossipsub envelope.
    pub source: Option<PeerId>,
    /// The peer that forwarded it to us.
    pub propagation_source: PeerId,
    /// The payload.
    pub data: Vec<u8>,
    /// Where the verdict goes; no answer within the deadline means `Ignore`.
    pub verdict: oneshot::Sender<Verdict>,
}

/// The inbox of the content service.
pub type ContentInbox = mpsc::Sender<InboundRequest<ContentRequest, ContentResponse>>;

/// The inbox of a service whose protocol carries opaque frames: raw request frames, raw
/// response frames.
pub type FrameInbox = mpsc::Sender<InboundRequest<Vec<u8>, Vec<u8>>>;

/// The inbox of the market service.
pub type MarketInbox = FrameInbox;

/// Where the event loop sends inbound traffic. Built by `node.rs`, which owns the services.
#[derive(Debug, Default)]
pub struct Routes {
    /// `/zerostate/content/2` requests. Without a service, every request is refused.
    pub content: Option<ContentInbox>,
    /// Requests of each frame protocol. A protocol without a service refuses every request.
    pub frames: HashMap<FrameProtocol, FrameInbox>,
    /// Gossip per topic. A topic without a service rejects what arrives on it.
    pub gossip: HashMap<&'static str, mpsc::Sender<GossipMessage>>,
}

/// Why an outbound request produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The peer's response broke the protocol or exceeded our size limit.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The peer did not answer in time.
    #[error("the peer did not answer in time")]
    Timeout,
    /// The peer could not be dialed.
    #[error("cannot dial the peer")]
    Dial,
    /// The peer does not speak the protocol.
    #[error("the peer does not support the protocol")]
    Unsupported,
    /// Our receive budget was used up (too much being received at once).
    #[error("too much content is being received at once")]
    Budget,
    /// The connection closed, or another I/O error.
    #[error("{0}")]
    Failed(String),
    /// The event loop has stopped (the node is shutting down).
    #[error("the p2p event loop has stopped")]
    Stopped,
}

impl RequestError {
    /// Classifies a request-response outbound failure.
    pub fn from_outbound(error: &OutboundFailure) -> Self {
        match error {
            OutboundFailure::Io(e) if e.get_ref().is_some_and(|e| e.is::<BudgetExhausted>()) => {
                Self::Budget
            }
            OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Self::Malformed(e.to_string())
            }
            OutboundFailure::Timeout => Self::Timeout,
            OutboundFailure::DialFailure => Self::Dial,
            OutboundFailure::UnsupportedProtocols => Self::Unsupported,
            other => Self::Failed(other.to_string()),
        }
    }
}

/// The reply sender of an outbound request.
pub type Reply<T> = oneshot::Sender<Result<T, RequestError>>;

/// An outbound request, by protocol.
#[derive(Debug)]
pub enum Outbound {
    /// `/zerostate/content/2`.
    Content {
        /// To whom.
        peer: PeerId,
        /// What.
        request: ContentRequest,
        /// The answer.
        reply: Reply<ContentResponse>,
    },
    /// A protocol of opaque frames.
    Frame {
        /// Which.
        protocol: FrameProtocol,
        /// To whom.
        peer: PeerId,
        /// The request frame.
        request: Vec<u8>,
        /// The response frame.
        reply: Reply<Vec<u8>>,
    },
}

/// A request-response protocol a service can use through [`super::P2pHandle::request`].
pub trait RequestProtocol {
    /// Its request.
    type Request: Send + 'static;
    /// Its response.
    type Response: Send + 'static;
    /// Wraps a request for the event loop.
    fn outbound(peer: PeerId, request: Self::Request, reply: Reply<Self::Response>) -> Outbound;
}

/// The content protocol.
#[derive(Debug)]
pub struct Content;

impl RequestProtocol for Content {
    type Request = ContentRequest;
    type Response = ContentResponse;

    fn outbound(peer: PeerId, request: ContentRequest, reply: Reply<ContentResponse>) -> Outbound {
        Outbound::Content {
            peer,
            request,
            reply,
        }
    }
}

/// A protocol of opaque frames, named by its [`FrameProtocol`]: every such marker is a
/// [`RequestProtocol`] of raw request and response frames.
pub trait FrameRequests {
    /// Which frame protocol.
    const PROTOCOL: FrameProtocol;
}

impl<P: FrameRequests> RequestProtocol for P {
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    fn outbound(peer: PeerId, request: Vec<u8>, reply: Reply<Vec<u8>>) -> Outbound {
        Outbound::Frame {
            protocol: P::PROTOCOL,
            peer,
            request,
            reply,
        }
    }
}

/// Defines a marker type for a frame protocol, usable with [`super::P2pHandle::request`].
macro_rules! frame_requests {
    ($(#[$doc:meta])* $marker:ident => $protocol:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $marker;

        impl FrameRequests for $marker {
            const PROTOCOL: FrameProtocol = FrameProtocol::$protocol;
        }
    };
}

frame_requests!(
    /// The market protocol: opaque frames the market service encodes and decodes.
    Market => Market
);
frame_requests!(
    /// The payment channels' protocol: opaque frames the payments service encodes and decodes.
    PaymentChannel => Channel
);
