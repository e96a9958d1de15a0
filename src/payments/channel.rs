//! One party's view of a payment channel, as a pure state machine: no I/O, no clock (the
//! time is an argument), so every rule is tested directly and by the model-based property
//! test.
//!
//! The rules it enforces:
//! - a state number strictly increases, and this party never signs two different states
//!   with one number (`highest_signed` only grows; a proposal is numbered above everything
//!   either side signed);
//! - every state conserves the deposits, and no balance goes negative (u64, checked);
//! - a received state is one operation away from the latest binding state, and never
//!   lowers the receiver's balance except by a refund the payer may make;
//! - each escrow is released or refunded once;
//! - nothing changes after settlement.
//!
//! The caller (the payments service) persists [`Channel`] after every call that changes it
//! and before anything it returns is sent to the peer or acknowledged.

use std::collections::VecDeque;

use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::wire::{
    ChannelError, ChannelId, EscrowId, Lock, MAX_AMOUNT, MAX_LOCK_TTL_MS, MAX_LOCKS,
    MAX_NUMBER_JUMP, Proposal, Side, SignedClose, SignedState, State, same_channel, sign_state,
    verify_state,
};

/// Escrows remembered as resolved per channel, to refuse a second release or refund.
pub const MAX_RESOLVED: usize = 256;

/// One change to a channel, from its proposer's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The proposer pays the other party.
    Pay(u64),
    /// The proposer locks money for a task.
    Lock {
        /// The escrow.
        escrow_id: EscrowId,
        /// How much.
        amount: u64,
        /// When the proposer may refund it alone.
        expires_at_ms: u64,
    },
    /// The proposer releases its lock to the other party.
    Release(EscrowId),
    /// A lock goes back to its payer (proposed by the payer after expiry, or by the payee
    /// at any time).
    Refund(EscrowId),
    /// A final state with the current balances (no locks may be open).
    Close,
}

/// How an escrow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Paid to the payee.
    Released,
    /// Back to the payer.
    Refunded,
}

/// How a channel settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// A final state signed by both.
    Cooperative,
    /// A unilateral close that nobody disputed.
    Unilateral,
    /// A unilateral close that was disputed with a higher state.
    Disputed,
    /// State 0 was never countersigned: the channel never opened, the deposit went back.
    Abandoned,
}

impl Settlement {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Cooperative => "cooperative",
            Self::Unilateral => "unilateral",
            Self::Disputed => "disputed",
            Self::Abandoned => "abandoned",
        }
    }
}

/// Where a channel is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// State 0 proposed by us, not yet countersigned.
    Opening,
    /// Open.
    Open,
    /// A unilateral close is in its challenge window.
    Closing(Box<SignedClose>),
    /// Settled: final.
    Settled {
        /// How.
        how: Settlement,
        /// When (Unix ms).
        at_ms: u64,
    },
}

/// What receiving a proposal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A new state, countersigned: send the signature once persisted.
    New {
        /// Our signature.
        sig: Vec<u8>,
        /// What changed.
        op: Op,
    },
    /// The latest state again, byte for byte (a proposer that restarted): send the
    /// signature we already gave. Nothing changed.
    Repeat(Vec<u8>),
}

/// What a unilateral close received from the peer means for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseAnswer {
    /// It uses our latest binding state: settled on it.
    Accepted,
    /// It uses a lower state: we hold a higher one, which settles the channel; the
    /// evidence convicts the closer.
    Disputed(Box<SignedState>),
}

/// One party's view of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Which side we are.
    pub local: Side,
    /// The latest binding state (both signatures), or state 0 signed by us while opening.
    pub latest: SignedState,
    /// Our signed proposal that the peer has not countersigned yet.
    pub pending: Option<Proposal>,
    /// The highest number we ever signed in this channel.
    pub highest_signed: u64,
    /// The highest number the peer said it signed.
    pub peer_highest: u64,
    /// Where it is in its life.
    pub status: Status,
    /// When it opened (Unix ms).
    pub opened_at_ms: u64,
    /// Escrows resolved recently, oldest first (at most [`MAX_RESOLVED`]).
    pub resolved: VecDeque<(EscrowId, Outcome)>,
    /// Our highest-numbered signed proposal not known to be binding: the pending one, or one
    /// the peer refused (it may have countersigned it anyway). A unilateral close discloses
    /// it, so a dispute with it convicts nobody.
    pub unconfirmed: Option<Proposal>,
    /// Escrows we must release (their task was verified), until the release is binding.
    /// Persisted with the channel, so a restart releases rather than refunds them.
    pub release_intents: Vec<EscrowId>,
}

