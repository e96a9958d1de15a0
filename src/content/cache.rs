//! An in-memory, content-addressed LRU cache.
//!
//! Every entry is verified against its [`ContentId`] before it is inserted: the cache only
//! takes [`Verified`] content, which only a [`Verifier`] makes. Depending on
//! [`VerifyOnRead`], a lookup may ask the caller to verify again ([`Lookup::Recheck`]). The
//! hashing is the caller's, so it can run off any task that must stay responsive (the
//! content service hashes large objects on the blocking pool). The cache holds at most
//! [`CacheConfig::max_entries`] entries and [`CacheConfig::max_bytes`] bytes of content,
//! evicting least-recently-used entries to stay within both. It is synchronous and does no
//! I/O.
//!
//! Metrics (registered by [`CacheMetrics::register`] into the `zerostate` registry):
//! `zerostate_cache_{entries, memory_bytes, hit_ratio}` gauges,
//! `zerostate_cache_{evictions, hits, misses, insertions, verification_failures}_total`
//! counters, and the `zerostate_p2p_content_verification_latency_seconds` histogram, which
//! observes every hash verification.

use std::time::Instant;

use bytes::Bytes;
use lru::LruCache;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;

use crate::config_value::{ConfigValueError, in_range};
use crate::content_id::{ContentId, Mismatch};

/// When reads re-verify content against its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VerifyOnRead {
    /// Never re-verify on read; content is verified once, on insert.
    Never,
    /// Re-verify entries that came from peers.
    #[default]
    Peer,
    /// Re-verify every entry on every read.
    Always,
}

impl VerifyOnRead {
    /// Whether a read of an entry from `origin` must re-verify it.
    fn applies_to(self, origin: Origin) -> bool {
        match self {
            Self::Never => false,
            Self::Peer => origin == Origin::Peer,
            Self::Always => true,
        }
    }
}

/// Cache limits and policy (a section of the node config; fields are config keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most bytes of content the cache holds. Content larger than this is rejected.
    pub max_bytes: u64,
    /// Most entries the cache holds. 0 disables caching: inserts are verified, then dropped.
    pub max_entries: usize,
    /// When reads re-verify content against its id.
    pub verify_on_read: VerifyOnRead,
}

impl Default for CacheConfig {
    /// 256 MiB, 65 536 entries, re-verify peer content on read.
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_entries: 65_536,
            verify_on_read: VerifyOnRead::default(),
        }
    }
}

impl CacheConfig {
    /// Checks the ranges of the bounds.
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        in_range("cache.max_bytes", self.max_bytes, 1..=1 << 40)?;
        in_range("cache.max_entries", self.max_entries, 1..=1 << 32)
    }
}

/// Where a piece of content came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Produced or imported by this node.
    Local,
    /// Received from another peer.
    Peer,
}

/// Why the cache refused content.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The content does not hash to the id it was offered under.
    #[error("content does not match its id: expected {expected}, but it hashes to {actual}")]
    Mismatch {
        /// The id the content was offered under.
        expected: ContentId,
        /// The id the content actually hashes to.
        actual: ContentId,
    },
    /// The content is larger than the whole cache.
    #[error("content of {size} bytes is larger than the whole cache (max_bytes = {max})")]
    TooLarge {
        /// Size of the content in bytes.
        size: u64,
        /// The cache's `max_bytes`.
        max: u64,
    },
}

impl From<Mismatch> for CacheError {
    fn from(m: Mismatch) -> Self {
        Self::Mismatch {
            expected: m.expected,
            actual: m.actual,
        }
    }
}

/// The cache's metric handles. Cloning shares the underlying metrics.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    entries: Gauge,
    memory_bytes: Gauge,
    hit_ratio: Gauge<f64, AtomicU64>,
    evictions: Counter,
    hits: Counter,
    misses: Counter,
    insertions: Counter,
    verification_failures: Counter,
    verification_latency: Histogram,
}

