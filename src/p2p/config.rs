//! The swarm's configuration: the `[limits]`, `[discovery]` and `[monitor]` sections of the
//! node config, and [`P2pConfig`], everything the swarm needs (built by `node.rs` from the
//! aggregate config, so `p2p` never sees the whole `Config`).

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::config_value::{ConfigValueError, DAY_MS, DAY_SECS, MANY, in_range};

/// Largest `limits.max_inflight_requests_per_peer`: a service's inbox holds 256 requests.
pub const MAX_INFLIGHT_PER_PEER: u32 = 128;

/// Connection limits (see `libp2p::connection_limits`; bootstrap peers bypass them) and the
/// rate limits of the market and channel protocols (see [`super::rate_limit`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Incoming connections still in the handshake.
    pub max_pending_incoming: u32,
    /// Incoming connections still in the handshake from one IP address. Below
    /// `max_pending_incoming`, so one address cannot take every slot.
    pub max_pending_incoming_per_ip: u32,
    /// Outgoing connections still in the handshake.
    pub max_pending_outgoing: u32,
    /// Established incoming connections.
    pub max_established_incoming: u32,
    /// Established outgoing connections.
    pub max_established_outgoing: u32,
    /// Established connections in total.
    pub max_established_total: u32,
    /// Established connections to one peer (TCP and QUIC may both be up).
    pub max_established_per_peer: u32,
    /// Seconds a connection with no active protocol stays open.
    pub idle_connection_timeout_secs: u64,
    /// A connection must finish its transport handshake (noise, yamux) within this many
    /// milliseconds, in either direction.
    pub handshake_timeout_ms: u64,
    /// Market and channel requests one identity may send per second (its token bucket's
    /// rate). Every request costs a token, refused or not; over it, requests are dropped
    /// unanswered before they are decoded.
    pub peer_requests_per_sec: u32,
    /// Most market and channel requests one identity may send at once (its bucket's size).
    pub peer_request_burst: u32,
    /// Market and channel requests all identities connected from one IP address may send
    /// per second together (loopback is not limited per address).
    pub address_requests_per_sec: u32,
    /// Most market and channel requests from one IP address at once.
    pub address_request_burst: u32,
    /// Most market and channel requests of one peer waiting on the services at once (their
    /// inboxes hold 256), so one peer cannot fill an inbox for the others.
    pub max_inflight_requests_per_peer: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_pending_incoming: 32,
            max_pending_incoming_per_ip: 8,
            max_pending_outgoing: 32,
            max_established_incoming: 150,
            max_established_outgoing: 50,
            max_established_total: 200,
            max_established_per_peer: 2,
            idle_connection_timeout_secs: 30,
            handshake_timeout_ms: 5_000,
            peer_requests_per_sec: 50,
            peer_request_burst: 200,
            address_requests_per_sec: 250,
            address_request_burst: 1_000,
            max_inflight_requests_per_peer: 32,
        }
    }
}

impl LimitsConfig {
    /// Checks the ranges, and that one address cannot take every pending slot.
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        for (key, value) in [
            ("limits.max_pending_incoming", self.max_pending_incoming),
            (
                "limits.max_pending_incoming_per_ip",
                self.max_pending_incoming_per_ip,
            ),
            ("limits.max_pending_outgoing", self.max_pending_outgoing),
            (
                "limits.max_established_incoming",
                self.max_established_incoming,
            ),
            (
                "limits.max_established_outgoing",
                self.max_established_outgoing,
            ),
            ("limits.max_established_total", self.max_established_total),
            (
                "limits.max_established_per_peer",
                self.max_established_per_peer,
            ),
            ("limits.peer_requests_per_sec", self.peer_requests_per_sec),
            ("limits.peer_request_burst", self.peer_request_burst),
            (
                "limits.address_requests_per_sec",
                self.address_requests_per_sec,
            ),
            ("limits.address_request_burst", self.address_request_burst),
        ] {
            in_range(key, value, 1..=MANY)?;
        }
        let idle = self.idle_connection_timeout_secs;
        in_range("limits.idle_connection_timeout_secs", idle, 1..=DAY_SECS)?;
        in_range(
            "limits.handshake_timeout_ms",
            self.handshake_timeout_ms,
            100..=DAY_MS,
        )?;
        in_range(
            "limits.max_inflight_requests_per_peer",
            self.max_inflight_requests_per_peer,
            1..=MAX_INFLIGHT_PER_PEER,
        )?;
        if self.address_requests_per_sec < self.peer_requests_per_sec
            || self.address_request_burst < self.peer_request_burst
        {
            return Err(ConfigValueError::new(
                "limits.address_requests_per_sec",
                "the address bucket (address_requests_per_sec, address_request_burst) must not be smaller than one peer's (peer_requests_per_sec, peer_request_burst)",
            ));
        }
        if self.max_pending_incoming_per_ip >= self.max_pending_incoming {
            return Err(ConfigValueError::new(
                "limits.max_pending_incoming_per_ip",
                "must be smaller than limits.max_pending_incoming, so one address cannot take every slot",
            ));
        }
        Ok(())
    }
}

