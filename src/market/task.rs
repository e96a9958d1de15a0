//! The lifecycle of a task, as its requester runs it: pure state, no IO, no clock.
//!
//! A task is tried in auctions (attempts). Each attempt ends in success or in an
//! [`AttemptError`], which names exactly one metric label and one [`Fault`]: whose doing the
//! failure was. After a failed attempt, [`Lifecycle::attempt_failed`] decides what happens
//! next: another auction without the providers that failed this task, or the end of the
//! task with a final [`TaskStatus`]. The market actor does the IO the decision asks for
//! (announcing, refunding, recording reputation); this module only decides.
//!
//! **Attribution.** Every failed attempt with a winner is someone's doing. A winner that does
//! not complete the lock exchange or the award it bid for is at fault ([`Fault::Provider`])
//! unless this node's side failed first (its wallet, its content, its timing:
//! [`Fault::Requester`]). A winner that could not be reached at all ([`Fault::Unreachable`])
//! is not innocent either, but a network partition looks the same: it counts against the
//! winner more gently (see [`Reputation::unreachable`](super::reputation::Reputation::unreachable)).
//!
//! **Probation.** When a winner on probation (no verified result for this node yet) fails
//! the task by its doing, the task's next auctions go to providers with history whenever
//! one bids ([`Lifecycle::proven_only`]).

use std::collections::HashSet;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

/// Where a task stands. Statuses only move forward: `running` to one of the final three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Auctions or execution are under way.
    Running,
    /// A result was verified and its escrow released.
    Success,
    /// The task ended without a verified result.
    Failed,
    /// The last winner did not deliver in time.
    Timeout,
}

impl TaskStatus {
    /// Every status, in the order a task may move through them.
    pub const ALL: [TaskStatus; 4] = [Self::Running, Self::Success, Self::Failed, Self::Timeout];

    /// The `status` label of the task metrics and the API's name for it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }

    /// Whether the task has ended.
    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

/// Whose doing a failed attempt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The winner: it loses reputation for it.
    Provider,
    /// The winner could not be reached: a partition or a silent identity, which this node
    /// cannot tell apart. It counts against the winner gently (a strike; several strikes in
    /// a window count as one failure), and the winner is not tried again for this task.
    Unreachable,
    /// This node, the requester: its own inputs, wallet, services or timing.
    Requester,
    /// Nobody: the market simply had no offer.
    Nobody,
}

impl Fault {
    /// Whether the winner's doing (fully or as a strike): it leaves a trace in its record.
    pub fn counts_against_winner(self) -> bool {
        matches!(self, Self::Provider | Self::Unreachable)
    }
}

/// How an attempt (one auction and what followed it) can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptError {
    /// No acceptable bid arrived before the deadline.
    NoBids,
    /// The escrow could not be locked. `ours`: this node's side failed (its wallet, its
    /// payments service); otherwise the winner refused the lock, or stayed connected and did
    /// not countersign it in time.
    EscrowFailed {
        /// This node's side failed.
        ours: bool,
    },
    /// The winner did not take the lock or the award in time. `connected`: it was still
    /// connected to this node when the time was up, so its silence was its own doing;
    /// otherwise it could not be reached at all (a partition looks the same).
    Unreachable {
        /// Still connected when the time was up.
        connected: bool,
    },
    /// The winner refused the award. `late`: the award was sent after the winner's bid
    /// had expired, so refusing it was the winner's right.
    AwardRefused {
        /// Sent after the winning bid expired.
        late: bool,
    },
    /// The winner delivered no result within the execution time.
    Timeout,
    /// The result was wrong.
    WrongResult,
    /// The winner's result could not be fetched from it.
    FetchFailed,
    /// Verifying took longer than `market.verify_timeout_ms`.
    VerifyTimeout,
    /// This node could not verify (its own content service or verifier failed).
    VerifyFailed,
    /// This node's own input could not be prepared or read: every retry would fail too.
    InputFailed,
}

impl AttemptError {
    /// Every outcome, for exhaustive tests and pre-initialised metric series.
    pub const ALL: [AttemptError; 13] = [
        Self::NoBids,
        Self::EscrowFailed { ours: true },
        Self::EscrowFailed { ours: false },
        Self::Unreachable { connected: true },
        Self::Unreachable { connected: false },
        Self::AwardRefused { late: false },
        Self::AwardRefused { late: true },
        Self::Timeout,
        Self::WrongResult,
        Self::FetchFailed,
        Self::VerifyTimeout,
        Self::VerifyFailed,
        Self::InputFailed,
    ];