impl CacheMetrics {
    /// Registers into the `zerostate` registry (the caller passes
    /// `registry.sub_registry_with_prefix("zerostate")`): the `cache_*` families and
    /// `p2p_content_verification_latency_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            entries: Gauge::default(),
            memory_bytes: Gauge::default(),
            hit_ratio: Gauge::default(),
            evictions: Counter::default(),
            hits: Counter::default(),
            misses: Counter::default(),
            insertions: Counter::default(),
            verification_failures: Counter::default(),
            verification_latency: Histogram::new(crate::metrics::DURATION_BUCKETS),
        };

        let cache = registry.sub_registry_with_prefix("cache");
        cache.register(
            "entries",
            "Number of entries in the content cache",
            metrics.entries.clone(),
        );
        cache.register_with_unit(
            "memory",
            "Total bytes of content held by the content cache",
            Unit::Bytes,
            metrics.memory_bytes.clone(),
        );
        cache.register(
            "hit_ratio",
            "Content cache hits / (hits + misses) since start",
            metrics.hit_ratio.clone(),
        );
        cache.register(
            "evictions",
            "Entries evicted from the content cache to stay within its limits",
            metrics.evictions.clone(),
        );
        cache.register(
            "hits",
            "Content cache lookups that returned content",
            metrics.hits.clone(),
        );
        cache.register(
            "misses",
            "Content cache lookups that returned nothing (including entries failing read verification)",
            metrics.misses.clone(),
        );
        cache.register(
            "insertions",
            "Content stored in the content cache",
            metrics.insertions.clone(),
        );
        cache.register(
            "verification_failures",
            "Content that did not hash to its id, on insert or on read",
            metrics.verification_failures.clone(),
        );

        registry.sub_registry_with_prefix("p2p").register_with_unit(
            "content_verification_latency",
            "Time to hash content and compare it with its id",
            Unit::Seconds,
            metrics.verification_latency.clone(),
        );
        metrics
    }

    /// The verifier that records into these metrics.
    fn verifier(&self) -> Verifier {
        Verifier {
            latency: self.verification_latency.clone(),
            failures: self.verification_failures.clone(),
        }
    }

    /// Counts a lookup and refreshes the hit ratio.
    fn record_lookup(&self, hit: bool) {
        if hit {
            self.hits.inc();
        } else {
            self.misses.inc();
        }
        let hits = self.hits.get() as f64;
        let total = hits + self.misses.get() as f64;
        self.hit_ratio.set(hits / total);
    }
}

/// Hashes content against its id, observing the time it took and counting mismatches.
/// Cheap to clone and `Send`: run it wherever hashing does not hold anything up.
#[derive(Debug, Clone)]
pub struct Verifier {
    latency: Histogram,
    failures: Counter,
}

impl Verifier {
    /// Verifies `data` against `id`.
    pub fn verify(&self, id: ContentId, data: Bytes) -> Result<Verified, CacheError> {
        self.check(&id, &data)?;
        Ok(Verified { id, data })
    }

    /// Names `data` by its hash: content made here, whose id is whatever it hashes to.
    pub fn identify(&self, data: Bytes) -> Verified {
        let start = Instant::now();
        let id = ContentId::of(&data);
        self.latency.observe(start.elapsed().as_secs_f64());
        Verified { id, data }
    }

    /// Whether `data` still matches `id` (a re-verification on read).
    pub fn check(&self, id: &ContentId, data: &[u8]) -> Result<(), CacheError> {
        let start = Instant::now();
        let result = id.verify(data);
        self.latency.observe(start.elapsed().as_secs_f64());
        result.map_err(|m| {
            self.failures.inc();
            m.into()
        })
    }
}

/// Content whose bytes were checked against its id. Only [`Verifier::verify`] makes one.
#[derive(Debug, Clone)]
pub struct Verified {
    id: ContentId,
    data: Bytes,
}

impl Verified {
    /// The id.
    pub fn id(&self) -> ContentId {
        self.id
    }

    /// The bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

/// The result of [`ContentCache::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not in the cache (counted as a miss).
    Miss,
    /// The content (counted as a hit).
    Hit(Bytes),
    /// The content, which the [`VerifyOnRead`] policy says to verify again before use.
    /// Nothing is counted yet: report the result with [`ContentCache::recheck_passed`] or
    /// [`ContentCache::recheck_failed`].
    Recheck(Bytes),
}

/// One cached piece of content.
#[derive(Debug)]
struct Entry {
    data: Bytes,
    origin: Origin,
}

/// A content-addressed LRU cache, bounded by entry count and by total bytes.
#[derive(Debug)]
pub struct ContentCache {
    config: CacheConfig,
    /// Most recently used first.
    entries: LruCache<ContentId, Entry>,
    /// Sum of the lengths of all entries' data.
    total_bytes: u64,
    metrics: CacheMetrics,
}

impl ContentCache {
    /// Creates an empty cache.
    pub fn new(config: CacheConfig, metrics: CacheMetrics) -> Self {
        Self {
            config,
            entries: LruCache::unbounded(),
            total_bytes: 0,
            metrics,
        }
    }

    /// The verifier whose results this cache's metrics show.
    pub fn verifier(&self) -> Verifier {
        self.metrics.verifier()
    }