impl Channel {
    /// Opens a channel to `peer`: state 0 signed by us (side A). Persist, then send
    /// `Request::Open` with the returned proposal.
    pub fn open(
        key: &Keypair,
        peer: PeerId,
        channel_id: ChannelId,
        deposit: u64,
        their_deposit: u64,
        now_ms: u64,
    ) -> Result<(Self, Proposal), ChannelError> {
        if deposit > MAX_AMOUNT || their_deposit > MAX_AMOUNT {
            return Err(ChannelError::Overflow);
        }
        if deposit == 0 && their_deposit == 0 {
            return Err(ChannelError::OutOfBounds);
        }
        let state = State {
            channel_id,
            number: 0,
            party_a: key.public().to_peer_id(),
            party_b: peer,
            deposit_a: deposit,
            deposit_b: their_deposit,
            balance_a: deposit,
            balance_b: their_deposit,
            locks: Vec::new(),
            is_final: false,
        };
        let proposal = Proposal::sign(key, state);
        let channel = Self {
            local: Side::A,
            latest: SignedState {
                state: proposal.state.clone(),
                bytes: proposal.bytes.clone(),
                sig_a: proposal.sig.clone(),
                sig_b: Vec::new(),
            },
            pending: Some(proposal.clone()),
            highest_signed: 0,
            peer_highest: 0,
            status: Status::Opening,
            opened_at_ms: now_ms,
            resolved: VecDeque::new(),
            unconfirmed: None,
            release_intents: Vec::new(),
        };
        Ok((channel, proposal))
    }

    /// Accepts an opening proposal from `peer` as side B, if it is well formed and asks of us
    /// at most `max_deposit`. Persist, then answer with the returned signature.
    pub fn accept_open(
        key: &Keypair,
        peer: PeerId,
        proposal: &Proposal,
        max_deposit: u64,
        now_ms: u64,
    ) -> Result<(Self, Vec<u8>), ChannelError> {
        let s = &proposal.state;
        let local = key.public().to_peer_id();
        if s.party_a != peer || s.party_b != local {
            return Err(ChannelError::WrongSigner);
        }
        if !verify_state(&peer, &proposal.bytes, &proposal.sig) {
            return Err(ChannelError::BadSignature);
        }
        s.check_conserved()?;
        if s.number != 0
            || s.is_final
            || !s.locks.is_empty()
            || s.balance_a != s.deposit_a
            || s.balance_b != s.deposit_b
            || s.deposit_a.checked_add(s.deposit_b).unwrap_or(0) == 0
        {
            return Err(ChannelError::InvalidTransition);
        }
        if s.deposit_b > max_deposit {
            return Err(ChannelError::DepositRefused);
        }
        let sig = sign_state(key, &proposal.bytes);
        let channel = Self {
            local: Side::B,
            latest: SignedState {
                state: s.clone(),
                bytes: proposal.bytes.clone(),
                sig_a: proposal.sig.clone(),
                sig_b: sig.clone(),
            },
            pending: None,
            highest_signed: 0,
            peer_highest: 0,
            status: Status::Open,
            opened_at_ms: now_ms,
            resolved: VecDeque::new(),
            unconfirmed: None,
            release_intents: Vec::new(),
        };
        Ok((channel, sig))
    }

    /// The channel's id.
    pub fn id(&self) -> ChannelId {
        self.latest.state.channel_id
    }

    /// The other party.
    pub fn peer(&self) -> PeerId {
        self.latest.state.party(self.local.other())
    }

    /// Our balance in the latest binding state.
    pub fn balance(&self) -> u64 {
        self.latest.state.balance(self.local)
    }

    /// The peer's balance in the latest binding state.
    pub fn peer_balance(&self) -> u64 {
        self.latest.state.balance(self.local.other())
    }

    /// Whether nothing can change any more.
    pub fn is_settled(&self) -> bool {
        matches!(self.status, Status::Settled { .. })
    }

    /// How an escrow was resolved, if it was recently.
    pub fn resolution(&self, escrow: &EscrowId) -> Option<Outcome> {
        self.resolved
            .iter()
            .find(|(id, _)| id == escrow)
            .map(|(_, o)| *o)
    }