/// Discovery settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// First delay before redialing a bootstrap peer that failed or went away, in milliseconds.
    pub bootstrap_backoff_initial_ms: u64,
    /// Upper bound of the exponential redial backoff, in milliseconds.
    pub bootstrap_backoff_max_ms: u64,
    /// Interval of Kademlia random walks that find more peers, in seconds.
    pub random_walk_interval_secs: u64,
    /// Kademlia query timeout, in seconds.
    pub kad_query_timeout_secs: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            bootstrap_backoff_initial_ms: 500,
            bootstrap_backoff_max_ms: 60_000,
            random_walk_interval_secs: 30,
            kad_query_timeout_secs: 30,
        }
    }
}

impl DiscoveryConfig {
    /// Checks the ranges, and that the backoff's ceiling is not below its start.
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        for (key, value, most) in [
            (
                "discovery.bootstrap_backoff_initial_ms",
                self.bootstrap_backoff_initial_ms,
                DAY_MS,
            ),
            (
                "discovery.bootstrap_backoff_max_ms",
                self.bootstrap_backoff_max_ms,
                DAY_MS,
            ),
            (
                "discovery.random_walk_interval_secs",
                self.random_walk_interval_secs,
                DAY_SECS,
            ),
            (
                "discovery.kad_query_timeout_secs",
                self.kad_query_timeout_secs,
                DAY_SECS,
            ),
        ] {
            in_range(key, value, 1..=most)?;
        }
        if self.bootstrap_backoff_max_ms < self.bootstrap_backoff_initial_ms {
            return Err(ConfigValueError::new(
                "discovery.bootstrap_backoff_max_ms",
                "must not be smaller than discovery.bootstrap_backoff_initial_ms",
            ));
        }
        Ok(())
    }
}

/// Peer liveness settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Interval between pings to each connected peer, in milliseconds.
    pub ping_interval_ms: u64,
    /// A ping without answer after this many milliseconds counts as a failure.
    pub ping_timeout_ms: u64,
    /// A peer unseen for this long is `suspect`, in milliseconds.
    pub suspect_after_ms: u64,
    /// A peer unseen for this long is `dead` (and disconnected), in milliseconds.
    pub dead_after_ms: u64,
    /// A disconnected peer is forgotten this long after it was last seen, in milliseconds.
    pub expire_after_ms: u64,
    /// Consecutive ping failures that make a peer `suspect`.
    pub suspect_after_failures: u32,
    /// Consecutive ping failures that make a peer `dead`.
    pub dead_after_failures: u32,
    /// Most peers the monitor keeps (the least recently seen disconnected one goes first).
    pub max_peers: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 15_000,
            ping_timeout_ms: 20_000,
            suspect_after_ms: 45_000,
            dead_after_ms: 90_000,
            expire_after_ms: 300_000,
            suspect_after_failures: 1,
            dead_after_failures: 3,
            max_peers: 1024,
        }
    }
}

