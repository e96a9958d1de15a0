//! The channel protocol's wire format (`proto/payments.proto`): states signed by both
//! parties over their exact bytes, unilateral closes, dispute evidence, and the request and
//! response frames of `/zerostate/channel/1`.
//!
//! Every decoder bounds its input and every field before anything else looks at it; a
//! signature is always checked against the exact bytes that arrived, never a re-encoding.

use std::fmt;
use std::str::FromStr;

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use prost::Message;

/// The generated protobuf types of `proto/payments.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/zerostate.payments.v1.rs"));
}

pub use crate::p2p::{CHANNEL_PROTOCOL, DISPUTES_TOPIC};

/// Domain separation of state signatures.
pub const STATE_DOMAIN: &[u8] = b"zerostate-channel-state\0";
/// Domain separation of close signatures.
pub const CLOSE_DOMAIN: &[u8] = b"zerostate-channel-close\0";
/// Length of channel and escrow ids.
pub const ID_LEN: usize = 32;
/// Largest amount anywhere in a state (2^50), so sums of a few never overflow a u64 in
/// honest states; a larger one is refused as an overflow.
pub const MAX_AMOUNT: u64 = 1 << 50;
/// Most escrow locks one state may hold.
pub const MAX_LOCKS: usize = 64;
/// Longest an escrow may stay locked, from the time it is proposed (1 day).
pub const MAX_LOCK_TTL_MS: u64 = 24 * 3600 * 1000;
/// Largest encoded state (one with [`MAX_LOCKS`] locks of the largest amounts takes about
/// 3.9 KiB).
pub const MAX_STATE_BYTES: usize = 4 * 1024;
/// How far above the numbers both sides know a peer may number a state (or claim to have
/// signed): a state numbered near `u64::MAX` would leave no number for the next one.
pub const MAX_NUMBER_JUMP: u64 = 1 << 32;
/// Largest request or response frame.
pub const MAX_FRAME_BYTES: usize = crate::p2p::MAX_CHANNEL_FRAME_BYTES as usize;
/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Longest refusal reason kept from a peer.
pub const MAX_REASON_LEN: usize = 64;

/// Why a channel message or operation was refused. [`ChannelError::label`] is the reason in
/// metrics and on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelError {
    /// Larger than its limit.
    Oversized,
    /// Not the protobuf message, or a field of the wrong length.
    Malformed,
    /// A signature does not verify.
    BadSignature,
    /// Sent or signed by a peer that is not the channel's other party.
    WrongSigner,
    /// A state of another channel, or one whose parties or deposits differ from the channel's.
    WrongChannel,
    /// No such channel.
    UnknownChannel,
    /// A channel id that is already in use.
    DuplicateChannel,
    /// A number at or below one already agreed or signed: an old state replayed.
    Stale,
    /// The number of the latest state with other content.
    Conflicting,
    /// A state that lowers the receiver's balance.
    PaysLess,
    /// A payment larger than the payer's balance.
    Overspend,
    /// An amount above the limit, or amounts whose sum overflows.
    Overflow,
    /// Balances and locks do not add up to the deposits.
    NotConserved,
    /// A lock not paid for from the payer's balance: one deposit backing two escrows.
    UnbackedEscrow,
    /// A lock whose escrow id is already locked in the channel.
    DuplicateEscrow,
    /// A release or refund of an escrow that was already released or refunded.
    AlreadyResolved,
    /// A release or refund of an escrow the channel does not hold.
    UnknownEscrow,
    /// The payer refunding a lock before it expires.
    NotExpired,
    /// More than one change in one state, or a change no operation makes.
    InvalidTransition,
    /// A state that changes nothing.
    Empty,
    /// More than [`MAX_LOCKS`] locks.
    TooManyLocks,
    /// A field out of its range (an expiry too far away, a zero deposit).
    OutOfBounds,
    /// The channel is settled: nothing changes any more.
    Settled,
    /// The channel is closing: only its close and disputes count.
    Closing,
    /// The receiver has a proposal of its own in flight; retry.
    Busy,
    /// Not enough funds in the wallet or the channel.
    InsufficientFunds,
    /// The receiver does not put up the deposit asked of it.
    DepositRefused,
    /// The receiver holds too many channels.
    TooManyChannels,
}

