//! A provider's judgement of the requesters it bids for: per requester, its open bids, its
//! refused bids, the bids it let lapse without an award, the awards it left unpaid, and the
//! back-off or penalty that follows; and which (requester, auction id) this node already
//! executed, so one escrow lock never pays for two executions.
//!
//! The rules, as [`Requesters::may_bid`] applies them:
//! - a refused bid frees its slot at once, but the requester is then skipped for a back-off
//!   that doubles with each refusal in a row (from [`Policy::backoff_ms`], at most
//!   [`Policy::penalty_ms`]), so refusals cannot make the provider bid without pause; a bid it
//!   accepts ends the run;
//! - a bid that lapses (no award, no published result) is a strike, an executed award left
//!   unpaid past its escrow's expiry is [`UNPAID_STRIKES`]; each strike halves the bids the
//!   requester may hold open, and at [`Policy::max_strikes`] it gets none for
//!   [`Policy::penalty_ms`] — for lapses alone only if none of our bids to it was resolved
//!   (won, or lost to a published result) within [`Policy::penalty_ms`], so an honest
//!   requester whose auctions fail for others' faults is thinned, not cut off. After a
//!   penalty it is on parole (one open bid, and any further strike penalises it again)
//!   until it pays an award;
//! - a requester that resolved one of our bids (awarded it, or published the result of its
//!   auction) is cleared of its lapses, not of its unpaid awards;
//! - one requester holds at most [`Policy::worker_cap`] tasks in execution;
//! - an executed (requester, auction id) is never bid on again while it is remembered.
//!
//! Bounded: at most `max_requesters` requesters (an idle one goes first, else the least
//! recently seen) and `max_executed` executed keys (the oldest goes). Pure: time is passed
//! in as Unix ms.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

use super::wire::AuctionId;

/// Strikes one executed award left unpaid counts for (a lapsed bid counts 1).
pub const UNPAID_STRIKES: u32 = 2;
/// Longest run of refusals the back-off doubles for (2^16 × the base is past any cap).
const MAX_DOUBLINGS: u32 = 16;

/// How a provider judges requesters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Open bids a requester in good standing may hold.
    pub bid_cap: usize,
    /// Tasks of one requester executed (or waiting for a worker) at once.
    pub worker_cap: usize,
    /// Back-off after a first refused bid, in ms; doubles with each refusal in a row.
    pub backoff_ms: u64,
    /// How long a penalised requester gets no bids, in ms; also the longest back-off.
    pub penalty_ms: u64,
    /// Strikes at which a requester is penalised.
    pub max_strikes: u32,
}

/// Why a bid was withheld from a requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Withheld {
    /// It refused bids lately.
    Backoff,
    /// It let bids lapse or left awards unpaid: no bids for a while.
    Penalty,
    /// It holds as many open bids as its standing allows.
    BidShare,
    /// It holds its share of this node's workers.
    WorkerShare,
    /// This node already executed this auction of this requester.
    Replayed,
}

impl Withheld {
    /// Every reason, for documentation and tests.
    pub const ALL: [Self; 5] = [
        Self::Backoff,
        Self::Penalty,
        Self::BidShare,
        Self::WorkerShare,
        Self::Replayed,
    ];

    /// The reason as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Backoff => "backoff",
            Self::Penalty => "penalty",
            Self::BidShare => "bid_share",
            Self::WorkerShare => "worker_share",
            Self::Replayed => "replayed",
        }
    }
}

/// How an executed award's escrow ended, as judged at its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Settled {
    /// The requester released it to us.
    Paid,
    /// We delivered the result and the escrow was not released.
    Unpaid,
    /// We did not deliver a result: nothing to judge.
    Undelivered,
    /// Not executed here, or already settled, or forgotten.
    Unknown,
}

impl Settled {
    /// The outcome as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Paid => "paid",
            Self::Unpaid => "unpaid",
            Self::Undelivered => "undelivered",
            Self::Unknown => "unknown",
        }
    }
}

