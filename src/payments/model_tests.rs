//! Model-based property test of the channel state machine: random sequences of open, pay,
//! lock, release, refund, cooperative close, unilateral close (honest and stale), dispute,
//! lost messages and crash-restart, across three parties, checked against a plain reference
//! model after every step.
//!
//! Every party persists each channel after each change, as the service does, and a crash
//! replaces its memory with what it persisted (through the ledger's record encoding). A
//! crash "before persisting" drops the change it was making and the answer it would have
//! sent. Failures shrink; proptest keeps their seeds in `proptest-regressions/`.

use std::collections::{BTreeMap, HashMap};

use libp2p::identity::Keypair;
use proptest::prelude::*;

use super::channel::{Channel, CloseAnswer, Op, Received, Status};
use super::record;
use super::wire::{ChannelError, ChannelId, EscrowId, Evidence, Proposal, Side, SignedState};

const PARTIES: usize = 3;
const CREDIT: u64 = 1_000;

#[derive(Debug, Clone)]
enum Action {
    Open {
        from: usize,
        to: usize,
        deposit: u64,
    },
    Pay {
        ch: usize,
        side: bool,
        amount: u64,
    },
    Lock {
        ch: usize,
        side: bool,
        amount: u64,
        ttl: u64,
    },
    Release {
        ch: usize,
        side: bool,
        lock: usize,
    },
    Refund {
        ch: usize,
        side: bool,
        lock: usize,
    },
    Close {
        ch: usize,
        side: bool,
    },
    Unilateral {
        ch: usize,
        side: bool,
        stale: bool,
    },
    /// The network heals: every pending proposal is re-sent, byte for byte.
    Heal,
    Crash {
        party: usize,
    },
    Tick {
        ms: u64,
    },
}

/// How a delivery goes wrong, if it does.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// The request is lost.
    DropRequest,
    /// The answer is lost.
    DropResponse,
    /// The receiver crashes after deciding, before persisting: its change is lost and it
    /// sends nothing.
    CrashBeforePersist,
}

fn action() -> impl Strategy<Value = (Action, Fault)> {
    let ch = 0..3usize;
    // Mostly the opener acts: it holds the deposit.
    let side = prop_oneof![3 => Just(true), 1 => Just(false)];
    let act = prop_oneof![
        4 => (0..PARTIES, 0..PARTIES, 0..400u64).prop_map(|(from, to, deposit)| Action::Open { from, to, deposit }),
        6 => (ch.clone(), side.clone(), 0..60u64).prop_map(|(ch, side, amount)| Action::Pay { ch, side, amount }),
        4 => (ch.clone(), side.clone(), 0..60u64, 0..50u64).prop_map(|(ch, side, amount, ttl)| Action::Lock { ch, side, amount, ttl }),
        3 => (ch.clone(), side.clone(), 0..4usize).prop_map(|(ch, side, lock)| Action::Release { ch, side, lock }),
        3 => (ch.clone(), any::<bool>(), 0..4usize).prop_map(|(ch, side, lock)| Action::Refund { ch, side, lock }),
        1 => (ch.clone(), any::<bool>()).prop_map(|(ch, side)| Action::Close { ch, side }),
        1 => (ch.clone(), any::<bool>(), any::<bool>()).prop_map(|(ch, side, stale)| Action::Unilateral { ch, side, stale }),
        3 => Just(Action::Heal),
        1 => (0..PARTIES).prop_map(|party| Action::Crash { party }),
        2 => (0..100u64).prop_map(|ms| Action::Tick { ms }),
    ];
    let fault = prop_oneof![
        10 => Just(Fault::None),
        1 => Just(Fault::DropRequest),
        1 => Just(Fault::DropResponse),
        1 => Just(Fault::CrashBeforePersist),
    ];
    (act, fault)
}

/// The reference model of one channel: what both parties agreed on, in plain numbers.
#[derive(Debug, Clone, Default)]
struct Model {
    balance: [u64; 2],
    locks: BTreeMap<EscrowId, (usize, u64, u64)>,
    resolved: Vec<EscrowId>,
    settled: bool,
}

