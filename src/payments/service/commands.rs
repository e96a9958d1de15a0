//! Commands from the node (the API and the market): open, pay, close, lock, release, refund, and the queue of operations each channel proposes one at a time.

use super::*;

impl PaymentsActor {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Wallet(reply) => {
                let _ = reply.send(self.wallet_view());
            }
            Command::Channels(offset, limit, reply) => {
                let mut all: Vec<&Entry> = self.channels.values().collect();
                all.sort_by_key(|e| std::cmp::Reverse((e.channel.opened_at_ms, e.channel.id())));
                let page = ChannelPage {
                    total: all.len(),
                    offset,
                    channels: all
                        .iter()
                        .skip(offset)
                        .take(limit)
                        .map(|e| ChannelView::from(&e.channel))
                        .collect(),
                };
                let _ = reply.send(page);
            }
            Command::Channel(id, reply) => {
                let _ = reply.send(
                    self.channels
                        .get(&id)
                        .map(|e| ChannelView::from(&e.channel)),
                );
            }
            Command::Open {
                peer,
                deposit,
                their_deposit,
                opened,
                waiter,
            } => self.open_once(peer, deposit, their_deposit, opened, waiter),
            Command::Pay { id, amount, waiter } => self.pay(id, amount, waiter),
            Command::Payment(id, request, reply) => {
                let _ = reply.send(self.payment_view(&id, request));
            }
            Command::Close {
                id,
                unilateral: false,
                reply,
            } => {
                if let Some(e) = self.channels.get_mut(&id) {
                    e.close_requested.get_or_insert_with(Instant::now);
                }
                self.enqueue(id, Op::Close, vec![Waiter::View(reply)]);
            }
            Command::Close {
                id,
                unilateral: true,
                reply,
            } => match self.close_unilaterally(id) {
                Ok(()) => self.after.push(After::Answer(Waiter::View(reply), id)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Lock {
                peer,
                escrow,
                amount,
                expires_at_ms,
                kind,
                reply,
            } => self.lock(peer, escrow, amount, expires_at_ms, kind, reply),
            Command::Release {
                peer,
                escrow,
                durable,
            } => match self.holder(&peer, &escrow) {
                Some(id) => {
                    // Persisted with the channel in this batch: a restart still releases.
                    let e = self.channels.get_mut(&id).expect("holder exists");
                    if !e.channel.release_intents.contains(&escrow) {
                        e.channel.release_intents.push(escrow);
                        self.dirty.push(id);
                    }
                    if !e.releasing_queued(&escrow) {
                        self.enqueue(id, Op::Release(escrow), Vec::new());
                    }
                    if let Some(reply) = durable {
                        self.after.push(After::Durable(reply));
                    }
                }
                None => {
                    tracing::debug!(%escrow, "release of an escrow no channel holds");
                    if let Some(reply) = durable {
                        let _ = reply.send(Err(PaymentsError::UnknownChannel));
                    }
                }
            },
            Command::Refund {
                peer,
                escrow,
                reason,
            } => {
                if let Some(id) = self.holder(&peer, &escrow) {
                    let e = self.channels.get_mut(&id).expect("holder exists");
                    e.refund_reasons.insert(escrow, reason);
                    e.refunds_due.push((escrow, reason));
                    self.due_refunds(id);
                }
            }
        }
    }

    pub(super) fn wallet_view(&self) -> WalletView {
        let mut in_channels = 0u64;
        let mut locked = 0u64;
        let mut n = 0;
        for e in self.unsettled() {
            n += 1;
            let s = &e.channel.latest.state;
            in_channels = in_channels.saturating_add(e.channel.balance());
            locked = s
                .locks
                .iter()
                .filter(|l| l.payer == e.channel.local)
                .fold(locked, |sum, l| sum.saturating_add(l.amount));
        }
        WalletView {
            peer_id: self.local.to_string(),
            initial_credit: self.wallet.initial_credit,
            available: self.wallet.available,
            in_channels,
            locked,
            channels: n,
        }
    }

    /// The node's credit (its wallet and what it would get back from every unsettled
    /// channel), and the part of it parked in channels it opened with peers that never
    /// completed a task for it (what it earned in channels peers opened is not parked).
    pub(super) fn credit(&self) -> (u64, u64) {
        let mut total = self.wallet.available;
        let mut newcomers = 0u64;
        for e in self.unsettled() {
            let ours = e.channel.payout();
            total = total.saturating_add(ours);
            if e.channel.local == Side::A && !self.completed.contains(&e.channel.peer()) {
                newcomers = newcomers.saturating_add(ours);
            }
        }
        (total, newcomers)
    }