    /// The lock of `escrow` in the latest binding state.
    pub fn lock(&self, escrow: &EscrowId) -> Option<&Lock> {
        self.latest
            .state
            .locks
            .iter()
            .find(|l| l.escrow_id == *escrow)
    }

    fn check_open(&self) -> Result<(), ChannelError> {
        match self.status {
            Status::Open => Ok(()),
            Status::Opening => Err(ChannelError::Busy),
            Status::Closing(_) => Err(ChannelError::Closing),
            Status::Settled { .. } => Err(ChannelError::Settled),
        }
    }

    /// The state `op` by us leads to, numbered above everything either side signed.
    pub fn next_state(&self, op: &Op, now_ms: u64) -> Result<State, ChannelError> {
        let me = self.local;
        let peer = me.other();
        let mut s = self.latest.state.clone();
        s.number = self
            .latest
            .state
            .number
            .max(self.highest_signed)
            .max(self.peer_highest)
            .checked_add(1)
            .ok_or(ChannelError::Overflow)?;
        match op {
            Op::Pay(amount) => {
                if *amount == 0 {
                    return Err(ChannelError::Empty);
                }
                let mine = s
                    .balance(me)
                    .checked_sub(*amount)
                    .ok_or(ChannelError::InsufficientFunds)?;
                s.set_balance(me, mine);
                s.set_balance(peer, s.balance(peer) + amount);
            }
            Op::Lock {
                escrow_id,
                amount,
                expires_at_ms,
            } => {
                if *amount == 0 {
                    return Err(ChannelError::Empty);
                }
                if self.resolution(escrow_id).is_some() || self.lock(escrow_id).is_some() {
                    return Err(ChannelError::DuplicateEscrow);
                }
                if s.locks.len() >= MAX_LOCKS {
                    return Err(ChannelError::TooManyLocks);
                }
                if *expires_at_ms > now_ms.saturating_add(MAX_LOCK_TTL_MS) {
                    return Err(ChannelError::OutOfBounds);
                }
                let mine = s
                    .balance(me)
                    .checked_sub(*amount)
                    .ok_or(ChannelError::InsufficientFunds)?;
                s.set_balance(me, mine);
                s.locks.push(Lock {
                    escrow_id: *escrow_id,
                    payer: me,
                    amount: *amount,
                    expires_at_ms: *expires_at_ms,
                });
            }
            Op::Release(escrow) | Op::Refund(escrow) => {
                if self.resolution(escrow).is_some() {
                    return Err(ChannelError::AlreadyResolved);
                }
                let i = s
                    .locks
                    .iter()
                    .position(|l| l.escrow_id == *escrow)
                    .ok_or(ChannelError::UnknownEscrow)?;
                let lock = s.locks.remove(i);
                let to = match op {
                    Op::Release(_) if lock.payer == me => peer,
                    Op::Release(_) => return Err(ChannelError::InvalidTransition),
                    _ if lock.payer == me && now_ms < lock.expires_at_ms => {
                        return Err(ChannelError::NotExpired);
                    }
                    _ => lock.payer,
                };
                s.set_balance(to, s.balance(to) + lock.amount);
            }
            Op::Close => {
                if !s.locks.is_empty() {
                    return Err(ChannelError::InvalidTransition);
                }
                s.is_final = true;
            }
        }
        s.check_conserved()?;
        Ok(s)
    }

    /// Signs the state `op` leads to and keeps it as pending. Persist, then send
    /// `Request::Update` with it. Refused while another proposal of ours is pending.
    pub fn propose(
        &mut self,
        key: &Keypair,
        op: &Op,
        now_ms: u64,
    ) -> Result<Proposal, ChannelError> {
        self.check_open()?;
        if self.pending.is_some() {
            return Err(ChannelError::Busy);
        }
        let state = self.next_state(op, now_ms)?;
        let proposal = Proposal::sign(key, state);
        self.highest_signed = proposal.state.number;
        self.pending = Some(proposal.clone());
        self.unconfirmed = Some(proposal.clone());
        Ok(proposal)
    }