    /// Stores verified content, evicting least-recently-used entries until both caps hold,
    /// and returns the evicted ids. Re-inserting an existing id refreshes it (and takes the
    /// new `origin`).
    ///
    /// Content larger than `max_bytes` is rejected with [`CacheError::TooLarge`]. A rejected
    /// insert leaves the cache unchanged.
    pub fn insert_verified(
        &mut self,
        content: Verified,
        origin: Origin,
    ) -> Result<Vec<ContentId>, CacheError> {
        let Verified { id, data } = content;
        let size = data.len() as u64;
        if size > self.config.max_bytes {
            return Err(CacheError::TooLarge {
                size,
                max: self.config.max_bytes,
            });
        }
        let mut evicted_ids = Vec::new();
        if self.config.max_entries == 0 {
            return Ok(evicted_ids);
        }

        if let Some(old) = self.entries.pop(&id) {
            self.total_bytes -= old.data.len() as u64;
        }
        while self.entries.len() >= self.config.max_entries
            || self.total_bytes + size > self.config.max_bytes
        {
            let Some((evicted_id, evicted)) = self.entries.pop_lru() else {
                break;
            };
            self.total_bytes -= evicted.data.len() as u64;
            self.metrics.evictions.inc();
            evicted_ids.push(evicted_id);
        }
        self.entries.push(id, Entry { data, origin });
        self.total_bytes += size;
        self.metrics.insertions.inc();
        self.update_gauges();
        Ok(evicted_ids)
    }

    /// Looks `id` up and marks it recently used. A hit or a miss is counted, except for
    /// [`Lookup::Recheck`], whose outcome the caller reports once it has verified the bytes
    /// (off this call, so hashing never happens here).
    pub fn lookup(&mut self, id: &ContentId) -> Lookup {
        let Some(entry) = self.entries.get(id) else {
            self.metrics.record_lookup(false);
            return Lookup::Miss;
        };
        let data = entry.data.clone();
        if self.config.verify_on_read.applies_to(entry.origin) {
            Lookup::Recheck(data)
        } else {
            self.metrics.record_lookup(true);
            Lookup::Hit(data)
        }
    }

    /// A [`Lookup::Recheck`] verified: counts the hit.
    pub fn recheck_passed(&mut self) {
        self.metrics.record_lookup(true);
    }

    /// A [`Lookup::Recheck`] of `id` failed verification (the [`Verifier`] counted the
    /// failure): the entry is removed if it still holds those bytes, and a miss is counted.
    pub fn recheck_failed(&mut self, id: &ContentId, data: &Bytes) {
        if self.entries.peek(id).is_some_and(|e| e.data == *data)
            && let Some(entry) = self.entries.pop(id)
        {
            self.total_bytes -= entry.data.len() as u64;
            self.update_gauges();
        }
        self.metrics.record_lookup(false);
    }

