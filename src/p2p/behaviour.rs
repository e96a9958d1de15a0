//! The composed network behaviour: limits and the block list first, then the protocols.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, MessageId, ValidationMode};
use libp2p::kad::{self, store::MemoryStore, store::MemoryStoreConfig};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    StreamProtocol, allow_block_list, connection_limits, identify, identity::Keypair, ping,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::announce;
use super::config::P2pConfig;
use super::content_protocol::{CONTENT_PROTOCOL, ContentCodec};
use super::frame_protocol::{FrameCodec, FrameProtocol};
use super::ip_limits::PendingPerIp;
use super::providers::ProviderLimits;

/// Protocol version announced through identify.
pub const PROTOCOL_VERSION: &str = "/zerostate/1.0.0";
/// Our Kademlia protocol name (a separate DHT from the public IPFS one).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/zerostate/kad/1.0.0");
/// Largest gossipsub message we send or accept.
pub const MAX_GOSSIP_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest Kademlia record value we store.
pub const MAX_KAD_RECORD_BYTES: usize = 4 * 1024;

/// Versioned gossipsub topics the node subscribes to. The subscription filter allows exactly
/// these, so peers cannot make us track arbitrary topics.
pub const TOPICS: &[&str] = &[AUCTIONS_TOPIC, RESULTS_TOPIC, DISPUTES_TOPIC];
/// Auction announcements (the market's).
pub const AUCTIONS_TOPIC: &str = "/zerostate/auctions/1";
/// Auction results: signed awards (the market's).
pub const RESULTS_TOPIC: &str = "/zerostate/auction-results/1";
/// Dispute evidence (the payment channels').
pub const DISPUTES_TOPIC: &str = "/zerostate/disputes/1";

/// Gossipsub peer scoring (off in rust-libp2p unless set). Invalid messages cost the most:
/// about three tolerated before a peer reaches the graylist threshold (-80), and the count
/// decays slowly (×0.9 a second), so a peer that keeps sending invalid messages even at a
/// low rate stays below the threshold and is graylisted. Mesh delivery
/// rates are not scored: our topics are quiet between auctions, and a quiet mesh must not
/// look like a failing one. Loopback peers are exempt from the IP colocation penalty (they
/// can only be local processes, as on a devnet).
fn peer_score_params() -> gossipsub::PeerScoreParams {
    let mut params = gossipsub::PeerScoreParams::default();
    params.ip_colocation_factor_whitelist.extend([
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]);
    let tolerated: f64 = 3.0;
    for topic in TOPICS {
        let topic_params = gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            invalid_message_deliveries_weight: -80.0 / (tolerated * tolerated),
            invalid_message_deliveries_decay: 0.9,
            ..Default::default()
        };
        params
            .topics
            .insert(IdentTopic::new(*topic).hash(), topic_params);
    }
    params
}

/// Every protocol of the node, in one behaviour. Connection limits come first so a refused
/// connection costs the other behaviours nothing.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Pending incoming connections per remote IP (first: one address cannot fill the
    /// pending slots of the next behaviour).
    pub ip_limits: PendingPerIp,
    /// Pending / established / per-peer connection caps.
    pub limits: connection_limits::Behaviour,
    /// Banned peers; driven by the API now and by reputation later.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Identify: protocol and agent version, listen addresses.
    pub identify: identify::Behaviour,
    /// Ping: liveness and round-trip time.
    pub ping: ping::Behaviour,
    /// Kademlia under our own protocol name.
    pub kad: kad::Behaviour<MemoryStore>,
    /// `/zerostate/content/2`: content by id, size-limited.
    pub content: request_response::Behaviour<ContentCodec>,
    /// `/zerostate/market/1`: bids, awards and task results, as opaque bounded frames.
    pub market: request_response::Behaviour<FrameCodec>,
    /// `/zerostate/channel/1`: payment channel states and closes, as opaque bounded frames.
    pub channel: request_response::Behaviour<FrameCodec>,
    /// Gossipsub with signed, validated messages.
    pub gossipsub:
        gossipsub::Behaviour<gossipsub::IdentityTransform, gossipsub::WhitelistSubscriptionFilter>,
}

/// Errors building the behaviour.
#[derive(Debug, thiserror::Error)]
pub enum BehaviourError {
    /// Gossipsub refused its configuration.
    #[error("gossipsub configuration: {0}")]
    Gossipsub(String),
}

