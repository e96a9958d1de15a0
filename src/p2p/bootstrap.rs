//! Redialing the configured bootstrap peers with exponential backoff: a plain state machine
//! the event loop feeds with dial outcomes and connection events, and asks which peers are
//! due. All arithmetic saturates, so no configured duration can overflow it.

use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// A connection to a bootstrap peer must last this long before its redial backoff resets,
/// so a peer that accepts and drops at once is not redialed at the initial rate forever.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// Far enough in the future to mean "never" without overflowing `Instant`.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug)]
struct Peer {
    id: PeerId,
    addr: Multiaddr,
    connected_at: Option<Instant>,
    dialing: bool,
    backoff: Duration,
    next_dial: Instant,
}

/// The bootstrap peers and when each is next dialed.
#[derive(Debug)]
pub struct Bootstrap {
    peers: Vec<Peer>,
    initial: Duration,
    max: Duration,
}

/// `now + d`, or as far as `Instant` can go.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

impl Bootstrap {
    /// Every peer is due at `now`.
    pub fn new(
        peers: Vec<(PeerId, Multiaddr)>,
        initial: Duration,
        max: Duration,
        now: Instant,
    ) -> Self {
        let max = max.max(initial);
        Self {
            peers: peers
                .into_iter()
                .map(|(id, addr)| Peer {
                    id,
                    addr,
                    connected_at: None,
                    dialing: false,
                    backoff: initial,
                    next_dial: now,
                })
                .collect(),
            initial,
            max,
        }
    }

    fn peer(&mut self, id: &PeerId) -> Option<&mut Peer> {
        self.peers.iter_mut().find(|p| p.id == *id)
    }

    /// Whether a dial of `id` is under way.
    pub fn is_dialing(&self, id: &PeerId) -> bool {
        self.peers.iter().any(|p| p.id == *id && p.dialing)
    }

    /// The peers to dial now; they are marked as being dialed.
    pub fn due(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        self.peers
            .iter_mut()
            .filter(|p| p.connected_at.is_none() && !p.dialing && p.next_dial <= now)
            .map(|p| {
                p.dialing = true;
                (p.id, p.addr.clone())
            })
            .collect()
    }

    /// The swarm did not start the dial (e.g. a connection is already being set up): look
    /// again after the initial delay.
    pub fn dial_not_started(&mut self, id: &PeerId, now: Instant) {
        let initial = self.initial;
        if let Some(p) = self.peer(id) {
            p.dialing = false;
            p.next_dial = later(now, initial);
        }
    }

    /// A dial failed. Returns the delay before the next one.
    pub fn dial_failed(&mut self, id: &PeerId, now: Instant) -> Option<Duration> {
        let max = self.max;
        let p = self.peer(id)?;
        p.dialing = false;
        let wait = p.backoff;
        p.next_dial = later(now, wait);
        p.backoff = p.backoff.saturating_mul(2).min(max);
        Some(wait)
    }

    /// A connection to `id` was established. Returns true if the peer was not connected
    /// before (the caller then starts a Kademlia bootstrap through it).
    pub fn connected(&mut self, id: &PeerId, now: Instant) -> bool {
        match self.peer(id) {
            Some(p) if p.connected_at.is_none() => {
                p.connected_at = Some(now);
                p.dialing = false;
                true
            }
            _ => false,
        }
    }

    /// The last connection to `id` closed. Returns the delay before the redial. The backoff
    /// resets only if the connection was stable.
    pub fn disconnected(&mut self, id: &PeerId, now: Instant) -> Option<Duration> {
        let (initial, max) = (self.initial, self.max);
        let p = self.peer(id)?;
        let stable = p
            .connected_at
            .is_some_and(|t| now.saturating_duration_since(t) >= STABLE_CONNECTION);
        if stable {
            p.backoff = initial;
        }
        p.connected_at = None;
        let wait = p.backoff;
        p.next_dial = later(now, wait);
        if !stable {
            p.backoff = p.backoff.saturating_mul(2).min(max);
        }
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn one(initial: Duration, max: Duration) -> (Bootstrap, PeerId, Instant) {
        let id = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{id}").parse().unwrap();
        let now = Instant::now();
        (Bootstrap::new(vec![(id, addr)], initial, max, now), id, now)
    }

    #[test]
    fn failed_dials_back_off_exponentially_up_to_the_cap() {
        let (mut b, id, t0) = one(100 * MS, 350 * MS);
        assert_eq!(b.due(t0).len(), 1);
        assert!(b.due(t0).is_empty(), "a dial under way is not repeated");
        assert!(b.is_dialing(&id));
        let mut now = t0;
        let mut waits = vec![];
        for _ in 0..4 {
            let wait = b.dial_failed(&id, now).unwrap();
            waits.push(wait);
            assert!(
                b.due(now + wait - MS).is_empty(),
                "not due before the backoff"
            );
            now += wait;
            assert_eq!(b.due(now).len(), 1);
        }
        assert_eq!(waits, vec![100 * MS, 200 * MS, 350 * MS, 350 * MS]);
    }

    #[test]
    fn a_stable_connection_resets_the_backoff_and_a_flapping_one_does_not() {
        let (mut b, id, t0) = one(100 * MS, 10_000 * MS);
        b.due(t0);
        b.dial_failed(&id, t0);
        b.due(t0 + 100 * MS);
        assert!(b.connected(&id, t0 + 100 * MS));
        assert!(
            !b.connected(&id, t0 + 101 * MS),
            "second connection is not news"
        );
        // Drops at once: the backoff keeps growing.
        assert_eq!(b.disconnected(&id, t0 + 200 * MS), Some(200 * MS));
        b.due(t0 + 400 * MS);
        b.connected(&id, t0 + 400 * MS);
        let later = t0 + 400 * MS + STABLE_CONNECTION;
        assert_eq!(b.disconnected(&id, later), Some(100 * MS), "stable: reset");
    }

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let huge = Duration::from_millis(u64::MAX);
        let (mut b, id, t0) = one(huge, huge);
        b.due(t0);
        for _ in 0..70 {
            b.dial_failed(&id, t0);
        }
        assert!(b.due(t0).is_empty());
        b.connected(&id, t0);
        assert_eq!(b.disconnected(&id, t0), Some(huge));
        b.dial_not_started(&id, t0);
    }

    #[test]
    fn unknown_peers_are_ignored() {
        let (mut b, _, t0) = one(MS, MS);
        let other = PeerId::random();
        assert_eq!(b.dial_failed(&other, t0), None);
        assert!(!b.connected(&other, t0));
        assert_eq!(b.disconnected(&other, t0), None);
    }
}
