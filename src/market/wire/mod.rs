//! The market's wire format: protobuf messages (`proto/market.proto`) inside libp2p signed
//! envelopes, and the checks every message passes before it may change any state.
//!
//! [`open`] takes the bytes exactly as they arrived: it bounds their size, decodes the
//! envelope, checks the payload type and the signature over the exact payload bytes, decodes
//! the payload and checks every field's range and that the signer is the peer the message
//! claims to come from. Nothing is re-encoded: a signed message keeps its original bytes
//! ([`Signed::bytes`]) and is forwarded or embedded byte for byte.

use std::fmt;

use bytes::Bytes;
use libp2p::PeerId;
use libp2p::core::SignedEnvelope;
use libp2p::identity::Keypair;
use prost::Message;

use crate::content_id::{ContentId, DIGEST_LEN};

/// The generated protobuf types of `proto/market.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/zerostate.market.v1.rs"));
}

pub use crate::clock::now_ms;
pub use crate::p2p::{AUCTIONS_TOPIC, MARKET_PROTOCOL, RESULTS_TOPIC};

/// Domain-separation string of every market signature.
pub const DOMAIN: &str = "zerostate-market";

/// Most bids one auction takes; later ones are refused (`auction_full`), so a swarm of
/// identities cannot grow a requester's memory.
pub const MAX_BIDS_PER_AUCTION: usize = 256;
/// Length of an auction id.
pub const AUCTION_ID_LEN: usize = 16;
/// Largest signed announcement, bid or task result envelope.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Largest signed award envelope (it embeds an announcement and two bids).
pub const MAX_AWARD_BYTES: usize = 16 * 1024;
/// Largest market request on the wire (the frame codec's limit).
pub const MAX_REQUEST_BYTES: usize = crate::p2p::MAX_MARKET_REQUEST_BYTES as usize;
// A signed award and its request framing must fit the codec's frame.
const _: () = assert!(MAX_REQUEST_BYTES >= MAX_AWARD_BYTES + 16);
/// Largest market response on the wire (the frame codec's limit).
pub const MAX_RESPONSE_BYTES: usize = crate::p2p::MAX_MARKET_RESPONSE_BYTES as usize;
/// Largest `PowTask.input`.
pub const MAX_POW_INPUT: usize = 1024;
/// Range of `PowTask.difficulty`.
pub const POW_DIFFICULTY: std::ops::RangeInclusive<u32> = 1..=32;
/// Range of `MatmulTask.n`.
pub const MATMUL_N: std::ops::RangeInclusive<u32> = 1..=512;
/// Range of prices (`max_price`, bid prices, award prices).
pub const PRICE: std::ops::RangeInclusive<u64> = 1..=1 << 48;
/// Longest bid window (`bid_deadline_ms - created_at_ms`).
pub const MAX_BID_WINDOW_MS: u64 = 60_000;
/// Range of `execution_timeout_ms`.
pub const EXECUTION_TIMEOUT_MS: std::ops::RangeInclusive<u32> = 100..=600_000;
/// Longest a bid may stay valid after the auction's deadline.
pub const MAX_BID_TTL_MS: u64 = 600_000;
/// How far clocks of honest peers may disagree.
pub const CLOCK_SKEW_MS: u64 = 5_000;
/// Range of the reputation weights in an award, per mille.
pub const WEIGHT: std::ops::RangeInclusive<u32> = 500..=1500;
/// The weight of every bid when an auction is not reputation-weighted.
pub const NEUTRAL_WEIGHT: u32 = 1000;
/// Longest `MarketResponse.reason`.
pub const MAX_REASON_LEN: usize = 64;

/// Why a message was refused. [`Refusal::label`] is the reason in metrics and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Larger than its limit.
    Oversized,
    /// Not a signed envelope, or its payload is not the protobuf message.
    Malformed,
    /// The envelope's payload type is not the one expected here.
    WrongType,
    /// The signature does not verify.
    BadSignature,
    /// Signed by someone other than the peer the message names, or a bid or award sent by a
    /// peer other than its signer.
    WrongSigner,
    /// A field is missing or out of range.
    BadField,
    /// Its deadline has passed.
    Expired,
    /// Dated too far in the future.
    TooFarFuture,
    /// A bid or result for an auction this node does not run.
    UnknownAuction,
    /// A bid addressed to another requester.
    WrongRequester,
    /// A bid that arrived after the bid deadline.
    AfterDeadline,
    /// A bid above the auction's maximum price.
    AboveMaxPrice,
    /// A bid whose exact bytes were already received.
    Replay,
    /// A second bid from the same bidder.
    DuplicateBidder,
    /// A bid from a peer this auction excludes (it failed this task before) or that is banned.
    Excluded,
    /// An award whose price does not follow from its bids and the auction's rule.
    BadPrice,
    /// An award whose bids do not belong to its announcement.
    BadBids,
    /// An award for a bid this node did not make.
    NotWinner,
    /// A task result from a peer that is not the auction's winner, or a second one.
    Unexpected,
    /// The auction already holds [`MAX_BIDS_PER_AUCTION`] bids.
    AuctionFull,
    /// An award whose price the requester has not locked in escrow for the winner.
    NoEscrow,
}