impl Behaviour {
    /// Builds the behaviour for `key`, registering gossipsub's own metrics into `registry`.
    /// `malformed_content`, `malformed_market` and `malformed_channel` count requests the
    /// codecs refuse, `refused_pending` connections refused by the per-IP cap.
    pub fn new(
        key: &Keypair,
        config: &P2pConfig,
        registry: &mut Registry,
        malformed_content: Counter,
        malformed_market: Counter,
        malformed_channel: Counter,
        refused_pending: Counter,
    ) -> Result<Self, BehaviourError> {
        let peer_id = key.public().to_peer_id();
        let l = &config.limits;
        let mut limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(l.max_pending_incoming))
                .with_max_pending_outgoing(Some(l.max_pending_outgoing))
                .with_max_established_incoming(Some(l.max_established_incoming))
                .with_max_established_outgoing(Some(l.max_established_outgoing))
                .with_max_established(Some(l.max_established_total))
                .with_max_established_per_peer(Some(l.max_established_per_peer)),
        );
        for (bootstrap, _) in &config.bootstrap {
            limits.bypass_peer_id(bootstrap);
        }

        // No address cache in identify: the swarm then dials only addresses from our
        // filtered, capped routing table, never whatever a peer announced.
        let identify = identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.to_owned(), key.public())
                .with_agent_version(announce::agent_version(config.metrics_announce.as_ref()))
                .with_cache_size(0),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_query_timeout(Duration::from_secs(config.discovery.kad_query_timeout_secs))
            // Records and provider records are validated by the event loop before storing.
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            // Peers enter the routing table only after identify confirms they speak our DHT.
            .set_kbucket_inserts(kad::BucketInserts::Manual)
            .set_periodic_bootstrap_interval(Some(Duration::from_secs(
                config.discovery.random_walk_interval_secs,
            )));
        let store = MemoryStore::with_config(
            peer_id,
            MemoryStoreConfig {
                max_value_bytes: MAX_KAD_RECORD_BYTES,
                // One key per cached object of ours, plus the bounded records of others
                // (the event loop keeps those within ProviderLimits).
                max_provided_keys: config.max_provided_keys + ProviderLimits::default().total,
                ..Default::default()
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Without a confirmed external address kad would stay a client and answer no
        // queries; every node that others can dial is a server.
        kad.set_mode(Some(kad::Mode::Server));

        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(ValidationMode::Strict)
            .validate_messages()
            .message_id_fn(|m| {
                let mut h = blake3::Hasher::new();
                h.update(m.topic.as_str().as_bytes());
                h.update(&[0]);
                h.update(&m.data);
                MessageId::from(h.finalize().as_bytes().to_vec())
            })
            .max_transmit_size(MAX_GOSSIP_MESSAGE_BYTES)
            .duplicate_cache_time(Duration::from_secs(300))
            .max_publish_messages(100)
            .connection_handler_queue_len(1000)
            .build()
            .map_err(|e| BehaviourError::Gossipsub(e.to_string()))?;
        let filter = gossipsub::WhitelistSubscriptionFilter(
            TOPICS
                .iter()
                .map(|t| IdentTopic::new(*t).hash())
                .collect::<HashSet<_>>(),
        );
        let thresholds = gossipsub::PeerScoreThresholds::default();
        let mut metrics_config = gossipsub::MetricsConfig {
            max_topics: TOPICS.len(),
            max_never_subscribed_topics: 0,
            ..Default::default()
        };
        metrics_config.buckets_using_scoring_thresholds(&thresholds);
        let mut gossipsub = gossipsub::Behaviour::new_with_subscription_filter(
            MessageAuthenticity::Signed(key.clone()),
            gossip_config,
            filter,
        )
        .map_err(|e| BehaviourError::Gossipsub(e.to_owned()))?
        .with_metrics(
            registry.sub_registry_with_prefix("gossipsub"),
            metrics_config,
        );
        gossipsub
            .with_peer_score(peer_score_params(), thresholds)
            .map_err(BehaviourError::Gossipsub)?;

        let content = request_response::Behaviour::with_codec(
            ContentCodec::new(
                config.max_content_bytes,
                config.max_buffered_content_bytes,
                malformed_content,
            ),
            [(CONTENT_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(10))
                .with_max_concurrent_streams(32),
        );

        let market = frame_behaviour(FrameProtocol::Market, malformed_market);
        let channel = frame_behaviour(FrameProtocol::Channel, malformed_channel);

        Ok(Self {
            ip_limits: PendingPerIp::new(l.max_pending_incoming_per_ip, refused_pending),
            limits,
            blocked: Default::default(),
            identify,
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(Duration::from_millis(config.monitor.ping_interval_ms))
                    .with_timeout(Duration::from_millis(config.monitor.ping_timeout_ms)),
            ),
            kad,
            content,
            market,
            channel,
            gossipsub,
        })
    }
}

/// The request-response behaviour of a frame protocol.
fn frame_behaviour(
    protocol: FrameProtocol,
    malformed: Counter,
) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        protocol.codec(malformed),
        [(protocol.spec().protocol, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(10))
            .with_max_concurrent_streams(64),
    )
}
