//! What the API shows of the wallet and the channels.

use serde::{Deserialize, Serialize};

use super::channel::{Channel, Status};

/// The wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletView {
    /// This node.
    pub peer_id: String,
    /// The credit it started with.
    pub initial_credit: u64,
    /// What it can still commit to channels.
    pub available: u64,
    /// Its balance in unsettled channels (not counting its locks).
    pub in_channels: u64,
    /// Its money locked in escrows.
    pub locked: u64,
    /// Unsettled channels.
    pub channels: usize,
}

/// An escrow lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockView {
    /// The escrow id (hex).
    pub escrow_id: String,
    /// Whether this node is the payer.
    pub ours: bool,
    /// How much.
    pub amount: u64,
    /// When the payer may refund it alone (Unix ms).
    pub expires_at_ms: u64,
}

/// A channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    /// Its id (hex).
    pub id: String,
    /// The other party.
    pub peer: String,
    /// Whether this node opened it.
    pub opener: bool,
    /// opening, open, closing or settled.
    pub status: String,
    /// How it settled (cooperative, unilateral, disputed; abandoned: it never opened), once
    /// settled.
    pub settlement: Option<String>,
    /// The number of the latest state both signed.
    pub number: u64,
    /// What this node put in.
    pub deposit: u64,
    /// What the peer put in.
    pub peer_deposit: u64,
    /// This node's balance.
    pub balance: u64,
    /// The peer's balance.
    pub peer_balance: u64,
    /// Escrows.
    pub locks: Vec<LockView>,
    /// The number of our signed proposal the peer has not countersigned yet.
    pub pending: Option<u64>,
    /// When it opened (Unix ms).
    pub opened_at_ms: u64,
}

impl From<&Channel> for ChannelView {
    fn from(c: &Channel) -> Self {
        let s = &c.latest.state;
        let (status, settlement) = match &c.status {
            Status::Opening => ("opening", None),
            Status::Open => ("open", None),
            Status::Closing(_) => ("closing", None),
            Status::Settled { how, .. } => ("settled", Some(how.label().to_owned())),
        };
        Self {
            id: c.id().to_string(),
            peer: c.peer().to_string(),
            opener: c.local == super::wire::Side::A,
            status: status.into(),
            settlement,
            number: s.number,
            deposit: s.deposit(c.local),
            peer_deposit: s.deposit(c.local.other()),
            balance: c.balance(),
            peer_balance: c.peer_balance(),
            locks: s
                .locks
                .iter()
                .map(|l| LockView {
                    escrow_id: l.escrow_id.to_string(),
                    ours: l.payer == c.local,
                    amount: l.amount,
                    expires_at_ms: l.expires_at_ms,
                })
                .collect(),
            pending: c.pending.as_ref().map(|p| p.state.number),
            opened_at_ms: c.opened_at_ms,
        }
    }
}

/// A page of channels, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelPage {
    /// Channels in total.
    pub total: usize,
    /// Where this page starts.
    pub offset: usize,
    /// The channels.
    pub channels: Vec<ChannelView>,
}

/// What a payment id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    /// A payment in a channel.
    Pay,
    /// The open of a channel.
    Open,
}

/// Where a payment (or open) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Signed and sent (or queued behind the channel's proposal in flight); the peer has not
    /// countersigned yet. The node keeps it and re-sends it until the peer answers.
    Pending,
    /// Countersigned: binding on both sides.
    Done,
}

/// A payment or an open made under a payment id, as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    /// The payment id (the request's `Idempotency-Key` or `payment_id`, or one the node
    /// chose): a retry with it never pays twice.
    pub payment_id: String,
    /// `pay` or `open`.
    pub kind: PaymentKind,
    /// `pending` or `done`.
    pub status: PaymentStatus,
    /// The channel paid in (or opened), hex.
    pub channel_id: String,
    /// The amount paid (an open: this node's deposit).
    pub amount: u64,
    /// The number of the signed state that carries it (0 for an open); `null` while it is
    /// queued behind another proposal of the channel.
    pub number: Option<u64>,
    /// Whether an earlier request with this payment id made it (this one paid nothing).
    pub replayed: bool,
    /// What the status means, in words.
    pub message: String,
    /// The channel as it is now.
    pub channel: ChannelView,
}
