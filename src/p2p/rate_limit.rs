//! Token buckets on the market and channel protocols, per identity and per address.
//!
//! Every inbound request of those protocols costs its peer one token, before the event loop
//! routes it and before anything decodes it, whatever the service later answers: a
//! refusal that is nobody's fault (an award for a bid this node never made, a bid for an
//! auction it does not run) costs its sender as much as an accepted request. A peer whose
//! bucket is empty is refused at once (its stream is dropped unanswered, counted as
//! `rate_limited`). Identities are free, so the identities connected from one IP address
//! also share an address bucket (refused as `rate_limited_address`); loopback connections are
//! not limited per address, since every node of a devnet on one machine shares 127.0.0.1.
//!
//! Besides the rate, [`InFlight`] caps how many of one peer's requests wait on a service at
//! once, so one peer never holds more than a bounded share of a service's inbox.
//!
//! Both live in the event loop rather than at the top of the services' request handlers: a
//! refused request then never takes a slot of a service's inbox (which a flood would fill
//! before the service could refuse anything), one limiter covers the market and channel
//! protocols together, and only the swarm knows the address a request's connection came
//! from. The price is that the event loop cannot tell a refusal from an acceptance (the
//! answers are opaque frames), so every request costs the same token.
//!
//! Plain state machines with an explicit clock, unit- and property-tested.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Instant;

use libp2p::PeerId;

/// A bucket's rate and size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketLimit {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Most tokens it holds (a full bucket admits this many requests at once).
    pub burst: f64,
}

/// One token bucket: `level` tokens as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
    /// Whether a request was refused since the bucket was created (it is logged once).
    refused: bool,
}

impl Bucket {
    fn full(limit: BucketLimit, now: Instant) -> Self {
        Self {
            level: limit.burst,
            at: now,
            refused: false,
        }
    }

    /// Adds what accrued since the last look, up to the burst.
    fn refill(&mut self, limit: BucketLimit, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + secs * limit.per_sec).min(limit.burst);
        self.at = now;
    }
}

/// Buckets by key, created full on first use and forgotten once full again (a full bucket
/// and no bucket are the same), so the table holds only the recently active.
#[derive(Debug)]
struct Buckets<K> {
    limit: BucketLimit,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Copy> Buckets<K> {
    fn new(limit: BucketLimit) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// The bucket of `key`, refilled to `now`.
    fn get(&mut self, key: K, now: Instant) -> &mut Bucket {
        let limit = self.limit;
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(limit, now));
        bucket.refill(limit, now);
        bucket
    }

    /// Drops the buckets that are full again by `now`.
    fn prune(&mut self, now: Instant) {
        let limit = self.limit;
        self.buckets.retain(|_, b| {
            b.refill(limit, now);
            b.level < limit.burst
        });
    }
}

/// What the limiter decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Within both buckets: route it (one token taken from each).
    Admit,
    /// The peer's own bucket is empty; `first`: the first refusal since its bucket was last
    /// full (worth a log line).
    PeerLimited {
        /// First refusal of this bucket.
        first: bool,
    },
    /// The bucket of the address it connected from is empty (`first` as above).
    AddressLimited {
        /// First refusal of this bucket.
        first: bool,
    },
}

impl Admission {
    /// The refusal's reason label, `None` when admitted.
    pub fn refusal_label(self) -> Option<&'static str> {
        match self {
            Self::Admit => None,
            Self::PeerLimited { .. } => Some("rate_limited"),
            Self::AddressLimited { .. } => Some("rate_limited_address"),
        }
    }
}

/// Token buckets per peer and per remote IP address.
#[derive(Debug)]
pub struct RateLimiter {
    peers: Buckets<PeerId>,
    addresses: Buckets<IpAddr>,
}

impl RateLimiter {
    /// Buckets of `peer` for each identity, `address` for each IP address.
    pub fn new(peer: BucketLimit, address: BucketLimit) -> Self {
        Self {
            peers: Buckets::new(peer),
            addresses: Buckets::new(address),
        }
    }

    /// Takes one token from `peer`'s bucket and from the bucket of `ip` (if the connection
    /// has an address that is limited), or refuses without taking any.
    pub fn admit(&mut self, peer: PeerId, ip: Option<IpAddr>, now: Instant) -> Admission {
        let peer_bucket = self.peers.get(peer, now);
        if peer_bucket.level < 1.0 {
            let first = !std::mem::replace(&mut peer_bucket.refused, true);
            return Admission::PeerLimited { first };
        }
        let ip = ip
            .map(|ip| ip.to_canonical())
            .filter(|ip| !ip.is_loopback());
        if let Some(ip) = ip {
            let address = self.addresses.get(ip, now);
            if address.level < 1.0 {
                let first = !std::mem::replace(&mut address.refused, true);
                return Admission::AddressLimited { first };
            }
            address.level -= 1.0;
        }
        self.peers.get(peer, now).level -= 1.0;
        Admission::Admit
    }

    /// Forgets the buckets that refilled by `now` (call it now and then).
    pub fn prune(&mut self, now: Instant) {
        self.peers.prune(now);
        self.addresses.prune(now);
    }