/// What this node knows of one requester.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// Bids open with it.
    pub open_bids: usize,
    /// Its tasks this node executes (or which wait for a worker).
    pub executing: usize,
    /// Bids it refused since it last accepted one.
    pub refusals_in_row: u32,
    /// Bids that lapsed since it last awarded one.
    pub lapsed: u32,
    /// Executed awards it left unpaid (since its last penalty).
    pub unpaid: u32,
    /// After a penalty, until it pays an award: one open bid, and any strike penalises.
    pub parole: bool,
    /// No bids before this (Unix ms): the back-off after refusals.
    pub backoff_until_ms: u64,
    /// No bids before this (Unix ms): the penalty.
    pub penalty_until_ms: u64,
    /// When one of our bids to it was last resolved: won, or lost to a published result.
    pub resolved_at_ms: Option<u64>,
}

impl Standing {
    /// Its strikes: lapsed bids and, weighted, unpaid awards.
    pub fn strikes(&self) -> u32 {
        self.lapsed
            .saturating_add(self.unpaid.saturating_mul(UNPAID_STRIKES))
    }

    /// Whether it holds nothing of ours: the first to forget when the table is full.
    fn idle(&self) -> bool {
        self.open_bids == 0 && self.executing == 0
    }
}

/// An award this node executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Executed {
    /// Whether the result reached the requester (`None`: still running).
    delivered: Option<bool>,
    /// Whether its payment was judged.
    settled: bool,
}

/// The table of requesters and the executed keys.
#[derive(Debug)]
pub struct Requesters<R: Hash + Eq + Copy> {
    policy: Policy,
    table: LruCache<R, Standing>,
    executed: HashMap<(R, AuctionId), Executed>,
    order: VecDeque<(R, AuctionId)>,
    max_executed: usize,
}