impl ChannelError {
    /// The reason as a metric label and on the wire.
    pub fn label(self) -> &'static str {
        match self {
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::WrongSigner => "wrong_signer",
            Self::WrongChannel => "wrong_channel",
            Self::UnknownChannel => "unknown_channel",
            Self::DuplicateChannel => "duplicate_channel",
            Self::Stale => "stale",
            Self::Conflicting => "conflicting",
            Self::PaysLess => "pays_payee_less",
            Self::Overspend => "overspend",
            Self::Overflow => "overflow",
            Self::NotConserved => "not_conserved",
            Self::UnbackedEscrow => "unbacked_escrow",
            Self::DuplicateEscrow => "duplicate_escrow",
            Self::AlreadyResolved => "already_resolved",
            Self::UnknownEscrow => "unknown_escrow",
            Self::NotExpired => "not_expired",
            Self::InvalidTransition => "invalid_transition",
            Self::Empty => "empty_update",
            Self::TooManyLocks => "too_many_locks",
            Self::OutOfBounds => "out_of_bounds",
            Self::Settled => "settled",
            Self::Closing => "closing",
            Self::Busy => "busy",
            Self::InsufficientFunds => "insufficient_funds",
            Self::DepositRefused => "deposit_refused",
            Self::TooManyChannels => "too_many_channels",
        }
    }

    /// Every reason, for tests and docs.
    pub const ALL: [ChannelError; 28] = [
        Self::Oversized,
        Self::Malformed,
        Self::BadSignature,
        Self::WrongSigner,
        Self::WrongChannel,
        Self::UnknownChannel,
        Self::DuplicateChannel,
        Self::Stale,
        Self::Conflicting,
        Self::PaysLess,
        Self::Overspend,
        Self::Overflow,
        Self::NotConserved,
        Self::UnbackedEscrow,
        Self::DuplicateEscrow,
        Self::AlreadyResolved,
        Self::UnknownEscrow,
        Self::NotExpired,
        Self::InvalidTransition,
        Self::Empty,
        Self::TooManyLocks,
        Self::OutOfBounds,
        Self::Settled,
        Self::Closing,
        Self::Busy,
        Self::InsufficientFunds,
        Self::DepositRefused,
        Self::TooManyChannels,
    ];

    /// Whether the peer that sent it broke the protocol (malformed, forged or cheating
    /// input), rather than raced us or ran into a limit.
    pub fn is_fault(self) -> bool {
        !matches!(
            self,
            Self::UnknownChannel
                | Self::Busy
                | Self::Settled
                | Self::Closing
                | Self::NotExpired
                | Self::InsufficientFunds
                | Self::DepositRefused
                | Self::TooManyChannels
        )
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl std::error::Error for ChannelError {}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// A random id.
            pub fn random() -> Self {
                Self(rand::random())
            }

            /// From exactly [`ID_LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, ChannelError> {
                bytes.try_into().map(Self).map_err(|_| ChannelError::Malformed)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let bytes = hex::decode(s).map_err(|e| format!("not hex: {e}"))?;
                bytes
                    .try_into()
                    .map(Self)
                    .map_err(|_| format!("expected {} hex digits", 2 * ID_LEN))
            }
        }
    };
}

id_type!(
    /// A channel's id: 32 bytes chosen by the opener.
    ChannelId
);
id_type!(
    /// An escrow's id: 32 bytes, unique within a channel's life (a task's escrow id is
    /// derived from the requester and the auction).
    EscrowId
);

/// Which party of a channel: A opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The opener.
    A,
    /// The other party.
    B,
}

