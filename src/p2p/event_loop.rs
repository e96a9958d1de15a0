//! The one task that owns the [`Swarm`]: it reacts to swarm events and to commands from
//! [`P2pHandle`]s, redials bootstrap peers with backoff, and publishes [`NetStatus`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, ping};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, TOPICS};
use super::handle::{COMMAND_QUEUE, Command, NetStatus, P2pHandle, PeerInfo};
use super::{P2pMetrics, without_peer_id};
use crate::config::Config;

/// At most this many protocols of a peer are kept for the API.
const MAX_PROTOCOLS_PER_PEER: usize = 32;
/// At most this many of a peer's announced listen addresses enter the routing table.
const MAX_ADDRS_PER_PEER: usize = 8;
/// How often bootstrap peers due for a redial are checked.
const BOOTSTRAP_TICK: Duration = Duration::from_millis(250);

/// A configured bootstrap peer and its redial state.
#[derive(Debug)]
struct BootstrapPeer {
    id: PeerId,
    addr: Multiaddr,
    connected: bool,
    dialing: bool,
    backoff: Duration,
    next_dial: Instant,
}

/// What the event loop knows about a connected peer.
#[derive(Debug)]
struct PeerState {
    since: Instant,
    addresses: Vec<Multiaddr>,
    protocols: Vec<String>,
    agent_version: Option<String>,
    last_rtt: Option<Duration>,
}

/// Owns the swarm. Create with [`EventLoop::new`], run with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<NetStatus>,
    libp2p_metrics: libp2p::metrics::Metrics,
    metrics: P2pMetrics,
    peers: HashMap<PeerId, PeerState>,
    bootstrap: Vec<BootstrapPeer>,
    backoff_initial: Duration,
    backoff_max: Duration,
    allow_private_addrs: bool,
}

impl EventLoop {
    /// Wraps `swarm` and returns the loop with a handle to it.
    pub fn new(
        mut swarm: Swarm<Behaviour>,
        config: &Config,
        libp2p_metrics: libp2p::metrics::Metrics,
        metrics: P2pMetrics,
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
            peers: HashMap::new(),
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
        let mut tick = tokio::time::interval(BOOTSTRAP_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => self.dial_due_bootstrap_peers(),
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
        let connected_peers = self.peers.len();
        self.metrics
            .connection_pool_size
            .set(connected_peers as i64);
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
                let now = Instant::now();
                let mut list: Vec<PeerInfo> = self
                    .peers
                    .iter()
                    .map(|(id, p)| PeerInfo {
                        peer_id: id.to_string(),
                        addresses: p.addresses.iter().map(ToString::to_string).collect(),
                        protocols: p.protocols.clone(),
                        agent_version: p.agent_version.clone(),
                        last_rtt_ms: p.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                        connected_secs: now.duration_since(p.since).as_secs_f64(),
                    })
                    .collect();
                list.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(list);
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
                let entry = self.peers.entry(peer_id).or_insert_with(|| PeerState {
                    since: Instant::now(),
                    addresses: Vec::new(),
                    protocols: Vec::new(),
                    agent_version: None,
                    last_rtt: None,
                });
                if !entry.addresses.contains(&addr) {
                    entry.addresses.push(addr);
                }
                self.on_bootstrap_connected(peer_id);
                self.publish_status();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                    let initial = self.backoff_initial;
                    if let Some(b) = self.bootstrap.iter_mut().find(|b| b.id == peer_id) {
                        tracing::info!(peer = %peer_id, "lost bootstrap peer; will redial");
                        b.connected = false;
                        b.next_dial = Instant::now() + initial;
                    }
                } else if let Some(p) = self.peers.get_mut(&peer_id) {
                    let addr = endpoint.get_remote_address();
                    p.addresses.retain(|a| a != addr);
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
        let initial = self.backoff_initial;
        let Some(b) = self.bootstrap.iter_mut().find(|b| b.id == peer) else {
            return;
        };
        if b.connected {
            return;
        }
        b.connected = true;
        b.dialing = false;
        b.backoff = initial;
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
                if let ping::Event {
                    peer,
                    result: Ok(rtt),
                    ..
                } = event
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    p.last_rtt = Some(rtt);
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
            BehaviourEvent::Limits(never) | BehaviourEvent::Blocked(never) => match never {},
        }
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let speaks_kad = info.protocols.contains(&KAD_PROTOCOL);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.protocols = info
                .protocols
                .iter()
                .take(MAX_PROTOCOLS_PER_PEER)
                .map(ToString::to_string)
                .collect();
            p.agent_version = Some(info.agent_version.chars().take(128).collect());
        }
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
/// market defines them), so every message is ignored: not forwarded, not penalised.
fn validate_gossip(message: &gossipsub::Message) -> (MessageAcceptance, &'static str) {
    if !TOPICS.contains(&message.topic.as_str()) {
        return (MessageAcceptance::Reject, "rejected");
    }
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