    /// Number of buckets held (peers and addresses).
    pub fn len(&self) -> usize {
        self.peers.buckets.len() + self.addresses.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Requests of each peer routed to a service and not answered yet, capped per peer.
#[derive(Debug)]
pub struct InFlight {
    max_per_peer: u32,
    counts: HashMap<PeerId, u32>,
}

impl InFlight {
    /// At most `max_per_peer` requests of one peer wait on the services at once.
    pub fn new(max_per_peer: u32) -> Self {
        Self {
            max_per_peer,
            counts: HashMap::new(),
        }
    }

    /// Counts one more request of `peer`, or returns false (nothing counted) at its cap.
    pub fn start(&mut self, peer: PeerId) -> bool {
        let n = self.counts.entry(peer).or_insert(0);
        if *n >= self.max_per_peer {
            return false;
        }
        *n += 1;
        true
    }

    /// One request of `peer` was answered (or given up on).
    pub fn done(&mut self, peer: &PeerId) {
        if let Some(n) = self.counts.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(peer);
            }
        }
    }

    /// Requests of `peer` in flight.
    pub fn of(&self, peer: &PeerId) -> u32 {
        self.counts.get(peer).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    const PEER: BucketLimit = BucketLimit {
        per_sec: 10.0,
        burst: 20.0,
    };
    const ADDRESS: BucketLimit = BucketLimit {
        per_sec: 30.0,
        burst: 50.0,
    };

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_peer_gets_its_burst_then_its_rate() {
        let mut l = RateLimiter::new(PEER, ADDRESS);
        let p = PeerId::random();
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(l.admit(p, ip("10.0.0.1"), t0), Admission::Admit);
        }
        assert_eq!(
            l.admit(p, ip("10.0.0.1"), t0),
            Admission::PeerLimited { first: true }
        );
        // A refusal takes nothing: after 100 ms, exactly one more token.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.admit(p, ip("10.0.0.1"), t1), Admission::Admit);
        assert_eq!(
            l.admit(p, ip("10.0.0.1"), t1),
            Admission::PeerLimited { first: false }
        );
        // Another peer is not affected.
        assert_eq!(
            l.admit(PeerId::random(), ip("10.0.0.2"), t1),
            Admission::Admit
        );
    }

    #[test]
    fn identities_from_one_address_share_its_bucket_and_others_are_untouched() {
        let mut l = RateLimiter::new(PEER, ADDRESS);
        let t0 = Instant::now();
        let sybils: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let mut admitted = 0;
        for s in &sybils {
            for _ in 0..20 {
                if l.admit(*s, ip("10.0.0.9"), t0) == Admission::Admit {
                    admitted += 1;
                }
            }
        }
        // Five fresh identities together get the address's burst, not five peer bursts.
        assert_eq!(admitted, 50);
        let fresh = PeerId::random();
        assert_eq!(
            l.admit(fresh, ip("10.0.0.9"), t0),
            Admission::AddressLimited { first: false }
        );
        // IPv4-mapped IPv6 is the same address.
        assert_eq!(
            l.admit(fresh, ip("::ffff:10.0.0.9"), t0),
            Admission::AddressLimited { first: false }
        );
        // A peer on another address still gets in.
        assert_eq!(
            l.admit(PeerId::random(), ip("10.0.0.10"), t0),
            Admission::Admit
        );
        // Loopback is limited per identity only.
        for _ in 0..3 {
            assert_eq!(
                l.admit(PeerId::random(), ip("127.0.0.1"), t0),
                Admission::Admit
            );
        }
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let mut l = RateLimiter::new(PEER, ADDRESS);
        let t0 = Instant::now();
        for _ in 0..100 {
            l.admit(PeerId::random(), ip("10.0.0.1"), t0);
        }
        assert!(!l.is_empty());
        l.prune(t0 + Duration::from_secs(1));
        assert!(!l.is_empty(), "not refilled yet");
        l.prune(t0 + Duration::from_secs(3));
        assert!(l.is_empty());
    }

    #[test]
    fn in_flight_is_capped_per_peer() {
        let mut f = InFlight::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(f.start(a));
        assert!(f.start(a));
        assert!(!f.start(a));
        assert!(f.start(b));
        f.done(&a);
        assert_eq!(f.of(&a), 1);
        assert!(f.start(a));
        f.done(&a);
        f.done(&a);
        f.done(&a);
        assert_eq!(f.of(&a), 0);
        assert!(!f.counts.contains_key(&a));
    }

    proptest! {
        /// Over any schedule of requests, one peer is admitted at most its burst plus its
        /// rate times the time elapsed, and the identities of one address together at most
        /// the address's burst plus its rate times the time.
        #[test]
        fn admitted_never_exceeds_burst_plus_rate(
            steps in proptest::collection::vec((0u64..200, 0usize..4), 1..400),
        ) {
            let mut l = RateLimiter::new(PEER, ADDRESS);
            let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
            let t0 = Instant::now();
            let mut now = t0;
            let mut per_peer = [0u32; 4];
            let mut total = 0u32;
            for (gap_ms, who) in steps {
                now += Duration::from_millis(gap_ms);
                if l.admit(peers[who], ip("192.0.2.1"), now) == Admission::Admit {
                    per_peer[who] += 1;
                    total += 1;
                }
                let secs = now.duration_since(t0).as_secs_f64();
                for n in per_peer {
                    prop_assert!(f64::from(n) <= PEER.burst + PEER.per_sec * secs + 1e-9);
                }
                prop_assert!(f64::from(total) <= ADDRESS.burst + ADDRESS.per_sec * secs + 1e-9);
            }
        }
    }
}
