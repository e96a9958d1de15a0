//! The swarm: behaviour composition, the event loop that owns it, and the handle to it.

mod behaviour;
mod content_protocol;
mod event_loop;
mod handle;

use std::time::Duration;

use libp2p::{Swarm, SwarmBuilder, identity::Keypair, noise, tcp, yamux};
use prometheus_client::encoding::EncodeLabelSet;

use crate::metrics::OutcomeLabels;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;

pub use behaviour::{
    Behaviour, KAD_PROTOCOL, MAX_GOSSIP_MESSAGE_BYTES, PROTOCOL_VERSION, TOPICS, agent_version,
};
pub use content_protocol::{
    CONTENT_PROTOCOL, ContentCodec, ContentRequest, ContentResponse, MAX_REQUEST_BYTES,
    RequestFailure,
};
pub use event_loop::EventLoop;
pub use handle::{Command, HandleError, NetStatus, P2pHandle};

use crate::config::Config;

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
    topic: String,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

/// Our own swarm-level metrics (libp2p-metrics covers the protocol internals).
#[derive(Clone, Debug, Default)]
pub struct P2pMetrics {
    gossip_messages: Family<GossipLabels, Counter>,
    bootstrap_dials: Family<OutcomeLabels, Counter>,
    malformed: Family<ProtocolLabels, Counter>,
}

impl P2pMetrics {
    /// Registers the families into `registry` (the `zerostate` registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let p2p = registry.sub_registry_with_prefix("p2p");
        p2p.register(
            "gossip_messages",
            "Gossipsub messages received, by topic and validation verdict (ignored until the market defines message formats)",
            m.gossip_messages.clone(),
        );
        p2p.register(
            "malformed_messages",
            "Messages from peers refused by a decoder, by protocol (content)",
            m.malformed.clone(),
        );
        p2p.register(
            "bootstrap_dials",
            "Dials of configured bootstrap peers, by outcome (connected, failed)",
            m.bootstrap_dials.clone(),
        );
        m
    }

    fn gossip(&self, topic: &str, verdict: &'static str) {
        let counter = self.gossip_messages.get_or_create(&GossipLabels {
            topic: topic.to_owned(),
            verdict,
        });
        counter.inc();
    }

    /// The counter of malformed messages of `protocol`, for decoders that run outside the
    /// event loop (request-response codecs).
    fn malformed_counter(&self, protocol: &'static str) -> Counter {
        let counter = self.malformed.get_or_create(&ProtocolLabels { protocol });
        counter.clone()
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
    config: &Config,
    registry: &mut Registry,
    metrics: &P2pMetrics,
) -> Result<(Swarm<Behaviour>, libp2p::metrics::Metrics), P2pError> {
    let behaviour = Behaviour::new(&key, config, registry, metrics.malformed_counter("content"))?;
    let libp2p_metrics = libp2p::metrics::Metrics::new(registry);
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, || {
            let mut c = yamux::Config::default();
            c.set_max_num_streams(256);
            c
        })
        .map_err(|e| P2pError::Transport(e.to_string()))?
        .with_quic_config(|mut c| {
            c.max_concurrent_stream_limit = 128;
            c.max_stream_data = 1024 * 1024;
            c.max_connection_data = 4 * 1024 * 1024;
            c
        })
        .with_bandwidth_metrics(registry)
        .with_behaviour(|_| behaviour)
        .expect("infallible: the behaviour is already built")
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(config.idle_connection_timeout())
                .with_max_negotiating_inbound_streams(32)
        })
        .with_connection_timeout(Duration::from_secs(10))
        .build();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok((swarm, libp2p_metrics))
}