impl Model {
    /// Whether `op` by `side` is valid, by the rules stated plainly.
    fn valid(&self, side: usize, op: &Op, now: u64) -> bool {
        match op {
            Op::Pay(a) => *a > 0 && *a <= self.balance[side],
            Op::Lock {
                escrow_id, amount, ..
            } => {
                *amount > 0
                    && *amount <= self.balance[side]
                    && self.locks.len() < super::wire::MAX_LOCKS
                    && !self.locks.contains_key(escrow_id)
                    && !self.resolved.contains(escrow_id)
            }
            Op::Release(id) => self
                .locks
                .get(id)
                .is_some_and(|(payer, _, _)| *payer == side),
            Op::Refund(id) => self
                .locks
                .get(id)
                .is_some_and(|(payer, _, exp)| *payer != side || now >= *exp),
            Op::Close => self.locks.is_empty(),
        }
    }

    fn apply(&mut self, side: usize, op: &Op) {
        match op {
            Op::Pay(a) => {
                self.balance[side] -= a;
                self.balance[1 - side] += a;
            }
            Op::Lock {
                escrow_id,
                amount,
                expires_at_ms,
            } => {
                self.balance[side] -= amount;
                self.locks
                    .insert(*escrow_id, (side, *amount, *expires_at_ms));
            }
            Op::Release(id) | Op::Refund(id) => {
                let (payer, amount, _) = self.locks.remove(id).expect("valid");
                let to = if matches!(op, Op::Release(_)) {
                    1 - payer
                } else {
                    payer
                };
                self.balance[to] += amount;
                self.resolved.push(*id);
            }
            Op::Close => self.settled = true,
        }
    }
}

struct Party {
    key: Keypair,
    memory: HashMap<ChannelId, Channel>,
    disk: HashMap<ChannelId, Vec<u8>>,
    wallet: u64,
    disk_wallet: u64,
}

impl Party {
    fn persist(&mut self, id: ChannelId) {
        let bytes = record::encode(&self.memory[&id]);
        self.disk.insert(id, bytes);
        self.disk_wallet = self.wallet;
    }

    fn crash(&mut self) {
        self.memory = self
            .disk
            .iter()
            .map(|(id, b)| (*id, record::decode(b).expect("records decode")))
            .collect();
        self.wallet = self.disk_wallet;
    }
}

struct Sim {
    parties: Vec<Party>,
    channels: Vec<(ChannelId, usize, usize)>,
    models: HashMap<ChannelId, Model>,
    /// Every state anyone ever signed: (signer, channel, number) -> bytes.
    signed: HashMap<(usize, ChannelId, u64), Vec<u8>>,
    /// Binding states seen, per channel (for stale closes).
    history: HashMap<ChannelId, Vec<SignedState>>,
    now: u64,
    /// Why proposals were refused locally, for the coverage probe.
    refusals: HashMap<&'static str, usize>,
    escrow_seq: u8,
    settled_payout: u64,
}

impl Sim {
    fn new() -> Self {
        Self {
            parties: (0..PARTIES)
                .map(|_| Party {
                    key: Keypair::generate_ed25519(),
                    memory: HashMap::new(),
                    disk: HashMap::new(),
                    wallet: CREDIT,
                    disk_wallet: CREDIT,
                })
                .collect(),
            channels: Vec::new(),
            models: HashMap::new(),
            signed: HashMap::new(),
            history: HashMap::new(),
            now: 1_000,
            refusals: HashMap::new(),
            escrow_seq: 0,
            settled_payout: 0,
        }
    }

    fn record_sig(&mut self, signer: usize, id: ChannelId, number: u64, bytes: &[u8]) {
        let prev = self
            .signed
            .entry((signer, id, number))
            .or_insert_with(|| bytes.to_vec());
        assert_eq!(
            prev, bytes,
            "party {signer} signed two different states numbered {number}"
        );
    }

    /// The channel's id, the acting party and the other, if the acting party holds it.
    /// `ch` picks among the unsettled channels first (modulo their number).
    fn parties_of(&self, ch: usize, side: bool) -> Option<(ChannelId, usize, usize)> {
        let live: Vec<&(ChannelId, usize, usize)> = self
            .channels
            .iter()
            .filter(|(id, a, b)| {
                [a, b].iter().all(|p| {
                    self.parties[**p]
                        .memory
                        .get(id)
                        .is_some_and(|c| !c.is_settled())
                })
            })
            .collect();
        let (id, a, b) = if live.is_empty() {
            *self.channels.get(ch % self.channels.len().max(1))?
        } else {
            *live[ch % live.len()]
        };
        let (me, other) = if side { (a, b) } else { (b, a) };
        self.parties[me]
            .memory
            .contains_key(&id)
            .then_some((id, me, other))
    }

