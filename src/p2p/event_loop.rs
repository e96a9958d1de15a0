//! The one task that owns the [`Swarm`]: it reacts to swarm events and to commands from
//! [`P2pHandle`]s, redials bootstrap peers with backoff, and publishes [`NetStatus`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::kad::store::RecordStore;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, ping};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, TOPICS};
use super::content_protocol::{ContentRequest, ContentResponse, RequestFailure};
use super::handle::{COMMAND_QUEUE, Command, NetStatus, P2pHandle};
use super::{P2pMetrics, without_peer_id};
use crate::config::Config;
use crate::content::ContentStore;
use crate::monitor::PeerMonitor;

/// At most this many of a peer's announced listen addresses enter the routing table.
const MAX_ADDRS_PER_PEER: usize = 8;
/// How often bootstrap redials and peer liveness are checked.
const TICK: Duration = Duration::from_millis(250);
/// A provider search stops once it has found this many providers.
const ENOUGH_PROVIDERS: usize = 8;
/// Provider records are accepted only for keys of this length (a BLAKE3 digest).
const CONTENT_KEY_LEN: usize = crate::content_id::DIGEST_LEN;
/// Most addresses kept from one provider record.
const MAX_PROVIDER_ADDRS: usize = 8;
/// Most provider records of other peers kept; the least recently announced go first.
pub(crate) const MAX_REMOTE_PROVIDER_RECORDS: usize = 8192;

type ContentReply = oneshot::Sender<Result<ContentResponse, RequestFailure>>;

/// A connection to a bootstrap peer must last this long before its redial backoff resets,
/// so a peer that accepts and drops at once is not redialed at the initial rate forever.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// A configured bootstrap peer and its redial state.
#[derive(Debug)]
struct BootstrapPeer {
    id: PeerId,
    addr: Multiaddr,
    connected: bool,
    connected_at: Option<Instant>,
    dialing: bool,
    backoff: Duration,
    next_dial: Instant,
}

/// Owns the swarm. Create with [`EventLoop::new`], run with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<NetStatus>,
    libp2p_metrics: libp2p::metrics::Metrics,
    metrics: P2pMetrics,
    monitor: PeerMonitor,
    content: Arc<ContentStore>,
    provider_queries: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    /// Provider records stored for other peers, to bound them apart from our own.
    remote_providers: lru::LruCache<(kad::RecordKey, PeerId), ()>,
    content_requests: HashMap<OutboundRequestId, ContentReply>,
    bootstrap: Vec<BootstrapPeer>,
    backoff_initial: Duration,
    backoff_max: Duration,
    allow_private_addrs: bool,
}

