//! Bounds on the provider records other peers store with us (Kademlia `ADD_PROVIDER`).
//!
//! Kademlia's memory store keeps up to 20 providers per key and, when a key is full, lets a
//! provider whose id is closer to the key displace another, so a peer that grinds ids can
//! push honest providers out; and nothing stops one peer from filling the whole store. This
//! table decides which records are kept: at most [`ProviderLimits::total`] in all (least
//! recently announced dropped first), [`ProviderLimits::per_peer`] per provider (a peer over
//! its quota replaces its own oldest record) and [`ProviderLimits::per_key`] per key (a full
//! key drops the record of the provider that holds the most records overall, if it holds
//! more than the newcomer; otherwise the newcomer is refused). The event loop applies the
//! decisions to the store.

use std::collections::{HashMap, VecDeque};

use libp2p::PeerId;
use libp2p::kad::RecordKey;
use lru::LruCache;

/// Limits of [`RemoteProviders`].
#[derive(Debug, Clone, Copy)]
pub struct ProviderLimits {
    /// Records of other peers, in all.
    pub total: usize,
    /// Records of one provider.
    pub per_peer: usize,
    /// Providers of one key (other than us).
    pub per_key: usize,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            total: 8192,
            per_peer: 256,
            per_key: 16,
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key has its maximum of providers, none of which holds more records than the
    /// newcomer.
    KeyFull,
}

impl Refusal {
    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::KeyFull => "key_full",
        }
    }
}

/// What to do with an announced record.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Store it, after removing these records from the store.
    Store {
        /// Records to remove first.
        evict: Vec<(RecordKey, PeerId)>,
        /// Set when the eviction was due to the provider's own quota.
        over_quota: bool,
    },
    /// Do not store it.
    Refuse(Refusal),
}

/// The provider records of other peers that we hold.
#[derive(Debug)]
pub struct RemoteProviders {
    limits: ProviderLimits,
    /// Every record, least recently announced last.
    records: LruCache<(RecordKey, PeerId), ()>,
    /// Each provider's keys, oldest first.
    by_peer: HashMap<PeerId, VecDeque<RecordKey>>,
    /// Each key's providers.
    by_key: HashMap<RecordKey, Vec<PeerId>>,
}

