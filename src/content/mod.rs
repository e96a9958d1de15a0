//! Content exchange: store content locally, serve it to peers, and fetch what we lack from
//! providers, verifying every byte before it is cached or returned.
//!
//! - [`cache`]: the content-addressed LRU (a plain data structure).
//! - [`ranking`]: which peers to ask first, from how they behaved.
//! - [`fetch`]: one hedged fetch from the network.
//! - [`service`]: the actor that owns the cache, answers the HTTP API and the peers' requests
//!   (routed to it by the swarm's event loop), and runs fetches. Hashing happens on the
//!   blocking pool, never on the swarm's task or under a lock.

pub mod cache;
pub mod fetch;
pub mod ranking;
pub mod service;

use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use crate::config_value::{ConfigValueError, DAY_MS, GIB, in_range};
use crate::content_id::ContentId;
use crate::metrics::{OutcomeLabels, ReasonLabels};

pub use cache::{CacheConfig, CacheMetrics, ContentCache, VerifyOnRead};
pub use service::ContentService;

/// Content exchange settings (the `[content]` config section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentConfig {
    /// Largest object accepted by `PUT /api/v1/content` and by the content protocol, in bytes.
    pub max_object_bytes: u64,
    /// A fetch from the network gives up after this many milliseconds (then 404).
    pub fetch_timeout_ms: u64,
    /// Most peers asked for one object (providers first, then connected peers).
    pub max_candidates: usize,
    /// One peer gets this many milliseconds to answer before it counts as a timeout.
    pub request_timeout_ms: u64,
    /// If the peers asked have not answered after this many milliseconds, the next one is
    /// asked too.
    pub hedge_after_ms: u64,
    /// Most peers asked at once for one object.
    pub max_parallel_requests: usize,
    /// Most content bytes being received from peers at once, over all fetches.
    pub max_buffered_bytes: u64,
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            max_object_bytes: 4 * 1024 * 1024,
            fetch_timeout_ms: 8_000,
            max_candidates: 16,
            request_timeout_ms: 2_000,
            hedge_after_ms: 400,
            max_parallel_requests: 4,
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    }
}

impl ContentConfig {
    /// Checks the ranges, and that the receive budget holds at least one object.
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        in_range("content.max_object_bytes", self.max_object_bytes, 1..=GIB)?;
        for (key, value) in [
            ("content.fetch_timeout_ms", self.fetch_timeout_ms),
            ("content.request_timeout_ms", self.request_timeout_ms),
            ("content.hedge_after_ms", self.hedge_after_ms),
        ] {
            in_range(key, value, 1..=DAY_MS)?;
        }
        in_range("content.max_candidates", self.max_candidates, 1..=1024)?;
        let parallel = self.max_parallel_requests;
        in_range("content.max_parallel_requests", parallel, 1..=64)?;
        let buffered = self.max_buffered_bytes;
        in_range("content.max_buffered_bytes", buffered, 1..=64 * GIB)?;
        if self.max_buffered_bytes < self.max_object_bytes {
            return Err(ConfigValueError::new(
                "content.max_buffered_bytes",
                "must be at least content.max_object_bytes, or no object could be received",
            ));
        }
        Ok(())
    }
}

/// Content exchange metrics (no peer labels).
#[derive(Clone, Debug, Default)]
pub struct ContentMetrics {
    /// Bytes sent to peers.
    pub(crate) bytes_served: Counter,
    /// Verified bytes fetched from peers.
    pub(crate) bytes_fetched: Counter,
    provider_failures: Family<ReasonLabels, Counter>,
    fetches: Family<OutcomeLabels, Counter>,
}

impl ContentMetrics {
    /// Registers the families into the `zerostate` registry.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let p2p = registry.sub_registry_with_prefix("p2p");
        p2p.register_with_unit(
            "content_served",
            "Content bytes sent to peers",
            Unit::Bytes,
            m.bytes_served.clone(),
        );
        p2p.register_with_unit(
            "content_fetched",
            "Verified content bytes fetched from peers",
            Unit::Bytes,
            m.bytes_fetched.clone(),
        );
        p2p.register(
            "content_provider_failures",
            "Content requests to a peer that gave nothing usable, by reason (mismatch, malformed, not_found, timeout, error, budget)",
            m.provider_failures.clone(),
        );
        p2p.register(
            "content_fetches",
            "Fetches of content this node lacked, by outcome (fetched, not_found, invalid)",
            m.fetches.clone(),
        );
        m
    }

    pub(crate) fn provider_failure(&self, reason: &'static str) {
        let c = self
            .provider_failures
            .get_or_create(&ReasonLabels { reason });
        c.inc();
    }

    pub(crate) fn fetch(&self, outcome: &'static str) {
        let c = self.fetches.get_or_create(&OutcomeLabels { outcome });
        c.inc();
    }
}

/// Why content could not be returned.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContentError {
    /// The object is larger than the configured maximum.
    #[error("content of {size} bytes exceeds the limit of {max} bytes (content.max_object_bytes)")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Nobody we could ask had it.
    #[error("content {id} not found: asked {asked} peer(s) within the search bound")]
    NotFound {
        /// The id.
        id: ContentId,
        /// How many peers were asked.
        asked: usize,
    },
    /// The search did not finish within `content.fetch_timeout_ms`.
    #[error("content {id} not found within {after_ms} ms (content.fetch_timeout_ms)")]
    TimedOut {
        /// The id.
        id: ContentId,
        /// The bound.
        after_ms: u64,
    },
    /// Peers had it, but every copy failed verification.
    #[error(
        "content {id}: {bad} provider(s) sent bytes that do not match the id; none sent valid bytes"
    )]
    Invalid {
        /// The id.
        id: ContentId,
        /// How many providers sent bad bytes.
        bad: usize,
    },
    /// Not in this node's cache, and the caller may not fetch from the network.
    #[error(
        "content {id} is not in this node's cache; fetching it from the network needs the API token (Authorization: Bearer <token>)"
    )]
    NotCached {
        /// The id.
        id: ContentId,
    },
    /// Too many fetches are running; try again shortly.
    #[error("too many content fetches in progress; try again shortly")]
    Busy,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
}

impl From<crate::actor::Stopped> for ContentError {
    fn from(_: crate::actor::Stopped) -> Self {
        Self::Stopped
    }
}
