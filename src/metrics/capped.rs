//! Bounded label cardinality: which network-supplied label values (peer ids, channel ids)
//! currently have series. The owner removes the evicted value's series from its families.

use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;
use prometheus_client::metrics::gauge::Gauge;

/// The label values with series, at most `cap`, least recently active evicted first.
#[derive(Debug)]
pub struct CappedKeys<K: Hash + Eq> {
    keys: LruCache<K, ()>,
    in_use: Gauge,
}

impl<K: Hash + Eq + Clone> CappedKeys<K> {
    /// At most `cap` values (at least 1); `in_use` follows how many hold series (see
    /// [`super::LabelValueMetrics`]).
    pub fn new(cap: usize, in_use: Gauge) -> Self {
        Self {
            keys: LruCache::new(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN)),
            in_use,
        }
    }

    /// Marks `key` active. Returns the value evicted to make room, whose series the caller
    /// must remove.
    pub fn touch(&mut self, key: K) -> Option<K> {
        let evicted = match self.keys.push(key.clone(), ()) {
            Some((old, ())) if old != key => Some(old),
            _ => None,
        };
        self.in_use.set(self.len_i64());
        evicted
    }

    /// Forgets `key` (its series were removed). Returns whether it had series.
    pub fn remove(&mut self, key: &K) -> bool {
        let had = self.keys.pop(key).is_some();
        self.in_use.set(self.len_i64());
        had
    }

    fn len_i64(&self) -> i64 {
        i64::try_from(self.keys.len()).unwrap_or(i64::MAX)
    }

    /// Whether `key` has series (does not count as activity).
    pub fn contains(&self, key: &K) -> bool {
        self.keys.contains(key)
    }

    /// The values with series, most recently active first.
    pub fn keys(&self) -> Vec<K> {
        self.keys.iter().map(|(k, ())| k.clone()).collect()
    }

    /// How many values have series.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no value has series.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_active() {
        let mut keys = CappedKeys::new(2, Gauge::default());
        assert_eq!(keys.touch("a"), None);
        assert_eq!(keys.touch("b"), None);
        assert_eq!(keys.touch("a"), None);
        assert_eq!(keys.touch("c"), Some("b"));
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"a") && !keys.contains(&"b"));
    }

    #[test]
    fn the_gauge_follows_the_values_holding_series() {
        let in_use = Gauge::default();
        let mut keys = CappedKeys::new(2, in_use.clone());
        keys.touch("a");
        assert_eq!(in_use.get(), 1);
        keys.touch("b");
        keys.touch("c");
        assert_eq!(in_use.get(), 2, "at the cap, an eviction keeps the count");
        keys.remove(&"c");
        assert_eq!(in_use.get(), 1);
        keys.remove(&"zzz");
        assert_eq!(in_use.get(), 1);
    }
}
