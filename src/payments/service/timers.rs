//! What time decides: re-sends, the end of challenge windows, opens given up, vanished peers, expired locks refunded.

use super::*;

impl PaymentsActor {
    pub(super) fn on_tick(&mut self) {
        let now = Instant::now();
        let now_ms = now_ms();
        let challenge = self.config.challenge_secs * 1000;
        let vanished = Duration::from_secs(self.config.vanished_close_secs);
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            let Some(e) = self.channels.get_mut(&id) else {
                continue;
            };
            match &e.channel.status {
                Status::Settled { .. } => continue,
                Status::Closing(close) => {
                    if now_ms >= close.at_ms.saturating_add(challenge) {
                        let _ = e.channel.settle_unilaterally(now_ms);
                        self.settle(id, true);
                    } else if !e.closing_sent && e.retry_at.is_none_or(|t| t <= now) {
                        self.send_close(id);
                    }
                    continue;
                }
                Status::Open | Status::Opening => {}
            }
            if e.channel.status == Status::Opening
                && now.duration_since(e.last_heard) >= OPEN_GIVE_UP
            {
                self.abandon_open(id, "the peer did not answer the open");
                continue;
            }
            self.check_unanswered(id, now);
            self.close_unusable(id);
            self.close_if_idle(id, now, now_ms);
            let Some(e) = self.channels.get_mut(&id) else {
                continue;
            };
            if !matches!(e.channel.status, Status::Open | Status::Opening) {
                continue;
            }
            // Vanished: no progress from the peer for `vanished_close_secs`, counted from when
            // we started waiting on it (a proposal made, one of our locks expired), not from
            // its last progress: a channel idle for a while is not closed by its next payment.
            let vanished_ms = vanished.as_millis() as u64;
            let proposal_unanswered = e.channel.pending.is_some()
                && now.duration_since(e.last_heard.max(e.proposed_at)) >= vanished;
            let refund_unanswered = now.duration_since(e.last_heard) >= vanished
                && e.channel.latest.state.locks.iter().any(|l| {
                    l.payer == e.channel.local
                        && l.expires_at_ms.saturating_add(vanished_ms) <= now_ms
                });
            if (proposal_unanswered || refund_unanswered) && e.channel.status == Status::Open {
                tracing::warn!(channel = %id, peer = %e.channel.peer(), "peer vanished: closing unilaterally");
                let _ = self.close_unilaterally(id);
                continue;
            }
            if e.channel.pending.is_some() && !e.in_flight && e.retry_at.is_some_and(|t| t <= now) {
                e.retry_at = None;
                self.send(id);
                continue;
            }
            if e.channel.pending.is_none() && !e.in_flight && e.retry_at.is_some_and(|t| t <= now) {
                e.retry_at = None;
                self.pump(id);
            }
            self.sweep_expired(id, now_ms);
            self.due_refunds(id);
        }
    }

    /// Refunds our own expired locks that nothing else will resolve (their task was lost in
    /// a restart, or its refund was asked for earlier).
    pub(super) fn sweep_expired(&mut self, id: ChannelId, now_ms: u64) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let local = e.channel.local;
        let expired: Vec<EscrowId> = e
            .channel
            .latest
            .state
            .locks
            .iter()
            .filter(|l| l.payer == local && l.expires_at_ms <= now_ms)
            .map(|l| l.escrow_id)
            .filter(|x| {
                // A lock whose task was verified is released, whatever its age.
                !e.releasing(x)
                    && !e.refunds_due.iter().any(|(d, _)| d == x)
                    && !e
                        .queue
                        .iter()
                        .any(|q| matches!(&q.op, Op::Refund(r) if r == x))
            })
            .collect();
        for x in expired {
            e.refunds_due.push((x, "expired"));
        }
    }

    /// Queues the refunds whose locks have expired.
    pub(super) fn due_refunds(&mut self, id: ChannelId) {
        let now = now_ms();
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let mut ready = Vec::new();
        let releasing: Vec<EscrowId> = e
            .refunds_due
            .iter()
            .map(|(x, _)| *x)
            .filter(|x| e.releasing(x))
            .collect();
        e.refunds_due.retain(|(x, reason)| {
            let Some(lock) = e.channel.lock(x) else {
                // Released, refunded or not yet locked: nothing to refund now.
                return e.channel.pending.is_some()
                    || e.queue
                        .iter()
                        .any(|q| matches!(&q.op, Op::Lock { escrow_id, .. } if escrow_id == x));
            };
            if releasing.contains(x) {
                // Verified after all (a retry may have found the result late): no refund.
                false
            } else if lock.expires_at_ms <= now {
                ready.push((*x, *reason));
                false
            } else {
                true
            }
        });
        for (x, reason) in ready {
            let queued = e
                .queue
                .iter()
                .any(|q| matches!(&q.op, Op::Release(r) | Op::Refund(r) if *r == x));
            let pending = e
                .channel
                .pending
                .as_ref()
                .is_some_and(|p| p.state.locks.iter().all(|l| l.escrow_id != x));
            if !queued && !pending {
                e.refund_reasons.entry(x).or_insert(reason);
                e.queue.push_back(Queued {
                    op: Op::Refund(x),
                    waiters: Vec::new(),
                });
            }
        }
        self.pump(id);
    }
}