impl<R: Hash + Eq + Copy> Requesters<R> {
    /// An empty table: at most `max_requesters` requesters and `max_executed` executed keys
    /// (both at least 1).
    pub fn new(policy: Policy, max_requesters: usize, max_executed: usize) -> Self {
        Self {
            policy,
            table: LruCache::new(NonZeroUsize::new(max_requesters.max(1)).expect("nonzero")),
            executed: HashMap::new(),
            order: VecDeque::new(),
            max_executed: max_executed.max(1),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What is known of `requester`.
    pub fn standing(&self, requester: &R) -> Option<&Standing> {
        self.table.peek(requester)
    }

    /// Requesters in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Requesters penalised at `now_ms`.
    pub fn penalised(&self, now_ms: u64) -> usize {
        self.table
            .iter()
            .filter(|(_, s)| s.penalty_until_ms > now_ms)
            .count()
    }

    /// Whether this node executed `auction` of `requester` (while remembered).
    pub fn was_executed(&self, requester: R, auction: AuctionId) -> bool {
        self.executed.contains_key(&(requester, auction))
    }

    /// Open bids a requester in `standing` may hold.
    pub fn bid_cap(&self, standing: &Standing) -> usize {
        if standing.parole {
            return self.policy.bid_cap.min(1);
        }
        let halvings = standing.strikes().min(usize::BITS - 1);
        (self.policy.bid_cap >> halvings).max(self.policy.bid_cap.min(1))
    }

    /// Whether this node may bid on `auction` of `requester` now; call
    /// [`Requesters::bid_placed`] when it does.
    pub fn may_bid(&self, requester: R, auction: AuctionId, now_ms: u64) -> Result<(), Withheld> {
        if self.was_executed(requester, auction) {
            return Err(Withheld::Replayed);
        }
        let fresh = Standing::default();
        let s = self.table.peek(&requester).unwrap_or(&fresh);
        if s.penalty_until_ms > now_ms {
            Err(Withheld::Penalty)
        } else if s.backoff_until_ms > now_ms {
            Err(Withheld::Backoff)
        } else if s.executing >= self.policy.worker_cap {
            Err(Withheld::WorkerShare)
        } else if s.open_bids >= self.bid_cap(s) {
            Err(Withheld::BidShare)
        } else {
            Ok(())
        }
    }

    fn entry(&mut self, requester: R) -> &mut Standing {
        if !self.table.contains(&requester) && self.table.len() == self.table.cap().get() {
            // Full: forget an idle requester rather than one that holds our bids or workers
            // (its counts would be lost): the least recently seen idle one, else the least
            // recently seen.
            let idle = self
                .table
                .iter()
                .rev()
                .find(|(_, s)| s.idle())
                .map(|(r, _)| *r);
            match idle {
                Some(r) => {
                    self.table.pop(&r);
                }
                None => {
                    self.table.pop_lru();
                }
            }
        }
        self.table.get_or_insert_mut(requester, Standing::default)
    }

    fn existing(&mut self, requester: &R) -> Option<&mut Standing> {
        self.table.get_mut(requester)
    }

    /// A bid was sent to `requester`.
    pub fn bid_placed(&mut self, requester: R) {
        self.entry(requester).open_bids += 1;
    }

    /// `requester` accepted a bid: a run of refusals ends (the bid stays open).
    pub fn bid_accepted(&mut self, requester: R) {
        if let Some(s) = self.existing(&requester) {
            s.refusals_in_row = 0;
        }
    }

    /// `requester` refused a bid: its slot is free, and the requester is backed off from.
    pub fn bid_refused(&mut self, requester: R, now_ms: u64) {
        let (base, cap) = (self.policy.backoff_ms, self.policy.penalty_ms);
        if let Some(s) = self.existing(&requester) {
            s.open_bids = s.open_bids.saturating_sub(1);
            s.refusals_in_row = s.refusals_in_row.saturating_add(1);
            let doublings = (s.refusals_in_row - 1).min(MAX_DOUBLINGS);
            let backoff = base.saturating_mul(1 << doublings).min(cap);
            s.backoff_until_ms = s.backoff_until_ms.max(now_ms.saturating_add(backoff));
        }
    }

    /// A bid never reached `requester`: its slot is free, and nothing is held against it.
    pub fn bid_undelivered(&mut self, requester: R) {
        if let Some(s) = self.existing(&requester) {
            s.open_bids = s.open_bids.saturating_sub(1);
        }
    }

    /// `requester` awarded another bidder (its result was published): it awards.
    pub fn bid_lost(&mut self, requester: R, now_ms: u64) {
        if let Some(s) = self.existing(&requester) {
            s.open_bids = s.open_bids.saturating_sub(1);
            s.lapsed = 0;
            s.resolved_at_ms = Some(now_ms);
        }
    }

    /// A bid lapsed with no award and no published result: a strike.
    pub fn bid_lapsed(&mut self, requester: R, now_ms: u64) {
        if let Some(s) = self.existing(&requester) {
            s.open_bids = s.open_bids.saturating_sub(1);
            s.lapsed = s.lapsed.saturating_add(1);
        }
        self.judge(requester, now_ms);
    }

    /// This node took `requester`'s award for `auction` and executes it.
    pub fn awarded(&mut self, requester: R, auction: AuctionId, now_ms: u64) {
        let s = self.entry(requester);
        s.open_bids = s.open_bids.saturating_sub(1);
        s.executing += 1;
        s.lapsed = 0;
        s.resolved_at_ms = Some(now_ms);
        let key = (requester, auction);
        let fresh = Executed {
            delivered: None,
            settled: false,
        };
        if self.executed.insert(key, fresh).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.max_executed {
            if let Some(old) = self.order.pop_front() {
                self.executed.remove(&old);
            }
        }
    }

    /// The execution of `auction` of `requester` ended; `delivered` if the requester
    /// accepted its result.
    pub fn execution_ended(&mut self, requester: R, auction: AuctionId, delivered: bool) {
        if let Some(e) = self.executed.get_mut(&(requester, auction)) {
            e.delivered = Some(delivered);
        }
        if let Some(s) = self.existing(&requester) {
            s.executing = s.executing.saturating_sub(1);
        }
    }

    /// The escrow of `auction` of `requester` expired (`released`: it was released to us
    /// before): a delivered result left unpaid is a strike, a paid one ends a parole.
    pub fn settle(
        &mut self,
        requester: R,
        auction: AuctionId,
        released: bool,
        now_ms: u64,
    ) -> Settled {
        let Some(e) = self.executed.get_mut(&(requester, auction)) else {
            return Settled::Unknown;
        };
        if e.settled {
            return Settled::Unknown;
        }
        e.settled = true;
        let outcome = match (released, e.delivered) {
            (true, _) => Settled::Paid,
            (false, Some(true)) => Settled::Unpaid,
            (false, _) => Settled::Undelivered,
        };
        match outcome {
            Settled::Paid => {
                if let Some(s) = self.existing(&requester) {
                    s.parole = false;
                }
            }
            Settled::Unpaid => {
                let s = self.entry(requester);
                s.unpaid = s.unpaid.saturating_add(1);
                self.judge(requester, now_ms);
            }
            Settled::Undelivered | Settled::Unknown => {}
        }
        outcome
    }

    /// Whether `standing` has earned a penalty: its strikes reached the limit (any strike on
    /// parole), by an unpaid award or with no bid resolved lately.
    pub fn deserves_penalty(&self, standing: &Standing, now_ms: u64) -> bool {
        let strikes = standing.strikes();
        let limit = strikes >= self.policy.max_strikes.max(1) || (standing.parole && strikes > 0);
        let resolved_lately = standing
            .resolved_at_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.policy.penalty_ms);
        limit && (standing.unpaid > 0 || !resolved_lately)
    }

    /// Penalises `requester` if it deserves it.
    fn judge(&mut self, requester: R, now_ms: u64) {
        let penalty = self.policy.penalty_ms;
        let deserves = self
            .table
            .peek(&requester)
            .is_some_and(|s| self.deserves_penalty(s, now_ms));
        if deserves && let Some(s) = self.existing(&requester) {
            s.penalty_until_ms = now_ms.saturating_add(penalty);
            s.lapsed = 0;
            s.unpaid = 0;
            s.parole = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: Policy = Policy {
        bid_cap: 4,
        worker_cap: 1,
        backoff_ms: 1_000,
        penalty_ms: 300_000,
        max_strikes: 4,
    };

    fn id(n: u8) -> AuctionId {
        AuctionId([n; 16])
    }

    fn book() -> Requesters<u32> {
        Requesters::new(POLICY, 16, 64)
    }

    #[test]
    fn a_stranger_gets_bids_up_to_its_share() {
        let mut b = book();
        for n in 0..4 {
            assert_eq!(b.may_bid(1, id(n), 0), Ok(()));
            b.bid_placed(1);
        }
        assert_eq!(b.may_bid(1, id(9), 0), Err(Withheld::BidShare));
        // Another requester is not affected.
        assert_eq!(b.may_bid(2, id(9), 0), Ok(()));
    }

    #[test]
    fn a_refusal_frees_the_slot_and_backs_off_doubling() {
        let mut b = book();
        for _ in 0..4 {
            b.bid_placed(1);
        }
        b.bid_refused(1, 10_000);
        let s = b.standing(&1).unwrap();
        assert_eq!(s.open_bids, 3);
        assert_eq!(s.backoff_until_ms, 11_000);
        assert_eq!(b.may_bid(1, id(1), 10_999), Err(Withheld::Backoff));
        b.bid_refused(1, 10_000);
        b.bid_refused(1, 10_000);
        assert_eq!(b.standing(&1).unwrap().backoff_until_ms, 14_000);
        assert_eq!(b.may_bid(1, id(1), 14_000), Ok(()));
        // An accepted bid ends the run.
        b.bid_placed(1);
        b.bid_accepted(1);
        b.bid_refused(1, 20_000);
        assert_eq!(b.standing(&1).unwrap().backoff_until_ms, 21_000);
    }

    #[test]
    fn the_backoff_stops_at_the_penalty() {
        let mut b = book();
        for _ in 0..40 {
            b.bid_placed(1);
            b.bid_refused(1, 0);
        }
        assert_eq!(b.standing(&1).unwrap().backoff_until_ms, POLICY.penalty_ms);
    }

    #[test]
    fn lapses_thin_the_bids_then_stop_them() {
        let mut b = book();
        let cap = |b: &Requesters<u32>| b.bid_cap(b.standing(&1).unwrap());
        b.bid_placed(1);
        b.bid_lapsed(1, 0);
        assert_eq!(cap(&b), 2);
        b.bid_placed(1);
        b.bid_lapsed(1, 0);
        assert_eq!(cap(&b), 1);
        b.bid_placed(1);
        b.bid_lapsed(1, 0);
        assert_eq!(b.may_bid(1, id(1), 0), Ok(()));
        b.bid_placed(1);
        b.bid_lapsed(1, 1_000);
        assert_eq!(b.may_bid(1, id(1), 1_000), Err(Withheld::Penalty));
        assert_eq!(b.penalised(1_000), 1);
        assert_eq!(b.may_bid(1, id(1), 301_000), Ok(()));
        // On parole: one bid, and one more lapse is another penalty.
        b.bid_placed(1);
        assert_eq!(b.may_bid(1, id(2), 301_000), Err(Withheld::BidShare));
        b.bid_lapsed(1, 302_000);
        assert_eq!(b.may_bid(1, id(2), 302_000), Err(Withheld::Penalty));
    }

    #[test]
    fn a_requester_that_resolves_bids_lately_is_thinned_not_cut_off() {
        let mut b = book();
        b.bid_placed(1);
        b.bid_lost(1, 0);
        for _ in 0..6 {
            b.bid_placed(1);
            b.bid_lapsed(1, 1_000);
        }
        assert_eq!(b.may_bid(1, id(1), 1_000), Ok(()));
        assert_eq!(b.bid_cap(b.standing(&1).unwrap()), 1);
        // Once it resolved nothing for the penalty's length, the next lapse penalises.
        b.bid_placed(1);
        b.bid_lapsed(1, 300_000);
        assert_eq!(b.may_bid(1, id(1), 300_000), Err(Withheld::Penalty));
    }

    #[test]
    fn an_award_clears_lapses() {
        let mut b = book();
        for _ in 0..3 {
            b.bid_placed(1);
            b.bid_lapsed(1, 0);
        }
        b.bid_placed(1);
        b.bid_lost(1, 0);
        assert_eq!(b.standing(&1).unwrap().lapsed, 0);
        assert_eq!(b.may_bid(1, id(1), 0), Ok(()));
    }

    #[test]
    fn executed_work_is_never_bid_on_again_and_unpaid_work_is_penalised() {
        let mut b = book();
        b.bid_placed(1);
        b.awarded(1, id(1), 0);
        assert_eq!(b.may_bid(1, id(2), 0), Err(Withheld::WorkerShare));
        b.execution_ended(1, id(1), true);
        assert_eq!(b.may_bid(1, id(1), 0), Err(Withheld::Replayed));
        assert_eq!(b.may_bid(1, id(2), 0), Ok(()));
        assert_eq!(b.settle(1, id(1), false, 0), Settled::Unpaid);
        assert_eq!(b.settle(1, id(1), false, 0), Settled::Unknown);
        assert_eq!(b.bid_cap(b.standing(&1).unwrap()), 1);
        b.bid_placed(1);
        b.awarded(1, id(2), 0);
        b.execution_ended(1, id(2), true);
        assert_eq!(b.settle(1, id(2), false, 5), Settled::Unpaid);
        assert_eq!(b.may_bid(1, id(3), 5), Err(Withheld::Penalty));
    }

    #[test]
    fn a_failed_execution_is_not_held_against_the_requester_and_payment_ends_parole() {
        let mut b = book();
        b.bid_placed(1);
        b.awarded(1, id(1), 0);
        b.execution_ended(1, id(1), false);
        assert_eq!(b.settle(1, id(1), false, 0), Settled::Undelivered);
        assert_eq!(b.standing(&1).unwrap().strikes(), 0);
        for n in 2..4 {
            b.bid_placed(1);
            b.awarded(1, id(n), 0);
            b.execution_ended(1, id(n), true);
            b.settle(1, id(n), false, 0);
        }
        assert!(b.standing(&1).unwrap().parole);
        b.bid_placed(1);
        b.awarded(1, id(9), 0);
        b.execution_ended(1, id(9), true);
        assert_eq!(b.settle(1, id(9), true, 400_000), Settled::Paid);
        assert!(!b.standing(&1).unwrap().parole);
    }

    #[test]
    fn the_table_forgets_idle_requesters_first() {
        let mut b: Requesters<u32> = Requesters::new(POLICY, 2, 2);
        b.bid_placed(1);
        b.bid_placed(2);
        b.bid_undelivered(2);
        b.bid_placed(3);
        assert!(b.standing(&1).is_some(), "busy requester kept");
        assert!(b.standing(&2).is_none(), "idle requester forgotten");
        b.awarded(1, id(1), 0);
        b.awarded(1, id(2), 0);
        b.awarded(1, id(3), 0);
        assert!(!b.was_executed(1, id(1)));
        assert!(b.was_executed(1, id(3)));
    }

    #[test]
    fn labels_are_distinct() {
        let labels: std::collections::HashSet<_> =
            Withheld::ALL.iter().map(|w| w.label()).collect();
        assert_eq!(labels.len(), Withheld::ALL.len());
    }

    #[derive(Debug, Clone)]
    enum Event {
        May(u8, u8),
        Placed(u8),
        Accepted(u8),
        Refused(u8),
        Undelivered(u8),
        Lost(u8),
        Lapsed(u8),
        Awarded(u8, u8),
        Ended(u8, u8, bool),
        Settle(u8, u8, bool),
        Tick(u32),
    }

    fn event() -> impl Strategy<Value = Event> {
        let r = 0u8..12;
        let a = 0u8..8;
        prop_oneof![
            (r.clone(), a.clone()).prop_map(|(r, a)| Event::May(r, a)),
            r.clone().prop_map(Event::Placed),
            r.clone().prop_map(Event::Accepted),
            r.clone().prop_map(Event::Refused),
            r.clone().prop_map(Event::Undelivered),
            r.clone().prop_map(Event::Lost),
            r.clone().prop_map(Event::Lapsed),
            (r.clone(), a.clone()).prop_map(|(r, a)| Event::Awarded(r, a)),
            (r.clone(), a.clone(), any::<bool>()).prop_map(|(r, a, d)| Event::Ended(r, a, d)),
            (r, a, any::<bool>()).prop_map(|(r, a, p)| Event::Settle(r, a, p)),
            (0u32..400_000).prop_map(Event::Tick),
        ]
    }

    proptest! {
        /// Whatever happens: the table stays within its bounds, a back-off never outlasts the
        /// penalty, strikes never sit at the limit unpunished, an executed key is never bid
        /// on, and a requester in penalty or back-off, or at its share, gets no bid.
        #[test]
        fn bounded_and_never_bids_when_withheld(events in proptest::collection::vec(event(), 0..300)) {
            let mut b: Requesters<u8> = Requesters::new(POLICY, 6, 10);
            let mut now = 0u64;
            for e in events {
                match e {
                    Event::May(r, a) => {
                        let verdict = b.may_bid(r, id(a), now);
                        if b.was_executed(r, id(a)) {
                            prop_assert_eq!(verdict, Err(Withheld::Replayed));
                        }
                        if let Some(s) = b.standing(&r) {
                            if s.penalty_until_ms > now || s.backoff_until_ms > now {
                                prop_assert!(verdict.is_err());
                            }
                            if verdict.is_ok() {
                                prop_assert!(s.open_bids < b.bid_cap(s));
                                prop_assert!(s.executing < POLICY.worker_cap);
                            }
                        }
                    }
                    Event::Placed(r) => b.bid_placed(r),
                    Event::Accepted(r) => b.bid_accepted(r),
                    Event::Refused(r) => b.bid_refused(r, now),
                    Event::Undelivered(r) => b.bid_undelivered(r),
                    Event::Lost(r) => b.bid_lost(r, now),
                    Event::Lapsed(r) => b.bid_lapsed(r, now),
                    Event::Awarded(r, a) => b.awarded(r, id(a), now),
                    Event::Ended(r, a, d) => b.execution_ended(r, id(a), d),
                    Event::Settle(r, a, p) => {
                        let before = b.standing(&r).map(Standing::strikes).unwrap_or(0);
                        if b.settle(r, id(a), p, now) == Settled::Unpaid {
                            let s = b.standing(&r).unwrap();
                            prop_assert!(s.strikes() > before || s.penalty_until_ms > now);
                        }
                    }
                    Event::Tick(ms) => now += u64::from(ms),
                }
                prop_assert!(b.len() <= 6);
                prop_assert!(b.executed.len() <= 10);
                prop_assert_eq!(b.executed.len(), b.order.len());
                for (_, s) in b.table.iter() {
                    prop_assert!(s.backoff_until_ms <= now + POLICY.penalty_ms);
                    // Strikes at the limit are punished, unless only lapses while the
                    // requester resolved bids lately.
                    if s.strikes() >= POLICY.max_strikes {
                        prop_assert!(s.unpaid == 0 && s.resolved_at_ms.is_some());
                    }
                }
            }
        }
    }
}