    /// The peer countersigned our pending proposal: it becomes the latest binding state.
    /// Returns what it changed (`None` for an open).
    pub fn countersigned(&mut self, sig: &[u8], now_ms: u64) -> Result<Option<Op>, ChannelError> {
        let pending = self.pending.as_ref().ok_or(ChannelError::Stale)?;
        if !verify_state(&self.peer(), &pending.bytes, sig) {
            return Err(ChannelError::BadSignature);
        }
        // Our own proposal, now binding: what it does, without the time checks it passed
        // when we made it (the clock may have stepped since).
        let op = if self.status == Status::Opening {
            None
        } else {
            Some(classify(
                &self.latest.state,
                &pending.state,
                self.local,
                u64::MAX,
                self,
            )?)
        };
        let pending = self.pending.take().expect("checked");
        self.confirmed(pending.state.number);
        let mut signed = SignedState {
            state: pending.state,
            bytes: pending.bytes,
            sig_a: Vec::new(),
            sig_b: Vec::new(),
        };
        signed.set_sig(self.local, pending.sig);
        signed.set_sig(self.local.other(), sig.to_vec());
        match op {
            None => {
                self.latest = signed;
                self.status = Status::Open;
                Ok(None)
            }
            Some(op) => {
                self.apply(signed, &op, now_ms);
                Ok(Some(op))
            }
        }
    }

    /// A state numbered `number` is binding: a disclosed proposal at or below it is settled.
    fn confirmed(&mut self, number: u64) {
        if self
            .unconfirmed
            .as_ref()
            .is_some_and(|p| p.state.number <= number)
        {
            self.unconfirmed = None;
        }
    }

    /// The peer refused our pending proposal; it will never be countersigned (the peer
    /// never signs a number twice), so we forget it. Returns the operation it made, to be
    /// proposed again above `peer_highest` if the caller wishes.
    pub fn refused(&mut self, peer_highest: u64, now_ms: u64) -> Option<Op> {
        // Bounded, so a peer cannot claim a number that leaves none for the next state.
        let bound = self.latest.state.number.saturating_add(MAX_NUMBER_JUMP);
        self.peer_highest = self.peer_highest.max(peer_highest.min(bound));
        let pending = self.pending.take()?;
        if self.status == Status::Opening {
            return None;
        }
        classify(&self.latest.state, &pending.state, self.local, now_ms, self).ok()
    }

    /// Receives the peer's proposal of the next state. On success the state is binding and
    /// the returned signature may be sent once this channel is persisted.
    pub fn receive(
        &mut self,
        key: &Keypair,
        from: PeerId,
        proposal: &Proposal,
        now_ms: u64,
    ) -> Result<Received, ChannelError> {
        if from != self.peer() {
            return Err(ChannelError::WrongSigner);
        }
        let s = &proposal.state;
        if s.channel_id != self.id() || proposal.channel != self.id() {
            return Err(ChannelError::WrongChannel);
        }
        if !verify_state(&from, &proposal.bytes, &proposal.sig) {
            return Err(ChannelError::BadSignature);
        }
        if s.number == self.latest.state.number && self.status != Status::Opening {
            return if proposal.bytes == self.latest.bytes {
                Ok(Received::Repeat(self.latest.sig(self.local).to_vec()))
            } else {
                Err(ChannelError::Conflicting)
            };
        }
        match self.status {
            Status::Settled { .. } => return Err(ChannelError::Settled),
            Status::Closing(_) => return Err(ChannelError::Closing),
            Status::Opening | Status::Open => {}
        }
        if s.number < self.latest.state.number {
            return Err(ChannelError::Stale);
        }
        if s.number > self.latest.state.number.saturating_add(MAX_NUMBER_JUMP) {
            return Err(ChannelError::OutOfBounds);
        }
        if self.pending.is_some() {
            return Err(ChannelError::Busy);
        }
        if s.number <= self.highest_signed {
            return Err(ChannelError::Stale);
        }
        let op = classify(&self.latest.state, s, self.local.other(), now_ms, self)?;
        let sig = sign_state(key, &proposal.bytes);
        let mut signed = SignedState {
            state: s.clone(),
            bytes: proposal.bytes.clone(),
            sig_a: Vec::new(),
            sig_b: Vec::new(),
        };
        signed.set_sig(self.local.other(), proposal.sig.clone());
        signed.set_sig(self.local, sig.clone());
        self.highest_signed = s.number;
        self.peer_highest = self.peer_highest.max(s.number);
        self.confirmed(s.number);
        self.apply(signed, &op, now_ms);
        Ok(Received::New { sig, op })
    }

    fn apply(&mut self, signed: SignedState, op: &Op, now_ms: u64) {
        match op {
            Op::Release(id) => self.remember(*id, Outcome::Released),
            Op::Refund(id) => self.remember(*id, Outcome::Refunded),
            Op::Close => {
                self.status = Status::Settled {
                    how: Settlement::Cooperative,
                    at_ms: now_ms,
                };
            }
            Op::Pay(_) | Op::Lock { .. } => {}
        }
        self.latest = signed;
    }

