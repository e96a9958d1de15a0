//! Peer monitor: liveness and round-trip time of the peers this node is connected to.
//!
//! A plain, synchronous table fed by the swarm's event loop (connections, identify, pings)
//! and re-evaluated on a timer. Each peer is `alive`, `suspect` or `dead`:
//!
//! - `dead` after `dead_after_failures` consecutive ping failures, or when it has not been
//!   seen for `dead_after_ms`;
//! - else `suspect` after `suspect_after_failures` failures or `suspect_after_ms` unseen;
//! - else `alive`. A successful ping or a new connection makes it `alive` again.
//!
//! A connected peer that turns dead is returned by [`PeerMonitor::tick`] so the event loop can
//! disconnect it. Records of disconnected peers expire `expire_after_ms` after the peer was
//! last seen, and the table never holds more than `max_peers` records (the least recently seen
//! disconnected peer goes first). Per-peer detail is served by `/api/v1/peers`; the metrics
//! carry no peer label.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

use super::addrs::ip_of;
use super::announce::MetricsUrl;
use super::config::MonitorConfig;

/// Weight of the newest RTT sample in the moving average.
const EWMA_ALPHA: f64 = 0.2;
/// At most this many protocols and addresses are kept per peer.
const MAX_LIST: usize = 32;

/// Liveness of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Answering pings.
    Alive,
    /// Missed pings or unseen for a while.
    Suspect,
    /// Gone: disconnected (if it was still connected) and soon forgotten.
    Dead,
}

impl PeerState {
    const ALL: [PeerState; 3] = [PeerState::Alive, PeerState::Suspect, PeerState::Dead];

    fn label(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Dead => "dead",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The monitor's metric families (no peer labels).
#[derive(Clone, Debug)]
pub struct MonitorMetrics {
    active: Gauge,
    pool: Gauge,
    rtt: Histogram,
    by_state: Family<StateLabels, Gauge>,
}

impl MonitorMetrics {
    /// Registers the families into the `zerostate` registry.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            active: Gauge::default(),
            pool: Gauge::default(),
            rtt: Histogram::new(crate::metrics::DURATION_BUCKETS),
            by_state: Family::default(),
        };
        let p2p = registry.sub_registry_with_prefix("p2p");
        p2p.register(
            "active_peer_monitors",
            "Peers in the monitor's table (connected or recently disconnected)",
            m.active.clone(),
        );
        p2p.register(
            "connection_pool_size",
            "Peers with at least one established connection",
            m.pool.clone(),
        );
        p2p.register_with_unit(
            "peer_rtt",
            "Ping round-trip time to connected peers",
            Unit::Seconds,
            m.rtt.clone(),
        );
        p2p.register(
            "peers",
            "Monitored peers by liveness state (alive, suspect, dead)",
            m.by_state.clone(),
        );
        for state in PeerState::ALL {
            let _ = m.by_state.get_or_create(&StateLabels {
                state: state.label(),
            });
        }
        m
    }
}

/// What the monitor knows about one peer.
#[derive(Debug, Clone)]
struct PeerRecord {
    connected_since: Option<Instant>,
    connections: Vec<Multiaddr>,
    last_seen: Instant,
    rtt_last: Option<Duration>,
    rtt_ewma: Option<f64>,
    consecutive_failures: u32,
    state: PeerState,
    protocols: Vec<String>,
    agent_version: Option<String>,
    metrics_url: Option<MetricsUrl>,
}

/// One row of `GET /api/v1/peers`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerInfo {
    /// The peer's id.
    pub peer_id: String,
    /// Liveness state.
    pub state: PeerState,
    /// Whether at least one connection is open.
    pub connected: bool,
    /// Seconds since the current connection was established.
    pub connected_secs: Option<f64>,
    /// Seconds since the peer was last seen (connected, identified or answered a ping).
    pub last_seen_secs_ago: f64,
    /// Remote addresses of the open connections.
    pub addresses: Vec<String>,
    /// Protocols it announced through identify (capped).
    pub protocols: Vec<String>,
    /// Agent version it announced.
    pub agent_version: Option<String>,
    /// The metrics endpoint it announced, validated (see [`crate::p2p::announce`]).
    pub metrics_url: Option<MetricsUrl>,
    /// Last ping round-trip time, milliseconds.
    pub rtt_last_ms: Option<f64>,
    /// Moving average of the ping round-trip time, milliseconds.
    pub rtt_ewma_ms: Option<f64>,
    /// Ping failures since the last success.
    pub consecutive_failures: u32,
    /// The peer's gossipsub score as this node computes it (below -80: graylisted).
    pub gossip_score: Option<f64>,
    /// Addresses of the peer in this node's Kademlia routing table (absent: not in it).
    pub dht_addresses: Option<usize>,
}