    fn side_index(&self, id: ChannelId, party: usize) -> usize {
        match self.parties[party].memory[&id].local {
            Side::A => 0,
            Side::B => 1,
        }
    }

    fn step(&mut self, action: &Action, fault: Fault) {
        match action {
            Action::Open { from, to, deposit } => self.open(*from, *to, *deposit, fault),
            Action::Pay { ch, side, amount } => self.propose(*ch, *side, Op::Pay(*amount), fault),
            Action::Lock {
                ch,
                side,
                amount,
                ttl,
            } => {
                self.escrow_seq = self.escrow_seq.wrapping_add(1);
                let op = Op::Lock {
                    escrow_id: EscrowId([self.escrow_seq; 32]),
                    amount: *amount,
                    expires_at_ms: self.now + ttl,
                };
                self.propose(*ch, *side, op, fault);
            }
            Action::Release { ch, side, lock } | Action::Refund { ch, side, lock } => {
                let Some((id, _, _)) = self.parties_of(*ch, *side) else {
                    return;
                };
                let model = &self.models[&id];
                // Mostly a held lock; sometimes a resolved or an unknown one.
                let escrow = match model.locks.keys().nth(lock % model.locks.len().max(1)) {
                    Some(id) if *lock < 3 => *id,
                    _ => model
                        .resolved
                        .last()
                        .copied()
                        .unwrap_or(EscrowId([0xee; 32])),
                };
                let op = if matches!(action, Action::Release { .. }) {
                    Op::Release(escrow)
                } else {
                    Op::Refund(escrow)
                };
                self.propose(*ch, *side, op, fault);
            }
            Action::Close { ch, side } => self.propose(*ch, *side, Op::Close, fault),
            Action::Unilateral { ch, side, stale } => self.unilateral(*ch, *side, *stale),
            Action::Heal => {
                for ch in 0..self.channels.len() {
                    for side in [true, false] {
                        self.resend(ch, side, fault);
                    }
                }
            }
            Action::Crash { party } => self.parties[*party].crash(),
            Action::Tick { ms } => self.now += ms,
        }
    }

    fn open(&mut self, from: usize, to: usize, deposit: u64, fault: Fault) {
        if from == to || deposit > self.parties[from].wallet {
            return;
        }
        let id = ChannelId([self.channels.len() as u8 + 1; 32]);
        let to_peer = self.parties[to].key.public().to_peer_id();
        let result = Channel::open(&self.parties[from].key, to_peer, id, deposit, 0, self.now);
        let Ok((channel, proposal)) = result else {
            assert_eq!(deposit, 0, "only an empty channel may be refused");
            return;
        };
        self.record_sig(from, id, 0, &proposal.bytes);
        let p = &mut self.parties[from];
        p.wallet -= deposit;
        p.memory.insert(id, channel);
        p.persist(id);
        self.channels.push((id, from, to));
        self.models.insert(
            id,
            Model {
                balance: [deposit, 0],
                ..Model::default()
            },
        );
        self.deliver_open(id, from, to, fault);
    }

    fn deliver_open(&mut self, id: ChannelId, from: usize, to: usize, fault: Fault) {
        let Some(proposal) = self.parties[from].memory[&id].pending.clone() else {
            return;
        };
        if matches!(fault, Fault::DropRequest) {
            return;
        }
        let from_peer = self.parties[from].key.public().to_peer_id();
        let sig = if let Some(existing) = self.parties[to].memory.get(&id) {
            // A re-sent open: the same answer again.
            assert_eq!(existing.latest.bytes, proposal.bytes);
            existing.latest.sig(Side::B).to_vec()
        } else {
            let (channel, sig) =
                Channel::accept_open(&self.parties[to].key, from_peer, &proposal, 0, self.now)
                    .expect("a well-formed open is accepted");
            if matches!(fault, Fault::CrashBeforePersist) {
                return;
            }
            self.record_sig(to, id, 0, &proposal.bytes);
            self.parties[to].memory.insert(id, channel);
            self.parties[to].persist(id);
            sig
        };
        if matches!(fault, Fault::DropResponse) {
            return;
        }
        let p = &mut self.parties[from];
        p.memory
            .get_mut(&id)
            .unwrap()
            .countersigned(&sig, self.now)
            .expect("countersignature verifies");
        p.persist(id);
        self.after_binding(id);
    }