    /// Whether the cache holds `id` (no LRU update, no hit/miss counting).
    pub fn contains(&self, id: &ContentId) -> bool {
        self.entries.contains(id)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total bytes of content held.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The limits and policy this cache was created with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Flips a byte of a stored entry, to simulate memory corruption. Returns false if
    /// absent or empty.
    #[cfg(test)]
    fn corrupt_for_tests(&mut self, id: &ContentId) -> bool {
        let Some(entry) = self.entries.peek_mut(id) else {
            return false;
        };
        let mut bytes = entry.data.to_vec();
        let Some(first) = bytes.first_mut() else {
            return false;
        };
        *first ^= 0x01;
        entry.data = Bytes::from(bytes);
        true
    }

    fn update_gauges(&self) {
        self.metrics
            .entries
            .set(i64::try_from(self.entries.len()).unwrap_or(i64::MAX));
        self.metrics
            .memory_bytes
            .set(i64::try_from(self.total_bytes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use prometheus_client::encoding::text::encode;
    use proptest::prelude::*;

    use super::*;

    fn config(max_bytes: u64, max_entries: usize, verify_on_read: VerifyOnRead) -> CacheConfig {
        CacheConfig {
            max_bytes,
            max_entries,
            verify_on_read,
        }
    }

    /// A cache whose metrics live in a root registry under `zerostate`, like the node's.
    fn cache_with_registry(config: CacheConfig) -> (ContentCache, Registry) {
        let mut root = Registry::default();
        let metrics = CacheMetrics::register(root.sub_registry_with_prefix("zerostate"));
        (ContentCache::new(config, metrics), root)
    }

    fn cache(config: CacheConfig) -> ContentCache {
        cache_with_registry(config).0
    }

    /// The two-step flows of the content service, in one call each, as the tests use them.
    trait Ops {
        fn insert(
            &mut self,
            id: ContentId,
            data: Bytes,
            origin: Origin,
        ) -> Result<Vec<ContentId>, CacheError>;
        fn get(&mut self, id: &ContentId) -> Option<Bytes>;
    }

    impl Ops for ContentCache {
        fn insert(
            &mut self,
            id: ContentId,
            data: Bytes,
            origin: Origin,
        ) -> Result<Vec<ContentId>, CacheError> {
            let verified = self.verifier().verify(id, data)?;
            self.insert_verified(verified, origin)
        }

        fn get(&mut self, id: &ContentId) -> Option<Bytes> {
            match self.lookup(id) {
                Lookup::Miss => None,
                Lookup::Hit(data) => Some(data),
                Lookup::Recheck(data) => match self.verifier().check(id, &data) {
                    Ok(()) => {
                        self.recheck_passed();
                        Some(data)
                    }
                    Err(_) => {
                        self.recheck_failed(id, &data);
                        None
                    }
                },
            }
        }
    }

    fn content(data: &[u8]) -> (ContentId, Bytes) {
        (ContentId::of(data), Bytes::copy_from_slice(data))
    }

    /// Ids in the cache, most recently used first.
    fn recency(cache: &ContentCache) -> Vec<ContentId> {
        cache.entries.iter().map(|(id, _)| *id).collect()
    }

    /// The value of the sample named exactly `name` in the encoded registry.
    fn sample(registry: &Registry, name: &str) -> f64 {
        let mut text = String::new();
        encode(&mut text, registry).expect("encoding a registry into a String cannot fail");
        text.lines()
            .find_map(|line| {
                let (sample_name, value) = line.split_once(' ')?;
                (sample_name == name).then(|| value.parse::<f64>().expect("numeric sample"))
            })
            .unwrap_or_else(|| panic!("no sample named {name} in:\n{text}"))
    }

    #[test]
    fn insert_then_get_returns_the_content() {
        let mut cache = cache(CacheConfig::default());
        let (id, data) = content(b"hello");
        cache.insert(id, data.clone(), Origin::Peer).unwrap();
        assert!(cache.contains(&id));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.total_bytes(), 5);
        assert_eq!(cache.get(&id), Some(data));
        assert_eq!(cache.get(&ContentId::of(b"absent")), None);
    }

    #[test]
    fn mismatch_names_both_ids_and_changes_nothing() {
        let mut cache = cache(CacheConfig::default());
        let (stored, stored_data) = content(b"stored");
        cache
            .insert(stored, stored_data.clone(), Origin::Local)
            .unwrap();

        // Offer other bytes under the stored id: must not replace the good entry.
        let err = cache
            .insert(stored, Bytes::from_static(b"forged"), Origin::Peer)
            .unwrap_err();
        let actual = ContentId::of(b"forged");
        let CacheError::Mismatch {
            expected,
            actual: reported,
        } = err
        else {
            panic!("expected a mismatch, got {err:?}");
        };
        assert_eq!((expected, reported), (stored, actual));
        let msg = err.to_string();
        assert!(msg.contains(&stored.to_string()), "{msg}");
        assert!(msg.contains(&actual.to_string()), "{msg}");
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.total_bytes(), 6);
        assert_eq!(cache.get(&stored), Some(stored_data));
        assert!(!cache.contains(&actual));
        assert_eq!(cache.metrics.verification_failures.get(), 1);
    }

    #[test]
    fn content_larger_than_the_cache_is_rejected() {
        let mut cache = cache(config(10, 8, VerifyOnRead::Never));
        let (small, small_data) = content(b"abc");
        cache.insert(small, small_data, Origin::Local).unwrap();

        let (big, big_data) = content(&[7; 11]);
        let err = cache.insert(big, big_data, Origin::Local).unwrap_err();
        assert!(
            matches!(err, CacheError::TooLarge { size: 11, max: 10 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("11 bytes"), "{err}");
        assert_eq!(recency(&cache), vec![small]);

        // Exactly max_bytes fits (evicting the rest).
        let (exact, exact_data) = content(&[7; 10]);
        cache.insert(exact, exact_data, Origin::Local).unwrap();
        assert_eq!(recency(&cache), vec![exact]);
        assert_eq!(cache.total_bytes(), 10);
    }

    #[test]
    fn evicts_least_recently_used_and_get_refreshes() {
        let mut cache = cache(config(1 << 20, 3, VerifyOnRead::Never));
        let (a, a_data) = content(b"a");
        let (b, b_data) = content(b"b");
        let (c, c_data) = content(b"c");
        let (d, d_data) = content(b"d");
        cache.insert(a, a_data, Origin::Local).unwrap();
        cache.insert(b, b_data, Origin::Local).unwrap();
        cache.insert(c, c_data, Origin::Local).unwrap();
        assert!(cache.get(&a).is_some()); // a is now the most recent; b the least.
        cache.insert(d, d_data, Origin::Local).unwrap();
        assert_eq!(recency(&cache), vec![d, a, c]);
        assert!(!cache.contains(&b));
        assert_eq!(cache.metrics.evictions.get(), 1);
    }

    #[test]
    fn byte_cap_evicts_until_new_content_fits() {
        let mut cache = cache(config(10, 100, VerifyOnRead::Never));
        let (a, a_data) = content(&[1; 4]);
        let (b, b_data) = content(&[2; 4]);
        let (c, c_data) = content(&[3; 6]);
        cache.insert(a, a_data, Origin::Local).unwrap();
        cache.insert(b, b_data, Origin::Local).unwrap();
        cache.insert(c, c_data, Origin::Local).unwrap();
        assert_eq!(recency(&cache), vec![c, b]);
        assert_eq!(cache.total_bytes(), 10);
    }

    #[test]
    fn reinsert_refreshes_without_double_counting() {
        let mut cache = cache(config(1 << 20, 2, VerifyOnRead::Never));
        let (a, a_data) = content(b"aaaa");
        let (b, b_data) = content(b"bb");
        let (c, c_data) = content(b"c");
        cache.insert(a, a_data.clone(), Origin::Local).unwrap();
        cache.insert(b, b_data, Origin::Local).unwrap();
        cache.insert(a, a_data, Origin::Local).unwrap();
        assert_eq!(recency(&cache), vec![a, b]);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.total_bytes(), 6);
        assert_eq!(cache.metrics.evictions.get(), 0);
        // b is now the least recent, so it goes first.
        cache.insert(c, c_data, Origin::Local).unwrap();
        assert_eq!(recency(&cache), vec![c, a]);
    }

    #[test]
    fn contains_does_not_refresh_or_count() {
        let mut cache = cache(config(1 << 20, 2, VerifyOnRead::Never));
        let (a, a_data) = content(b"a");
        let (b, b_data) = content(b"b");
        cache.insert(a, a_data, Origin::Local).unwrap();
        cache.insert(b, b_data, Origin::Local).unwrap();
        assert!(cache.contains(&a));
        assert_eq!(recency(&cache), vec![b, a]);
        assert_eq!(cache.metrics.hits.get() + cache.metrics.misses.get(), 0);
    }

    #[test]
    fn read_verification_failure_removes_the_entry_and_counts_it() {
        let mut cache = cache(config(1 << 20, 8, VerifyOnRead::Always));
        let (a, a_data) = content(b"important");
        cache.insert(a, a_data, Origin::Local).unwrap();
        assert!(cache.corrupt_for_tests(&a));

        assert_eq!(cache.get(&a), None);
        assert!(!cache.contains(&a));
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.total_bytes(), 0);
        assert_eq!(cache.metrics.verification_failures.get(), 1);
        assert_eq!(cache.metrics.misses.get(), 1);
        assert_eq!(cache.metrics.hits.get(), 0);
        assert_eq!(cache.metrics.evictions.get(), 0);
    }

    #[test]
    fn peer_policy_reverifies_only_peer_entries() {
        let mut cache = cache(config(1 << 20, 8, VerifyOnRead::Peer));
        let (local, local_data) = content(b"made here");
        let (peer, peer_data) = content(b"from a peer");
        cache.insert(local, local_data, Origin::Local).unwrap();
        cache.insert(peer, peer_data, Origin::Peer).unwrap();
        assert!(cache.corrupt_for_tests(&local));
        assert!(cache.corrupt_for_tests(&peer));

        assert_eq!(cache.get(&peer), None);
        // Local content is trusted under this policy, so its corruption goes unnoticed.
        let served = cache.get(&local).expect("local entry is not re-verified");
        assert_ne!(ContentId::of(&served), local);
        assert_eq!(cache.metrics.verification_failures.get(), 1);
    }

    #[test]
    fn never_policy_does_not_rehash_on_read() {
        let (mut cache, registry) = cache_with_registry(config(1 << 20, 8, VerifyOnRead::Never));
        let (peer, peer_data) = content(b"from a peer");
        cache.insert(peer, peer_data, Origin::Peer).unwrap();
        assert!(cache.get(&peer).is_some());
        let latency = "zerostate_p2p_content_verification_latency_seconds_count";
        assert_eq!(sample(&registry, latency), 1.0, "only the insert hashed");
    }

    #[test]
    fn empty_content_is_valid_content() {
        let mut cache = cache(config(0, 8, VerifyOnRead::Always));
        let (empty, empty_data) = content(b"");
        cache.insert(empty, empty_data, Origin::Peer).unwrap();
        assert_eq!(cache.get(&empty), Some(Bytes::new()));
        assert!(!cache.corrupt_for_tests(&empty), "nothing to flip");
        assert!(!cache.corrupt_for_tests(&ContentId::of(b"absent")));
    }

    #[test]
    fn zero_max_entries_verifies_but_stores_nothing() {
        let mut cache = cache(config(1 << 20, 0, VerifyOnRead::Never));
        let (a, a_data) = content(b"a");
        cache.insert(a, a_data, Origin::Local).unwrap();
        assert!(cache.is_empty());
        assert!(matches!(
            cache.insert(a, Bytes::from_static(b"b"), Origin::Local),
            Err(CacheError::Mismatch { .. })
        ));
    }

    #[test]
    fn config_reads_its_keys_and_rejects_unknown_ones() {
        let parsed: CacheConfig =
            toml::from_str("max_bytes = 1024\nverify_on_read = \"always\"").unwrap();
        assert_eq!(parsed, config(1024, 65_536, VerifyOnRead::Always));
        let defaults: CacheConfig = toml::from_str("").unwrap();
        assert_eq!(defaults, CacheConfig::default());
        assert_eq!(defaults.max_bytes, 256 * 1024 * 1024);
        assert_eq!(defaults.verify_on_read, VerifyOnRead::Peer);
        let err = toml::from_str::<CacheConfig>("max_byte = 1").unwrap_err();
        assert!(err.to_string().contains("max_byte"), "{err}");
        assert!(toml::from_str::<CacheConfig>("verify_on_read = \"Always\"").is_err());
    }

    #[test]
    fn metrics_are_exposed_under_their_names_and_move() {
        let (mut cache, registry) = cache_with_registry(config(10, 8, VerifyOnRead::Always));
        let names = [
            "zerostate_cache_entries",
            "zerostate_cache_memory_bytes",
            "zerostate_cache_hit_ratio",
            "zerostate_cache_evictions_total",
            "zerostate_cache_hits_total",
            "zerostate_cache_misses_total",
            "zerostate_cache_insertions_total",
            "zerostate_cache_verification_failures_total",
            "zerostate_p2p_content_verification_latency_seconds_count",
        ];
        for name in names {
            assert_eq!(sample(&registry, name), 0.0, "{name} starts at 0");
        }
        let latency = "zerostate_p2p_content_verification_latency_seconds_count";

        let (a, a_data) = content(&[1; 6]);
        cache.insert(a, a_data, Origin::Local).unwrap();
        assert_eq!(sample(&registry, "zerostate_cache_insertions_total"), 1.0);
        assert_eq!(sample(&registry, "zerostate_cache_entries"), 1.0);
        assert_eq!(sample(&registry, "zerostate_cache_memory_bytes"), 6.0);
        assert_eq!(sample(&registry, latency), 1.0);

        assert!(cache.get(&a).is_some());
        assert_eq!(sample(&registry, "zerostate_cache_hits_total"), 1.0);
        assert_eq!(sample(&registry, "zerostate_cache_hit_ratio"), 1.0);
        assert_eq!(
            sample(&registry, latency),
            2.0,
            "read verification observed"
        );
        assert!(cache.get(&ContentId::of(b"absent")).is_none());
        assert_eq!(sample(&registry, "zerostate_cache_misses_total"), 1.0);
        assert_eq!(sample(&registry, "zerostate_cache_hit_ratio"), 0.5);

        let (b, b_data) = content(&[2; 6]);
        cache.insert(b, b_data, Origin::Local).unwrap();
        assert_eq!(sample(&registry, "zerostate_cache_evictions_total"), 1.0);
        assert_eq!(sample(&registry, "zerostate_cache_entries"), 1.0);
        assert_eq!(sample(&registry, "zerostate_cache_memory_bytes"), 6.0);

        assert!(
            cache
                .insert(a, Bytes::from_static(b"x"), Origin::Peer)
                .is_err()
        );
        assert_eq!(
            sample(&registry, "zerostate_cache_verification_failures_total"),
            1.0
        );
        cache.corrupt_for_tests(&b);
        assert!(cache.get(&b).is_none());
        assert_eq!(
            sample(&registry, "zerostate_cache_verification_failures_total"),
            2.0
        );
        assert_eq!(sample(&registry, "zerostate_cache_entries"), 0.0);
        assert_eq!(sample(&registry, "zerostate_cache_memory_bytes"), 0.0);

        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# UNIT zerostate_p2p_content_verification_latency_seconds seconds"),
            "{text}"
        );
        assert!(text.contains("le=\"0.0001\""), "{text}");
    }

    // ---- Property test against a reference model ----

    /// Number of distinct contents an operation sequence draws from.
    const CONTENTS: usize = 6;

    #[derive(Debug, Clone)]
    enum Op {
        /// Insert content `content` under its own id.
        Insert {
            content: usize,
            origin: Origin,
        },
        /// Insert content `content` under the id of content `id_of` (usually wrong).
        InsertUnderId {
            content: usize,
            id_of: usize,
            origin: Origin,
        },
        /// `get` of content index `0..=CONTENTS` (CONTENTS is an id never inserted).
        Get(usize),
        Contains(usize),
        Corrupt(usize),
    }

    fn origin() -> impl Strategy<Value = Origin> {
        prop_oneof![Just(Origin::Local), Just(Origin::Peer)]
    }

    fn op() -> impl Strategy<Value = Op> {
        let index = || 0..CONTENTS;
        let any_id = || 0..=CONTENTS;
        let insert =
            (index(), origin()).prop_map(|(content, origin)| Op::Insert { content, origin });
        let insert_under_id =
            (index(), index(), origin()).prop_map(|(content, id_of, origin)| Op::InsertUnderId {
                content,
                id_of,
                origin,
            });
        prop_oneof![
            4 => insert,
            1 => insert_under_id,
            3 => any_id().prop_map(Op::Get),
            1 => any_id().prop_map(Op::Contains),
            1 => any_id().prop_map(Op::Corrupt),
        ]
    }

    fn verify_policy() -> impl Strategy<Value = VerifyOnRead> {
        prop_oneof![
            Just(VerifyOnRead::Never),
            Just(VerifyOnRead::Peer),
            Just(VerifyOnRead::Always),
        ]
    }

    /// Content number `index` with `len` bytes; distinct indexes give distinct non-empty
    /// contents (byte 0 differs).
    fn make_content(index: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|j| (j as u8).wrapping_mul(7) ^ (index as u8).wrapping_mul(37))
            .collect()
    }

