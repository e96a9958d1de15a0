//! Which peers to ask for content first: measured behaviour, then chance.
//!
//! Each peer asked for content gets a record of what happened: answers (with latency),
//! timeouts and errors, and bytes that did not match the id. [`ProviderRanking::rank`]
//! orders candidates in tiers: peers that served us, fastest first; peers we know nothing
//! about, in random order; peers that failed; peers that lied. Nothing in the order depends
//! on a peer's id, so a remote cannot grind an id that ranks first. The table is bounded
//! (least recently updated peers are forgotten).

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::PeerId;
use lru::LruCache;
use rand::Rng;
use rand::seq::SliceRandom;

/// Most peers remembered.
pub const MAX_RANKED_PEERS: usize = 4096;
/// Weight of the newest latency sample.
const EWMA_ALPHA: f64 = 0.3;

/// What happened when a peer was asked for content.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// It sent bytes that verified, after this long.
    Served(Duration),
    /// It said it does not have the content (an honest answer).
    NotFound,
    /// It did not answer within the per-candidate deadline.
    Timeout,
    /// The request failed otherwise (dial, protocol, malformed answer).
    Failed,
    /// It sent bytes that do not match the id.
    Mismatch,
}

#[derive(Debug, Clone, Default)]
struct Record {
    served: u32,
    failures: u32,
    mismatches: u32,
    latency: Option<f64>,
}

impl Record {
    /// Lower is asked earlier.
    fn tier(&self) -> u8 {
        if self.mismatches > 0 {
            3
        } else if self.failures > self.served {
            2
        } else if self.served > 0 {
            0
        } else {
            1
        }
    }
}

/// Per-peer content-serving records and the order they imply.
#[derive(Debug)]
pub struct ProviderRanking {
    peers: LruCache<PeerId, Record>,
}

impl Default for ProviderRanking {
    fn default() -> Self {
        Self::new(MAX_RANKED_PEERS)
    }
}

impl ProviderRanking {
    /// A table of at most `capacity` peers.
    pub fn new(capacity: usize) -> Self {
        Self {
            peers: LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("at least 1")),
        }
    }

    /// Records what `peer` did.
    pub fn record(&mut self, peer: PeerId, outcome: Outcome) {
        let r = self.peers.get_or_insert_mut(peer, Record::default);
        match outcome {
            Outcome::Served(took) => {
                r.served = r.served.saturating_add(1);
                let s = took.as_secs_f64();
                r.latency = Some(
                    r.latency
                        .map_or(s, |l| EWMA_ALPHA * s + (1.0 - EWMA_ALPHA) * l),
                );
            }
            Outcome::NotFound => {}
            Outcome::Timeout | Outcome::Failed => r.failures = r.failures.saturating_add(1),
            Outcome::Mismatch => r.mismatches = r.mismatches.saturating_add(1),
        }
    }

    /// How often `peer` sent bytes that did not match the id.
    pub fn mismatches(&self, peer: &PeerId) -> u32 {
        self.peers.peek(peer).map_or(0, |r| r.mismatches)
    }

    /// How often `peer` timed out or failed.
    #[cfg(test)]
    fn failures(&self, peer: &PeerId) -> u32 {
        self.peers.peek(peer).map_or(0, |r| r.failures)
    }

    /// `candidates` in the order to ask them (see the module docs). Random within a tier,
    /// except that peers that served us are sorted by their latency.
    pub fn rank(&self, mut candidates: Vec<PeerId>, rng: &mut impl Rng) -> Vec<PeerId> {
        candidates.shuffle(rng);
        let key = |p: &PeerId| {
            let r = self.peers.peek(p).cloned().unwrap_or_default();
            let tier = r.tier();
            let latency = if tier == 0 {
                r.latency.unwrap_or(f64::MAX)
            } else {
                0.0
            };
            (tier, latency)
        };
        // A stable sort keeps the shuffled order among equal keys.
        candidates.sort_by(|a, b| {
            let (ta, la) = key(a);
            let (tb, lb) = key(b);
            ta.cmp(&tb).then(la.total_cmp(&lb))
        });
        candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn measured_behaviour_orders_the_tiers() {
        let mut r = ProviderRanking::default();
        let (fast, slow, unknown, silent, liar) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        r.record(fast, Outcome::Served(5 * MS));
        r.record(slow, Outcome::Served(50 * MS));
        r.record(silent, Outcome::Timeout);
        r.record(liar, Outcome::Served(1 * MS));
        r.record(liar, Outcome::Mismatch);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..20 {
            let order = r.rank(vec![liar, silent, unknown, slow, fast], &mut rng);
            assert_eq!(order, vec![fast, slow, unknown, silent, liar]);
        }
        assert_eq!(r.mismatches(&liar), 1);
        assert_eq!(r.failures(&silent), 1);
    }

    #[test]
    fn unknown_peers_come_in_random_order_so_no_id_ranks_first() {
        let r = ProviderRanking::default();
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            firsts.insert(r.rank(peers.clone(), &mut rng)[0]);
        }
        assert_eq!(firsts.len(), peers.len(), "every peer is sometimes first");
    }

    #[test]
    fn a_peer_that_times_out_more_than_it_serves_drops_a_tier() {
        let mut r = ProviderRanking::default();
        let (flaky, unknown) = (PeerId::random(), PeerId::random());
        r.record(flaky, Outcome::Served(MS));
        r.record(flaky, Outcome::Timeout);
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(
            r.rank(vec![unknown, flaky], &mut rng)[0],
            flaky,
            "1:1 stays"
        );
        r.record(flaky, Outcome::Timeout);
        assert_eq!(r.rank(vec![flaky, unknown], &mut rng)[0], unknown);
        r.record(flaky, Outcome::NotFound);
        assert_eq!(r.failures(&flaky), 2, "not found is an honest answer");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut r = ProviderRanking::new(3);
        let peers: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        for p in &peers {
            r.record(*p, Outcome::Mismatch);
        }
        assert_eq!(r.peers.len(), 3);
        assert_eq!(r.mismatches(&peers[0]), 0, "forgotten");
        assert_eq!(r.mismatches(&peers[9]), 1);
    }
}
