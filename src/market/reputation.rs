//! Reputation: what this node learned of each peer from tasks the peer executed for it.
//!
//! A peer's score lies in `[0, 1]`, neutral 0.5, and decays toward neutral with a half-life.
//! A verified success raises it by at most `max_gain`, scaled by the price relative to
//! `reference_price` (so cheap tasks cannot farm it) and by the room left below 1; a failure
//! lowers it by `failure_penalty`. Below `ban_threshold` the peer is banned for `ban_secs`.
//! A winner that could not be reached gets a strike instead: `unreachable_strikes` strikes
//! within `unreachable_window_secs` count as one failure, so a partition does not get an
//! honest provider banned but a silent identity cannot fail tasks for free.
//! At most `max_peers` records are kept (the least recently updated goes). Pure: time is
//! passed in as Unix milliseconds.

use std::num::NonZeroUsize;

use libp2p::PeerId;
use lru::LruCache;
use serde::{Deserialize, Serialize};

/// The neutral score of a peer we know nothing about.
pub const NEUTRAL: f64 = 0.5;

/// Reputation settings (`[market.reputation]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// Time for a score's distance from neutral to halve, in seconds.
    pub half_life_secs: u64,
    /// Largest rise of a score from one verified success.
    pub max_gain: f64,
    /// Price at which a success earns the full `max_gain`; cheaper tasks earn less.
    pub reference_price: u64,
    /// Fall of a score on a failed or timed-out task.
    pub failure_penalty: f64,
    /// A peer whose score falls below this is disconnected and blocked.
    pub ban_threshold: f64,
    /// How long a ban lasts, in seconds.
    pub ban_secs: u64,
    /// Most peers with a record; the least recently updated is dropped.
    pub max_peers: usize,
    /// Times a winner may be unreachable within `unreachable_window_secs` before it counts
    /// as one failure (1: every time).
    pub unreachable_strikes: u32,
    /// The window over which unreachable strikes add up, in seconds.
    pub unreachable_window_secs: u64,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            half_life_secs: 3600,
            max_gain: 0.05,
            reference_price: 100,
            failure_penalty: 0.15,
            ban_threshold: 0.2,
            ban_secs: 600,
            max_peers: 10_000,
            unreachable_strikes: 3,
            unreachable_window_secs: 600,
        }
    }
}

impl ReputationConfig {
    /// Checks the ranges; the message names the key.
    pub fn validate(&self) -> Result<(), crate::config_value::ConfigValueError> {
        use crate::config_value::{ConfigValueError, in_range};
        in_range("market.reputation.max_gain", self.max_gain, 0.0..=1.0)?;
        let penalty = self.failure_penalty;
        in_range("market.reputation.failure_penalty", penalty, 0.0..=1.0)?;
        in_range(
            "market.reputation.ban_threshold",
            self.ban_threshold,
            0.0..=1.0,
        )?;
        if self.ban_threshold >= NEUTRAL {
            return Err(ConfigValueError::new(
                "market.reputation.ban_threshold",
                "must be below the neutral score 0.5, or every new peer would be banned",
            ));
        }
        in_range(
            "market.reputation.ban_secs",
            self.ban_secs,
            0..=30 * 24 * 3600,
        )?;
        let half_life = self.half_life_secs;
        in_range(
            "market.reputation.half_life_secs",
            half_life,
            1..=365 * 24 * 3600,
        )?;
        let price = self.reference_price;
        in_range("market.reputation.reference_price", price, 1..=1 << 48)?;
        in_range(
            "market.reputation.max_peers",
            self.max_peers,
            1..=10_000_000,
        )?;
        in_range(
            "market.reputation.unreachable_strikes",
            self.unreachable_strikes,
            1..=100,
        )?;
        in_range(
            "market.reputation.unreachable_window_secs",
            self.unreachable_window_secs,
            1..=30 * 24 * 3600,
        )
    }
}

/// What this node knows of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Tasks the peer finished for us, successfully or not.
    pub executed: u64,
    /// Verified successes.
    pub successes: u64,
    /// Failures: wrong results, timeouts, refused awards.
    pub failures: u64,
    /// Sum of task durations (award to verified result), milliseconds.
    pub total_duration_ms: u64,
    /// Sum of prices paid.
    pub total_cost: u64,
    /// The score at `updated_ms`.
    pub score: f64,
    /// When the score was last set (Unix ms).
    pub updated_ms: u64,
    /// Banned until this instant (Unix ms), 0 if not banned.
    pub banned_until_ms: u64,
    /// Awards it won and could not be reached for.
    #[serde(default)]
    pub unreachable: u64,
    /// Unreachable strikes in the current window, not yet counted as a failure.
    #[serde(default)]
    pub strikes: u32,
    /// When the current window of strikes began (Unix ms).
    #[serde(default)]
    pub strikes_since_ms: u64,
}

