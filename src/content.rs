//! Content exchange: store content locally, serve it to peers, and fetch what we lack from
//! providers, verifying every byte before it is cached or returned.
//!
//! [`ContentStore`] is shared with the swarm's event loop, which serves inbound requests from
//! it. [`ContentService`] is what the HTTP API calls: `put`, `get` (cache, then providers found
//! through Kademlia and connected peers), and `has`. Concurrent `get`s of one id share a
//! single fetch. A provider whose bytes do not match the id is counted, penalised (tried last
//! from then on: the hook the reputation system will drive), and the next provider is tried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use libp2p::PeerId;
use prometheus_client::encoding::EncodeLabelSet;

use crate::metrics::OutcomeLabels;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, ContentCache, Origin};
use crate::content_id::ContentId;
use crate::p2p::{ContentResponse, P2pHandle, RequestFailure};

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
}

impl Default for ContentConfig {
    fn default() -> Self {
        Self {
            max_object_bytes: 4 * 1024 * 1024,
            fetch_timeout_ms: 8_000,
            max_candidates: 16,
        }
    }
}

/// Most peers remembered as having served bad content.
const MAX_STRIKE_RECORDS: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Content exchange metrics (no peer labels).
#[derive(Clone, Debug, Default)]
pub struct ContentMetrics {
    bytes_served: Counter,
    bytes_fetched: Counter,
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
            "Content requests to a peer that gave nothing usable, by reason (mismatch, malformed, not_found, error)",
            m.provider_failures.clone(),
        );
        p2p.register(
            "content_fetches",
            "Fetches of content this node lacked, by outcome (fetched, not_found, invalid)",
            m.fetches.clone(),
        );
        m
    }

    fn provider_failure(&self, reason: &'static str) {
        let c = self
            .provider_failures
            .get_or_create(&ReasonLabels { reason });
        c.inc();
    }

    fn fetch(&self, outcome: &'static str) {
        let c = self.fetches.get_or_create(&OutcomeLabels { outcome });
        c.inc();
    }
}

/// The node's content, shared by the HTTP API and the swarm's event loop.
#[derive(Debug)]
pub struct ContentStore {
    cache: Mutex<ContentCache>,
    metrics: ContentMetrics,
    tamper: AtomicBool,
}

impl ContentStore {
    /// A store around `cache`.
    pub fn new(cache: ContentCache, metrics: ContentMetrics) -> Self {
        Self {
            cache: Mutex::new(cache),
            metrics,
            tamper: AtomicBool::new(false),
        }
    }

    fn cache(&self) -> MutexGuard<'_, ContentCache> {
        // A panic while holding the lock cannot leave the cache inconsistent in a way that
        // matters more than losing the node, so keep serving.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers a peer's request for `id`.
    pub fn serve(&self, id: &ContentId) -> ContentResponse {
        let Some(data) = self.cache().get(id) else {
            return ContentResponse::NotFound;
        };
        let data = if self.tamper.load(Ordering::Relaxed) {
            let mut bad = data.to_vec();
            match bad.first_mut() {
                Some(b) => *b ^= 0xff,
                None => bad.push(0),
            }
            Bytes::from(bad)
        } else {
            data
        };
        self.metrics.bytes_served.inc_by(data.len() as u64);
        ContentResponse::Found(data)
    }