impl Side {
    /// The other party.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    /// The protobuf value.
    pub fn to_pb(self) -> i32 {
        match self {
            Self::A => pb::Side::A as i32,
            Self::B => pb::Side::B as i32,
        }
    }

    /// From the protobuf value.
    pub fn from_pb(v: i32) -> Result<Self, ChannelError> {
        match pb::Side::try_from(v) {
            Ok(pb::Side::A) => Ok(Self::A),
            Ok(pb::Side::B) => Ok(Self::B),
            Err(_) => Err(ChannelError::Malformed),
        }
    }
}

/// Money locked for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// The escrow.
    pub escrow_id: EscrowId,
    /// Whose money it is until released.
    pub payer: Side,
    /// How much.
    pub amount: u64,
    /// After this Unix time (ms) the payer may refund it alone.
    pub expires_at_ms: u64,
}

/// One numbered state of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The channel.
    pub channel_id: ChannelId,
    /// Strictly increasing; state 0 opens the channel.
    pub number: u64,
    /// The opener.
    pub party_a: PeerId,
    /// The other party.
    pub party_b: PeerId,
    /// What A put in.
    pub deposit_a: u64,
    /// What B put in.
    pub deposit_b: u64,
    /// What A holds.
    pub balance_a: u64,
    /// What B holds.
    pub balance_b: u64,
    /// Escrows.
    pub locks: Vec<Lock>,
    /// A final state settles the channel once both signed it.
    pub is_final: bool,
}

impl State {
    /// The party on `side`.
    pub fn party(&self, side: Side) -> PeerId {
        match side {
            Side::A => self.party_a,
            Side::B => self.party_b,
        }
    }

    /// The side `peer` is on, if it is a party.
    pub fn side_of(&self, peer: &PeerId) -> Option<Side> {
        if *peer == self.party_a {
            Some(Side::A)
        } else if *peer == self.party_b {
            Some(Side::B)
        } else {
            None
        }
    }

    /// The balance of `side`.
    pub fn balance(&self, side: Side) -> u64 {
        match side {
            Side::A => self.balance_a,
            Side::B => self.balance_b,
        }
    }

    /// Sets the balance of `side`.
    pub fn set_balance(&mut self, side: Side, amount: u64) {
        match side {
            Side::A => self.balance_a = amount,
            Side::B => self.balance_b = amount,
        }
    }

    /// The deposit of `side`.
    pub fn deposit(&self, side: Side) -> u64 {
        match side {
            Side::A => self.deposit_a,
            Side::B => self.deposit_b,
        }
    }

    /// The money locked in escrows.
    pub fn locked(&self) -> Result<u64, ChannelError> {
        self.locks.iter().try_fold(0u64, |sum, l| {
            sum.checked_add(l.amount).ok_or(ChannelError::Overflow)
        })
    }

    /// What `side` gets if the channel settles on this state: its balance and its own
    /// locks, refunded.
    pub fn payout(&self, side: Side) -> u64 {
        self.locks
            .iter()
            .filter(|l| l.payer == side)
            .fold(self.balance(side), |sum, l| sum.saturating_add(l.amount))
    }

    /// Every amount within [`MAX_AMOUNT`], at most [`MAX_LOCKS`] locks, and both balances
    /// plus the locks equal to the deposits.
    pub fn check_conserved(&self) -> Result<(), ChannelError> {
        let amounts = [
            self.deposit_a,
            self.deposit_b,
            self.balance_a,
            self.balance_b,
        ];
        if amounts.iter().any(|a| *a > MAX_AMOUNT)
            || self.locks.iter().any(|l| l.amount > MAX_AMOUNT)
        {
            return Err(ChannelError::Overflow);
        }
        if self.locks.len() > MAX_LOCKS {
            return Err(ChannelError::TooManyLocks);
        }
        let held = self
            .balance_a
            .checked_add(self.balance_b)
            .and_then(|s| s.checked_add(self.locked().ok()?))
            .ok_or(ChannelError::Overflow)?;
        let deposits = self
            .deposit_a
            .checked_add(self.deposit_b)
            .ok_or(ChannelError::Overflow)?;
        if held != deposits {
            return Err(ChannelError::NotConserved);
        }
        Ok(())
    }