    /// The `error` label of `zerostate_economic_task_errors_total` and the attempt's
    /// `outcome` in the API.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoBids => "no_bids",
            Self::EscrowFailed { .. } => "escrow_failed",
            Self::Unreachable { .. } => "unreachable",
            Self::AwardRefused { .. } => "award_refused",
            Self::Timeout => "timeout",
            Self::WrongResult => "wrong_result",
            Self::FetchFailed => "fetch_failed",
            Self::VerifyTimeout => "verify_timeout",
            Self::VerifyFailed => "verify_failed",
            Self::InputFailed => "input_failed",
        }
    }

    /// Whose doing it was.
    pub fn fault(self) -> Fault {
        match self {
            Self::NoBids => Fault::Nobody,
            Self::EscrowFailed { ours: true } => Fault::Requester,
            // It bid, so it promised to take the lock: refusing it, or staying silent on a
            // live connection, is its doing.
            Self::EscrowFailed { ours: false } => Fault::Provider,
            Self::Unreachable { connected: true } => Fault::Provider,
            Self::Unreachable { connected: false } => Fault::Unreachable,
            Self::AwardRefused { late: false } => Fault::Provider,
            Self::AwardRefused { late: true } => Fault::Requester,
            Self::Timeout | Self::WrongResult | Self::FetchFailed | Self::VerifyTimeout => {
                Fault::Provider
            }
            Self::VerifyFailed | Self::InputFailed => Fault::Requester,
        }
    }

    /// Whether another auction could end differently. Our own input failing fails every
    /// attempt.
    pub fn retryable(self) -> bool {
        self != Self::InputFailed
    }

    /// The task's status if this failure ends it.
    pub fn final_status(self) -> TaskStatus {
        match self {
            Self::Timeout => TaskStatus::Timeout,
            _ => TaskStatus::Failed,
        }
    }

    /// Whether the winner's result was judged wrong (the task's `verification` shows it).
    pub fn is_wrong_result(self) -> bool {
        self == Self::WrongResult
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Announce another auction (its bidders exclude [`Lifecycle::excluded`]).
    Reauction,
    /// The task ends with this status.
    Finish(TaskStatus),
}

/// The winner of a failed attempt, as this node knew it at the award.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Winner {
    /// The provider.
    pub peer: PeerId,
    /// It had no verified result for this node yet.
    pub on_probation: bool,
}

/// A task's lifecycle: its status, its attempts and the providers it no longer tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    status: TaskStatus,
    attempts: u32,
    max_retries: u32,
    excluded: HashSet<PeerId>,
    proven_only: bool,
}

impl Lifecycle {
    /// A new task, re-auctioned at most `max_retries` times after its first auction.
    pub fn new(max_retries: u32) -> Self {
        Self {
            status: TaskStatus::Running,
            attempts: 0,
            max_retries,
            excluded: HashSet::new(),
            proven_only: false,
        }
    }

    /// Where the task stands.
    pub fn status(&self) -> TaskStatus {
        self.status
    }

    /// Auctions started so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Providers that failed this task: no later auction of it takes their bids.
    pub fn excluded(&self) -> &HashSet<PeerId> {
        &self.excluded
    }

    /// Whether a winner on probation failed this task by its doing: its next auctions go to
    /// providers with history whenever one of them bids.
    pub fn proven_only(&self) -> bool {
        self.proven_only
    }

    /// An auction starts. `None` when the task has ended (nothing to start).
    pub fn attempt_started(&mut self) -> Option<u32> {
        if self.status.is_final() {
            return None;
        }
        self.attempts += 1;
        Some(self.attempts)
    }

    /// The current attempt failed with `error`, won by `winner` if an award was made.
    /// The winner leaves the task whatever the fault (the next auction should not hinge on
    /// it again); whether it is blamed is [`AttemptError::fault`]'s answer. A winner on
    /// probation that failed by its doing puts the task's next auctions on
    /// [`proven_only`](Self::proven_only).
    pub fn attempt_failed(&mut self, winner: Option<Winner>, error: AttemptError) -> Next {
        if self.status.is_final() {
            return Next::Finish(self.status);
        }
        if let Some(w) = winner {
            self.excluded.insert(w.peer);
            if w.on_probation && error.fault().counts_against_winner() {
                self.proven_only = true;
            }
        }
        if error.retryable() && self.attempts <= self.max_retries {
            Next::Reauction
        } else {
            self.status = error.final_status();
            Next::Finish(self.status)
        }
    }

    /// The task ends before any auction (its input could not be prepared).
    pub fn abandoned(&mut self, error: AttemptError) -> TaskStatus {
        if !self.status.is_final() {
            self.status = error.final_status();
        }
        self.status
    }