impl EventLoop {
    /// Wraps `swarm` and returns the loop with a handle to it. The loop feeds `monitor` and
    /// serves content requests from `content`.
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        config: &Config,
        libp2p_metrics: libp2p::metrics::Metrics,
        metrics: P2pMetrics,
        monitor: PeerMonitor,
        content: Arc<ContentStore>,
    ) -> (Self, P2pHandle) {
        let local = *swarm.local_peer_id();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (status_tx, status_rx) = watch::channel(NetStatus::default());
        let initial = Duration::from_millis(config.discovery.bootstrap_backoff_initial_ms);
        let now = Instant::now();
        let mut bootstrap = Vec::new();
        for (id, addr) in config.bootstrap_peers() {
            if id == local {
                tracing::warn!(%addr, "ignoring bootstrap address that is this node itself");
                continue;
            }
            swarm
                .behaviour_mut()
                .kad
                .add_address(&id, without_peer_id(&addr));
            bootstrap.push(BootstrapPeer {
                id,
                addr,
                connected: false,
                connected_at: None,
                dialing: false,
                backoff: initial,
                next_dial: now,
            });
        }
        let event_loop = Self {
            swarm,
            commands: rx,
            status: status_tx,
            libp2p_metrics,
            metrics,
            monitor,
            content,
            provider_queries: HashMap::new(),
            remote_providers: lru::LruCache::unbounded(),
            content_requests: HashMap::new(),
            bootstrap,
            backoff_initial: initial,
            backoff_max: Duration::from_millis(config.discovery.bootstrap_backoff_max_ms),
            allow_private_addrs: config.allow_private_addrs,
        };
        (event_loop, P2pHandle::new(local, tx, status_rx))
    }

    /// Runs until `cancel` fires or every handle is dropped, then closes the swarm.
    pub async fn run(mut self, cancel: CancellationToken) {
        for topic in TOPICS {
            if let Err(e) = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(*topic))
            {
                tracing::error!(topic, error = %e, "cannot subscribe");
            }
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = tick.tick() => {
                    self.dial_due_bootstrap_peers();
                    let dead = self.monitor.tick(Instant::now());
                    self.disconnect_dead(dead);
                }
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in connected {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        tracing::info!("p2p event loop stopped");
    }

    fn publish_status(&self) {
        let listen_addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let connected_peers = self.monitor.connected();
        self.status.send_if_modified(|s| {
            let new = NetStatus {
                listen_addrs,
                connected_peers,
            };
            if *s == new {
                false
            } else {
                *s = new;
                true
            }
        });
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Peers(reply) => {
                let _ = reply.send(self.monitor.snapshot(Instant::now()));
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.monitor.connected_peers().collect());
            }
            Command::UpdateProvided {
                provide,
                withdraw,
                reply,
            } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                for id in withdraw {
                    kad.stop_providing(&kad::RecordKey::new(id.digest()));
                }
                for id in provide {
                    if let Err(e) = kad.start_providing(kad::RecordKey::new(id.digest())) {
                        tracing::warn!(%id, error = %e, "cannot announce provider record");
                    }
                }
                let _ = reply.send(());
            }
            Command::FindProviders(id, reply) => {
                let key = kad::RecordKey::new(id.digest());
                let query = self.swarm.behaviour_mut().kad.get_providers(key);
                self.provider_queries.insert(query, (HashSet::new(), reply));
            }
            Command::RequestContent { peer, id, reply } => {
                let request = self
                    .swarm
                    .behaviour_mut()
                    .content
                    .send_request(&peer, ContentRequest(id));
                self.content_requests.insert(request, reply);
            }
            Command::Dial(addr, reply) => {
                let result = match addr.iter().last() {
                    Some(Protocol::P2p(_)) => self.swarm.dial(addr).map_err(|e| e.to_string()),
                    _ => Err(format!("{addr} does not end in /p2p/<peer id>")),
                };
                let _ = reply.send(result);
            }
            Command::Block(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour_mut().blocked.block_peer(peer));
            }
            Command::Unblock(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour_mut().blocked.unblock_peer(peer));
            }
            Command::Publish { topic, data, reply } => {
                let result = if TOPICS.contains(&topic.as_str()) {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(IdentTopic::new(topic), data)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                } else {
                    Err(format!(
                        "unknown topic {topic}; known: {}",
                        TOPICS.join(", ")
                    ))
                };
                let _ = reply.send(result);
            }
        }
    }

    fn dial_due_bootstrap_peers(&mut self) {
        let now = Instant::now();
        for i in 0..self.bootstrap.len() {
            let b = &self.bootstrap[i];
            if b.connected || b.dialing || now < b.next_dial {
                continue;
            }
            let opts = DialOpts::peer_id(b.id)
                .addresses(vec![b.addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let id = b.id;
            match self.swarm.dial(opts) {
                Ok(()) => self.bootstrap[i].dialing = true,
                // Already connected or dialing through another path: check again later.
                Err(DialError::DialPeerConditionFalse(_)) => {
                    self.bootstrap[i].next_dial = now + self.backoff_initial;
                }
                Err(e) => {
                    tracing::warn!(peer = %id, error = %e, "cannot dial bootstrap peer");
                    self.bootstrap_failed(id);
                }
            }
        }
    }

    fn bootstrap_failed(&mut self, peer: PeerId) {
        let max = self.backoff_max;
        if let Some(b) = self.bootstrap.iter_mut().find(|b| b.id == peer) {
            b.dialing = false;
            b.next_dial = Instant::now() + b.backoff;
            tracing::info!(peer = %peer, retry_in = ?b.backoff, "bootstrap peer unreachable");
            b.backoff = (b.backoff * 2).min(max);
            self.metrics.bootstrap_dial("failed");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.libp2p_metrics.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                // Without AutoNAT nothing confirms an external address; a concrete listen
                // address we would accept from a peer is one, so provider records carry it.
                if dialable(&address, self.allow_private_addrs) {
                    self.swarm.add_external_address(address);
                }
                self.publish_status();
            }
            SwarmEvent::ExpiredListenAddr { .. } | SwarmEvent::ListenerClosed { .. } => {
                self.publish_status();
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                tracing::debug!(peer = %peer_id, %addr, "connection established");
                self.monitor.on_connected(peer_id, addr, Instant::now());
                self.on_bootstrap_connected(peer_id);
                self.publish_status();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                self.monitor.on_disconnected(
                    peer_id,
                    endpoint.get_remote_address(),
                    num_established,
                );
                if num_established == 0 {
                    let (initial, max) = (self.backoff_initial, self.backoff_max);
                    if let Some(b) = self.bootstrap.iter_mut().find(|b| b.id == peer_id) {
                        let stable = b
                            .connected_at
                            .is_some_and(|t| t.elapsed() >= STABLE_CONNECTION);
                        if stable {
                            b.backoff = initial;
                        }
                        tracing::info!(peer = %peer_id, retry_in = ?b.backoff, "lost bootstrap peer; will redial");
                        b.connected = false;
                        b.connected_at = None;
                        b.next_dial = Instant::now() + b.backoff;
                        if !stable {
                            b.backoff = (b.backoff * 2).min(max);
                        }
                    }
                }
                self.publish_status();
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "outgoing connection failed");
                if self.bootstrap.iter().any(|b| b.id == peer && b.dialing) {
                    self.bootstrap_failed(peer);
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_bootstrap_connected(&mut self, peer: PeerId) {
        let Some(b) = self.bootstrap.iter_mut().find(|b| b.id == peer) else {
            return;
        };
        if b.connected {
            return;
        }
        b.connected = true;
        b.connected_at = Some(Instant::now());
        b.dialing = false;
        self.metrics.bootstrap_dial("connected");
        tracing::info!(%peer, "connected to bootstrap peer");
        // Find the rest of the network through the bootstrap peer's routing table.
        if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
            tracing::warn!(error = %e, "kademlia bootstrap could not start");
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(event) => {
                self.libp2p_metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.on_identified(peer_id, info);
                }
            }
            BehaviourEvent::Ping(event) => {
                self.libp2p_metrics.record(&event);
                let ping::Event { peer, result, .. } = event;
                match result {
                    Ok(rtt) => self.monitor.on_ping_ok(peer, rtt, Instant::now()),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "ping failed");
                        let dead = self.monitor.on_ping_failure(peer, Instant::now());
                        self.disconnect_dead(dead);
                    }
                }
            }
            BehaviourEvent::Kad(event) => {
                self.libp2p_metrics.record(&event);
                self.on_kad_event(event);
            }
            BehaviourEvent::Gossipsub(event) => {
                self.libp2p_metrics.record(&event);
                if let gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                } = event
                {
                    let (acceptance, verdict) = validate_gossip(&message);
                    self.metrics.gossip(message.topic.as_str(), verdict);
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            acceptance,
                        );
                }
            }
            BehaviourEvent::Content(event) => self.on_content_event(event),
            BehaviourEvent::Limits(never) | BehaviourEvent::Blocked(never) => match never {},
        }
    }

    fn disconnect_dead(&mut self, dead: Vec<PeerId>) {
        for peer in dead {
            tracing::info!(%peer, "peer is dead; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_providers(&mut self, query: kad::QueryId, result: kad::GetProvidersResult, last: bool) {
        let Some((found, _)) = self.provider_queries.get_mut(&query) else {
            return;
        };
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
            found.extend(providers);
        }
        let enough = found.len() >= ENOUGH_PROVIDERS;
        if enough && let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&query) {
            q.finish();
        }
        if (last || enough)
            && let Some((found, reply)) = self.provider_queries.remove(&query)
        {
            let _ = reply.send(found.into_iter().collect());
        }
    }

    fn on_content_event(
        &mut self,
        event: request_response::Event<ContentRequest, ContentResponse>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request: ContentRequest(id),
                        channel,
                        ..
                    },
                ..
            } => {
                let response = self.content.serve(&id);
                if self
                    .swarm
                    .behaviour_mut()
                    .content
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!(%peer, %id, "peer went away before the content response");
                }
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.content_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.content_requests.remove(&request_id) {
                    let _ = reply.send(Err(RequestFailure::from_outbound(&error)));
                }
            }
            // Malformed requests never get here: the codec counts them.
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound content request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let speaks_kad = info.protocols.contains(&KAD_PROTOCOL);
        let protocols = info.protocols.iter().map(ToString::to_string).collect();
        self.monitor
            .on_identified(peer, protocols, info.agent_version, Instant::now());
        if !speaks_kad {
            return;
        }
        // Only peers that confirmed our DHT protocol enter the routing table, with a capped
        // number of plausible addresses.
        let allow_private = self.allow_private_addrs;
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .filter(|a| dialable(a, allow_private))
            .take(MAX_ADDRS_PER_PEER)
            .collect();
        for addr in addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, .. },
            } => {
                // No record type is defined yet, so nothing is stored.
                tracing::debug!(%source, "dropping kademlia record: no record types are accepted");
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(mut record),
                    },
            } => {
                // kad already checked that the record names the peer that sent it.
                if record.key.as_ref().len() != CONTENT_KEY_LEN {
                    tracing::debug!(provider = %record.provider, "dropping provider record with a non-content key");
                    return;
                }
                let allow_private = self.allow_private_addrs;
                record.addresses.retain(|a| dialable(a, allow_private));
                record.addresses.truncate(MAX_PROVIDER_ADDRS);
                let slot = (record.key.clone(), record.provider);
                let store = self.swarm.behaviour_mut().kad.store_mut();
                if let Err(e) = store.add_provider(record) {
                    tracing::debug!(error = %e, "provider record not stored");
                    return;
                }
                if self.remote_providers.get(&slot).is_none() {
                    self.remote_providers.push(slot, ());
                    if self.remote_providers.len() > MAX_REMOTE_PROVIDER_RECORDS
                        && let Some(((key, provider), ())) = self.remote_providers.pop_lru()
                    {
                        store.remove_provider(&key, &provider);
                    }
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            } => self.on_providers(id, result, step.last),
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::Bootstrap(Err(e)),
                ..
            } => tracing::debug!(error = ?e, "kademlia bootstrap step failed"),
            kad::Event::RoutingUpdated { peer, .. } => {
                tracing::debug!(%peer, "kademlia routing table updated");
            }
            _ => {}
        }
    }
}