impl Refusal {
    /// The reason as a metric label and on the wire.
    pub fn label(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::BadSignature => "bad_signature",
            Self::WrongSigner => "wrong_signer",
            Self::BadField => "bad_field",
            Self::Expired => "expired",
            Self::TooFarFuture => "too_far_future",
            Self::UnknownAuction => "unknown_auction",
            Self::WrongRequester => "wrong_requester",
            Self::AfterDeadline => "after_deadline",
            Self::AboveMaxPrice => "above_max_price",
            Self::Replay => "replay",
            Self::DuplicateBidder => "duplicate_bidder",
            Self::Excluded => "excluded",
            Self::BadPrice => "bad_price",
            Self::BadBids => "bad_bids",
            Self::NotWinner => "not_winner",
            Self::Unexpected => "unexpected",
            Self::AuctionFull => "auction_full",
            Self::NoEscrow => "no_escrow",
        }
    }

    /// Whether the sender is to blame (its reputation falls) rather than late, unlucky or
    /// unaware: an expired message or a late bid may be honest, a bid for an auction that
    /// just ended or from a peer excluded from it too, and an award for a bid the receiver
    /// already gave up on.
    pub fn is_fault(self) -> bool {
        !matches!(
            self,
            Self::Expired
                | Self::AfterDeadline
                | Self::UnknownAuction
                | Self::Excluded
                | Self::NotWinner
                | Self::AuctionFull
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for Refusal {}

/// An auction's id: 16 bytes, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuctionId(pub [u8; AUCTION_ID_LEN]);

impl AuctionId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, Refusal> {
        bytes.try_into().map(Self).map_err(|_| Refusal::BadField)
    }
}

impl fmt::Display for AuctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AuctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuctionId({self})")
    }
}

impl std::str::FromStr for AuctionId {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut id = [0u8; AUCTION_ID_LEN];
        hex::decode_to_slice(s, &mut id)?;
        Ok(Self(id))
    }
}

/// How the winner's price is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuctionType {
    /// The winner is paid its own bid.
    FirstPrice,
    /// The winner is paid the critical price.
    SecondPrice,
}

impl AuctionType {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::FirstPrice => "first_price",
            Self::SecondPrice => "second_price",
        }
    }
}

/// What a task computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskSpec {
    /// Proof of work: a nonce with `difficulty` leading zero bits of BLAKE3(input ‖ nonce).
    Pow {
        /// The input, at most [`MAX_POW_INPUT`] bytes.
        input: Vec<u8>,
        /// Leading zero bits wanted.
        difficulty: u32,
    },
    /// The product of two n×n matrices modulo 2^61 − 1, carried as content ids.
    Matmul {
        /// The dimension.
        n: u32,
        /// The left matrix.
        a: ContentId,
        /// The right matrix.
        b: ContentId,
    },
}

/// A requester's call for bids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The auction.
    pub auction_id: AuctionId,
    /// Who runs it and pays.
    pub requester: PeerId,
    /// What is to be computed.
    pub task: TaskSpec,
    /// The highest price the requester pays.
    pub max_price: u64,
    /// First or second price.
    pub auction_type: AuctionType,
    /// When it was created (Unix ms).
    pub created_at_ms: u64,
    /// When bidding closes (Unix ms).
    pub bid_deadline_ms: u64,
    /// Whether bids are weighted by the requester's reputation of the bidder.
    pub reputation_weighted: bool,
    /// How long the winner has to deliver, from the award.
    pub execution_timeout_ms: u32,
}

/// A provider's sealed offer, sent only to the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bid {
    /// The auction.
    pub auction_id: AuctionId,
    /// The requester it is addressed to.
    pub requester: PeerId,
    /// Who bids.
    pub bidder: PeerId,
    /// The price asked.
    pub price: u64,
    /// After this instant (Unix ms) it may not be accepted.
    pub expires_at_ms: u64,
}

/// The requester's decision: who won, at what price, and the signed bids that prove it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Award {
    /// The announcement, as signed by the requester.
    pub announcement: Signed<Announcement>,
    /// The winning bid, as signed by the winner.
    pub winner_bid: Signed<Bid>,
    /// The runner-up's bid, when there was more than one.
    pub runner_up_bid: Option<Signed<Bid>>,
    /// What the winner is paid.
    pub price: u64,
    /// Weight applied to the winner, per mille.
    pub winner_weight: u32,
    /// Weight applied to the runner-up, per mille.
    pub runner_up_weight: u32,
}

impl Award {
    /// The auction.
    pub fn auction_id(&self) -> AuctionId {
        self.announcement.body.auction_id
    }

    /// The winner.
    pub fn winner(&self) -> PeerId {
        self.winner_bid.body.bidder
    }
}

/// What a task produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The nonce of a `pow` task.
    PowNonce(u64),
    /// The content id of a `matmul` product.
    MatmulProduct(ContentId),
}

/// The winner's answer, sent to the requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    /// The auction.
    pub auction_id: AuctionId,
    /// The winner.
    pub provider: PeerId,
    /// What it computed.
    pub output: Output,
    /// How long it took, by the provider's clock.
    pub execution_ms: u64,
}

/// A message with the signer it was verified against and its exact envelope bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<T> {
    /// The decoded, checked message.
    pub body: T,
    /// Who signed it.
    pub signer: PeerId,
    /// The envelope exactly as signed and received.
    pub bytes: Bytes,
}

/// A message type of the market, with its payload type, size limit and checks.
pub trait WireMessage: Sized {
    /// The envelope's payload type.
    const PAYLOAD_TYPE: &'static [u8];
    /// Largest envelope.
    const MAX_BYTES: usize;
    /// Decodes and checks the payload (field ranges and consistency; not timing).
    fn decode_payload(payload: &[u8]) -> Result<Self, Refusal>;
    /// Encodes the payload.
    fn encode_payload(&self) -> Vec<u8>;
    /// The peer that must have signed it.
    fn claimed_signer(&self) -> PeerId;
}

mod codec;

pub use codec::{
    AwardClaim, Claim, Request, decode_response, encode_response, open, peek_award, peek_bid,
    peek_result, sign,
};