    /// The exact bytes both parties sign.
    pub fn encode(&self) -> Vec<u8> {
        pb::ChannelState {
            channel_id: self.channel_id.0.to_vec(),
            number: self.number,
            party_a: self.party_a.to_bytes(),
            party_b: self.party_b.to_bytes(),
            deposit_a: self.deposit_a,
            deposit_b: self.deposit_b,
            balance_a: self.balance_a,
            balance_b: self.balance_b,
            locks: self
                .locks
                .iter()
                .map(|l| pb::Lock {
                    escrow_id: l.escrow_id.0.to_vec(),
                    payer: l.payer.to_pb(),
                    amount: l.amount,
                    expires_at_ms: l.expires_at_ms,
                })
                .collect(),
            r#final: self.is_final,
        }
        .encode_to_vec()
    }

    /// Decodes a state: size, fields, at most [`MAX_LOCKS`] locks. Amounts are checked by
    /// [`State::check_conserved`], so an overflow gets its own reason.
    pub fn decode(bytes: &[u8]) -> Result<Self, ChannelError> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(ChannelError::Oversized);
        }
        let m = pb::ChannelState::decode(bytes).map_err(|_| ChannelError::Malformed)?;
        if m.locks.len() > MAX_LOCKS {
            return Err(ChannelError::TooManyLocks);
        }
        let locks = m
            .locks
            .iter()
            .map(|l| {
                Ok(Lock {
                    escrow_id: EscrowId::from_slice(&l.escrow_id)?,
                    payer: Side::from_pb(l.payer)?,
                    amount: l.amount,
                    expires_at_ms: l.expires_at_ms,
                })
            })
            .collect::<Result<Vec<_>, ChannelError>>()?;
        let party_a = peer_id(&m.party_a)?;
        let party_b = peer_id(&m.party_b)?;
        if party_a == party_b {
            return Err(ChannelError::Malformed);
        }
        Ok(Self {
            channel_id: ChannelId::from_slice(&m.channel_id)?,
            number: m.number,
            party_a,
            party_b,
            deposit_a: m.deposit_a,
            deposit_b: m.deposit_b,
            balance_a: m.balance_a,
            balance_b: m.balance_b,
            locks,
            is_final: m.r#final,
        })
    }
}

fn peer_id(bytes: &[u8]) -> Result<PeerId, ChannelError> {
    if bytes.len() > 64 {
        return Err(ChannelError::Malformed);
    }
    let peer = PeerId::from_bytes(bytes).map_err(|_| ChannelError::Malformed)?;
    // Only peers whose key is in their id can sign channel states.
    public_key(&peer).ok_or(ChannelError::Malformed)?;
    Ok(peer)
}

/// The public key inside a peer id (ed25519 peer ids inline their key).
pub fn public_key(peer: &PeerId) -> Option<PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(hash.digest()).ok()
}

fn signing_input(domain: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + bytes.len());
    msg.extend_from_slice(domain);
    msg.extend_from_slice(bytes);
    msg
}

/// Signs encoded state bytes.
pub fn sign_state(key: &Keypair, state: &[u8]) -> Vec<u8> {
    key.sign(&signing_input(STATE_DOMAIN, state))
        .expect("ed25519 keys always sign")
}

/// Whether `sig` is `peer`'s signature over the state bytes.
pub fn verify_state(peer: &PeerId, state: &[u8], sig: &[u8]) -> bool {
    sig.len() == SIGNATURE_LEN
        && public_key(peer).is_some_and(|k| k.verify(&signing_input(STATE_DOMAIN, state), sig))
}