/// Whether an address a peer announced is one we would dial.
fn dialable(addr: &Multiaddr, allow_private: bool) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            !ip.is_unspecified()
                && !ip.is_broadcast()
                && !ip.is_multicast()
                && (allow_private || is_global(IpAddr::V4(ip)))
        }
        Some(Protocol::Ip6(ip)) => {
            !ip.is_unspecified()
                && !ip.is_multicast()
                && (allow_private || is_global(IpAddr::V6(ip)))
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => !(ip.is_private() || ip.is_loopback() || ip.is_link_local()),
        IpAddr::V6(ip) => {
            let seg0 = ip.segments()[0];
            !(ip.is_loopback() || (seg0 & 0xfe00) == 0xfc00 || (seg0 & 0xffc0) == 0xfe80)
        }
    }
}

/// Decides whether a gossip message is forwarded. No topic has a message format yet (the
/// market defines them), so every message is ignored: not forwarded, not penalised. (The
/// subscription filter already keeps messages of other topics out.)
fn validate_gossip(_message: &gossipsub::Message) -> (MessageAcceptance, &'static str) {
    (MessageAcceptance::Ignore, "ignored")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_need_permission() {
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let private: Multiaddr = "/ip4/10.1.2.3/tcp/1".parse().unwrap();
        let public: Multiaddr = "/ip4/8.8.8.8/tcp/1".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/1".parse().unwrap();
        assert!(!dialable(&lo, false) && dialable(&lo, true));
        assert!(!dialable(&private, false) && dialable(&private, true));
        assert!(dialable(&public, false));
        assert!(!dialable(&any, true));
    }
}