    fn propose(&mut self, ch: usize, side: bool, op: Op, fault: Fault) {
        let Some((id, me, other)) = self.parties_of(ch, side) else {
            *self.refusals.entry("(no such channel)").or_default() += 1;
            return;
        };
        let now = self.now;
        let my_side = self.side_index(id, me);
        let model = self.models[&id].clone();
        let other_number = self.parties[other]
            .memory
            .get(&id)
            .map_or(u64::MAX, |c| c.latest.state.number);
        let key = self.parties[me].key.clone();
        let channel = self.parties[me].memory.get_mut(&id).unwrap();
        let before = channel.clone();
        let in_sync = channel.status == Status::Open
            && channel.pending.is_none()
            && channel.latest.state.number == other_number;
        let result = channel.propose(&key, &op, now);
        match result {
            Err(e) => {
                assert_eq!(channel, &before, "a refused operation changes nothing");
                *self.refusals.entry(e.label()).or_default() += 1;
                if in_sync && !model.settled {
                    assert!(
                        !model.valid(my_side, &op, now),
                        "the model accepts {op:?} by side {my_side} that the machine refuses with {e}"
                    );
                }
            }
            Ok(proposal) => {
                if in_sync {
                    assert!(
                        model.valid(my_side, &op, now),
                        "the machine accepts {op:?} that the model refuses"
                    );
                }
                self.record_sig(me, id, proposal.state.number, &proposal.bytes);
                self.parties[me].persist(id);
                self.deliver(id, me, other, fault);
            }
        }
    }

    fn resend(&mut self, ch: usize, side: bool, fault: Fault) {
        let Some((id, me, other)) = self.parties_of(ch, side) else {
            return;
        };
        let channel = &self.parties[me].memory[&id];
        if channel.status == Status::Opening {
            self.deliver_open(id, me, other, fault);
        } else if channel.pending.is_some() {
            self.deliver(id, me, other, fault);
        }
    }

    /// Delivers `me`'s pending proposal to `other`, byte for byte.
    fn deliver(&mut self, id: ChannelId, me: usize, other: usize, fault: Fault) {
        let Some(proposal) = self.parties[me].memory[&id].pending.clone() else {
            return;
        };
        if matches!(fault, Fault::DropRequest) || !self.parties[other].memory.contains_key(&id) {
            return;
        }
        let now = self.now;
        let from = self.parties[me].key.public().to_peer_id();
        let key = self.parties[other].key.clone();
        let receiver = self.parties[other].memory.get_mut(&id).unwrap();
        let before = receiver.clone();
        let prev_state = receiver.latest.state.clone();
        let result = receiver.receive(&key, from, &proposal, now);
        let (sig, highest) = match result {
            Ok(Received::New { sig, op }) => {
                *self.refusals.entry("(received new)").or_default() += 1;
                if matches!(fault, Fault::CrashBeforePersist) {
                    self.parties[other].crash();
                    return;
                }
                let other_side = match before.local {
                    Side::A => 0,
                    Side::B => 1,
                };
                let model = self.models.get_mut(&id).unwrap();
                assert!(
                    model.valid(1 - other_side, &op, now),
                    "the receiver accepted {op:?} that the model refuses (from {prev_state:?})"
                );
                model.apply(1 - other_side, &op);
                self.record_sig(other, id, proposal.state.number, &proposal.bytes);
                if matches!(op, Op::Close) {
                    let payout = self.parties[other].memory[&id].payout();
                    self.parties[other].wallet += payout;
                    self.settled_payout += payout;
                }
                self.parties[other].persist(id);
                self.after_binding(id);
                (Some(sig), 0)
            }
            Ok(Received::Repeat(sig)) => {
                assert_eq!(self.parties[other].memory[&id], before);
                (Some(sig), 0)
            }
            Err(e) => {
                *self.refusals.entry(e.label()).or_default() += 1;
                assert_eq!(
                    self.parties[other].memory[&id], before,
                    "a refused proposal changes nothing ({e})"
                );
                (None, before.highest_signed)
            }
        };
        if matches!(fault, Fault::DropResponse) {
            return;
        }
        let proposer = self.parties[me].memory.get_mut(&id).unwrap();
        match sig {
            Some(sig) => {
                let op = proposer
                    .countersigned(&sig, now)
                    .expect("the countersignature verifies");
                if matches!(op, Some(Op::Close)) {
                    let payout = proposer.payout();
                    self.parties[me].wallet += payout;
                    self.settled_payout += payout;
                }
            }
            None => {
                proposer.refused(highest, now);
            }
        }
        self.parties[me].persist(id);
    }

