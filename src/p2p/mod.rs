//! The swarm: behaviour composition, the event loop that owns it, and the handle to it.

pub mod addrs;
pub mod announce;
mod behaviour;
pub mod bootstrap;
pub mod config;
mod content_protocol;
mod event_loop;
mod frame_protocol;
mod handle;
pub mod ip_limits;
pub mod monitor;
pub mod providers;
pub mod rate_limit;
pub mod routing;
mod transport;

use libp2p::core::{Transport, upgrade};
use libp2p::{Swarm, SwarmBuilder, identity::Keypair, noise, tcp, yamux};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use transport::FreshPortDials;

use crate::metrics::{OutcomeLabels, ReasonLabels};

pub use behaviour::{
    AUCTIONS_TOPIC, Behaviour, DISPUTES_TOPIC, KAD_PROTOCOL, MAX_GOSSIP_MESSAGE_BYTES,
    PROTOCOL_VERSION, RESULTS_TOPIC, TOPICS,
};
pub use config::{DiscoveryConfig, LimitsConfig, MonitorConfig, P2pConfig};
pub use content_protocol::{
    BudgetExhausted, CONTENT_PROTOCOL, ContentCodec, ContentRequest, ContentResponse,
    MAX_REQUEST_BYTES, Payload,
};
pub use event_loop::EventLoop;
pub use frame_protocol::{
    CHANNEL_PROTOCOL, MARKET_PROTOCOL, MAX_CHANNEL_FRAME_BYTES, MAX_MARKET_REQUEST_BYTES,
    MAX_MARKET_RESPONSE_BYTES,
};
pub use handle::{Command, HandleError, NetStatus, P2pHandle, PublishError};
pub use monitor::{MonitorMetrics, PeerInfo, PeerMonitor, PeerState};
pub use routing::{
    Content, ContentInbox, FrameInbox, FrameProtocol, FrameRequests, GossipMessage, InboundRequest,
    Market, MarketInbox, PaymentChannel, RequestError, RequestProtocol, Routes, Verdict,
};

