//! Channels that hold credit for nothing are closed without waiting for their peer: those
//! whose peer refuses or ignores our states (unusable), and those idle past
//! `payments.idle_close_secs`.
//!
//! An unusable channel takes no more locks, and no lock goes to its peer (no new channel
//! either) until it has settled: a peer that countersigns an open and then refuses every
//! lock holds one channel's deposit for one challenge window, not the wallet.

use super::*;

impl PaymentsActor {
    /// The peer refused or ignored our states in channel `id`: nothing more goes there, the
    /// callers waiting on it are told, and it is closed unilaterally (once no release of
    /// ours waits in it: a verified task is paid first).
    pub(super) fn unusable(&mut self, id: ChannelId, why: Unusable) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        if e.unusable.is_some() || e.channel.is_settled() {
            return;
        }
        tracing::warn!(channel = %id, peer = %e.channel.peer(), reason = why.label(), "channel unusable: closing it; no escrow goes to this peer until it settles");
        e.unusable = Some(why);
        let error = PaymentsError::ChannelUnusable {
            channel: id,
            reason: why,
        };
        // Payments and locks fail now, with the peer's doing named; releases and refunds
        // stay (a release is still owed; the close refunds our locks anyway).
        let mut kept = VecDeque::new();
        for q in e.queue.drain(..) {
            if matches!(q.op, Op::Pay(_) | Op::Lock { .. }) {
                if let Op::Lock { escrow_id, .. } = &q.op {
                    e.kinds.remove(escrow_id);
                }
                for w in q.waiters {
                    if let Some(pid) = w.payment_id() {
                        self.payment_ids.forget(pid);
                    }
                    w.fail(error.clone());
                }
            } else {
                kept.push_back(q);
            }
        }
        e.queue = kept;
        let waiting = std::mem::take(&mut e.waiting);
        for w in waiting {
            if w.payment_id().is_some() {
                // Its state may still become binding: it is answered as it stands.
                e.waiting.push(w);
            } else {
                w.fail(error.clone());
            }
        }
        self.close_unusable(id);
    }

    /// Closes an unusable open channel unilaterally, unless a release of ours still waits in
    /// it (checked again on every tick).
    pub(super) fn close_unusable(&mut self, id: ChannelId) {
        let Some(e) = self.channels.get(&id) else {
            return;
        };
        let Some(why) = e.unusable else {
            return;
        };
        if e.channel.status != Status::Open || !e.channel.release_intents.is_empty() {
            return;
        }
        if self.close_unilaterally(id).is_ok() {
            self.metrics.closed_by_us(why.label());
        }
    }

    /// Marks a channel unusable whose peer has not answered a lock: a proposal of ours
    /// that adds a lock (or an open with a lock queued behind it) without a countersignature
    /// for twice the ack timeout, or sends of it failing again and again. A lock has a
    /// deadline (the award's); a payment or a release waits for a payee that is down, as long
    /// as `payments.vanished_close_secs`.
    pub(super) fn check_unanswered(&mut self, id: ChannelId, now: Instant) {
        let Some(e) = self.channels.get(&id) else {
            return;
        };
        if e.unusable.is_some() {
            return;
        }
        let locking = match &e.channel.pending {
            None => false,
            Some(_) if e.channel.status == Status::Opening => {
                e.queue.iter().any(|q| matches!(q.op, Op::Lock { .. }))
            }
            Some(p) => p.state.locks.len() > e.channel.latest.state.locks.len(),
        };
        if !locking {
            return;
        }
        let limit = Duration::from_millis(self.config.ack_timeout_ms.saturating_mul(2));
        let waited = e.channel.pending.is_some()
            && now.duration_since(e.last_heard.max(e.proposed_at)) >= limit;
        if waited || e.stalls >= 2 * UNUSABLE_STALLS {
            self.unusable(id, Unusable::Unanswered);
        }
    }

    /// Closes an open channel idle for `payments.idle_close_secs`, or one this node opened
    /// that is drained (no lock left, and less than one of the prices it was funded for:
    /// the next lock needs a new channel anyway): with no lock, by a final state both sign
    /// (unilaterally if the peer has not signed it within twice the ack timeout); with only
    /// the peer's expired locks left, unilaterally (they go back to it).
    pub(super) fn close_if_idle(&mut self, id: ChannelId, now: Instant, now_ms: u64) {
        let idle = Duration::from_secs(self.config.idle_close_secs);
        let grace = Duration::from_millis(self.config.ack_timeout_ms.saturating_mul(2));
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        if e.channel.status != Status::Open || e.unusable.is_some() {
            return;
        }
        if let Some(started) = e.idle_close {
            if now.duration_since(started) >= grace {
                tracing::info!(channel = %id, "idle channel: the peer did not sign the final state; closing unilaterally");
                let _ = self.close_unilaterally(id);
            }
            return;
        }
        let local = e.channel.local;
        let locks = &e.channel.latest.state.locks;
        let one_price = e.channel.latest.state.deposit(local) / self.config.escrow_channel_prices;
        let drained = local == Side::A && locks.is_empty() && e.channel.balance() < one_price;
        let quiet = e.channel.pending.is_none()
            && e.queue.is_empty()
            && !e.in_flight
            && e.close_requested.is_none()
            && e.channel.release_intents.is_empty()
            && (drained || now.duration_since(e.last_change) >= idle);
        if !quiet {
            return;
        }
        if locks.is_empty() {
            let reason = if drained { "drained" } else { "idle" };
            tracing::info!(channel = %id, reason, "closing the channel cooperatively");
            e.idle_close = Some(now);
            e.close_requested = Some(now);
            self.metrics.closed_by_us(reason);
            self.enqueue(id, Op::Close, Vec::new());
        } else if locks
            .iter()
            .all(|l| l.payer != local && l.expires_at_ms <= now_ms)
        {
            // The payer left its expired locks here: they go back to it at settlement.
            tracing::info!(channel = %id, "idle channel holding only the peer's expired locks: closing unilaterally");
            e.idle_close = Some(now);
            if self.close_unilaterally(id).is_ok() {
                self.metrics.closed_by_us("idle");
            }
        }
    }
}