    /// The current attempt's result was verified: the task succeeded.
    pub fn succeeded(&mut self) -> TaskStatus {
        if !self.status.is_final() {
            self.status = TaskStatus::Success;
        }
        self.status
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    use super::*;
    use crate::market::auction::{AuctionBook, Probation, Standing};
    use crate::market::wire::{Announcement, AuctionId, AuctionType, Bid, TaskSpec, sign};

    fn key(i: u8) -> Keypair {
        let mut bytes = [0u8; 32];
        bytes[0] = i + 1;
        Keypair::ed25519_from_bytes(bytes).expect("32 bytes")
    }

    fn peer(i: u8) -> PeerId {
        key(i).public().to_peer_id()
    }

    #[test]
    fn every_outcome_has_one_label_and_one_fault() {
        let mut labels: HashMap<&str, Vec<AttemptError>> = HashMap::new();
        for e in AttemptError::ALL {
            labels.entry(e.label()).or_default().push(e);
        }
        // Ten labels, the ones the metric has always had.
        let mut names: Vec<_> = labels.keys().copied().collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "award_refused",
                "escrow_failed",
                "fetch_failed",
                "input_failed",
                "no_bids",
                "timeout",
                "unreachable",
                "verify_failed",
                "verify_timeout",
                "wrong_result",
            ]
        );
    }

    #[test]
    fn faults_follow_whose_side_failed() {
        use AttemptError as E;
        // Our own wallet or payments failing is never the winner's fault.
        assert_eq!(E::EscrowFailed { ours: true }.fault(), Fault::Requester);
        // A winner that does not complete the lock it bid for is at fault.
        assert_eq!(E::EscrowFailed { ours: false }.fault(), Fault::Provider);
        assert_eq!(E::AwardRefused { late: false }.fault(), Fault::Provider);
        assert_eq!(E::AwardRefused { late: true }.fault(), Fault::Requester);
        // Silent on a live connection: its doing. Not reachable at all: a strike.
        assert_eq!(E::Unreachable { connected: true }.fault(), Fault::Provider);
        assert_eq!(
            E::Unreachable { connected: false }.fault(),
            Fault::Unreachable
        );
        // Only nobody, or this node itself, fails an attempt without a trace on the winner.
        for e in AttemptError::ALL {
            let blameless = matches!(e.fault(), Fault::Requester | Fault::Nobody);
            assert_eq!(!blameless, e.fault().counts_against_winner(), "{e:?}");
        }
        assert_eq!(E::NoBids.fault(), Fault::Nobody);
        for provider in [E::Timeout, E::WrongResult, E::FetchFailed, E::VerifyTimeout] {
            assert_eq!(provider.fault(), Fault::Provider, "{provider:?}");
        }
        for ours in [E::VerifyFailed, E::InputFailed] {
            assert_eq!(ours.fault(), Fault::Requester, "{ours:?}");
        }
    }

    #[test]
    fn a_timeout_ends_as_timeout_and_our_input_ends_at_once() {
        let mut t = Lifecycle::new(2);
        t.attempt_started();
        assert_eq!(
            t.attempt_failed(None, AttemptError::InputFailed),
            Next::Finish(TaskStatus::Failed)
        );
        let mut t = Lifecycle::new(0);
        t.attempt_started();
        assert_eq!(
            t.attempt_failed(Some(proven(1)), AttemptError::Timeout),
            Next::Finish(TaskStatus::Timeout)
        );
    }

    fn proven(i: u8) -> Winner {
        Winner {
            peer: peer(i),
            on_probation: false,
        }
    }

    fn newcomer(i: u8) -> Winner {
        Winner {
            peer: peer(i),
            on_probation: true,
        }
    }

    #[test]
    fn a_newcomer_failing_by_its_doing_puts_the_task_on_proven_only() {
        // This node's own failure, or a proven winner's, changes nothing.
        let mut t = Lifecycle::new(5);
        t.attempt_started();
        t.attempt_failed(Some(newcomer(1)), AttemptError::EscrowFailed { ours: true });
        assert!(!t.proven_only());
        t.attempt_started();
        t.attempt_failed(Some(proven(2)), AttemptError::WrongResult);
        assert!(!t.proven_only());
        // A newcomer that could not be reached, or refused, does.
        for error in [
            AttemptError::Unreachable { connected: false },
            AttemptError::Unreachable { connected: true },
            AttemptError::EscrowFailed { ours: false },
            AttemptError::AwardRefused { late: false },
        ] {
            let mut t = Lifecycle::new(5);
            t.attempt_started();
            assert_eq!(t.attempt_failed(Some(newcomer(3)), error), Next::Reauction);
            assert!(t.proven_only(), "{error:?}");
            assert!(t.excluded().contains(&peer(3)));
        }
    }

    #[test]
    fn a_task_is_auctioned_max_retries_plus_one_times() {
        let mut t = Lifecycle::new(2);
        let mut auctions = 0;
        loop {
            t.attempt_started().expect("running");
            auctions += 1;
            match t.attempt_failed(None, AttemptError::NoBids) {
                Next::Reauction => continue,
                Next::Finish(status) => {
                    assert_eq!(status, TaskStatus::Failed);
                    break;
                }
            }
        }
        assert_eq!(auctions, 3);
        assert_eq!(t.attempt_started(), None, "an ended task starts nothing");
    }

    /// One auction of the task: every provider in `bidders` bids, the real book refuses
    /// the excluded ones, and the cheapest bid it took wins under probation (`proven`:
    /// the providers with history; no quota).
    fn run_auction(t: &Lifecycle, attempt: u32, bidders: &[u8], proven: &[bool]) -> Option<PeerId> {
        let requester = key(200);
        let announcement = Announcement {
            auction_id: AuctionId([attempt as u8; 16]),
            requester: requester.public().to_peer_id(),
            task: TaskSpec::Pow {
                input: b"x".to_vec(),
                difficulty: 1,
            },
            max_price: 100,
            auction_type: AuctionType::FirstPrice,
            created_at_ms: 1_000,
            bid_deadline_ms: 2_000,
            reputation_weighted: false,
            execution_timeout_ms: 1_000,
        };
        let mut book = AuctionBook::new(announcement.clone(), t.excluded().clone());
        for &b in bidders {
            let bid = Bid {
                auction_id: announcement.auction_id,
                requester: announcement.requester,
                bidder: peer(b),
                price: 10 + u64::from(b),
                expires_at_ms: 3_000,
            };
            let _ = book.offer(sign(&key(b), bid), 1000, 1_500);
        }
        let rule = Probation {
            max_awards: usize::MAX,
            proven_only: t.proven_only(),
        };
        let standing = |p: &PeerId| {
            let i = (0..5u8).find(|i| peer(*i) == *p).expect("a test bidder");
            if proven[usize::from(i)] {
                Standing::Proven
            } else {
                Standing::Probation {
                    awards_held: 0,
                    failed: false,
                }
            }
        };
        book.select_under(rule, standing)
            .0
            .map(|s| s.winner.bid.body.bidder)
    }

    proptest! {
        /// Whatever the outcomes: at most `max_retries` re-auctions, a provider that failed
        /// the task never wins it again, statuses only move forward, and once a newcomer
        /// failed the task by its doing, a newcomer wins it again only if no provider with
        /// history bid.
        #[test]
        fn retries_exclusion_and_status_order_hold(
            proven in proptest::collection::vec(any::<bool>(), 5),
            max_retries in 0u32..4,
            rounds in proptest::collection::vec(
                (
                    proptest::collection::vec(0u8..5, 0..5),
                    proptest::sample::select(AttemptError::ALL.to_vec()),
                ),
                1..8,
            ),
            succeed_at in proptest::option::of(0usize..8),
        ) {
            let mut t = Lifecycle::new(max_retries);
            let mut failed_winners = HashSet::new();
            let mut reauctions = 0u32;
            let mut last = t.status();
            let mut newcomer_failed = false;
            let is_proven = |p: PeerId| (0..5u8).any(|i| peer(i) == p && proven[usize::from(i)]);
            for (i, (bidders, error)) in rounds.into_iter().enumerate() {
                let Some(attempt) = t.attempt_started() else {
                    prop_assert!(t.status().is_final());
                    break;
                };
                prop_assert_eq!(t.proven_only(), newcomer_failed);
                let winner = run_auction(&t, attempt, &bidders, &proven);
                if let Some(w) = winner {
                    prop_assert!(!failed_winners.contains(&w), "an excluded provider won");
                    let proven_bid = bidders
                        .iter()
                        .any(|b| proven[usize::from(*b)] && !failed_winners.contains(&peer(*b)));
                    if newcomer_failed && proven_bid {
                        prop_assert!(is_proven(w), "a newcomer won over a proven bid");
                    }
                }
                if succeed_at == Some(i) && winner.is_some() {
                    prop_assert_eq!(t.succeeded(), TaskStatus::Success);
                } else {
                    // No winner: the auction itself failed.
                    let error = if winner.is_none() { AttemptError::NoBids } else { error };
                    if let Some(w) = winner {
                        failed_winners.insert(w);
                        if !is_proven(w) && error.fault().counts_against_winner() {
                            newcomer_failed = true;
                        }
                    }
                    let winner = winner.map(|peer| Winner {
                        peer,
                        on_probation: !is_proven(peer),
                    });
                    match t.attempt_failed(winner, error) {
                        Next::Reauction => {
                            reauctions += 1;
                            prop_assert!(error.retryable());
                        }
                        Next::Finish(status) => prop_assert_eq!(status, error.final_status()),
                    }
                }
                // Forward only: once final, a status never changes.
                if last.is_final() {
                    prop_assert_eq!(t.status(), last);
                }
                last = t.status();
            }
            prop_assert!(reauctions <= max_retries);
        }
    }
}