/// A state and its exact bytes, signed by one or both parties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedState {
    /// The decoded state.
    pub state: State,
    /// Its bytes, as signed.
    pub bytes: Vec<u8>,
    /// A's signature (empty until A signed).
    pub sig_a: Vec<u8>,
    /// B's signature (empty until B signed).
    pub sig_b: Vec<u8>,
}

impl SignedState {
    /// The signature of `side`.
    pub fn sig(&self, side: Side) -> &[u8] {
        match side {
            Side::A => &self.sig_a,
            Side::B => &self.sig_b,
        }
    }

    /// Sets the signature of `side`.
    pub fn set_sig(&mut self, side: Side, sig: Vec<u8>) {
        match side {
            Side::A => self.sig_a = sig,
            Side::B => self.sig_b = sig,
        }
    }

    /// Checks both signatures and conservation: a binding state.
    pub fn verify(&self) -> Result<(), ChannelError> {
        for side in [Side::A, Side::B] {
            if !verify_state(&self.state.party(side), &self.bytes, self.sig(side)) {
                return Err(ChannelError::BadSignature);
            }
        }
        self.state.check_conserved()
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::SignedState {
        pb::SignedState {
            state: self.bytes.clone(),
            sig_a: self.sig_a.clone(),
            sig_b: self.sig_b.clone(),
        }
    }

    /// From the protobuf form: decodes the state (signatures are checked by
    /// [`SignedState::verify`]).
    pub fn from_pb(m: pb::SignedState) -> Result<Self, ChannelError> {
        if m.sig_a.len() > SIGNATURE_LEN || m.sig_b.len() > SIGNATURE_LEN {
            return Err(ChannelError::Malformed);
        }
        Ok(Self {
            state: State::decode(&m.state)?,
            bytes: m.state,
            sig_a: m.sig_a,
            sig_b: m.sig_b,
        })
    }
}

/// A state signed by its proposer, awaiting the other party's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The channel it is for: the state's own, unless someone replays a state elsewhere.
    pub channel: ChannelId,
    /// The state.
    pub state: State,
    /// Its bytes, as signed.
    pub bytes: Vec<u8>,
    /// The proposer's signature.
    pub sig: Vec<u8>,
}

impl Proposal {
    /// Signs `state` with `key`.
    pub fn sign(key: &Keypair, state: State) -> Self {
        let bytes = state.encode();
        let sig = sign_state(key, &bytes);
        Self {
            channel: state.channel_id,
            state,
            bytes,
            sig,
        }
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::Proposal {
        pb::Proposal {
            state: self.bytes.clone(),
            sig: self.sig.clone(),
            channel_id: self.channel.0.to_vec(),
        }
    }

    /// From the protobuf form (the signature is checked by the receiver, which knows who
    /// must have signed).
    pub fn from_pb(m: pb::Proposal) -> Result<Self, ChannelError> {
        if m.sig.len() > SIGNATURE_LEN {
            return Err(ChannelError::Malformed);
        }
        Ok(Self {
            channel: ChannelId::from_slice(&m.channel_id)?,
            state: State::decode(&m.state)?,
            bytes: m.state,
            sig: m.sig,
        })
    }
}

/// A unilateral close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedClose {
    /// The state the closer closes with.
    pub state: SignedState,
    /// Who closes.
    pub closer: PeerId,
    /// When (Unix ms): the challenge window starts here.
    pub at_ms: u64,
    /// The exact bytes of the `Close` message, as signed.
    pub bytes: Vec<u8>,
    /// The closer's signature.
    pub sig: Vec<u8>,
    /// The closer's highest signed proposal above `state`, whose fate it does not know.
    pub disclosed: Option<Proposal>,
}

