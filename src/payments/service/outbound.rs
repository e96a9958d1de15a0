//! Our proposals and closes on their way to the peer, the answers that come back, and what a binding state or a settlement changes.

use super::*;

impl PaymentsActor {
    pub(super) fn send(&mut self, id: ChannelId) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let Some(p) = &e.channel.pending else {
            return;
        };
        if e.in_flight {
            return;
        }
        e.in_flight = true;
        let number = p.state.number;
        let frame = if e.channel.status == Status::Opening {
            Request::Open(p.clone())
        } else {
            Request::Update(p.clone())
        }
        .encode();
        let request = exchange(self.p2p.clone(), e.channel.peer(), frame);
        self.jobs.spawn(async move {
            let result = request.await;
            Job::Answer { id, number, result }
        });
    }

    pub(super) fn send_close(&mut self, id: ChannelId) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let Status::Closing(close) = &e.channel.status else {
            return;
        };
        if e.closing_sent {
            return;
        }
        e.closing_sent = true;
        let frame = Request::Close(close.clone()).encode();
        let request = exchange(self.p2p.clone(), e.channel.peer(), frame);
        self.jobs.spawn(async move {
            let result = request.await;
            Job::CloseAnswer { id, result }
        });
    }

    // ----- answers to our requests -----

    pub(super) fn on_job(&mut self, job: Job) {
        match job {
            Job::Done => {}
            Job::Answer { id, number, result } => self.on_answer(id, number, result),
            Job::CloseAnswer { id, result } => self.on_close_answer(id, result),
        }
    }

    pub(super) fn on_answer(
        &mut self,
        id: ChannelId,
        number: u64,
        result: Result<(Response, u64), String>,
    ) {
        let now = now_ms();
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        e.in_flight = false;
        if e.channel.pending.as_ref().map(|p| p.state.number) != Some(number) {
            return;
        }
        let opening = e.channel.status == Status::Opening;
        let prev = e.channel.latest.state.clone();
        let (response, highest) = match result {
            Ok(r) => r,
            Err(error) => {
                // Keep the signed proposal; re-send it, byte for byte, with backoff.
                e.stalls += 1;
                let backoff = e.backoff().max(Duration::from_millis(100));
                tracing::debug!(channel = %id, error, ?backoff, "proposal not delivered; will re-send");
                e.retry_at = Some(Instant::now() + backoff);
                return;
            }
        };
        match response {
            Response::Countersig(sig) => match e.channel.countersigned(&sig, now) {
                Ok(op) => {
                    e.stalls = 0;
                    e.last_heard = Instant::now();
                    e.last_change = e.last_heard;
                    let took = e.proposed_at.elapsed().as_secs_f64();
                    let waiters = std::mem::take(&mut e.waiting);
                    match op {
                        None => self.metrics.channel("opened", true),
                        Some(op) => self.on_applied(id, &op, true, took, &prev),
                    }
                    for w in waiters {
                        self.after.push(After::Answer(w, id));
                    }
                    self.touch(id);
                    self.pump(id);
                }
                Err(err) => {
                    tracing::warn!(channel = %id, error = %err, "peer's countersignature does not verify; re-sending");
                    self.metrics.refused("countersig", err.label());
                    e.stalls += 1;
                    e.retry_at = Some(Instant::now() + e.backoff().max(Duration::from_secs(1)));
                }
            },
            Response::Refused(reason) => {
                // A refusal is an answer, not progress: it does not keep the peer "alive".
                e.stalls += 1;
                let op = e.channel.refused(highest, now);
                let waiters = std::mem::take(&mut e.waiting);
                let retry =
                    reason == ChannelError::Busy.label() || reason == ChannelError::Stale.label();
                let gone = reason == ChannelError::Settled.label()
                    || reason == ChannelError::UnknownChannel.label();
                match op {
                    Some(op) if retry => {
                        // Both sides proposed at once, or our number was behind: propose the
                        // same change again, numbered above the peer's, after a pause. Its
                        // payments are queued again, no longer signed.
                        for pid in waiters.iter().filter_map(Waiter::payment_id) {
                            self.payment_ids.unsigned(pid);
                        }
                        e.queue.push_front(Queued { op, waiters });
                        e.retry_at = Some(Instant::now() + e.backoff());
                    }
                    op => {
                        tracing::info!(channel = %id, reason, "peer refused our proposal");
                        if let Some(Op::Lock { escrow_id, .. }) = &op {
                            e.kinds.remove(escrow_id);
                        }
                        if matches!(op, Some(Op::Pay(_) | Op::Release(_))) {
                            self.metrics.payment_rejected();
                        }
                        for w in waiters {
                            if let Some(pid) = w.payment_id() {
                                self.payment_ids.forget(pid);
                            }
                            w.fail(PaymentsError::Refused(reason.clone()));
                        }
                        if opening {
                            self.abandon_open(id, &reason);
                        } else if gone {
                            // The peer holds the channel settled (or not at all): settle our
                            // side on what we hold, through a close it can still dispute.
                            tracing::warn!(channel = %id, reason, "the peer no longer holds the channel open; closing");
                            let _ = self.close_unilaterally(id);
                        } else if matches!(op, Some(Op::Close)) {
                            // A final state refused: an idle close goes on unilaterally; one
                            // asked for by the API is the caller's to decide.
                            if e.idle_close.is_some() {
                                let _ = self.close_unilaterally(id);
                            }
                        } else if reason != ChannelError::NotExpired.label() {
                            // Refused for good (a refund refused as not yet expired is a
                            // clock apart, tried again later): the peer holds the channel
                            // hostage.
                            self.unusable(id, Unusable::Refused);
                        }
                    }
                }
                self.touch(id);
                if !retry {
                    self.pump(id);
                }
            }
            Response::Dispute(_) | Response::CloseAccepted => {
                // Not an answer to a proposal.
                e.stalls += 1;
                e.retry_at = Some(Instant::now() + e.backoff().max(Duration::from_secs(1)));
            }
        }
    }

    /// Our state 0 was refused, or never answered: the channel never opened. Our deposit
    /// comes back (the peer can at most close with state 0, which pays it back to us too).
    pub(super) fn abandon_open(&mut self, id: ChannelId, why: &str) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        if e.channel.status != Status::Opening {
            return;
        }
        tracing::info!(channel = %id, why, "channel not opened; its deposit returns to the wallet");
        let deposit = e.channel.latest.state.deposit(Side::A);
        e.channel.pending = None;
        e.channel.status = Status::Settled {
            how: Settlement::Abandoned,
            at_ms: now_ms(),
        };
        self.wallet.available = self.wallet.available.saturating_add(deposit);
        self.wallet_dirty = true;
        self.metrics.forget(id);
        e.fail_all(&PaymentsError::Refused(why.to_owned()));
        self.touch(id);
    }

    pub(super) fn on_close_answer(
        &mut self,
        id: ChannelId,
        result: Result<(Response, u64), String>,
    ) {
        let now = now_ms();
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        match result {
            Ok((Response::CloseAccepted, _)) => {
                e.last_heard = Instant::now();
                if e.channel.settle_unilaterally(now).is_ok() {
                    self.settle(id, true);
                }
            }
            Ok((Response::Dispute(higher), _)) => {
                e.last_heard = Instant::now();
                match e.channel.on_dispute(*higher, now) {
                    Ok(()) => {
                        tracing::warn!(channel = %id, "our close was disputed with a higher state");
                        self.metrics.dispute("resolved");
                        self.settle(id, true);
                    }
                    Err(err) => self.metrics.refused("dispute", err.label()),
                }
            }
            other => {
                // Not delivered, or refused: the peer may not know yet. Re-send within the
                // challenge window; it settles when the window ends anyway.
                tracing::info!(channel = %id, answer = ?other, "close not accepted; re-sending");
                e.closing_sent = false;
                e.stalls += 1;
                e.retry_at = Some(Instant::now() + e.backoff().max(Duration::from_millis(500)));
            }
        }
    }

    /// Metrics and bookkeeping of an operation that became binding; `prev` is the state
    /// before it.
    pub(super) fn on_applied(
        &mut self,
        id: ChannelId,
        op: &Op,
        ours: bool,
        took: f64,
        prev: &State,
    ) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let local = e.channel.local;
        let lock_of = |x: &EscrowId| prev.locks.iter().find(|l| l.escrow_id == *x);
        match op {
            Op::Pay(amount) if ours => self.metrics.payment_accepted(*amount, took),
            Op::Lock {
                escrow_id, amount, ..
            } if ours => {
                let kind = e.kinds.get(escrow_id).copied().unwrap_or("api");
                self.metrics.escrow_created(kind, *amount);
            }
            Op::Release(escrow) if ours => {
                // The peer completed a task for us: no longer a newcomer.
                self.completed.insert(e.channel.peer());
                e.channel.release_intents.retain(|r| r != escrow);
                let amount = lock_of(escrow).map_or(0, |l| l.amount);
                self.metrics.escrow_released("verified");
                self.metrics.payment_accepted(amount, took);
                e.kinds.remove(escrow);
                e.refund_reasons.remove(escrow);
            }
            Op::Refund(escrow) => {
                // Our lock came back, whoever proposed the refund.
                if lock_of(escrow).is_some_and(|l| l.payer == local) {
                    let reason = e.refund_reasons.remove(escrow).unwrap_or("expired");
                    self.metrics.escrow_refunded(reason);
                }
                e.kinds.remove(escrow);
                e.refunds_due.retain(|(x, _)| x != escrow);
            }
            Op::Close => self.settle(id, ours),
            _ => {}
        }
    }

    /// A channel settled: its payout goes back to the wallet, its series go, and the
    /// settlement is recorded.
    pub(super) fn settle(&mut self, id: ChannelId, by_us: bool) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let Status::Settled { how, at_ms } = e.channel.status else {
            return;
        };
        let payout = e.channel.payout();
        self.wallet.available = self.wallet.available.saturating_add(payout);
        self.wallet_dirty = true;
        for lock in &e.channel.latest.state.locks {
            if lock.payer == e.channel.local {
                self.metrics.escrow_refunded("settled");
            }
        }
        e.fail_all(&ChannelError::Settled.into());
        e.channel.pending = None;
        let lifetime = at_ms.saturating_sub(e.channel.opened_at_ms) as f64 / 1000.0;
        // From the close request; a final state or close from the peer settles at once.
        let since_close = e
            .close_requested
            .map_or(Duration::ZERO, |t| t.elapsed())
            .as_secs_f64();
        let state = &e.channel.latest.state;
        let settlement = serde_json::json!({
            "channel_id": id.to_string(),
            "how": how.label(),
            "number": state.number,
            "payout": payout,
            "peer_payout": state.payout(e.channel.local.other()),
            "at_ms": at_ms,
        });
        self.settlements
            .push((id, serde_json::to_vec(&settlement).expect("json")));
        self.metrics.settled(id, how.label(), lifetime, since_close);
        self.metrics.channel("closed", by_us);
        self.settled_any = true;
        tracing::info!(channel = %id, how = how.label(), payout, "channel settled");
        self.touch(id);
    }
}
