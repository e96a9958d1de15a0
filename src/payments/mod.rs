//! Payment channels and escrow: numbered states signed by both parties, exchanged over
//! `/zerostate/channel/1`, settled cooperatively or unilaterally, disputed with a higher
//! state, and kept in the crash-safe [`crate::ledger`].
//!
//! There is no chain: balances are credits between peers. The service is an actor
//! ([`PaymentsActor`]) around the pure channel state machine ([`channel`]) and the wire
//! format ([`wire`]); it persists every state before it reveals or acknowledges it.

pub mod channel;
mod escrow_book;
pub mod exposure;
mod metrics;
pub mod payment_ids;
pub mod record;
mod service;
mod view;
pub mod wire;

#[cfg(test)]
mod model_tests;

use serde::{Deserialize, Serialize};

pub use escrow_book::{EscrowBook, Escrowed};
pub use metrics::PaymentMetrics;
pub use payment_ids::{PaymentId, PaymentIdError};
pub use service::{PaymentsActor, PaymentsService};
pub use view::{
    ChannelPage, ChannelView, LockView, PaymentKind, PaymentStatus, PaymentView, WalletView,
};

use crate::ledger::LedgerError;
use wire::{ChannelError, ChannelId};

/// Payment settings (`[payments]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// The wallet's credit on the node's first start (later starts keep the ledger's).
    pub initial_credit: u64,
    /// Most a channel the node opens by itself to lock a task's escrow holds (it is funded
    /// with `escrow_channel_prices` times the price, at least the price, at most this).
    pub channel_deposit: u64,
    /// A channel the node opens to lock a task's escrow is funded for this many locks of
    /// that task's price (capped by `channel_deposit`).
    pub escrow_channel_prices: u64,
    /// A channel with no new state for this long (and no lock still running) is closed:
    /// cooperatively, or unilaterally if the peer does not sign the final state, in seconds.
    pub idle_close_secs: u64,
    /// Most of the node's credit (in percent of its wallet plus what it holds in channels)
    /// that sits in channels it opened with peers that never completed a task for it (none of its
    /// escrows to them was released); an escrow lock that would need more fails.
    pub newcomer_share_percent: u64,
    /// Most this node puts into a channel that a peer opens and asks a deposit of it.
    pub max_counterparty_deposit: u64,
    /// Challenge window of a unilateral close, in seconds: the other party may dispute it
    /// with a higher state until then.
    pub challenge_secs: u64,
    /// A channel whose peer has not answered for this long while something is waiting on
    /// it (a proposal, an expired escrow) is closed unilaterally, in seconds.
    pub vanished_close_secs: u64,
    /// Most unsettled channels this node holds; more opens are refused.
    pub max_channels: usize,
    /// Most unsettled channels one peer may open with this node.
    pub max_channels_per_peer: usize,
    /// How long an API call waits for the peer's countersignature, in milliseconds. A state
    /// not countersigned by then stays pending and is re-sent.
    pub ack_timeout_ms: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            initial_credit: 1_000_000,
            channel_deposit: 100_000,
            escrow_channel_prices: 4,
            idle_close_secs: 900,
            newcomer_share_percent: 5,
            max_counterparty_deposit: 0,
            challenge_secs: 60,
            vanished_close_secs: 600,
            max_channels: 1024,
            max_channels_per_peer: 8,
            ack_timeout_ms: 8_000,
        }
    }
}

impl PaymentsConfig {
    /// Checks ranges; the error names the key.
    pub fn validate(&self) -> Result<(), crate::config_value::ConfigValueError> {
        use crate::config_value::in_range;
        let max = wire::MAX_AMOUNT;
        in_range("payments.initial_credit", self.initial_credit, 0..=max)?;
        in_range("payments.channel_deposit", self.channel_deposit, 1..=max)?;
        let prices = self.escrow_channel_prices;
        in_range("payments.escrow_channel_prices", prices, 1..=1_000)?;
        in_range(
            "payments.idle_close_secs",
            self.idle_close_secs,
            1..=604_800,
        )?;
        let share = self.newcomer_share_percent;
        in_range("payments.newcomer_share_percent", share, 1..=100)?;
        let most = self.max_counterparty_deposit;
        in_range("payments.max_counterparty_deposit", most, 0..=max)?;
        in_range("payments.challenge_secs", self.challenge_secs, 1..=86_400)?;
        let vanished = self.vanished_close_secs;
        in_range("payments.vanished_close_secs", vanished, 1..=604_800)?;
        in_range("payments.max_channels", self.max_channels, 1..=100_000)?;
        let per_peer = self.max_channels_per_peer;
        in_range("payments.max_channels_per_peer", per_peer, 1..=1_000)?;
        in_range(
            "payments.ack_timeout_ms",
            self.ack_timeout_ms,
            100..=600_000,
        )
    }
}