    #[derive(Debug, Clone, PartialEq)]
    struct ModelEntry {
        id: ContentId,
        data: Vec<u8>,
        origin: Origin,
    }

    #[derive(Debug, PartialEq)]
    enum InsertOutcome {
        /// Stored; these ids were evicted, least recently used first.
        Stored(Vec<ContentId>),
        TooLarge,
        Mismatch,
    }

    /// The obvious LRU: a list, most recently used first.
    struct Model {
        max_bytes: u64,
        max_entries: usize,
        verify_on_read: VerifyOnRead,
        entries: VecDeque<ModelEntry>,
        hits: u64,
        misses: u64,
        evictions: u64,
        insertions: u64,
        failures: u64,
    }

    impl Model {
        fn new(config: &CacheConfig) -> Self {
            Self {
                max_bytes: config.max_bytes,
                max_entries: config.max_entries,
                verify_on_read: config.verify_on_read,
                entries: VecDeque::new(),
                hits: 0,
                misses: 0,
                evictions: 0,
                insertions: 0,
                failures: 0,
            }
        }

        fn total_bytes(&self) -> u64 {
            self.entries.iter().map(|e| e.data.len() as u64).sum()
        }

        fn take(&mut self, id: &ContentId) -> Option<ModelEntry> {
            let index = self.entries.iter().position(|e| e.id == *id)?;
            self.entries.remove(index)
        }

