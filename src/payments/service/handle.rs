//! The handle's calls: each is a command to the actor, answered over a oneshot.

use super::*;

impl PaymentsService {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, PaymentsError> {
        Ok(crate::actor::ask(&self.commands, make).await?)
    }

    /// Waits for a countersigned state, at most the configured ack timeout.
    async fn ask_acked<T>(
        &self,
        channel: Option<ChannelId>,
        make: impl FnOnce(oneshot::Sender<Result<T, PaymentsError>>) -> Command,
    ) -> Result<T, PaymentsError> {
        let rx = crate::actor::send(&self.commands, make).await?;
        match tokio::time::timeout(self.ack_timeout, rx).await {
            Err(_) => Err(PaymentsError::Pending(channel)),
            Ok(Err(_)) => Err(PaymentsError::Stopped),
            Ok(Ok(result)) => result,
        }
    }

    /// The wallet.
    pub async fn wallet(&self) -> Result<WalletView, PaymentsError> {
        self.ask(Command::Wallet).await
    }

    /// A page of channels, newest first.
    pub async fn channels(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<ChannelPage, PaymentsError> {
        self.ask(|tx| Command::Channels(offset, limit, tx)).await
    }

    /// One channel.
    pub async fn channel(&self, id: ChannelId) -> Result<Option<ChannelView>, PaymentsError> {
        self.ask(|tx| Command::Channel(id, tx)).await
    }

    /// Opens a channel to `peer` with our `deposit` and asking `their_deposit` of it;
    /// returns once the peer countersigned state 0. Refused while an open of ours to `peer`
    /// waits for its countersignature ([`PaymentsError::OpenPending`]).
    pub async fn open(
        &self,
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
    ) -> Result<ChannelView, PaymentsError> {
        let (opened, id) = oneshot::channel();
        let acked = crate::actor::send(&self.commands, |reply| Command::Open {
            peer,
            deposit,
            their_deposit,
            opened: Some(opened),
            waiter: Waiter::View(reply),
        })
        .await?;
        // The id comes at once (none if the open was refused here: the reply says why).
        let id = id.await.ok();
        match tokio::time::timeout(self.ack_timeout, acked).await {
            Err(_) => Err(PaymentsError::Pending(id)),
            Ok(Err(_)) => Err(PaymentsError::Stopped),
            Ok(Ok(result)) => result,
        }
    }

    /// Opens a channel like [`open`](Self::open), under `payment_id`: a retry with the same
    /// id answers with the channel the first request opened (pending or done) and opens
    /// none. Returns once the peer countersigned state 0 (`done`), or after the ack timeout
    /// with the open `pending`; its errors are those of `open`, and
    /// [`PaymentsError::PaymentIdReused`] if the id was used for something else.
    pub async fn open_with_id(
        &self,
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
        payment_id: PaymentId,
    ) -> Result<PaymentView, PaymentsError> {
        self.under_id(payment_id, |waiter| Command::Open {
            peer,
            deposit,
            their_deposit,
            opened: None,
            waiter,
        })
        .await
    }

    /// Pays `amount` to the channel's other party; returns once the peer countersigned.
    pub async fn pay(&self, id: ChannelId, amount: u64) -> Result<ChannelView, PaymentsError> {
        self.ask_acked(Some(id), |reply| Command::Pay {
            id,
            amount,
            waiter: Waiter::View(reply),
        })
        .await
    }

    /// Pays `amount` in channel `id` under `payment_id`, at most once: a retry with the same
    /// id answers with the payment the first request made (waiting for it like the first
    /// did if it is still pending) and pays nothing; an id whose payment failed may be
    /// reused. Returns once the peer countersigned (`done`), or after the ack timeout with
    /// the payment `pending` (signed and sent, or queued; it completes when the peer
    /// answers). Errors: those of [`pay`](Self::pay), and [`PaymentsError::PaymentIdReused`]
    /// if the id was used for another payment.
    pub async fn pay_with_id(
        &self,
        id: ChannelId,
        amount: u64,
        payment_id: PaymentId,
    ) -> Result<PaymentView, PaymentsError> {
        self.under_id(payment_id, |waiter| Command::Pay { id, amount, waiter })
            .await
    }

    /// Sends the change `make` builds around a waiter for `payment_id`, and waits for it.
    async fn under_id(
        &self,
        payment_id: PaymentId,
        make: impl FnOnce(Waiter) -> Command,
    ) -> Result<PaymentView, PaymentsError> {
        let request = new_request();
        let id = payment_id.clone();
        let rx = crate::actor::send(&self.commands, |reply| {
            make(Waiter::Payment { id, reply, request })
        })
        .await?;
        self.wait_payment(payment_id, request, rx).await
    }

    /// Where the payment (or open) of `payment_id` stands; `None` if the node does not know
    /// the id (never used, forgotten, or its payment failed).
    pub async fn payment(
        &self,
        payment_id: PaymentId,
    ) -> Result<Option<PaymentView>, PaymentsError> {
        // A tag no request has (requests are odd, ids loaded from the ledger 0): the view
        // says `replayed`, as for any request but the one that made the payment.
        self.ask(|tx| Command::Payment(payment_id, 2, tx)).await
    }

    /// Waits for the answer of a payment made under `payment_id`, at most the ack timeout;
    /// then says where it stands.
    async fn wait_payment(
        &self,
        payment_id: PaymentId,
        request: u64,
        mut rx: oneshot::Receiver<Result<PaymentView, PaymentsError>>,
    ) -> Result<PaymentView, PaymentsError> {
        match tokio::time::timeout(self.ack_timeout, &mut rx).await {
            Ok(Ok(result)) => return result,
            Ok(Err(_)) => return Err(PaymentsError::Stopped),
            Err(_) => {}
        }
        let view = self
            .ask(|tx| Command::Payment(payment_id, request, tx))
            .await?;
        if let Some(view) = view {
            return Ok(view);
        }
        // It failed meanwhile: the answer says why.
        match tokio::time::timeout(self.ack_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PaymentsError::Stopped),
            Err(_) => Err(PaymentsError::Pending(None)),
        }
    }