    pub(super) fn holder(&self, peer: &PeerId, escrow: &EscrowId) -> Option<ChannelId> {
        self.channels
            .values()
            .find(|e| e.channel.peer() == *peer && !e.channel.is_settled() && e.holds(escrow))
            .map(|e| e.channel.id())
    }

    pub(super) fn open(
        &mut self,
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
    ) -> Result<ChannelId, PaymentsError> {
        if peer == self.local {
            return Err(ChannelError::WrongSigner.into());
        }
        // Our own channels have their own quota, so peers opening channels with us cannot
        // use it up; and a peer that never answers gets at most a few of our deposits.
        let ours: Vec<&Entry> = self
            .unsettled()
            .filter(|e| e.channel.local == Side::A)
            .collect();
        if ours.len() >= self.config.max_channels
            || ours.iter().filter(|e| e.channel.peer() == peer).count()
                >= self.config.max_channels_per_peer
        {
            return Err(ChannelError::TooManyChannels.into());
        }
        if deposit > self.wallet.available {
            return Err(PaymentsError::InsufficientFunds {
                place: Funds::Wallet,
                available: self.wallet.available,
                requested: deposit,
            });
        }
        let id = ChannelId::random();
        let (channel, _) = Channel::open(&self.key, peer, id, deposit, their_deposit, now_ms())?;
        self.known.insert(id);
        self.wallet.available -= deposit;
        self.wallet_dirty = true;
        self.channels.insert(id, Entry::new(channel));
        self.touch(id);
        self.after.push(After::Send(id));
        Ok(id)
    }