        fn must_verify(&self, origin: Origin) -> bool {
            match self.verify_on_read {
                VerifyOnRead::Never => false,
                VerifyOnRead::Peer => origin == Origin::Peer,
                VerifyOnRead::Always => true,
            }
        }

        fn insert(&mut self, id: ContentId, data: &[u8], origin: Origin) -> InsertOutcome {
            // Content is verified before the cache sees it; the size is the cache's check.
            if ContentId::of(data) != id {
                self.failures += 1;
                return InsertOutcome::Mismatch;
            }
            if data.len() as u64 > self.max_bytes {
                return InsertOutcome::TooLarge;
            }
            self.take(&id);
            let mut evicted = Vec::new();
            while self.entries.len() + 1 > self.max_entries
                || self.total_bytes() + data.len() as u64 > self.max_bytes
            {
                evicted.extend(self.entries.pop_back().map(|e| e.id));
                self.evictions += 1;
            }
            self.entries.push_front(ModelEntry {
                id,
                data: data.to_vec(),
                origin,
            });
            self.insertions += 1;
            InsertOutcome::Stored(evicted)
        }

        fn get(&mut self, id: &ContentId) -> Option<Vec<u8>> {
            let Some(entry) = self.take(id) else {
                self.misses += 1;
                return None;
            };
            if self.must_verify(entry.origin) && ContentId::of(&entry.data) != entry.id {
                self.failures += 1;
                self.misses += 1;
                return None;
            }
            self.hits += 1;
            let data = entry.data.clone();
            self.entries.push_front(entry);
            Some(data)
        }

