//! Payments and opens under a payment id: a retry is answered with what the first request
//! made (waiting for it like the first did if it is still pending), never paid again; a
//! payment that failed is forgotten, so its retry pays.
//!
//! An id is durable with the state that carries its payment: it is recorded as signed in
//! the batch that persists the proposal, and un-recorded in the batch that drops it.

use super::*;

/// Where the payment of an id stands, found from its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// Binding on both sides.
    Done,
    /// In the channel's pending proposal (or, for an open, its state 0).
    Signed,
    /// Queued behind the channel's proposal in flight; not signed yet.
    Queued,
    /// Signed, but the channel is closing before it was countersigned: it counts if the
    /// channel settles on its state or a later one.
    Undecided,
}

impl PaymentsActor {
    /// Where the payment of `id` stands; `None` if the id is unknown or its payment failed
    /// (refused, given up, or lost with its channel).
    pub(super) fn standing(&self, id: &PaymentId) -> Option<Standing> {
        let record = self.payment_ids.get(id)?;
        let e = self.channels.get(&record.channel)?;
        let c = &e.channel;
        match record.paid {
            Paid::Open { .. } => match c.status {
                Status::Opening => Some(Standing::Signed),
                Status::Settled {
                    how: Settlement::Abandoned,
                    ..
                } => None,
                _ => Some(Standing::Done),
            },
            Paid::Pay { .. } => match record.number {
                None => e
                    .queue
                    .iter()
                    .any(|q| q.waiters.iter().any(|w| w.payment_id() == Some(id)))
                    .then_some(Standing::Queued),
                Some(n) if c.latest.state.number >= n => Some(Standing::Done),
                Some(n) if c.pending.as_ref().map(|p| p.state.number) == Some(n) => {
                    Some(Standing::Signed)
                }
                Some(n)
                    if matches!(c.status, Status::Closing(_))
                        && c.unconfirmed.as_ref().map(|p| p.state.number) == Some(n) =>
                {
                    Some(Standing::Undecided)
                }
                Some(_) => None,
            },
        }
    }

    /// The payment of `id` as it stands, if it is known and did not fail, for the request
    /// tagged `request`.
    pub(super) fn payment_view(&self, id: &PaymentId, request: u64) -> Option<PaymentView> {
        let standing = self.standing(id)?;
        let record = self.payment_ids.get(id)?;
        let replayed = record.origin != request;
        let channel = &self.channels.get(&record.channel)?.channel;
        let (kind, amount) = match record.paid {
            Paid::Pay { amount } => (PaymentKind::Pay, amount),
            Paid::Open { deposit, .. } => (PaymentKind::Open, deposit),
        };
        let number = record.number.unwrap_or(0);
        let retry = "Retrying with the same payment id is safe: it never pays twice.";
        let (status, message) = match (standing, kind) {
            (Standing::Done, _) if replayed => (
                PaymentStatus::Done,
                format!(
                    "done: made by an earlier request with this payment id (state {number} is countersigned); this request paid nothing"
                ),
            ),
            (Standing::Done, _) => (
                PaymentStatus::Done,
                format!("done: the peer countersigned state {number}; it is binding"),
            ),
            (Standing::Signed, PaymentKind::Open) => (
                PaymentStatus::Pending,
                format!(
                    "pending: state 0 is signed and sent, but the peer has not countersigned the open yet; the node re-sends it for {}s, then gives up and returns the deposit to the wallet. Retrying with the same payment id is safe: it never opens a second channel.",
                    OPEN_GIVE_UP.as_secs()
                ),
            ),
            (Standing::Signed, _) => (
                PaymentStatus::Pending,
                format!(
                    "pending: signed as state {number} and sent, but the peer has not countersigned it yet; the node keeps it and re-sends it until the peer answers, and then it is done. {retry}"
                ),
            ),
            (Standing::Queued, _) => (
                PaymentStatus::Pending,
                format!(
                    "pending: queued behind the channel's proposal in flight (not signed yet); it is proposed once that one is answered. {retry}"
                ),
            ),
            (Standing::Undecided, _) => (
                PaymentStatus::Pending,
                format!(
                    "pending: signed as state {number}, but the channel is closing before the peer countersigned it; it counts if the channel settles on state {number} or a later one. {retry}"
                ),
            ),
        };
        Some(PaymentView {
            payment_id: id.to_string(),
            kind,
            status,
            channel_id: record.channel.to_string(),
            amount,
            number: record.number,
            replayed,
            message,
            channel: ChannelView::from(channel),
        })
    }

    /// Answers a caller whose change is durable: a payment with where it stands, others with
    /// the channel.
    pub(super) fn answer(&self, waiter: Waiter, channel: ChannelId) {
        match waiter {
            Waiter::Payment { id, reply, request } => {
                let view = self
                    .payment_view(&id, request)
                    .ok_or(PaymentsError::UnknownChannel);
                let _ = reply.send(view);
            }
            w => w.succeed(self.channels.get(&channel).map(|e| &e.channel)),
        }
    }