impl MonitorConfig {
    /// Checks the ranges, and that the liveness thresholds come in order.
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        for (key, value) in [
            ("monitor.ping_interval_ms", self.ping_interval_ms),
            ("monitor.ping_timeout_ms", self.ping_timeout_ms),
            ("monitor.suspect_after_ms", self.suspect_after_ms),
            ("monitor.dead_after_ms", self.dead_after_ms),
            ("monitor.expire_after_ms", self.expire_after_ms),
        ] {
            in_range(key, value, 1..=DAY_MS)?;
        }
        let suspect = self.suspect_after_failures;
        in_range("monitor.suspect_after_failures", suspect, 1..=MANY)?;
        in_range(
            "monitor.dead_after_failures",
            self.dead_after_failures,
            1..=MANY,
        )?;
        in_range("monitor.max_peers", self.max_peers, 1..=MANY as usize)?;
        if !(self.suspect_after_ms <= self.dead_after_ms
            && self.dead_after_ms < self.expire_after_ms)
        {
            return Err(ConfigValueError::new(
                "monitor.dead_after_ms",
                "need suspect_after_ms <= dead_after_ms < expire_after_ms",
            ));
        }
        if self.dead_after_failures < self.suspect_after_failures {
            return Err(ConfigValueError::new(
                "monitor.dead_after_failures",
                "must not be smaller than monitor.suspect_after_failures",
            ));
        }
        Ok(())
    }
}

/// Everything the swarm needs, and nothing else.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Listen multiaddrs.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers with their addresses (ending in `/p2p/<id>`).
    pub bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Accept private, loopback and link-local addresses from peers.
    pub allow_private_addrs: bool,
    /// Connection limits.
    pub limits: LimitsConfig,
    /// Discovery.
    pub discovery: DiscoveryConfig,
    /// Peer liveness.
    pub monitor: MonitorConfig,
    /// Largest content object the content protocol carries, in bytes.
    pub max_content_bytes: u64,
    /// Most content bytes buffered across all responses being received at once.
    pub max_buffered_content_bytes: u64,
    /// How many content keys this node may announce as a provider (its cache's entries).
    pub max_provided_keys: usize,
    /// The metrics endpoint announced to peers through identify (`metrics.announce_url`,
    /// with its port resolved); `None`: nothing is announced.
    pub metrics_announce: Option<super::announce::MetricsUrl>,
}

impl P2pConfig {
    /// Idle connection timeout.
    pub fn idle_connection_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_connection_timeout_secs)
    }

    /// Transport handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.handshake_timeout_ms)
    }

    /// The token bucket of one identity on the market and channel protocols.
    pub fn peer_bucket(&self) -> super::rate_limit::BucketLimit {
        super::rate_limit::BucketLimit {
            per_sec: f64::from(self.limits.peer_requests_per_sec),
            burst: f64::from(self.limits.peer_request_burst),
        }
    }

    /// The token bucket of one IP address on the market and channel protocols.
    pub fn address_bucket(&self) -> super::rate_limit::BucketLimit {
        super::rate_limit::BucketLimit {
            per_sec: f64::from(self.limits.address_requests_per_sec),
            burst: f64::from(self.limits.address_request_burst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_checked() {
        assert!(LimitsConfig::default().validate().is_ok());
        let zero = LimitsConfig {
            peer_requests_per_sec: 0,
            ..Default::default()
        };
        let e = zero.validate().unwrap_err().to_string();
        assert!(e.contains("limits.peer_requests_per_sec"), "{e}");
        let inflight = LimitsConfig {
            max_inflight_requests_per_peer: MAX_INFLIGHT_PER_PEER + 1,
            ..Default::default()
        };
        let e = inflight.validate().unwrap_err().to_string();
        assert!(e.contains("limits.max_inflight_requests_per_peer"), "{e}");
        // An address bucket smaller than one peer's would limit a lone peer by its address.
        let narrow = LimitsConfig {
            address_request_burst: 10,
            ..Default::default()
        };
        let e = narrow.validate().unwrap_err().to_string();
        assert!(e.contains("limits.address_requests_per_sec"), "{e}");
    }
}