        fn corrupt(&mut self, id: &ContentId) -> bool {
            match self.entries.iter_mut().find(|e| e.id == *id) {
                Some(entry) if !entry.data.is_empty() => {
                    entry.data[0] ^= 0x01;
                    true
                }
                _ => false,
            }
        }
    }

    /// The cache's entries, most recently used first, in the model's shape.
    fn snapshot(cache: &ContentCache) -> Vec<ModelEntry> {
        cache
            .entries
            .iter()
            .map(|(id, e)| ModelEntry {
                id: *id,
                data: e.data.to_vec(),
                origin: e.origin,
            })
            .collect()
    }

    fn outcome(result: &Result<Vec<ContentId>, CacheError>) -> InsertOutcome {
        match result {
            Ok(evicted) => InsertOutcome::Stored(evicted.clone()),
            Err(CacheError::TooLarge { .. }) => InsertOutcome::TooLarge,
            Err(CacheError::Mismatch { .. }) => InsertOutcome::Mismatch,
        }
    }

    /// Runs `ops` against a cache with `config` and against the model, checking after every
    /// step that they agree and that the caps and the read-verification promise hold.
    fn check_against_model(
        config: CacheConfig,
        sizes: &[usize],
        ops: Vec<Op>,
    ) -> Result<(), TestCaseError> {
        let (max_bytes, max_entries, verify_on_read) =
            (config.max_bytes, config.max_entries, config.verify_on_read);
        let mut cache = cache(config.clone());
        let mut model = Model::new(&config);
        let contents: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| make_content(i, len))
            .collect();
        let mut ids: Vec<ContentId> = contents.iter().map(|c| ContentId::of(c)).collect();
        ids.push(ContentId::of(b"never inserted"));