/// Errors starting the swarm.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The transport could not be built.
    #[error("building the transport: {0}")]
    Transport(String),
    /// The behaviour could not be built.
    #[error(transparent)]
    Behaviour(#[from] behaviour::BehaviourError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {reason} (is the port in use? use port 0 for a free one)")]
    Listen {
        /// The address.
        addr: libp2p::Multiaddr,
        /// What went wrong.
        reason: String,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GossipLabels {
    topic: &'static str,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    protocol: &'static str,
    reason: &'static str,
}

/// Our own swarm-level metrics (libp2p-metrics covers the protocol internals). No label
/// value comes from the network: topics, protocols and reasons are fixed in code.
#[derive(Clone, Debug, Default)]
pub struct P2pMetrics {
    gossip_messages: Family<GossipLabels, Counter>,
    bootstrap_dials: Family<OutcomeLabels, Counter>,
    malformed: Family<ProtocolLabels, Counter>,
    inbound_refused: Family<RefusedLabels, Counter>,
    connections_refused: Family<ReasonLabels, Counter>,
    addresses_dropped: Family<ReasonLabels, Counter>,
    remote_provider_records: Gauge,
    provider_records_refused: Family<ReasonLabels, Counter>,
    metrics_announcements: Family<OutcomeLabels, Counter>,
}

/// Verdicts of `gossip_messages_total`, every one exposed from the start for each topic.
const GOSSIP_VERDICTS: [&str; 4] = ["accepted", "rejected", "ignored", "timeout"];

impl P2pMetrics {
    /// Registers the families into `registry` (the `zerostate` registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let p2p = registry.sub_registry_with_prefix("p2p");
        p2p.register(
            "gossip_messages",
            "Gossipsub messages received, by topic and verdict (accepted, rejected, ignored, timeout)",
            m.gossip_messages.clone(),
        );
        p2p.register(
            "malformed_messages",
            "Messages from peers refused by a decoder, by protocol (content, market)",
            m.malformed.clone(),
        );
        p2p.register(
            "inbound_refused",
            "Inbound requests refused by the router, by protocol and reason (busy: the service's inbox was full; no_reply: the service did not answer in time; rate_limited, rate_limited_address: the peer's or its address's token bucket was empty; peer_busy: the peer had too many requests waiting)",
            m.inbound_refused.clone(),
        );
        p2p.register(
            "connections_refused",
            "Incoming connections refused by our own limits, by reason (pending_per_ip)",
            m.connections_refused.clone(),
        );
        p2p.register(
            "peer_addresses_dropped",
            "Addresses peers announced that did not enter the routing table (filtered) or were pushed out by newer ones of the same peer (evicted)",
            m.addresses_dropped.clone(),
        );
        p2p.register(
            "remote_provider_records",
            "Provider records of other peers held by this node",
            m.remote_provider_records.clone(),
        );
        p2p.register(
            "provider_records_refused",
            "Provider records of other peers refused or dropped, by reason (bad_key, key_full, peer_quota)",
            m.provider_records_refused.clone(),
        );
        p2p.register(
            "bootstrap_dials",
            "Dials of configured bootstrap peers, by outcome (connected, failed)",
            m.bootstrap_dials.clone(),
        );
        p2p.register(
            "metrics_announcements",
            "Metrics endpoints peers announced through identify, by outcome (accepted: listed by /api/v1/sd; malformed: not a plain http(s) URL with an IP host; filtered: a host our address policy refuses; foreign_host: a host other than the address the peer is connected from)",
            m.metrics_announcements.clone(),
        );
        // Zero rather than absent: "no message was rejected" is what a dashboard should show.
        for &topic in TOPICS {
            for verdict in GOSSIP_VERDICTS {
                let _ = m
                    .gossip_messages
                    .get_or_create(&GossipLabels { topic, verdict });
            }
        }
        m
    }

    fn metrics_announcement(&self, outcome: &'static str) {
        let counter = self
            .metrics_announcements
            .get_or_create(&OutcomeLabels { outcome });
        counter.inc();
    }

    fn gossip(&self, topic: &'static str, verdict: &'static str) {
        let counter = self
            .gossip_messages
            .get_or_create(&GossipLabels { topic, verdict });
        counter.inc();
    }

    /// The counter of malformed messages of `protocol`, for decoders that run outside the
    /// event loop (request-response codecs).
    fn malformed_counter(&self, protocol: &'static str) -> Counter {
        let counter = self.malformed.get_or_create(&ProtocolLabels { protocol });
        counter.clone()
    }

    fn inbound_refused(&self, protocol: &'static str, reason: &'static str) {
        let counter = self
            .inbound_refused
            .get_or_create(&RefusedLabels { protocol, reason });
        counter.inc();
    }

    fn connections_refused_counter(&self, reason: &'static str) -> Counter {
        let counter = self
            .connections_refused
            .get_or_create(&ReasonLabels { reason });
        counter.clone()
    }

    fn address_dropped(&self, reason: &'static str) {
        let counter = self
            .addresses_dropped
            .get_or_create(&ReasonLabels { reason });
        counter.inc();
    }

    fn provider_record_refused(&self, reason: &'static str) {
        let counter = self
            .provider_records_refused
            .get_or_create(&ReasonLabels { reason });
        counter.inc();
    }

    fn bootstrap_dial(&self, outcome: &'static str) {
        let counter = self
            .bootstrap_dials
            .get_or_create(&OutcomeLabels { outcome });
        counter.inc();
    }
}

/// `addr` without a trailing `/p2p/<peer id>`.
pub(crate) fn without_peer_id(addr: &libp2p::Multiaddr) -> libp2p::Multiaddr {
    let mut addr = addr.clone();
    if matches!(
        addr.iter().last(),
        Some(libp2p::multiaddr::Protocol::P2p(_))
    ) {
        addr.pop();
    }
    addr
}

/// Builds the swarm and starts listening. Registers libp2p-metrics, the bandwidth metrics and
/// gossipsub's metrics into `registry` (the `zerostate` registry).
pub fn build_swarm(
    key: Keypair,
    config: &P2pConfig,
    registry: &mut Registry,
    metrics: &P2pMetrics,
) -> Result<(Swarm<Behaviour>, libp2p::metrics::Metrics), P2pError> {
    let behaviour = Behaviour::new(
        &key,
        config,
        registry,
        metrics.malformed_counter("content"),
        metrics.malformed_counter(FrameProtocol::Market.label()),
        metrics.malformed_counter(FrameProtocol::Channel.label()),
        metrics.connections_refused_counter("pending_per_ip"),
    )?;
    let libp2p_metrics = libp2p::metrics::Metrics::new(registry);
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic_config(|mut c| {
            c.max_concurrent_stream_limit = 128;
            c.max_stream_data = 1024 * 1024;
            c.max_connection_data = 4 * 1024 * 1024;
            c
        })
        .with_other_transport(|key| {
            let mut yamux = yamux::Config::default();
            yamux.set_max_num_streams(256);
            let tcp = FreshPortDials(tcp::tokio::Transport::new(tcp::Config::default()));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp.upgrade(upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux),
            )
        })
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|_| behaviour)
        .expect("infallible: the behaviour is already built")
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(config.idle_connection_timeout())
                .with_max_negotiating_inbound_streams(32)
        })
        .with_connection_timeout(config.handshake_timeout())
        .build();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen {
                addr: addr.clone(),
                reason: error_chain(&e),
            })?;
    }
    Ok((swarm, libp2p_metrics))
}

/// An error and its sources, joined: transport errors often say nothing themselves and
/// keep the reason (such as "Address already in use") in their source.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.dedup();
    parts.join(": ")
}