    /// Closes a channel: cooperatively (a final state both sign; returns once settled) or
    /// unilaterally (returns once the close is sent; it settles after the challenge window).
    pub async fn close(
        &self,
        id: ChannelId,
        unilateral: bool,
    ) -> Result<ChannelView, PaymentsError> {
        self.ask_acked(Some(id), |reply| Command::Close {
            id,
            unilateral,
            reply,
        })
        .await
    }

    /// Locks `amount` for a task in our channel with `peer` (opening one if needed); returns
    /// once the peer countersigned the lock.
    pub async fn lock(
        &self,
        peer: PeerId,
        escrow: EscrowId,
        amount: u64,
        expires_at_ms: u64,
        kind: &'static str,
    ) -> Result<(), PaymentsError> {
        self.ask_acked(None, |reply| Command::Lock {
            peer,
            escrow,
            amount,
            expires_at_ms,
            kind,
            reply,
        })
        .await
    }

    /// Releases an escrow we locked to `peer` (its task was verified). Returns at once; the
    /// release is persisted and sent, and re-sent until countersigned.
    pub fn release(&self, peer: PeerId, escrow: EscrowId) {
        // Never dropped: a full queue is waited on (by a task, so the caller is not).
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let _ = commands
                .send(Command::Release {
                    peer,
                    escrow,
                    durable: None,
                })
                .await;
        });
    }

    /// Releases like [`release`](Self::release), and returns once the release decision is
    /// committed to the ledger (a restart still releases). Errors:
    /// [`PaymentsError::UnknownChannel`] if no channel holds the escrow,
    /// [`PaymentsError::Stopped`] if the service stopped (or its ledger failed) first.
    pub async fn release_durably(
        &self,
        peer: PeerId,
        escrow: EscrowId,
    ) -> Result<(), PaymentsError> {
        self.ask(|reply| Command::Release {
            peer,
            escrow,
            durable: Some(reply),
        })
        .await?
    }

    /// Refunds an escrow we locked to `peer` (its task failed), as soon as the lock expires.
    pub fn refund(&self, peer: PeerId, escrow: EscrowId, reason: &'static str) {
        if self
            .commands
            .try_send(Command::Refund {
                peer,
                escrow,
                reason,
            })
            .is_err()
        {
            tracing::warn!(%escrow, "payments queue full: refund deferred until the lock expires");
        }
    }

    /// The escrows peers locked for us.
    pub fn escrows(&self) -> &EscrowBook {
        &self.escrows
    }
}

/// A new request's tag: nonzero, so it differs from the tag of every payment id loaded from
/// the ledger (0) and, all but surely, from every other request's.
fn new_request() -> u64 {
    rand::random::<u64>() | 1
}