impl SignedClose {
    /// The closer signs a close with `state`, disclosing `unconfirmed` (its highest signed
    /// proposal above `state` that it does not know to be binding).
    pub fn sign(
        key: &Keypair,
        state: SignedState,
        unconfirmed: Option<Proposal>,
        at_ms: u64,
    ) -> Self {
        let closer = key.public().to_peer_id();
        let disclosed = unconfirmed.filter(|p| p.state.number > state.state.number);
        let bytes = pb::Close {
            state: Some(state.to_pb()),
            closer: closer.to_bytes(),
            at_ms,
            disclosed: disclosed.as_ref().map(Proposal::to_pb),
        }
        .encode_to_vec();
        let sig = key
            .sign(&signing_input(CLOSE_DOMAIN, &bytes))
            .expect("ed25519 keys always sign");
        Self {
            state,
            closer,
            at_ms,
            bytes,
            sig,
            disclosed,
        }
    }

    /// The highest number the closer admits to have signed.
    pub fn admitted(&self) -> u64 {
        self.disclosed
            .as_ref()
            .map_or(self.state.state.number, |p| p.state.number)
            .max(self.state.state.number)
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::SignedClose {
        pb::SignedClose {
            close: self.bytes.clone(),
            sig: self.sig.clone(),
        }
    }

    /// Decodes and checks a close: the closer's signature, that the closer is a party,
    /// and that the state is binding (both signatures, conserved).
    pub fn open(m: pb::SignedClose) -> Result<Self, ChannelError> {
        if m.close.len() > MAX_FRAME_BYTES || m.sig.len() > SIGNATURE_LEN {
            return Err(ChannelError::Oversized);
        }
        let c = pb::Close::decode(m.close.as_slice()).map_err(|_| ChannelError::Malformed)?;
        let state = SignedState::from_pb(c.state.ok_or(ChannelError::Malformed)?)?;
        let closer = peer_id(&c.closer)?;
        let key = public_key(&closer).ok_or(ChannelError::Malformed)?;
        if !key.verify(&signing_input(CLOSE_DOMAIN, &m.close), &m.sig) {
            return Err(ChannelError::BadSignature);
        }
        if state.state.side_of(&closer).is_none() {
            return Err(ChannelError::WrongSigner);
        }
        state.verify()?;
        let disclosed = c.disclosed.map(Proposal::from_pb).transpose()?;
        if let Some(p) = &disclosed {
            if !same_channel(&p.state, &state.state) {
                return Err(ChannelError::WrongChannel);
            }
            if !verify_state(&closer, &p.bytes, &p.sig) {
                return Err(ChannelError::BadSignature);
            }
        }
        Ok(Self {
            state,
            closer,
            at_ms: c.at_ms,
            bytes: m.close,
            sig: m.sig,
            disclosed,
        })
    }
}

/// Whether two states belong to one channel: same id, parties and deposits.
pub fn same_channel(a: &State, b: &State) -> bool {
    a.channel_id == b.channel_id
        && a.party_a == b.party_a
        && a.party_b == b.party_b
        && a.deposit_a == b.deposit_a
        && a.deposit_b == b.deposit_b
}

/// Proof that a closer cheated: its signed close used a state lower than another binding
/// state of the same channel, one above everything the close disclosed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The close.
    pub close: SignedClose,
    /// The higher binding state.
    pub higher: SignedState,
}

impl Evidence {
    /// Encodes it for the disputes topic.
    pub fn encode(&self) -> Vec<u8> {
        pb::Evidence {
            close: Some(self.close.to_pb()),
            higher: Some(self.higher.to_pb()),
        }
        .encode_to_vec()
    }

    /// The channel and the accused, read without checking any signature: a cheap key to
    /// drop evidence already judged before paying for its verification.
    pub fn peek(bytes: &[u8]) -> Option<(ChannelId, Vec<u8>)> {
        if bytes.len() > MAX_FRAME_BYTES * 2 {
            return None;
        }
        let m = pb::Evidence::decode(bytes).ok()?;
        let close = pb::Close::decode(m.close?.close.as_slice()).ok()?;
        let state = State::decode(&close.state?.state).ok()?;
        Some((state.channel_id, close.closer))
    }