    /// Test-only behaviour, not reachable from config: serve corrupted bytes to peers.
    #[doc(hidden)]
    pub fn set_serve_tampered_for_tests(&self, on: bool) {
        self.tamper.store(on, Ordering::Relaxed);
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
    /// Too many fetches are running; try again shortly.
    #[error("too many content fetches in progress; try again shortly")]
    Busy,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
}

type SharedFetch = Shared<BoxFuture<'static, Result<Bytes, ContentError>>>;

/// Most fetches from the network running at once; more get [`ContentError::Busy`].
const MAX_INFLIGHT_FETCHES: usize = 256;

struct Inner {
    store: Arc<ContentStore>,
    p2p: P2pHandle,
    config: ContentConfig,
    inflight: Mutex<HashMap<ContentId, SharedFetch>>,
    strikes: Mutex<HashMap<PeerId, u32>>,
}

impl Inner {
    fn strikes(&self) -> MutexGuard<'_, HashMap<PeerId, u32>> {
        self.strikes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<ContentId, SharedFetch>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`ContentService::rank_candidates`].
    fn rank(&self, mut peers: Vec<PeerId>) -> Vec<PeerId> {
        let local = self.p2p.local_peer_id().to_bytes();
        let strikes = self.strikes();
        peers.sort_by_cached_key(|p| {
            let mut h = blake3::Hasher::new();
            h.update(&local);
            h.update(&p.to_bytes());
            (
                strikes.get(p).copied().unwrap_or(0),
                *h.finalize().as_bytes(),
            )
        });
        peers
    }

    /// Stores verified content and keeps the provider records in step with the cache:
    /// announce what was stored, withdraw what was evicted.
    async fn keep(&self, id: ContentId, data: Bytes, origin: Origin) -> Result<(), CacheError> {
        let evicted = self.store.cache().insert(id, data, origin)?;
        // Fails only when the node is shutting down, when provider records no longer matter.
        let _ = self.p2p.update_provided(vec![id], evicted).await;
        Ok(())
    }
}

/// What the HTTP API uses: put, get (local or network), has.
#[derive(Clone)]
pub struct ContentService {
    inner: Arc<Inner>,
}