impl Default for Record {
    fn default() -> Self {
        Self {
            executed: 0,
            successes: 0,
            failures: 0,
            total_duration_ms: 0,
            total_cost: 0,
            score: NEUTRAL,
            updated_ms: 0,
            banned_until_ms: 0,
            unreachable: 0,
            strikes: 0,
            strikes_since_ms: 0,
        }
    }
}

impl Record {
    /// Whether the peer is on probation: no verified result for this node yet.
    pub fn on_probation(&self) -> bool {
        self.successes == 0
    }

    /// Successes over tasks executed (0 without tasks).
    pub fn success_rate(&self) -> f64 {
        if self.executed == 0 {
            0.0
        } else {
            self.successes as f64 / self.executed as f64
        }
    }

    /// Mean duration in seconds of the tasks executed.
    pub fn mean_duration_secs(&self) -> f64 {
        if self.executed == 0 {
            0.0
        } else {
            self.total_duration_ms as f64 / 1000.0 / self.executed as f64
        }
    }

    /// Mean price of the successful tasks.
    pub fn mean_cost(&self) -> f64 {
        if self.successes == 0 {
            0.0
        } else {
            self.total_cost as f64 / self.successes as f64
        }
    }
}

/// The outcome of an update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// The record after the update.
    pub record: Record,
    /// Whether this update banned the peer.
    pub banned: bool,
}

/// Every peer's record.
#[derive(Debug)]
pub struct Reputation {
    config: ReputationConfig,
    records: LruCache<PeerId, Record>,
}

impl Reputation {
    /// An empty table.
    pub fn new(config: ReputationConfig) -> Self {
        let cap = NonZeroUsize::new(config.max_peers).unwrap_or(NonZeroUsize::MIN);
        Self {
            config,
            records: LruCache::new(cap),
        }
    }

    fn decayed(&self, record: &Record, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(record.updated_ms) as f64 / 1000.0;
        let factor = 0.5f64.powf(elapsed / self.config.half_life_secs as f64);
        NEUTRAL + (record.score - NEUTRAL) * factor
    }

    /// The peer's score now (neutral if unknown).
    pub fn score(&self, peer: &PeerId, now_ms: u64) -> f64 {
        self.records
            .peek(peer)
            .map_or(NEUTRAL, |r| self.decayed(r, now_ms))
    }

    /// Whether the peer is banned now.
    pub fn is_banned(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.records
            .peek(peer)
            .is_some_and(|r| r.banned_until_ms > now_ms)
    }

    /// The peer's record with its score decayed to `now_ms`.
    pub fn record(&self, peer: &PeerId, now_ms: u64) -> Option<Record> {
        self.records.peek(peer).map(|r| Record {
            score: self.decayed(r, now_ms),
            ..*r
        })
    }

    fn update(
        &mut self,
        peer: PeerId,
        now_ms: u64,
        change: impl FnOnce(&mut Record, f64),
    ) -> Update {
        let mut record = self.record(&peer, now_ms).unwrap_or_default();
        let was_banned = record.banned_until_ms > now_ms;
        change(&mut record, self.config.max_gain);
        record.score = record.score.clamp(0.0, 1.0);
        record.updated_ms = now_ms;
        let banned = !was_banned && record.score < self.config.ban_threshold;
        if banned {
            record.banned_until_ms = now_ms.saturating_add(self.config.ban_secs * 1000);
        }
        self.records.put(peer, record);
        Update { record, banned }
    }

    /// A verified success of a task priced `price` that took `duration_ms`.
    pub fn success(&mut self, peer: PeerId, duration_ms: u64, price: u64, now_ms: u64) -> Update {
        let scale = (price as f64 / self.config.reference_price as f64).min(1.0);
        self.update(peer, now_ms, |r, max_gain| {
            r.executed += 1;
            r.successes += 1;
            r.total_duration_ms = r.total_duration_ms.saturating_add(duration_ms);
            r.total_cost = r.total_cost.saturating_add(price);
            r.score += max_gain * scale * (1.0 - r.score);
        })
    }