    /// Decodes and verifies evidence; returns the cheater. Every node can check it alone:
    /// the higher state is binding, of the same channel, and above both the state the
    /// closer closed with and the highest it disclosed having signed.
    pub fn open(bytes: &[u8]) -> Result<(Self, PeerId), ChannelError> {
        if bytes.len() > MAX_FRAME_BYTES * 2 {
            return Err(ChannelError::Oversized);
        }
        let m = pb::Evidence::decode(bytes).map_err(|_| ChannelError::Malformed)?;
        let close = SignedClose::open(m.close.ok_or(ChannelError::Malformed)?)?;
        let higher = SignedState::from_pb(m.higher.ok_or(ChannelError::Malformed)?)?;
        higher.verify()?;
        if !same_channel(&close.state.state, &higher.state) {
            return Err(ChannelError::WrongChannel);
        }
        if higher.state.number <= close.admitted() {
            return Err(ChannelError::Stale);
        }
        let cheater = close.closer;
        Ok((Self { close, higher }, cheater))
    }
}

/// A request on `/zerostate/channel/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// State 0 of a new channel, signed by the opener.
    Open(Proposal),
    /// The next state, signed by its proposer.
    Update(Proposal),
    /// A unilateral close.
    Close(Box<SignedClose>),
}

impl Request {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        use pb::channel_request::Body;
        let body = match self {
            Self::Open(p) => Body::Open(p.to_pb()),
            Self::Update(p) => Body::Update(p.to_pb()),
            Self::Close(c) => Body::Close(c.to_pb()),
        };
        pb::ChannelRequest { body: Some(body) }.encode_to_vec()
    }

    /// Decodes and checks a frame (a close's signatures are checked here; a proposal's by
    /// the receiver, which knows who must have signed it).
    pub fn decode(bytes: &[u8]) -> Result<Self, ChannelError> {
        use pb::channel_request::Body;
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(ChannelError::Oversized);
        }
        let m = pb::ChannelRequest::decode(bytes).map_err(|_| ChannelError::Malformed)?;
        match m.body.ok_or(ChannelError::Malformed)? {
            Body::Open(p) => Ok(Self::Open(Proposal::from_pb(p)?)),
            Body::Update(p) => Ok(Self::Update(Proposal::from_pb(p)?)),
            Body::Close(c) => Ok(Self::Close(Box::new(SignedClose::open(c)?))),
        }
    }

    /// The message's name as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Open(_) => "open",
            Self::Update(_) => "update",
            Self::Close(_) => "close",
        }
    }
}

/// The answer to a channel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The receiver's signature over the proposed state.
    Countersig(Vec<u8>),
    /// Refused, with the reason (bounded).
    Refused(String),
    /// A higher binding state against a stale close.
    Dispute(Box<SignedState>),
    /// The close is accepted as it is.
    CloseAccepted,
}

impl Response {
    /// Encodes the frame, with the receiver's highest signed number.
    pub fn encode(&self, highest: u64) -> Vec<u8> {
        use pb::channel_response::Body;
        let body = match self {
            Self::Countersig(s) => Body::Countersig(s.clone()),
            Self::Refused(r) => Body::Refused(r.clone()),
            Self::Dispute(s) => Body::Dispute(s.to_pb()),
            Self::CloseAccepted => Body::CloseAccepted(true),
        };
        pb::ChannelResponse {
            body: Some(body),
            highest,
        }
        .encode_to_vec()
    }