/// The table of monitored peers.
#[derive(Debug)]
pub struct PeerMonitor {
    config: MonitorConfig,
    peers: HashMap<PeerId, PeerRecord>,
    metrics: MonitorMetrics,
}

impl PeerMonitor {
    /// An empty monitor with the thresholds of `config`.
    pub fn new(config: MonitorConfig, metrics: MonitorMetrics) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            metrics,
        }
    }

    fn record(&mut self, peer: PeerId, now: Instant) -> &mut PeerRecord {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.config.max_peers {
            self.evict_one();
        }
        self.peers.entry(peer).or_insert_with(|| PeerRecord {
            connected_since: None,
            connections: Vec::new(),
            last_seen: now,
            rtt_last: None,
            rtt_ewma: None,
            consecutive_failures: 0,
            state: PeerState::Alive,
            protocols: Vec::new(),
            agent_version: None,
            metrics_url: None,
        })
    }

    /// Drops the least recently seen disconnected peer, if any (connected peers are bounded
    /// by the connection limits).
    fn evict_one(&mut self) {
        let oldest = self
            .peers
            .iter()
            .filter(|(_, r)| r.connected_since.is_none())
            .min_by_key(|(_, r)| r.last_seen)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.peers.remove(&id);
        }
    }

    /// A connection to `peer` via `addr` was established.
    pub fn on_connected(&mut self, peer: PeerId, addr: Multiaddr, now: Instant) {
        let r = self.record(peer, now);
        r.connected_since.get_or_insert(now);
        if !r.connections.contains(&addr) && r.connections.len() < MAX_LIST {
            r.connections.push(addr);
        }
        r.last_seen = now;
        r.consecutive_failures = 0;
        r.state = PeerState::Alive;
        self.publish();
    }

    /// Whether one of the open connections with `peer` is with the IP address `ip`.
    pub fn connected_from(&self, peer: &PeerId, ip: IpAddr) -> bool {
        self.peers.get(peer).is_some_and(|r| {
            r.connections
                .iter()
                .any(|a| ip_of(a) == Some(ip.to_canonical()))
        })
    }

    /// A connection closed; `remaining` is the number still open to that peer.
    pub fn on_disconnected(&mut self, peer: PeerId, addr: &Multiaddr, remaining: u32) {
        if let Some(r) = self.peers.get_mut(&peer) {
            r.connections.retain(|a| a != addr);
            if remaining == 0 {
                r.connections.clear();
                r.connected_since = None;
            }
        }
        self.publish();
    }

    /// Identify told us the peer's protocols, agent and the metrics endpoint it announced
    /// (already validated; it is forgotten with the peer).
    pub fn on_identified(
        &mut self,
        peer: PeerId,
        protocols: Vec<String>,
        agent: String,
        metrics_url: Option<MetricsUrl>,
        now: Instant,
    ) {
        if let Some(r) = self.peers.get_mut(&peer) {
            r.protocols = protocols.into_iter().take(MAX_LIST).collect();
            r.agent_version = Some(agent.chars().take(128).collect());
            r.metrics_url = metrics_url;
            r.last_seen = now;
        }
    }

    /// A ping to `peer` succeeded with `rtt`.
    pub fn on_ping_ok(&mut self, peer: PeerId, rtt: Duration, now: Instant) {
        let Some(r) = self.peers.get_mut(&peer) else {
            return;
        };
        r.last_seen = now;
        r.rtt_last = Some(rtt);
        let sample = rtt.as_secs_f64();
        r.rtt_ewma = Some(match r.rtt_ewma {
            Some(avg) => EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * avg,
            None => sample,
        });
        r.consecutive_failures = 0;
        r.state = PeerState::Alive;
        self.metrics.rtt.observe(sample);
        self.publish();
    }

    /// A ping to `peer` failed or timed out. Returns the peers to disconnect, as
    /// [`PeerMonitor::tick`] does.
    pub fn on_ping_failure(&mut self, peer: PeerId, now: Instant) -> Vec<PeerId> {
        if let Some(r) = self.peers.get_mut(&peer) {
            r.consecutive_failures = r.consecutive_failures.saturating_add(1);
        }
        self.tick(now)
    }

    fn state_of(&self, r: &PeerRecord, now: Instant) -> PeerState {
        let c = &self.config;
        let silent = now.saturating_duration_since(r.last_seen);
        if r.consecutive_failures >= c.dead_after_failures
            || silent >= Duration::from_millis(c.dead_after_ms)
        {
            PeerState::Dead
        } else if r.consecutive_failures >= c.suspect_after_failures
            || silent >= Duration::from_millis(c.suspect_after_ms)
        {
            PeerState::Suspect
        } else {
            PeerState::Alive
        }
    }

    /// Re-evaluates every peer at `now`: updates states, expires disconnected peers, and
    /// returns connected peers that just turned dead (to be disconnected).
    pub fn tick(&mut self, now: Instant) -> Vec<PeerId> {
        let expire = Duration::from_millis(self.config.expire_after_ms);
        let mut newly_dead = Vec::new();
        let states: Vec<(PeerId, PeerState)> = self
            .peers
            .iter()
            .map(|(id, r)| (*id, self.state_of(r, now)))
            .collect();
        for (id, state) in states {
            let r = self.peers.get_mut(&id).expect("listed above");
            if state != r.state {
                tracing::debug!(peer = %id, from = r.state.label(), to = state.label(), "peer state changed");
                if state == PeerState::Dead && r.connected_since.is_some() {
                    newly_dead.push(id);
                }
                r.state = state;
            }
        }
        self.peers.retain(|_, r| {
            r.connected_since.is_some() || now.saturating_duration_since(r.last_seen) < expire
        });
        self.publish();
        newly_dead
    }

    /// Number of peers with an open connection.
    pub fn connected(&self) -> usize {
        self.peers
            .values()
            .filter(|r| r.connected_since.is_some())
            .count()
    }

    /// Number of records in the table.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The state of `peer`, if monitored.
    pub fn state(&self, peer: &PeerId) -> Option<PeerState> {
        self.peers.get(peer).map(|r| r.state)
    }

    /// Connected peers (for content requests and the like).
    pub fn connected_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .filter(|(_, r)| r.connected_since.is_some())
            .map(|(id, _)| *id)
    }

    /// Every record, sorted by peer id, as the API shows it.
    pub fn snapshot(&self, now: Instant) -> Vec<PeerInfo> {
        self.snapshot_with(now, |_| (None, None))
    }

    /// [`PeerMonitor::snapshot`], with what the swarm knows of each peer besides liveness:
    /// `extra` gives its gossipsub score and its number of routing-table addresses.
    pub fn snapshot_with(
        &self,
        now: Instant,
        extra: impl Fn(&PeerId) -> (Option<f64>, Option<usize>),
    ) -> Vec<PeerInfo> {
        let mut list: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(id, r)| {
                let (gossip_score, dht_addresses) = extra(id);
                PeerInfo {
                    peer_id: id.to_string(),
                    state: r.state,
                    connected: r.connected_since.is_some(),
                    connected_secs: r
                        .connected_since
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    last_seen_secs_ago: now.saturating_duration_since(r.last_seen).as_secs_f64(),
                    addresses: r.connections.iter().map(ToString::to_string).collect(),
                    protocols: r.protocols.clone(),
                    agent_version: r.agent_version.clone(),
                    metrics_url: r.metrics_url.clone(),
                    rtt_last_ms: r.rtt_last.map(|d| d.as_secs_f64() * 1000.0),
                    rtt_ewma_ms: r.rtt_ewma.map(|s| s * 1000.0),
                    consecutive_failures: r.consecutive_failures,
                    gossip_score,
                    dht_addresses,
                }
            })
            .collect();
        list.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        list
    }

    fn publish(&self) {
        self.metrics.active.set(self.peers.len() as i64);
        self.metrics.pool.set(self.connected() as i64);
        for state in PeerState::ALL {
            let n = self.peers.values().filter(|r| r.state == state).count();
            let gauge = self.metrics.by_state.get_or_create(&StateLabels {
                state: state.label(),
            });
            gauge.set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MonitorConfig {
        MonitorConfig {
            suspect_after_ms: 1_000,
            dead_after_ms: 2_000,
            expire_after_ms: 3_000,
            suspect_after_failures: 1,
            dead_after_failures: 3,
            max_peers: 4,
            ..MonitorConfig::default()
        }
    }

    fn monitor() -> (PeerMonitor, Registry) {
        let mut registry = Registry::default();
        let metrics = MonitorMetrics::register(&mut registry);
        (PeerMonitor::new(config(), metrics), registry)
    }

    fn addr() -> Multiaddr {
        "/ip4/127.0.0.1/tcp/1".parse().unwrap()
    }

    fn encoded(registry: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
        s
    }

    #[test]
    fn a_silent_disconnected_peer_goes_suspect_dead_then_is_dropped() {
        let (mut m, registry) = monitor();
        let p = PeerId::random();
        let t0 = Instant::now();
        m.on_connected(p, addr(), t0);
        m.on_disconnected(p, &addr(), 0);
        assert!(m.tick(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(m.state(&p), Some(PeerState::Alive));
        m.tick(t0 + Duration::from_millis(1_000));
        assert_eq!(m.state(&p), Some(PeerState::Suspect));
        assert!(encoded(&registry).contains("p2p_peers{state=\"suspect\"} 1"));
        let dead = m.tick(t0 + Duration::from_millis(2_000));
        assert!(dead.is_empty(), "not connected, so nothing to disconnect");
        assert_eq!(m.state(&p), Some(PeerState::Dead));
        assert!(encoded(&registry).contains("p2p_peers{state=\"dead\"} 1"));
        m.tick(t0 + Duration::from_millis(3_000));
        assert_eq!(m.state(&p), None);
        let text = encoded(&registry);
        assert!(text.contains("p2p_active_peer_monitors 0"), "{text}");
    }

    #[test]
    fn ping_failures_make_a_connected_peer_suspect_then_dead() {
        let (mut m, registry) = monitor();
        let p = PeerId::random();
        let t0 = Instant::now();
        m.on_connected(p, addr(), t0);
        m.on_ping_ok(p, Duration::from_millis(3), t0);
        assert!(encoded(&registry).contains("p2p_peer_rtt_seconds_count 1"));
        assert!(m.on_ping_failure(p, t0).is_empty());
        assert_eq!(m.state(&p), Some(PeerState::Suspect));
        assert!(m.on_ping_failure(p, t0).is_empty());
        // The third failure kills it; still connected, so it is reported once for disconnection.
        assert_eq!(m.on_ping_failure(p, t0), vec![p]);
        assert_eq!(m.state(&p), Some(PeerState::Dead));
        assert!(m.tick(t0).is_empty());
        m.on_ping_ok(p, Duration::from_millis(5), t0);
        assert_eq!(m.state(&p), Some(PeerState::Alive));
    }

    #[test]
    fn newly_dead_connected_peers_are_returned_for_disconnection() {
        let (mut m, _r) = monitor();
        let p = PeerId::random();
        let t0 = Instant::now();
        m.on_connected(p, addr(), t0);
        assert_eq!(m.tick(t0 + Duration::from_millis(2_500)), vec![p]);
        // Connected peers do not expire.
        m.tick(t0 + Duration::from_millis(10_000));
        assert_eq!(m.state(&p), Some(PeerState::Dead));
    }

    #[test]
    fn rtt_ewma_moves_toward_new_samples() {
        let (mut m, _r) = monitor();
        let p = PeerId::random();
        let t0 = Instant::now();
        m.on_connected(p, addr(), t0);
        m.on_ping_ok(p, Duration::from_millis(10), t0);
        m.on_ping_ok(p, Duration::from_millis(20), t0);
        let info = &m.snapshot(t0)[0];
        assert_eq!(info.rtt_last_ms, Some(20.0));
        let ewma = info.rtt_ewma_ms.unwrap();
        assert!((ewma - 12.0).abs() < 1e-9, "{ewma}");
    }

    #[test]
    fn table_is_bounded_by_evicting_disconnected_peers() {
        let (mut m, _r) = monitor();
        let t0 = Instant::now();
        let mut first = None;
        for i in 0..10u64 {
            let p = PeerId::random();
            first.get_or_insert(p);
            m.on_connected(p, addr(), t0 + Duration::from_millis(i));
            m.on_disconnected(p, &addr(), 0);
            assert!(m.len() <= 4);
        }
        assert_eq!(m.state(&first.unwrap()), None, "oldest was evicted");
        assert_eq!(m.connected(), 0);
    }
}