impl ContentService {
    /// A service over `store`, fetching through `p2p`.
    pub fn new(store: Arc<ContentStore>, p2p: P2pHandle, config: ContentConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                p2p,
                config,
                inflight: Mutex::new(HashMap::new()),
                strikes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The shared store.
    pub fn store(&self) -> &Arc<ContentStore> {
        &self.inner.store
    }

    /// Stores `data` and announces this node as a provider. Returns its id.
    pub async fn put(&self, data: Bytes) -> Result<ContentId, ContentError> {
        let max = self.inner.config.max_object_bytes;
        if data.len() as u64 > max {
            return Err(ContentError::TooLarge {
                size: data.len() as u64,
                max,
            });
        }
        let id = ContentId::of(&data);
        match self.inner.keep(id, data, Origin::Local).await {
            Ok(()) => Ok(id),
            Err(CacheError::TooLarge { size, max }) => Err(ContentError::TooLarge { size, max }),
            Err(e @ CacheError::Mismatch { .. }) => unreachable!("id computed from data: {e}"),
        }
    }

    /// Whether this node holds `id` (no network access).
    pub fn has(&self, id: &ContentId) -> bool {
        self.inner.store.cache().contains(id)
    }

    /// Returns the content: from the cache, or fetched from the network and verified.
    ///
    /// The fetch runs in its own task, bounded by `content.fetch_timeout_ms`, so it finishes
    /// (and leaves the in-flight table) even if every caller gives up.
    pub async fn get(&self, id: ContentId) -> Result<Bytes, ContentError> {
        if let Some(data) = self.inner.store.cache().get(&id) {
            return Ok(data);
        }
        let fetch = {
            let mut inflight = self.inner.inflight();
            match inflight.get(&id) {
                Some(fetch) => fetch.clone(),
                None => {
                    if inflight.len() >= MAX_INFLIGHT_FETCHES {
                        return Err(ContentError::Busy);
                    }
                    let inner = self.inner.clone();
                    let task = tokio::spawn(async move {
                        let limit = Duration::from_millis(inner.config.fetch_timeout_ms);
                        let result = match tokio::time::timeout(limit, fetch(&inner, id)).await {
                            Ok(r) => r,
                            Err(_) => {
                                inner.store.metrics.fetch("not_found");
                                Err(ContentError::TimedOut {
                                    id,
                                    after_ms: inner.config.fetch_timeout_ms,
                                })
                            }
                        };
                        inner.inflight().remove(&id);
                        result
                    });
                    let fetch = async move { task.await.unwrap_or(Err(ContentError::Stopped)) }
                        .boxed()
                        .shared();
                    inflight.insert(id, fetch.clone());
                    fetch
                }
            }
        };
        fetch.await
    }

    /// How often `peer` sent content that failed verification.
    pub fn strikes(&self, peer: &PeerId) -> u32 {
        self.inner.strikes().get(peer).copied().unwrap_or(0)
    }

    /// The order in which this node asks `peers` for content: penalised peers last; among
    /// equals, an order keyed by this node's id, so different nodes spread their requests
    /// over different providers while each node's order is stable.
    pub fn rank_candidates(&self, peers: Vec<PeerId>) -> Vec<PeerId> {
        self.inner.rank(peers)
    }
}

/// Penalises a provider that sent bytes not matching the id.
fn penalise(inner: &Inner, peer: PeerId) {
    let mut strikes = inner.strikes();
    if strikes.len() >= MAX_STRIKE_RECORDS && !strikes.contains_key(&peer) {
        // Forget the least penalised peer to stay bounded.
        if let Some(min) = strikes.iter().min_by_key(|(_, n)| **n).map(|(p, _)| *p) {
            strikes.remove(&min);
        }
    }
    *strikes.entry(peer).or_insert(0) += 1;
    tracing::warn!(%peer, "provider sent content that does not match its id");
}

/// Finds candidates and asks them one by one until one sends bytes that verify.
async fn fetch(inner: &Inner, id: ContentId) -> Result<Bytes, ContentError> {
    let p2p = &inner.p2p;
    let local = p2p.local_peer_id();
    // The DHT gets half the budget; connected peers are asked either way.
    let dht_budget = Duration::from_millis(inner.config.fetch_timeout_ms / 2);
    let mut candidates = match tokio::time::timeout(dht_budget, p2p.find_providers(id)).await {
        Ok(found) => found.map_err(|_| ContentError::Stopped)?,
        Err(_) => Vec::new(),
    };
    for peer in p2p
        .connected_peers()
        .await
        .map_err(|_| ContentError::Stopped)?
    {
        if !candidates.contains(&peer) {
            candidates.push(peer);
        }
    }
    candidates.retain(|p| *p != local);
    let mut candidates = inner.rank(candidates);
    candidates.truncate(inner.config.max_candidates);

    let metrics = &inner.store.metrics;
    let mut bad = 0;
    for (asked, peer) in candidates.iter().enumerate() {
        let response = match p2p.request_content(*peer, id).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(%peer, %id, error = %e, "content request failed");
                metrics.provider_failure(match e {
                    RequestFailure::Malformed(_) => "malformed",
                    RequestFailure::Failed(_) => "error",
                });
                continue;
            }
            Err(_) => return Err(ContentError::Stopped),
        };
        let data = match response {
            ContentResponse::Found(data) => data,
            ContentResponse::NotFound => {
                metrics.provider_failure("not_found");
                continue;
            }
        };
        let len = data.len() as u64;
        match inner.keep(id, data.clone(), Origin::Peer).await {
            Ok(()) => {}
            Err(CacheError::Mismatch { .. }) => {
                bad += 1;
                metrics.provider_failure("mismatch");
                penalise(inner, *peer);
                continue;
            }
            // Larger than the whole cache: verify, and return it without caching.
            Err(CacheError::TooLarge { .. }) => {
                if ContentId::of(&data) != id {
                    bad += 1;
                    metrics.provider_failure("mismatch");
                    penalise(inner, *peer);
                    continue;
                }
            }
        }
        metrics.bytes_fetched.inc_by(len);
        metrics.fetch("fetched");
        tracing::debug!(%peer, %id, bytes = len, tried = asked + 1, "fetched content");
        return Ok(data);
    }
    if bad > 0 {
        metrics.fetch("invalid");
        Err(ContentError::Invalid { id, bad })
    } else {
        metrics.fetch("not_found");
        Err(ContentError::NotFound {
            id,
            asked: candidates.len(),
        })
    }
}