    /// Decodes a frame: the response and the receiver's highest signed number.
    pub fn decode(bytes: &[u8]) -> Result<(Self, u64), ChannelError> {
        use pb::channel_response::Body;
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(ChannelError::Oversized);
        }
        let m = pb::ChannelResponse::decode(bytes).map_err(|_| ChannelError::Malformed)?;
        let response = match m.body.ok_or(ChannelError::Malformed)? {
            Body::Countersig(s) if s.len() == SIGNATURE_LEN => Self::Countersig(s),
            Body::Countersig(_) => return Err(ChannelError::Malformed),
            Body::Refused(r) => Self::Refused(r.chars().take(MAX_REASON_LEN).collect()),
            Body::Dispute(s) => Self::Dispute(Box::new(SignedState::from_pb(s)?)),
            Body::CloseAccepted(_) => Self::CloseAccepted,
        };
        Ok((response, m.highest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(a: &Keypair, b: &Keypair) -> State {
        State {
            channel_id: ChannelId([7; 32]),
            number: 3,
            party_a: a.public().to_peer_id(),
            party_b: b.public().to_peer_id(),
            deposit_a: 100,
            deposit_b: 0,
            balance_a: 60,
            balance_b: 30,
            locks: vec![Lock {
                escrow_id: EscrowId([1; 32]),
                payer: Side::A,
                amount: 10,
                expires_at_ms: 5,
            }],
            is_final: false,
        }
    }

    #[test]
    fn states_round_trip_and_signatures_bind_every_field() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let s = state(&a, &b);
        let bytes = s.encode();
        assert_eq!(State::decode(&bytes).unwrap(), s);
        s.check_conserved().unwrap();
        let sig = sign_state(&a, &bytes);
        assert!(verify_state(&s.party_a, &bytes, &sig));
        assert!(!verify_state(&s.party_b, &bytes, &sig));
        let mut other = s.clone();
        other.locks[0].amount = 11;
        other.balance_a = 59;
        assert!(!verify_state(&s.party_a, &other.encode(), &sig));
    }

    #[test]
    fn conservation_and_overflow() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut s = state(&a, &b);
        s.balance_b = 31;
        assert_eq!(s.check_conserved(), Err(ChannelError::NotConserved));
        s.balance_b = u64::MAX;
        assert_eq!(s.check_conserved(), Err(ChannelError::Overflow));
    }

    #[test]
    fn frames_are_bounded() {
        assert_eq!(
            Request::decode(&vec![0u8; MAX_FRAME_BYTES + 1]),
            Err(ChannelError::Oversized)
        );
        assert_eq!(Request::decode(&[0xff, 0xff]), Err(ChannelError::Malformed));
        assert!(Response::decode(&[1, 200]).is_err());
    }

    #[test]
    fn the_largest_state_close_and_evidence_fit_their_limits() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let mut s = state(&a, &b);
        s.number = u64::MAX;
        s.deposit_a = MAX_AMOUNT;
        s.deposit_b = MAX_AMOUNT;
        s.locks = (0..MAX_LOCKS)
            .map(|i| Lock {
                escrow_id: EscrowId([i as u8; 32]),
                payer: Side::B,
                amount: MAX_AMOUNT,
                expires_at_ms: u64::MAX,
            })
            .collect();
        let bytes = s.encode();
        assert!(bytes.len() <= MAX_STATE_BYTES, "{}", bytes.len());
        let signed = SignedState {
            sig_a: sign_state(&a, &bytes),
            sig_b: sign_state(&b, &bytes),
            state: s.clone(),
            bytes,
        };
        let close = SignedClose::sign(&a, signed.clone(), Some(Proposal::sign(&a, s)), 1);
        let frame = Request::Close(Box::new(close.clone())).encode();
        assert!(frame.len() <= MAX_FRAME_BYTES, "{}", frame.len());
        let evidence = Evidence {
            close,
            higher: signed,
        }
        .encode();
        assert!(evidence.len() <= crate::p2p::MAX_GOSSIP_MESSAGE_BYTES);
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::HashSet<_> =
            ChannelError::ALL.iter().map(|e| e.label()).collect();
        assert_eq!(labels.len(), ChannelError::ALL.len());
    }
}