        for op in ops {
            let before = snapshot(&cache);
            match op {
                Op::Insert { content, origin } => {
                    let (id, data) = (ids[content], &contents[content]);
                    let result = cache.insert(id, Bytes::copy_from_slice(data), origin);
                    prop_assert_eq!(outcome(&result), model.insert(id, data, origin));
                }
                Op::InsertUnderId {
                    content,
                    id_of,
                    origin,
                } => {
                    let (id, data) = (ids[id_of], &contents[content]);
                    let result = cache.insert(id, Bytes::copy_from_slice(data), origin);
                    prop_assert_eq!(outcome(&result), model.insert(id, data, origin));
                    if result.is_err() {
                        prop_assert_eq!(
                            snapshot(&cache),
                            before,
                            "a rejected insert changed the cache"
                        );
                    }
                }
                Op::Get(index) => {
                    let id = ids[index];
                    let origin = before.iter().find(|e| e.id == id).map(|e| e.origin);
                    let got = cache.get(&id);
                    let expected = model.get(&id);
                    prop_assert_eq!(got.as_deref(), expected.as_deref());
                    if let (Some(data), Some(origin)) = (&got, origin) {
                        let must_verify = match verify_on_read {
                            VerifyOnRead::Never => false,
                            VerifyOnRead::Peer => origin == Origin::Peer,
                            VerifyOnRead::Always => true,
                        };
                        if must_verify {
                            prop_assert_eq!(
                                ContentId::of(data),
                                id,
                                "get returned corrupt content"
                            );
                        }
                    }
                }
                Op::Contains(index) => {
                    let id = ids[index];
                    prop_assert_eq!(
                        cache.contains(&id),
                        model.entries.iter().any(|e| e.id == id)
                    );
                    prop_assert_eq!(snapshot(&cache), before, "contains changed the cache");
                }
                Op::Corrupt(index) => {
                    let id = ids[index];
                    prop_assert_eq!(cache.corrupt_for_tests(&id), model.corrupt(&id));
                }
            }

            prop_assert!(cache.len() <= max_entries);
            prop_assert!(cache.total_bytes() <= max_bytes);
            prop_assert_eq!(
                snapshot(&cache),
                model.entries.iter().cloned().collect::<Vec<_>>()
            );
            prop_assert_eq!(cache.len(), model.entries.len());
            prop_assert_eq!(cache.is_empty(), model.entries.is_empty());
            prop_assert_eq!(cache.total_bytes(), model.total_bytes());
            let m = &cache.metrics;
            prop_assert_eq!(m.hits.get(), model.hits);
            prop_assert_eq!(m.misses.get(), model.misses);
            prop_assert_eq!(m.evictions.get(), model.evictions);
            prop_assert_eq!(m.insertions.get(), model.insertions);
            prop_assert_eq!(m.verification_failures.get(), model.failures);
            prop_assert_eq!(m.entries.get(), model.entries.len() as i64);
            prop_assert_eq!(m.memory_bytes.get(), model.total_bytes() as i64);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn cache_behaves_like_the_reference_lru(
            max_bytes in 0u64..4096,
            max_entries in 1usize..8,
            verify_on_read in verify_policy(),
            sizes in prop::collection::vec(0usize..1500, CONTENTS),
            ops in prop::collection::vec(op(), 1..80),
        ) {
            check_against_model(config(max_bytes, max_entries, verify_on_read), &sizes, ops)?;
        }
    }
}
