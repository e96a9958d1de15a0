//! Where peers stand with this node: the reputation table, bans, and their persistence in
//! the ledger (written at most once a second when changed, and last at shutdown).

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::PeerId;

use super::{Job, MarketActor, REPUTATION_FILE, Timer, after};
use crate::ledger::Write;
use crate::market::MarketConfig;
use crate::market::reputation::{Record, Reputation};
use crate::market::wire::now_ms;

/// How often reputation is written to the ledger when it changed.
pub(super) const PERSIST_EVERY: Duration = Duration::from_secs(1);

/// The reputation table from the ledger's bytes, or from the file of an older version
/// (returned so it is removed once imported), or empty.
pub(super) fn load_reputation(
    config: &MarketConfig,
    stored: Option<Vec<u8>>,
    data_dir: &Path,
) -> (Reputation, Option<PathBuf>) {
    let legacy = data_dir.join(REPUTATION_FILE);
    let (stored, legacy_file) = match stored {
        Some(bytes) => (Some(bytes), None),
        None => match std::fs::read(&legacy) {
            Ok(bytes) => (Some(bytes), Some(legacy)),
            Err(_) => (None, None),
        },
    };
    let reputation = match stored {
        Some(bytes) => {
            Reputation::from_json(config.reputation.clone(), &bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring unreadable reputation records");
                Reputation::new(config.reputation.clone())
            })
        }
        None => Reputation::new(config.reputation.clone()),
    };
    (reputation, legacy_file)
}

impl MarketActor {
    /// Scores decay with time: the gauges of the tracked peers follow.
    pub(super) fn refresh_peer_gauges(&mut self) {
        let now = now_ms();
        for peer in self.metrics.tracked_peers() {
            if let Some(record) = self.reputation.record(&peer, now) {
                self.metrics.refresh_score(peer, record.score);
            }
        }
        self.metrics.peers_on_probation(self.peers_on_probation());
    }

    pub(super) fn persist(&mut self) {
        self.dirty = false;
        let bytes = self.reputation.to_json();
        let ledger = self.ledger.clone();
        let legacy = self.legacy_file.take();
        self.jobs.spawn(async move {
            match ledger.commit(vec![Write::Reputation(bytes)]).await {
                Err(e) => tracing::warn!(error = %e, "cannot save reputation"),
                Ok(()) => {
                    if let Some(path) = legacy {
                        // Imported into the ledger: the old file has served its purpose.
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            Job::Done
        });
    }

    pub(super) fn block_banned_peers(&mut self) {
        let now = now_ms();
        for (peer, record) in self.reputation.snapshot(now) {
            if record.banned_until_ms > now {
                self.ban(peer, record.banned_until_ms - now);
            }
        }
    }

    fn ban(&mut self, peer: PeerId, for_ms: u64) {
        tracing::warn!(%peer, secs = for_ms / 1000, "banning peer for bad reputation");
        let p2p = self.p2p.clone();
        self.jobs.spawn(async move {
            let _ = p2p.block(peer).await;
            Job::Done
        });
        self.jobs
            .spawn(after(Duration::from_millis(for_ms), Timer::Unban(peer)));
    }

    pub(super) fn unban(&mut self, peer: PeerId) {
        let p2p = self.p2p.clone();
        self.jobs.spawn(async move {
            let _ = p2p.unblock(peer).await;
            Job::Done
        });
    }

    /// Bans `peer` for the configured time if its record says so.
    fn ban_if(&mut self, peer: PeerId, banned: bool) {
        if banned {
            self.ban(peer, self.config.reputation.ban_secs * 1000);
        }
    }

    /// Dispute evidence convicted `cheater` of cheating on a channel.
    pub(super) fn convicted(&mut self, cheater: PeerId) {
        let update = self.reputation.misbehaved(cheater, now_ms());
        self.peer_updated(cheater, &update.record);
        self.ban_if(cheater, update.banned);
    }

    /// A peer misbehaved in a way the protocol forbids: its score falls.
    pub(super) fn penalise(&mut self, peer: PeerId) {
        let update = self.reputation.misbehaved(peer, now_ms());
        self.dirty = true;
        self.metrics.peer_score(peer, update.record.score);
        self.ban_if(peer, update.banned);
    }

    /// The winner of a task delivered a verified result.
    pub(super) fn provider_succeeded(&mut self, winner: PeerId, took_ms: u64, price: u64) {
        let update = self.reputation.success(winner, took_ms, price, now_ms());
        self.peer_updated(winner, &update.record);
    }

    /// The winner of a task failed it by its own fault.
    pub(super) fn provider_failed(&mut self, winner: PeerId, took_ms: u64) {
        let update = self.reputation.failure(winner, took_ms, now_ms());
        self.peer_updated(winner, &update.record);
        self.ban_if(winner, update.banned);
    }

    /// The winner of a task could not be reached: a strike (several count as a failure).
    pub(super) fn provider_unreachable(&mut self, winner: PeerId) {
        let update = self.reputation.unreachable(winner, now_ms());
        self.dirty = true;
        self.metrics.peer_score(winner, update.record.score);
        self.ban_if(winner, update.banned);
    }

    fn peer_updated(&mut self, peer: PeerId, record: &Record) {
        self.dirty = true;
        self.metrics.peer_record(peer, record);
    }
}