    /// A failed task (wrong result, timeout, refused award) after `duration_ms`.
    pub fn failure(&mut self, peer: PeerId, duration_ms: u64, now_ms: u64) -> Update {
        let penalty = self.config.failure_penalty;
        self.update(peer, now_ms, |r, _| {
            r.executed += 1;
            r.failures += 1;
            r.total_duration_ms = r.total_duration_ms.saturating_add(duration_ms);
            r.score -= penalty;
        })
    }

    /// The peer won an award and could not be reached for it: a strike. The
    /// `unreachable_strikes`-th strike within `unreachable_window_secs` counts as one failure
    /// (and starts a new window); fewer leave the score alone.
    pub fn unreachable(&mut self, peer: PeerId, now_ms: u64) -> Update {
        let penalty = self.config.failure_penalty;
        let strikes = self.config.unreachable_strikes.max(1);
        let window_ms = self.config.unreachable_window_secs.saturating_mul(1000);
        self.update(peer, now_ms, |r, _| {
            r.unreachable += 1;
            if r.strikes == 0 || now_ms.saturating_sub(r.strikes_since_ms) > window_ms {
                r.strikes = 0;
                r.strikes_since_ms = now_ms;
            }
            r.strikes += 1;
            if r.strikes >= strikes {
                r.strikes = 0;
                r.executed += 1;
                r.failures += 1;
                r.score -= penalty;
            }
        })
    }

    /// The peer broke the protocol (a forged, replayed or out-of-range message): its score
    /// falls by half the failure penalty, without counting a task.
    pub fn misbehaved(&mut self, peer: PeerId, now_ms: u64) -> Update {
        let penalty = self.config.failure_penalty / 2.0;
        self.update(peer, now_ms, |r, _| r.score -= penalty)
    }

    /// Every record, scores decayed to `now_ms`, most recently updated first.
    pub fn snapshot(&self, now_ms: u64) -> Vec<(PeerId, Record)> {
        self.records
            .iter()
            .map(|(p, r)| {
                (
                    *p,
                    Record {
                        score: self.decayed(r, now_ms),
                        ..*r
                    },
                )
            })
            .collect()
    }

    /// The table as stored on disk (JSON), oldest first so a reload keeps the order.
    pub fn to_json(&self) -> Vec<u8> {
        let peers: Vec<Stored> = self
            .records
            .iter()
            .rev()
            .map(|(p, r)| Stored {
                peer: p.to_string(),
                record: *r,
            })
            .collect();
        serde_json::to_vec_pretty(&File { version: 1, peers }).expect("serialisable")
    }

    /// Loads a table written by [`Reputation::to_json`]. Entries with bad peer ids or
    /// out-of-range scores are skipped.
    pub fn from_json(config: ReputationConfig, bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let file: File = serde_json::from_slice(bytes)?;
        let mut table = Self::new(config);
        for s in file.peers {
            if let Ok(peer) = s.peer.parse::<PeerId>()
                && (0.0..=1.0).contains(&s.record.score)
            {
                table.records.put(peer, s.record);
            }
        }
        Ok(table)
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    peer: String,
    #[serde(flatten)]
    record: Record,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    peers: Vec<Stored>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn scores_decay_toward_neutral() {
        let mut t = Reputation::new(ReputationConfig::default());
        let p = PeerId::random();
        let s0 = t.failure(p, 10, 0).record.score;
        assert!(s0 < NEUTRAL);
        let hour = 3_600_000;
        let s1 = t.score(&p, hour);
        assert!(
            (NEUTRAL - s1 - (NEUTRAL - s0) / 2.0).abs() < 1e-9,
            "halved in one half-life"
        );
        assert!((t.score(&p, 100 * hour) - NEUTRAL).abs() < 1e-9);
    }

    #[test]
    fn cheap_tasks_earn_little_and_failures_lead_to_a_ban() {
        let mut t = Reputation::new(ReputationConfig::default());
        let p = PeerId::random();
        let cheap = t.success(p, 10, 1, 0).record.score - NEUTRAL;
        let q = PeerId::random();
        let full = t.success(q, 10, 1000, 0).record.score - NEUTRAL;
        assert!(
            cheap > 0.0 && cheap * 50.0 < full + 1e-12,
            "{cheap} vs {full}"
        );
        assert!(full <= 0.05 + 1e-12);
        let mut banned = false;
        for i in 0..3 {
            banned |= t.failure(p, 10, i).banned;
        }
        assert!(banned && t.is_banned(&p, 10));
        assert!(!t.is_banned(&p, 10 + 600_000));
        let r = t.record(&p, 10).unwrap();
        assert_eq!((r.executed, r.successes, r.failures), (4, 1, 3));
    }

    #[test]
    fn the_table_is_bounded_and_round_trips() {
        let config = ReputationConfig {
            max_peers: 3,
            ..ReputationConfig::default()
        };
        let mut t = Reputation::new(config.clone());
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            t.success(*p, 100, 50, i as u64);
        }
        assert_eq!(t.snapshot(10).len(), 3);
        assert!(t.record(&peers[0], 10).is_none());
        let back = Reputation::from_json(config, &t.to_json()).unwrap();
        assert_eq!(back.snapshot(10), t.snapshot(10));
    }