    fn remember(&mut self, id: EscrowId, outcome: Outcome) {
        if self.resolved.len() >= MAX_RESOLVED {
            self.resolved.pop_front();
        }
        self.resolved.push_back((id, outcome));
    }

    /// Closes unilaterally with the latest binding state; the challenge window starts now.
    /// Persist, then send `Request::Close`. A pending proposal is dropped: it was never
    /// countersigned as far as we know.
    pub fn close_unilaterally(
        &mut self,
        key: &Keypair,
        now_ms: u64,
    ) -> Result<SignedClose, ChannelError> {
        self.check_open()?;
        self.pending = None;
        let close = SignedClose::sign(key, self.latest.clone(), self.unconfirmed.clone(), now_ms);
        self.status = Status::Closing(Box::new(close.clone()));
        Ok(close)
    }

    /// The peer closed unilaterally with `close` (already checked by
    /// [`SignedClose::open`]). We settle at once: on its state if it is our latest, on our
    /// latest (a dispute) if theirs is lower.
    pub fn on_close(
        &mut self,
        from: PeerId,
        close: &SignedClose,
        now_ms: u64,
    ) -> Result<CloseAnswer, ChannelError> {
        if from != self.peer() || close.closer != from {
            return Err(ChannelError::WrongSigner);
        }
        let theirs = &close.state.state;
        if theirs.channel_id != self.id() || !same_channel(theirs, &self.latest.state) {
            return Err(ChannelError::WrongChannel);
        }
        if let Status::Settled { .. } = self.status {
            // Already settled (say, on our own close): answer as we would have.
            return Ok(if theirs.number < self.latest.state.number {
                CloseAnswer::Disputed(Box::new(self.latest.clone()))
            } else {
                CloseAnswer::Accepted
            });
        }
        self.pending = None;
        if theirs.number < self.latest.state.number {
            self.status = Status::Settled {
                how: Settlement::Disputed,
                at_ms: now_ms,
            };
            return Ok(CloseAnswer::Disputed(Box::new(self.latest.clone())));
        }
        // Equal, or higher: a state we countersigned whose ack we lost (ours to keep).
        self.confirmed(theirs.number);
        self.latest = close.state.clone();
        self.highest_signed = self.highest_signed.max(theirs.number);
        self.status = Status::Settled {
            how: Settlement::Unilateral,
            at_ms: now_ms,
        };
        Ok(CloseAnswer::Accepted)
    }

    /// Our close was disputed with `higher` (a binding state of this channel above ours):
    /// the channel settles on it.
    pub fn on_dispute(&mut self, higher: SignedState, now_ms: u64) -> Result<(), ChannelError> {
        higher.verify()?;
        if !same_channel(&higher.state, &self.latest.state) {
            return Err(ChannelError::WrongChannel);
        }
        // Only within the challenge window: once settled, a channel never changes (the
        // payout was credited once, on the state it settled on).
        let closed_with = match &self.status {
            Status::Closing(close) => close.state.state.number,
            Status::Settled { .. } => return Err(ChannelError::Settled),
            Status::Open | Status::Opening => return Err(ChannelError::InvalidTransition),
        };
        // Above the state we closed with. (A closer that holds a higher state still than the
        // one presented cheated with its close, and settles on the presented one: both
        // sides must settle on one state.)
        if higher.state.number <= closed_with {
            return Err(ChannelError::Stale);
        }
        self.confirmed(higher.state.number);
        self.latest = higher;
        self.status = Status::Settled {
            how: Settlement::Disputed,
            at_ms: now_ms,
        };
        Ok(())
    }

    /// The challenge window of our own close has passed without a dispute: settle on the
    /// state we closed with.
    pub fn settle_unilaterally(&mut self, now_ms: u64) -> Result<(), ChannelError> {
        match self.status {
            Status::Closing(ref close) => {
                // On the state we closed with (our latest, unless we cheated).
                self.latest = close.state.clone();
                self.status = Status::Settled {
                    how: Settlement::Unilateral,
                    at_ms: now_ms,
                };
                Ok(())
            }
            Status::Settled { .. } => Err(ChannelError::Settled),
            _ => Err(ChannelError::InvalidTransition),
        }
    }

    /// What we get back when the channel settles on its latest state.
    pub fn payout(&self) -> u64 {
        self.latest.state.payout(self.local)
    }
}