/// Errors of the payments API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PaymentsError {
    /// The operation breaks a channel rule (see the reason).
    #[error("{0}: {hint}", hint = hint(*.0))]
    Channel(ChannelError),
    /// No channel with that id.
    #[error("no channel with that id")]
    UnknownChannel,
    /// The peer refused the state.
    #[error("the peer refused: {0}")]
    Refused(String),
    /// The peer has not countersigned in time; the signed state is kept and re-sent.
    #[error(
        "the peer has not countersigned yet; the state is kept and re-sent until it does (see `pending` of channel {})",
        .0.map_or_else(|| "?".to_owned(), |id| id.to_string())
    )]
    Pending(Option<wire::ChannelId>),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The service has stopped.
    #[error("the payments service has stopped")]
    Stopped,
    /// Too many operations are queued on the channel.
    #[error("too many operations are waiting on this channel; retry later")]
    Busy,
    /// Not enough funds: what was asked and what there is.
    #[error("insufficient_funds: {requested} requested, but only {available} is available {place}")]
    InsufficientFunds {
        /// Where the funds were looked for.
        place: Funds,
        /// What there is.
        available: u64,
        /// What was asked.
        requested: u64,
    },
    /// The payment id names another payment (or open) than this request.
    #[error(
        "payment id `{payment_id}` was already used for {used_for}; a different payment needs a new payment id"
    )]
    PaymentIdReused {
        /// The id.
        payment_id: PaymentId,
        /// What it was used for, in words.
        used_for: String,
    },
    /// An open to this peer is already waiting for its countersignature.
    #[error(
        "an open to {peer} is already pending: channel {channel} (state 0 signed and sent, not countersigned yet){}; wait for it, or retry with its payment id",
        .payment_id.as_ref().map_or_else(String::new, |p| format!(", payment id `{p}`"))
    )]
    OpenPending {
        /// The channel being opened.
        channel: ChannelId,
        /// The peer's id.
        peer: String,
        /// The payment id it was opened under, if any.
        payment_id: Option<PaymentId>,
    },
    /// The payment id is not acceptable.
    #[error(transparent)]
    InvalidPaymentId(#[from] PaymentIdError),
    /// A channel with this peer is unusable (it refused or ignored our states) and is being
    /// closed: no lock goes to the peer, and no new channel is opened with it, until that
    /// channel has settled.
    #[error(
        "channel {channel} with this peer is unusable (the peer {reason}) and is being closed; no escrow goes to this peer until it settles"
    )]
    ChannelUnusable {
        /// The unusable channel.
        channel: ChannelId,
        /// What the peer did.
        reason: Unusable,
    },
    /// The lock needs a new channel with a peer that never completed a task for this node,
    /// and funding it would put more than `payments.newcomer_share_percent` of the credit in
    /// channels with such peers.
    #[error(
        "newcomer_share: a channel for this lock needs {requested}, but channels with peers that never completed a task for this node already hold {parked} of the {limit} allowed (payments.newcomer_share_percent)"
    )]
    NewcomerShare {
        /// What channels with such peers hold now.
        parked: u64,
        /// The most they may hold.
        limit: u64,
        /// What the lock needed (at least its amount).
        requested: u64,
    },
}

/// Why a channel is unusable: what its peer did to our states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// The peer refused one of our states (other than a retryable `busy` or `stale`, or a
    /// refund it holds not yet expired).
    Refused,
    /// The peer did not answer our states (failed sends in a row, or no countersignature
    /// within twice `payments.ack_timeout_ms`).
    Unanswered,
}

impl Unusable {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Unanswered => "unanswered",
        }
    }
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Refused => "refused our state",
            Self::Unanswered => "did not answer our state",
        })
    }
}

impl From<crate::actor::Stopped> for PaymentsError {
    fn from(_: crate::actor::Stopped) -> Self {
        Self::Stopped
    }
}

/// Where funds were looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Funds {
    /// The wallet (an open's deposit).
    Wallet,
    /// This node's balance in the channel, less what payments and locks still in flight take.
    Channel,
}

impl std::fmt::Display for Funds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Wallet => "in the wallet",
            Self::Channel => {
                "in the channel (this node's balance, less what payments and locks in flight take)"
            }
        })
    }
}

fn hint(e: ChannelError) -> &'static str {
    match e {
        ChannelError::InsufficientFunds => "not enough funds in the wallet or the channel",
        ChannelError::Settled => "the channel is settled; open a new one",
        ChannelError::Closing => "the channel is closing",
        ChannelError::Overflow => "the amount is above the largest allowed (2^50)",
        ChannelError::Empty => "the amount must be at least 1",
        ChannelError::Busy => "the channel is still opening; retry in a moment",
        ChannelError::TooManyChannels => "this node holds too many channels",
        ChannelError::InvalidTransition => "close needs every escrow released or refunded first",
        _ => "see docs/PROTOCOL.md",
    }
}

impl From<ChannelError> for PaymentsError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}