    /// A request under a payment id the node may already know: answers (or refuses) it and
    /// returns `None`, or hands the waiter back for a new payment. `channel` is the channel
    /// asked for (none for an open).
    pub(super) fn replay(
        &mut self,
        id: &PaymentId,
        channel: Option<ChannelId>,
        paid: Paid,
        waiter: Waiter,
    ) -> Option<Waiter> {
        let Some(record) = self.payment_ids.get(id).cloned() else {
            return Some(waiter);
        };
        if record.paid != paid || channel.is_some_and(|c| c != record.channel) {
            waiter.fail(PaymentsError::PaymentIdReused {
                payment_id: id.clone(),
                used_for: record.describe(),
            });
            return None;
        }
        let Some(standing) = self.standing(id) else {
            // Its payment failed: this is a new attempt.
            self.payment_ids.forget(id);
            return Some(waiter);
        };
        let e = self.channels.get_mut(&record.channel).expect("standing");
        match standing {
            // Answered once whatever it shows is durable.
            Standing::Done | Standing::Undecided => {
                self.after.push(After::Answer(waiter, record.channel));
            }
            // Answered with the first request, when the peer countersigns.
            Standing::Signed => e.waiting.push(waiter),
            Standing::Queued => {
                let q = e
                    .queue
                    .iter_mut()
                    .find(|q| q.waiters.iter().any(|w| w.payment_id() == Some(id)))
                    .expect("queued");
                q.waiters.push(waiter);
            }
        }
        None
    }

    /// Pays `amount` in channel `id`, once per payment id (if the waiter has one).
    pub(super) fn pay(&mut self, id: ChannelId, amount: u64, waiter: Waiter) {
        let paid = Paid::Pay { amount };
        let waiter = match waiter.payment_id().cloned() {
            Some(pid) => match self.replay(&pid, Some(id), paid, waiter) {
                Some(w) => w,
                None => return,
            },
            None => waiter,
        };
        if let Some(e) = self.channels.get(&id)
            && matches!(e.channel.status, Status::Open | Status::Opening)
            && amount > e.spendable()
        {
            waiter.fail(PaymentsError::InsufficientFunds {
                place: Funds::Channel,
                available: e.spendable(),
                requested: amount,
            });
            return;
        }
        if let Some(pid) = waiter.payment_id()
            && self.channels.contains_key(&id)
        {
            self.payment_ids
                .insert(pid.clone(), id, paid, None, request_of(&waiter));
        }
        self.enqueue(id, Op::Pay(amount), vec![waiter]);
    }

    /// Opens a channel to `peer`, once per payment id (if the waiter has one); refused while
    /// an open of ours to `peer` waits for its countersignature.
    pub(super) fn open_once(
        &mut self,
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
        opened: Option<oneshot::Sender<ChannelId>>,
        waiter: Waiter,
    ) {
        let paid = Paid::Open {
            peer,
            deposit,
            peer_deposit: their_deposit,
        };
        let waiter = match waiter.payment_id().cloned() {
            Some(pid) => match self.replay(&pid, None, paid, waiter) {
                Some(w) => w,
                None => return,
            },
            None => waiter,
        };
        let opening = self
            .unsettled()
            .find(|e| {
                e.channel.local == Side::A
                    && e.channel.peer() == peer
                    && e.channel.status == Status::Opening
            })
            .map(|e| e.channel.id());
        if let Some(channel) = opening {
            let payment_id = self
                .payment_ids
                .ids()
                .find(|(_, r)| r.channel == channel && matches!(r.paid, Paid::Open { .. }))
                .map(|(k, _)| k.clone());
            waiter.fail(PaymentsError::OpenPending {
                channel,
                peer: peer.to_string(),
                payment_id,
            });
            return;
        }
        match self.open(peer, deposit, their_deposit) {
            Ok(id) => {
                if let Some(opened) = opened {
                    let _ = opened.send(id);
                }
                if let Some(pid) = waiter.payment_id() {
                    // State 0 is persisted in this batch, and the id with it.
                    self.payment_ids
                        .insert(pid.clone(), id, paid, Some(0), request_of(&waiter));
                }
                self.channels
                    .get_mut(&id)
                    .expect("just opened")
                    .waiting
                    .push(waiter);
            }
            Err(e) => waiter.fail(e),
        }
    }

    /// Forgets the ids whose payments failed while the node was down (or whose channels
    /// left memory).
    pub(super) fn drop_failed_payment_ids(&mut self) {
        let failed: Vec<PaymentId> = self
            .payment_ids
            .ids()
            .map(|(id, _)| id)
            .filter(|id| self.standing(id).is_none())
            .cloned()
            .collect();
        for id in failed {
            self.payment_ids.forget(&id);
        }
    }
}

/// The tag of a payment request (0 for other waiters).
fn request_of(waiter: &Waiter) -> u64 {
    match waiter {
        Waiter::Payment { request, .. } => *request,
        _ => 0,
    }
}
