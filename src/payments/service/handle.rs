//! The handle's calls: each is a command to the actor, answered over a oneshot.

use super::*;

impl PaymentsService {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, PaymentsError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| PaymentsError::Stopped)?;
        rx.await.map_err(|_| PaymentsError::Stopped)
    }

    /// Waits for a countersigned state, at most the configured ack timeout.
    async fn ask_acked<T>(
        &self,
        channel: Option<ChannelId>,
        make: impl FnOnce(oneshot::Sender<Result<T, PaymentsError>>) -> Command,
    ) -> Result<T, PaymentsError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| PaymentsError::Stopped)?;
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
    /// returns once the peer countersigned state 0.
    pub async fn open(
        &self,
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
    ) -> Result<ChannelView, PaymentsError> {
        let (opened, id) = oneshot::channel();
        let (reply, acked) = oneshot::channel();
        self.commands
            .send(Command::Open {
                peer,
                deposit,
                their_deposit,
                opened,
                reply,
            })
            .await
            .map_err(|_| PaymentsError::Stopped)?;
        // The id comes at once (none if the open was refused here: the reply says why).
        let id = id.await.ok();
        match tokio::time::timeout(self.ack_timeout, acked).await {
            Err(_) => Err(PaymentsError::Pending(id)),
            Ok(Err(_)) => Err(PaymentsError::Stopped),
            Ok(Ok(result)) => result,
        }
    }

    /// Pays `amount` to the channel's other party; returns once the peer countersigned.
    pub async fn pay(&self, id: ChannelId, amount: u64) -> Result<ChannelView, PaymentsError> {
        self.ask_acked(Some(id), |reply| Command::Pay { id, amount, reply })
            .await
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
            let _ = commands.send(Command::Release { peer, escrow }).await;
        });
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