    pub(super) fn lock(
        &mut self,
        peer: PeerId,
        escrow: EscrowId,
        amount: u64,
        expires_at_ms: u64,
        kind: &'static str,
        reply: LockReply,
    ) {
        // A peer that refused or ignored our states gets nothing more, and no new channel,
        // until the channel it made unusable has settled: the lock fails at once.
        if let Some(e) = self
            .unsettled()
            .find(|e| e.channel.peer() == peer && e.unusable.is_some())
        {
            let error = PaymentsError::ChannelUnusable {
                channel: e.channel.id(),
                reason: e.unusable.expect("checked"),
            };
            self.metrics.lock_failed("unusable_channel");
            let _ = reply.send(Err(error));
            return;
        }
        let found = self
            .channels
            .values()
            .filter(|e| {
                e.channel.peer() == peer
                    && matches!(e.channel.status, Status::Open | Status::Opening)
                    && e.stalls < UNUSABLE_STALLS
                    && e.close_requested.is_none()
                    && e.queue.len() < MAX_QUEUED
                    && e.spendable() >= amount
            })
            .map(|e| e.channel.id())
            .next();
        let id = match found {
            Some(id) => id,
            None => {
                let (total, newcomers) = self.credit();
                let limit = exposure::newcomer_limit(total, self.config.newcomer_share_percent);
                let room =
                    (!self.completed.contains(&peer)).then(|| limit.saturating_sub(newcomers));
                let deposit = match exposure::escrow_deposit(
                    amount,
                    self.config.escrow_channel_prices,
                    self.config.channel_deposit,
                    self.wallet.available,
                    room,
                ) {
                    Ok(deposit) => deposit,
                    Err(exposure::Shortfall::Wallet) => {
                        let _ = reply.send(Err(PaymentsError::InsufficientFunds {
                            place: Funds::Wallet,
                            available: self.wallet.available,
                            requested: amount,
                        }));
                        return;
                    }
                    Err(exposure::Shortfall::NewcomerShare) => {
                        self.metrics.lock_failed("newcomer_share");
                        let _ = reply.send(Err(PaymentsError::NewcomerShare {
                            parked: newcomers,
                            limit,
                            requested: amount,
                        }));
                        return;
                    }
                };
                match self.open(peer, deposit, 0) {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
            }
        };
        let e = self.channels.get_mut(&id).expect("found");
        e.kinds.insert(escrow, kind);
        self.enqueue(
            id,
            Op::Lock {
                escrow_id: escrow,
                amount,
                expires_at_ms,
            },
            vec![Waiter::Lock(reply)],
        );
    }

    pub(super) fn enqueue(&mut self, id: ChannelId, op: Op, waiters: Vec<Waiter>) {
        let Some(e) = self.channels.get_mut(&id) else {
            for w in waiters {
                w.fail(PaymentsError::UnknownChannel);
            }
            return;
        };
        if e.queue.len() >= MAX_QUEUED {
            for w in waiters {
                if let Some(pid) = w.payment_id() {
                    self.payment_ids.forget(pid);
                }
                w.fail(PaymentsError::Busy);
            }
            return;
        }
        e.queue.push_back(Queued { op, waiters });
        self.pump(id);
    }

    /// Proposes the next queued operation(s) of a channel if nothing is pending.
    pub(super) fn pump(&mut self, id: ChannelId) {
        let now = now_ms();
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        if e.channel.pending.is_some() || e.in_flight {
            return;
        }
        if e.retry_at.is_some_and(|t| t > Instant::now()) {
            // Backing off after a refusal: the timer pumps.
            return;
        }
        match e.channel.status {
            Status::Open => {}
            Status::Opening => return,
            Status::Closing(_) | Status::Settled { .. } => {
                let err = if e.channel.is_settled() {
                    ChannelError::Settled
                } else {
                    ChannelError::Closing
                };
                for q in e.queue.drain(..) {
                    for w in q.waiters {
                        if let Some(pid) = w.payment_id() {
                            self.payment_ids.forget(pid);
                        }
                        w.fail(err.into());
                    }
                }
                return;
            }
        }
        while let Some(first) = e.queue.pop_front() {
            let mut op = first.op;
            let mut waiters = first.waiters;
            // Payments queued behind each other become one state.
            if let Op::Pay(mut total) = op {
                while let Some(Queued {
                    op: Op::Pay(next), ..
                }) = e.queue.front()
                {
                    match total.checked_add(*next) {
                        Some(t) if t <= e.channel.balance() => total = t,
                        _ => break,
                    }
                    let q = e.queue.pop_front().expect("front exists");
                    waiters.extend(q.waiters);
                }
                op = Op::Pay(total);
            }
            match e.channel.propose(&self.key, &op, now) {
                Ok(proposal) => {
                    // Durable with the proposal, in this batch.
                    for pid in waiters.iter().filter_map(Waiter::payment_id) {
                        self.payment_ids.signed(pid, proposal.state.number);
                    }
                    e.waiting = waiters;
                    e.proposed_at = Instant::now();
                    e.last_change = e.proposed_at;
                    e.retry_at = None;
                    self.dirty.push(id);
                    self.after.push(After::Send(id));
                    return;
                }
                Err(err) => {
                    if let Op::Lock { escrow_id, .. } = &op {
                        e.kinds.remove(escrow_id);
                    }
                    if let Op::Release(x) = &op {
                        // Nothing left to release (refunded or settled): drop the intent.
                        e.channel.release_intents.retain(|r| r != x);
                        self.dirty.push(id);
                    }
                    let err = match (err, &op) {
                        (
                            ChannelError::InsufficientFunds,
                            Op::Pay(a) | Op::Lock { amount: a, .. },
                        ) => PaymentsError::InsufficientFunds {
                            place: Funds::Channel,
                            available: e.channel.balance(),
                            requested: *a,
                        },
                        (err, _) => err.into(),
                    };
                    for w in waiters {
                        if let Some(pid) = w.payment_id() {
                            self.payment_ids.forget(pid);
                        }
                        w.fail(err.clone());
                    }
                }
            }
        }
    }

    pub(super) fn close_unilaterally(&mut self, id: ChannelId) -> Result<(), PaymentsError> {
        let e = self
            .channels
            .get_mut(&id)
            .ok_or(PaymentsError::UnknownChannel)?;
        e.channel.close_unilaterally(&self.key, now_ms())?;
        e.close_requested = Some(Instant::now());
        for w in e.waiting.drain(..) {
            if w.payment_id().is_some() {
                // Its state may still count (if the peer disputes with it): say so.
                self.after.push(After::Answer(w, id));
            } else {
                w.fail(ChannelError::Closing.into());
            }
        }
        self.metrics.channel("closing", true);
        self.touch(id);
        self.after.push(After::SendClose(id));
        self.pump(id);
        Ok(())
    }
}