    fn after_binding(&mut self, id: ChannelId) {
        for p in &self.parties {
            if let Some(c) = p.memory.get(&id)
                && c.status != Status::Opening
            {
                let h = self.history.entry(id).or_default();
                if !h.iter().any(|s| s.bytes == c.latest.bytes) {
                    h.push(c.latest.clone());
                }
            }
        }
    }

    fn unilateral(&mut self, ch: usize, side: bool, stale: bool) {
        let Some((id, me, other)) = self.parties_of(ch, side) else {
            return;
        };
        let now = self.now;
        let key = self.parties[me].key.clone();
        let channel = self.parties[me].memory.get_mut(&id).unwrap();
        let Ok(mut close) = channel.close_unilaterally(&key, now) else {
            return;
        };
        // A cheater closes with an older binding state than its latest, if it has one.
        let mut cheated = false;
        if stale
            && let Some(old) = self
                .history
                .get(&id)
                .into_iter()
                .flatten()
                .find(|s| s.state.number < close.state.state.number)
        {
            close = super::wire::SignedClose::sign(&key, old.clone(), None, now);
            cheated = true;
            let channel = self.parties[me].memory.get_mut(&id).unwrap();
            channel.status = Status::Closing(Box::new(close.clone()));
        }
        self.parties[me].persist(id);
        let from = key.public().to_peer_id();
        let Some(receiver) = self.parties[other].memory.get_mut(&id) else {
            return;
        };
        let was_settled = receiver.is_settled();
        let receiver_number = receiver.latest.state.number;
        let closed_number = close.state.state.number;
        let answer = receiver
            .on_close(from, &close, now)
            .expect("a signed close of the channel is taken");
        if !was_settled {
            let payout = receiver.payout();
            self.parties[other].wallet += payout;
            self.settled_payout += payout;
        }
        self.parties[other].persist(id);
        let closer = self.parties[me].memory.get_mut(&id).unwrap();
        match answer {
            CloseAnswer::Accepted => {
                assert!(
                    !cheated || was_settled || receiver_number <= closed_number,
                    "a close below the other party's latest state is always disputed"
                );
                closer.settle_unilaterally(now).unwrap();
            }
            CloseAnswer::Disputed(higher) => {
                // The evidence convicts the closer on any node.
                let evidence = Evidence {
                    close: close.clone(),
                    higher: (*higher).clone(),
                };
                // It convicts exactly when the higher state is above all the closer admitted
                // to have signed: an honest closer (whose proposal's answer was lost) is
                // never convicted.
                match Evidence::open(&evidence.encode()) {
                    Ok((_, cheater)) => {
                        assert!(cheated, "an honest closer was convicted");
                        assert_eq!(cheater, from);
                    }
                    Err(e) => {
                        assert_eq!(e, ChannelError::Stale);
                        assert!(higher.state.number <= close.admitted());
                    }
                }
                closer.on_dispute(*higher, now).unwrap();
            }
        }
        let payout = closer.payout();
        self.parties[me].wallet += payout;
        self.settled_payout += payout;
        self.parties[me].persist(id);
        // The latest state won: both settled on the same, highest binding state.
        let (a, b) = (
            &self.parties[me].memory[&id],
            &self.parties[other].memory[&id],
        );
        assert_eq!(a.latest.bytes, b.latest.bytes, "both settle on one state");
        assert_eq!(
            a.latest.state.number,
            receiver_number.max(closed_number),
            "the latest state the two present wins"
        );
        self.models.get_mut(&id).unwrap().settled = true;
    }