    #[test]
    fn unreachable_counts_gently_but_not_for_free() {
        let config = ReputationConfig::default();
        let mut t = Reputation::new(config.clone());
        let p = PeerId::random();
        let minute = 60_000;
        // Two strikes within the window: the score does not move.
        t.unreachable(p, 0);
        let u = t.unreachable(p, minute);
        assert_eq!(u.record.score, NEUTRAL);
        assert_eq!((u.record.unreachable, u.record.failures), (2, 0));
        // The third counts as one failure.
        let u = t.unreachable(p, 2 * minute);
        assert!((u.record.score - (NEUTRAL - config.failure_penalty)).abs() < 1e-9);
        assert_eq!((u.record.unreachable, u.record.failures), (3, 1));
        assert!(!u.banned);
        // Strikes spread wider than the window never add up.
        let q = PeerId::random();
        for i in 0..10 {
            let u = t.unreachable(q, i * (config.unreachable_window_secs * 1000 + 1));
            assert_eq!(u.record.failures, 0);
        }
        // A silent identity that fails award after award is banned in the end.
        let s = PeerId::random();
        let banned = (0..20).any(|i| t.unreachable(s, i * 1_000).banned);
        assert!(banned);
        // A refusal costs as much as `unreachable_strikes` strikes.
        let r = PeerId::random();
        assert!(t.failure(r, 0, 0).record.score < t.score(&p, 2 * minute) + 1e-9);
    }

    #[test]
    fn records_of_an_older_version_load_without_strikes() {
        let p = PeerId::random();
        let old = format!(
            r#"{{"version":1,"peers":[{{"peer":"{p}","executed":1,"successes":1,"failures":0,"total_duration_ms":5,"total_cost":10,"score":0.6,"updated_ms":0,"banned_until_ms":0}}]}}"#
        );
        let t = Reputation::from_json(ReputationConfig::default(), old.as_bytes()).unwrap();
        let r = t.record(&p, 0).unwrap();
        assert_eq!((r.unreachable, r.strikes, r.successes), (0, 0, 1));
        assert!(!r.on_probation());
    }

    proptest! {
        /// However strikes and failures interleave: a peer is never banned by fewer than
        /// `unreachable_strikes` strikes per failure penalty, and scores stay in bounds.
        #[test]
        fn strikes_cost_at_most_one_failure_per_window_quota(
            gaps in prop::collection::vec(0u64..200_000, 1..100),
            strikes in 1u32..5,
        ) {
            let config = ReputationConfig { unreachable_strikes: strikes, ..ReputationConfig::default() };
            let mut t = Reputation::new(config);
            let p = PeerId::random();
            let mut now = 0;
            for (n, gap) in gaps.iter().enumerate() {
                now += gap;
                let u = t.unreachable(p, now);
                prop_assert!((0.0..=1.0).contains(&u.record.score));
                prop_assert!(u.record.failures <= (n as u64 + 1) / u64::from(strikes));
                prop_assert_eq!(u.record.unreachable, n as u64 + 1);
            }
        }

        #[test]
        fn scores_stay_in_bounds(
            events in prop::collection::vec((any::<bool>(), 0u64..10_000, 0u64..100_000), 1..200)
        ) {
            let mut t = Reputation::new(ReputationConfig::default());
            let p = PeerId::random();
            let mut now = 0;
            for (ok, price, dt) in events {
                now += dt;
                let u = if ok { t.success(p, dt, price, now) } else { t.failure(p, dt, now) };
                prop_assert!((0.0..=1.0).contains(&u.record.score));
                prop_assert!((0.0..=1.0).contains(&t.score(&p, now + dt)));
            }
        }
    }
}