/// What one step from `prev` to `next`, proposed by `proposer`, does, or why it is refused.
/// `channel` provides the escrows already resolved.
pub fn classify(
    prev: &State,
    next: &State,
    proposer: Side,
    now_ms: u64,
    channel: &Channel,
) -> Result<Op, ChannelError> {
    if next.channel_id != prev.channel_id
        || next.party_a != prev.party_a
        || next.party_b != prev.party_b
        || next.deposit_a != prev.deposit_a
        || next.deposit_b != prev.deposit_b
    {
        return Err(ChannelError::WrongChannel);
    }
    // Amounts first, so an overflow gets its own reason.
    let amounts = [next.balance_a, next.balance_b];
    if amounts.iter().any(|a| *a > MAX_AMOUNT) || next.locks.iter().any(|l| l.amount > MAX_AMOUNT) {
        return Err(ChannelError::Overflow);
    }
    if next.locks.len() > MAX_LOCKS {
        return Err(ChannelError::TooManyLocks);
    }
    let receiver = proposer.other();
    let added: Vec<&Lock> = next
        .locks
        .iter()
        .filter(|l| !prev.locks.iter().any(|p| p.escrow_id == l.escrow_id))
        .collect();
    let removed: Vec<&Lock> = prev
        .locks
        .iter()
        .filter(|l| !next.locks.iter().any(|n| n.escrow_id == l.escrow_id))
        .collect();
    let mut ids: Vec<_> = next.locks.iter().map(|l| l.escrow_id).collect();
    ids.sort();
    ids.dedup();
    if ids.len() != next.locks.len() {
        return Err(ChannelError::DuplicateEscrow);
    }
    // Locks kept must be kept unchanged.
    if next.locks.iter().any(|l| {
        prev.locks
            .iter()
            .any(|p| p.escrow_id == l.escrow_id && p != l)
    }) {
        return Err(ChannelError::InvalidTransition);
    }
    let dp = i128::from(next.balance(proposer)) - i128::from(prev.balance(proposer));
    let dr = i128::from(next.balance(receiver)) - i128::from(prev.balance(receiver));
    let op = if next.is_final {
        if !prev.locks.is_empty() || !next.locks.is_empty() || dp != 0 || dr != 0 {
            return Err(ChannelError::InvalidTransition);
        }
        Op::Close
    } else if dr < 0 {
        // No operation lowers the receiver's balance.
        return Err(ChannelError::PaysLess);
    } else {
        match (added.as_slice(), removed.as_slice()) {
            ([], []) => {
                if dr == 0 && dp == 0 {
                    return Err(ChannelError::Empty);
                }
                if dr > i128::from(prev.balance(proposer)) {
                    return Err(ChannelError::Overspend);
                }
                if dp != -dr {
                    return Err(ChannelError::NotConserved);
                }
                Op::Pay(dr as u64)
            }
            ([lock], []) => {
                if channel.resolution(&lock.escrow_id).is_some() {
                    return Err(ChannelError::AlreadyResolved);
                }
                if lock.payer != proposer || dr != 0 {
                    return Err(ChannelError::InvalidTransition);
                }
                if lock.amount == 0 {
                    return Err(ChannelError::Empty);
                }
                if lock.amount > prev.balance(proposer) || dp != -i128::from(lock.amount) {
                    return Err(ChannelError::UnbackedEscrow);
                }
                if lock.expires_at_ms > now_ms.saturating_add(MAX_LOCK_TTL_MS) {
                    return Err(ChannelError::OutOfBounds);
                }
                Op::Lock {
                    escrow_id: lock.escrow_id,
                    amount: lock.amount,
                    expires_at_ms: lock.expires_at_ms,
                }
            }
            ([], [lock]) => {
                let amount = i128::from(lock.amount);
                let to_payer = if lock.payer == proposer { dp } else { dr };
                let to_payee = if lock.payer == proposer { dr } else { dp };
                if to_payee == amount && to_payer == 0 && lock.payer == proposer {
                    Op::Release(lock.escrow_id)
                } else if to_payer == amount && to_payee == 0 {
                    if lock.payer == proposer && now_ms < lock.expires_at_ms {
                        return Err(ChannelError::NotExpired);
                    }
                    Op::Refund(lock.escrow_id)
                } else {
                    return Err(ChannelError::NotConserved);
                }
            }
            _ => return Err(ChannelError::InvalidTransition),
        }
    };
    next.check_conserved()?;
    Ok(op)
}