impl RemoteProviders {
    /// An empty table.
    pub fn new(limits: ProviderLimits) -> Self {
        Self {
            limits: ProviderLimits {
                total: limits.total.max(1),
                per_peer: limits.per_peer.max(1),
                per_key: limits.per_key.max(1),
            },
            records: LruCache::unbounded(),
            by_peer: HashMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records of `peer`.
    pub fn count_of(&self, peer: &PeerId) -> usize {
        self.by_peer.get(peer).map_or(0, VecDeque::len)
    }

    /// Decides on a record `provider` announced for `key`, and updates the table as if the
    /// decision were applied.
    pub fn admit(&mut self, key: RecordKey, provider: PeerId) -> Admission {
        let slot = (key.clone(), provider);
        if self.records.get(&slot).is_some() {
            // A refresh: newest again.
            if let Some(keys) = self.by_peer.get_mut(&provider)
                && let Some(pos) = keys.iter().position(|k| *k == key)
            {
                let k = keys.remove(pos).expect("position is valid");
                keys.push_back(k);
            }
            return Admission::Store {
                evict: vec![],
                over_quota: false,
            };
        }
        // Decide on a full key before changing anything, so a refusal changes nothing.
        let newcomer = self.count_of(&provider).min(self.limits.per_peer - 1) + 1;
        let displaced = match self.by_key.get(&key) {
            Some(providers) if providers.len() >= self.limits.per_key => {
                let heaviest = providers
                    .iter()
                    .copied()
                    .max_by_key(|p| self.count_of(p))
                    .expect("a full key has providers");
                if self.count_of(&heaviest) <= newcomer {
                    return Admission::Refuse(Refusal::KeyFull);
                }
                Some(heaviest)
            }
            _ => None,
        };
        let mut evict = Vec::new();
        let mut over_quota = false;
        if self.count_of(&provider) >= self.limits.per_peer {
            let oldest = self.by_peer[&provider].front().cloned().expect("non-empty");
            self.remove(&oldest, &provider);
            evict.push((oldest, provider));
            over_quota = true;
        }
        if let Some(heaviest) = displaced {
            self.remove(&key, &heaviest);
            evict.push((key.clone(), heaviest));
        }
        if self.records.len() >= self.limits.total
            && let Some((k, p)) = self.records.peek_lru().map(|(slot, _)| slot.clone())
        {
            self.remove(&k, &p);
            evict.push((k, p));
        }
        self.records.push(slot, ());
        self.by_peer
            .entry(provider)
            .or_default()
            .push_back(key.clone());
        self.by_key.entry(key).or_default().push(provider);
        Admission::Store { evict, over_quota }
    }

    /// Forgets a record (it expired or was removed from the store).
    pub fn remove(&mut self, key: &RecordKey, provider: &PeerId) {
        if self.records.pop(&(key.clone(), *provider)).is_none() {
            return;
        }
        if let Some(keys) = self.by_peer.get_mut(provider) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_peer.remove(provider);
            }
        }
        if let Some(peers) = self.by_key.get_mut(key) {
            peers.retain(|p| p != provider);
            if peers.is_empty() {
                self.by_key.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> RecordKey {
        RecordKey::new(&i.to_be_bytes())
    }

    fn stored(a: &Admission) -> bool {
        matches!(a, Admission::Store { .. })
    }

    #[test]
    fn one_peer_cannot_evict_the_records_of_others() {
        let mut t = RemoteProviders::new(ProviderLimits {
            total: 100,
            per_peer: 10,
            per_key: 8,
        });
        let honest: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in honest.iter().enumerate() {
            assert!(stored(&t.admit(key(i as u32), *p)));
        }
        let spammer = PeerId::random();
        for i in 1000..5000 {
            match t.admit(key(i), spammer) {
                Admission::Store { evict, .. } => {
                    assert!(evict.iter().all(|(_, p)| *p == spammer), "{evict:?}");
                }
                Admission::Refuse(r) => panic!("{r:?}"),
            }
        }
        assert_eq!(t.count_of(&spammer), 10);
        for p in &honest {
            assert_eq!(t.count_of(p), 1, "honest records survive");
        }
        assert_eq!(t.len(), 15);
    }

    #[test]
    fn a_full_key_displaces_the_heaviest_provider_or_refuses() {
        let mut t = RemoteProviders::new(ProviderLimits {
            total: 1000,
            per_peer: 100,
            per_key: 2,
        });
        let heavy = PeerId::random();
        for i in 0..5 {
            t.admit(key(100 + i), heavy);
        }
        let light = PeerId::random();
        assert!(stored(&t.admit(key(1), heavy)));
        assert!(stored(&t.admit(key(1), light)));
        // A newcomer with one record displaces the provider with six.
        let newcomer = PeerId::random();
        assert_eq!(
            t.admit(key(1), newcomer),
            Admission::Store {
                evict: vec![(key(1), heavy)],
                over_quota: false
            }
        );
        // Now both providers of the key hold one record: a third is refused, nothing changes.
        let third = PeerId::random();
        let before = t.len();
        assert_eq!(t.admit(key(1), third), Admission::Refuse(Refusal::KeyFull));
        assert_eq!(t.len(), before);
        assert_eq!(t.count_of(&third), 0);
        // A refresh of a held record is always fine.
        assert!(stored(&t.admit(key(1), light)));
    }

    #[test]
    fn the_total_is_bounded_by_dropping_the_least_recently_announced() {
        let mut t = RemoteProviders::new(ProviderLimits {
            total: 3,
            per_peer: 10,
            per_key: 8,
        });
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().take(3).enumerate() {
            t.admit(key(i as u32), *p);
        }
        t.admit(key(0), peers[0]); // refresh: peers[1]'s record is now the oldest
        let a = t.admit(key(9), peers[3]);
        assert_eq!(
            a,
            Admission::Store {
                evict: vec![(key(1), peers[1])],
                over_quota: false
            }
        );
        assert_eq!(t.len(), 3);
        t.remove(&key(0), &peers[0]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.count_of(&peers[0]), 0);
    }
}