    fn check(&self) {
        for (id, a, b) in &self.channels {
            let model = &self.models[id];
            for p in [a, b] {
                let Some(c) = self.parties[*p].memory.get(id) else {
                    continue;
                };
                c.latest.state.check_conserved().expect("conserved");
                if c.status != Status::Opening {
                    c.latest.verify().expect("the latest state is binding");
                }
                assert!(c.highest_signed >= c.latest.state.number || c.local == Side::A);
                if let Some(p) = &c.pending
                    && c.status != Status::Opening
                {
                    assert!(p.state.number > c.latest.state.number);
                }
            }
            // The receiver is never behind the proposer: views differ by one pending state.
            if let (Some(x), Some(y)) = (
                self.parties[*a].memory.get(id),
                self.parties[*b].memory.get(id),
            ) && x.status != Status::Opening
                && !x.is_settled()
                && !y.is_settled()
            {
                let (lo, hi) = if x.latest.state.number <= y.latest.state.number {
                    (x, y)
                } else {
                    (y, x)
                };
                if lo.latest.bytes != hi.latest.bytes {
                    assert_eq!(
                        lo.pending.as_ref().map(|p| &p.bytes),
                        Some(&hi.latest.bytes),
                        "the party behind holds the other's latest state as its pending proposal"
                    );
                }
                // The receiver's view matches the model.
                let s = &hi.latest.state;
                assert_eq!([s.balance_a, s.balance_b], model.balance);
                assert_eq!(s.locks.len(), model.locks.len());
            }
        }
        // Money is neither made nor lost: wallets, unsettled channels (at their highest
        // binding state) and settled payouts add up to the credit handed out.
        let mut total: u64 = self.parties.iter().map(|p| p.wallet).sum();
        for (id, a, b) in &self.channels {
            let views: Vec<&Channel> = [a, b]
                .iter()
                .filter_map(|p| self.parties[**p].memory.get(id))
                .collect();
            let settled: Vec<&&Channel> = views.iter().filter(|c| c.is_settled()).collect();
            let top = views
                .iter()
                .filter(|c| c.status != Status::Opening)
                .max_by_key(|c| c.latest.state.number);
            match top {
                None => {
                    // Opening (not yet countersigned): the deposit is in the opener's channel.
                    total += views[0].latest.state.deposit_a;
                }
                Some(top) => {
                    for side in [Side::A, Side::B] {
                        let settled_by = settled.iter().find(|c| c.local == side);
                        if settled_by.is_none() {
                            total += top.latest.state.payout(side);
                        }
                    }
                }
            }
        }
        assert_eq!(
            total,
            CREDIT * PARTIES as u64,
            "credit is conserved across wallets and channels"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_and_crashes_never_break_an_invariant(
        actions in proptest::collection::vec(action(), 1..100)
    ) {
        let mut sim = Sim::new();
        for (action, fault) in &actions {
            sim.step(action, *fault);
            sim.check();
        }
    }
}

#[test]
fn a_stale_close_loses_its_dispute_and_convicts_the_closer() {
    let mut sim = Sim::new();
    sim.open(0, 1, 100, Fault::None);
    sim.propose(0, true, Op::Pay(10), Fault::None);
    sim.propose(0, true, Op::Pay(10), Fault::None);
    sim.unilateral(0, true, true);
    sim.check();
    let id = sim.channels[0].0;
    let b = &sim.parties[1].memory[&id];
    assert_eq!(b.balance(), 20, "the payee keeps both payments");
    assert!(matches!(
        b.status,
        Status::Settled {
            how: super::channel::Settlement::Disputed,
            ..
        }
    ));
}

#[test]
fn nothing_changes_after_settlement() {
    let mut sim = Sim::new();
    sim.open(0, 1, 100, Fault::None);
    sim.propose(0, false, Op::Close, Fault::None);
    let id = sim.channels[0].0;
    let keys: Vec<Keypair> = sim.parties.iter().map(|p| p.key.clone()).collect();
    let stale = {
        let c = &sim.parties[0].memory[&id];
        Proposal::sign(&keys[1], {
            let mut s = c.latest.state.clone();
            s.number += 1;
            s.is_final = false;
            s.balance_a -= 1;
            s.balance_b += 1;
            s
        })
    };
    for p in [0, 1] {
        let key = keys[p].clone();
        let other = keys[1 - p].public().to_peer_id();
        let c = sim.parties[p].memory.get_mut(&id).unwrap();
        let before = c.clone();
        assert!(c.is_settled());
        assert_eq!(c.propose(&key, &Op::Pay(1), 0), Err(ChannelError::Settled));
        assert_eq!(c.close_unilaterally(&key, 0), Err(ChannelError::Settled));
        assert_eq!(
            c.on_dispute(before.latest.clone(), 0),
            Err(ChannelError::Settled)
        );
        if p == 0 {
            assert_eq!(
                c.receive(&key, other, &stale, 0),
                Err(ChannelError::Settled)
            );
        }
        assert_eq!(c, &before, "nothing changed");
    }
}

/// The generator reaches every operation, and most proposals are really exchanged: a
/// property test whose sequences mostly fail early would prove little.
#[test]
fn generated_sequences_exercise_every_operation() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut advanced: HashMap<String, usize> = HashMap::new();
    let mut received = 0;
    for _ in 0..50 {
        let actions = proptest::collection::vec(action(), 1..100)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut sim = Sim::new();
        for (a, f) in &actions {
            let numbers = |sim: &Sim| -> Vec<(u64, bool)> {
                sim.channels
                    .iter()
                    .map(|(id, a, _)| {
                        sim.parties[*a]
                            .memory
                            .get(id)
                            .map_or((0, false), |c| (c.latest.state.number, c.is_settled()))
                    })
                    .collect()
            };
            let before = numbers(&sim);
            sim.step(a, *f);
            sim.check();
            if numbers(&sim) != before {
                let name = format!("{a:?}");
                let name = name.split([' ', '{']).next().unwrap().to_owned();
                *advanced.entry(name).or_default() += 1;
            }
        }
        received += sim.refusals.get("(received new)").copied().unwrap_or(0);
    }
    for op in [
        "Open",
        "Pay",
        "Lock",
        "Release",
        "Refund",
        "Close",
        "Unilateral",
        "Heal",
    ] {
        assert!(
            advanced.get(op).copied().unwrap_or(0) >= 1,
            "{op} never advanced: {advanced:?}"
        );
    }
    assert!(received >= 200, "only {received} proposals were accepted");
}

/// A closer whose proposal was countersigned but whose answer was lost discloses the
/// proposal in its close: the dispute settles on it, and convicts nobody.
#[test]
fn an_honest_close_after_a_lost_answer_is_disputed_but_not_convicted() {
    let mut sim = Sim::new();
    sim.open(0, 1, 100, Fault::None);
    sim.propose(0, true, Op::Pay(10), Fault::DropResponse);
    let id = sim.channels[0].0;
    let key = sim.parties[0].key.clone();
    let a = sim.parties[0].memory.get_mut(&id).unwrap();
    assert_eq!(a.latest.state.number, 0, "A never got the countersignature");
    let close = a.close_unilaterally(&key, 5).unwrap();
    assert_eq!(close.admitted(), 1, "A discloses its unanswered proposal");
    let b = sim.parties[1].memory.get_mut(&id).unwrap();
    let CloseAnswer::Disputed(higher) = b.on_close(key.public().to_peer_id(), &close, 5).unwrap()
    else {
        panic!("B holds state 1");
    };
    let evidence = Evidence {
        close,
        higher: (*higher).clone(),
    }
    .encode();
    assert_eq!(Evidence::open(&evidence).unwrap_err(), ChannelError::Stale);
    let a = sim.parties[0].memory.get_mut(&id).unwrap();
    a.on_dispute(*higher, 6).unwrap();
    assert_eq!(a.balance(), 90, "settled on the state A proposed");
    // Settled once: a second dispute (say, a late answer) changes nothing.
    let again = sim.parties[1].memory[&id].latest.clone();
    let a = sim.parties[0].memory.get_mut(&id).unwrap();
    assert_eq!(a.on_dispute(again, 7), Err(ChannelError::Settled));
}

/// What the ledger keeps of a channel comes back whole.
#[test]
fn channel_records_round_trip() {
    let mut sim = Sim::new();
    sim.open(0, 1, 100, Fault::None);
    let lock = Op::Lock {
        escrow_id: EscrowId([9; 32]),
        amount: 10,
        expires_at_ms: sim.now + 5,
    };
    sim.propose(0, true, lock, Fault::None);
    sim.propose(0, true, Op::Pay(10), Fault::DropResponse);
    let id = sim.channels[0].0;
    let a = sim.parties[0].memory.get_mut(&id).unwrap();
    a.release_intents.push(EscrowId([1; 32]));
    assert!(a.unconfirmed.is_some() && a.pending.is_some());
    let back = record::decode(&record::encode(a)).unwrap();
    assert_eq!(&back, a);
}
