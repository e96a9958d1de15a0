//! The requester's side: this node's tasks. A task is prepared (its inputs stored), then
//! auctioned; the winner gets the price locked in escrow and the award; its result is
//! verified, and the escrow released or refunded. What follows a failed attempt is the pure
//! [`Lifecycle`]'s decision; this file does the IO it asks for.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::FutureExt;
use libp2p::PeerId;

use super::{Job, MarketActor, Timer, after, escrow_id};
use crate::market::MarketError;
use crate::market::auction::{AuctionBook, Standing, bidder_weight};
use crate::market::kinds::{self, TaskKind, TaskParams};
use crate::market::task::{AttemptError, Fault, Lifecycle, Next, TaskStatus, Winner};
use crate::market::view::{AttemptView, BidView, TaskRequest, TaskView};
use crate::market::wire::{
    AUCTIONS_TOPIC, Announcement, AuctionId, AuctionType, Bid, NEUTRAL_WEIGHT, Output, Refusal,
    Signed, TaskResult, TaskSpec, now_ms, open, sign,
};

/// What the requester is waiting for in an auction.
pub(super) enum Phase {
    Bidding,
    Awarded {
        winner: PeerId,
        price: u64,
        awarded_at: Instant,
    },
    Verifying {
        winner: PeerId,
        price: u64,
        awarded_at: Instant,
    },
}

impl Phase {
    /// The winner and when it was awarded, once there is one.
    fn winner(&self) -> Option<(PeerId, Instant)> {
        match *self {
            Self::Bidding => None,
            Self::Awarded {
                winner, awarded_at, ..
            }
            | Self::Verifying {
                winner, awarded_at, ..
            } => Some((winner, awarded_at)),
        }
    }
}

/// An auction this node runs.
pub(super) struct Running {
    pub(super) task: AuctionId,
    /// The announcement as signed and published, embedded byte for byte in the award.
    pub(super) signed: Signed<Announcement>,
    pub(super) book: AuctionBook,
    pub(super) announced_at: Instant,
    pub(super) phase: Phase,
}

/// A task of this node.
pub(super) struct Task {
    id: AuctionId,
    kind: TaskKind,
    /// Final once the inputs are stored.
    spec: Option<TaskSpec>,
    auction_type: AuctionType,
    max_price: u64,
    weighted: bool,
    lifecycle: Lifecycle,
    winner: Option<PeerId>,
    price: Option<u64>,
    verification: Option<&'static str>,
    result: Option<Output>,
    error: Option<String>,
    submitted_ms: u64,
    finished_ms: Option<u64>,
    attempts: Vec<AttemptView>,
    timeline: Vec<(u64, String)>,
}

impl Task {
    pub(super) fn log(&mut self, event: String) {
        self.timeline.push((now_ms(), event));
    }

    pub(super) fn view(&self) -> TaskView {
        TaskView {
            id: self.id.to_string(),
            kind: self.kind,
            parameters: self.spec.as_ref().map(kinds::parameters_view),
            auction_type: self.auction_type,
            max_price: self.max_price,
            status: self.lifecycle.status(),
            winner: self.winner.map(|p| p.to_string()),
            price: self.price,
            verification: self.verification.map(str::to_owned),
            result: self.result.as_ref().map(kinds::result_view),
            error: self.error.clone(),
            submitted_ms: self.submitted_ms,
            finished_ms: self.finished_ms,
            attempts: self.attempts.clone(),
            timeline: self.timeline.clone(),
        }
    }

    /// Whether the task's next auctions go to providers with history first.
    pub(super) fn lifecycle_proven_only(&self) -> bool {
        self.lifecycle.proven_only()
    }

    pub(super) fn attempt(&mut self, auction: AuctionId) -> Option<&mut AttemptView> {
        let id = auction.to_string();
        self.attempts.iter_mut().rev().find(|a| a.auction_id == id)
    }
}

impl MarketActor {
    /// Whether `peer` is on probation with this node: no verified result for it yet.
    pub(super) fn on_probation(&self, peer: &PeerId, now: u64) -> bool {
        self.reputation
            .record(peer, now)
            .is_none_or(|r| r.on_probation())
    }

    /// How `peer` stands when one of this node's auctions closes: proven, or on probation
    /// with the awards of this node it holds now and whether it failed one already.
    pub(super) fn standing(&self, peer: &PeerId, now: u64) -> Standing {
        let record = self.reputation.record(peer, now);
        if record.is_some_and(|r| !r.on_probation()) {
            return Standing::Proven;
        }
        let awards_held = self
            .running
            .values()
            .filter(|r| r.phase.winner().is_some_and(|(w, _)| w == *peer))
            .count();
        Standing::Probation {
            awards_held,
            failed: record.is_some_and(|r| r.failures > 0),
        }
    }

    /// Providers on probation that bid in this node's open auctions or hold its awards.
    pub(super) fn peers_on_probation(&self) -> usize {
        let now = now_ms();
        let mut peers = HashSet::new();
        for r in self.running.values() {
            match r.phase.winner() {
                Some((w, _)) => {
                    peers.insert(w);
                }
                None => peers.extend(r.book.entries().iter().map(|e| e.bid.body.bidder)),
            }
        }
        peers.retain(|p| self.on_probation(p, now));
        peers.len()
    }

    fn in_progress(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| !t.lifecycle.status().is_final())
            .count()
    }

    pub(super) fn submit(&mut self, request: TaskRequest) -> Result<AuctionId, MarketError> {
        if self.in_progress() >= self.config.max_running_tasks {
            return Err(MarketError::Busy(self.config.max_running_tasks));
        }
        let id = AuctionId::random();
        let kind = request.params.kind();
        let mut task = Task {
            id,
            kind,
            spec: None,
            auction_type: request.auction_type.unwrap_or(AuctionType::SecondPrice),
            max_price: request.max_price.unwrap_or(self.config.default_max_price),
            weighted: request
                .reputation_weighted
                .unwrap_or(self.config.reputation_weighted),
            lifecycle: Lifecycle::new(self.config.max_retries),
            winner: None,
            price: None,
            verification: None,
            result: None,
            error: None,
            submitted_ms: now_ms(),
            finished_ms: None,
            attempts: Vec::new(),
            timeline: Vec::new(),
        };
        task.log(format!("submitted ({kind})"));
        self.metrics.task_submitted(kind.label());
        self.remember(task);
        let content = self.content.clone();
        let params: TaskParams = request.params;
        self.jobs.spawn(async move {
            let result = kinds::prepare(&params, &content).await;
            Job::Prepared { task: id, result }
        });
        Ok(id)
    }

    fn remember(&mut self, task: Task) {
        let id = task.id;
        self.tasks.insert(id, task);
        self.order.push_back(id);
        while self.order.len() > self.config.max_kept_tasks {
            let Some(pos) = self.order.iter().position(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| t.lifecycle.status().is_final())
            }) else {
                break;
            };
            if let Some(old) = self.order.remove(pos) {
                self.tasks.remove(&old);
            }
        }
    }

    pub(super) fn prepared(&mut self, task: AuctionId, result: Result<TaskSpec, String>) {
        match result {
            Ok(spec) => {
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.spec = Some(spec);
                }
                self.announce(task);
            }
            Err(e) => {
                tracing::warn!(task = %task, error = %e, "cannot prepare task");
                let Some(t) = self.tasks.get_mut(&task) else {
                    return;
                };
                let error = AttemptError::InputFailed;
                self.metrics.task_error(t.kind.label(), error.label());
                let status = t.lifecycle.abandoned(error);
                let detail = format!("cannot store the task's input: {e}");
                self.finish(task, status, Some((error, detail)), None);
            }
        }
    }

    /// Announces a new auction for `task`.
    fn announce(&mut self, task_id: AuctionId) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let (Some(spec), Some(_)) = (task.spec.clone(), task.lifecycle.attempt_started()) else {
            return;
        };
        let now = now_ms();
        let announcement = Announcement {
            auction_id: AuctionId::random(),
            requester: self.local,
            task: spec,
            max_price: task.max_price,
            auction_type: task.auction_type,
            created_at_ms: now,
            bid_deadline_ms: now + self.config.bid_window_ms,
            reputation_weighted: task.weighted,
            execution_timeout_ms: self.config.execution_timeout_ms,
        };
        let auction = announcement.auction_id;
        task.attempts.push(AttemptView {
            auction_id: auction.to_string(),
            bids: Vec::new(),
            winner: None,
            price: None,
            outcome: None,
        });
        task.log(format!("auction {auction} announced"));
        let signed = sign(&self.key, announcement.clone());
        let excluded: HashSet<PeerId> = task.lifecycle.excluded().clone();
        self.metrics.auction(task.auction_type.label(), "created");
        self.running.insert(
            auction,
            Running {
                task: task_id,
                signed: signed.clone(),
                book: AuctionBook::new(announcement, excluded),
                announced_at: Instant::now(),
                phase: Phase::Bidding,
            },
        );
        self.publish(AUCTIONS_TOPIC, signed.bytes);
        self.jobs.spawn(after(
            Duration::from_millis(self.config.bid_window_ms),
            Timer::BidDeadline(auction),
        ));
    }

    pub(super) fn on_bid(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), Refusal> {
        // Cheap refusals first, on what the bid claims: a lookup, not a signature check.
        if let Some(claim) = crate::market::wire::peek_bid(bytes) {
            let Some(running) = self.running.get(&claim.auction_id) else {
                self.metrics.refused("bid", Refusal::UnknownAuction.label());
                return Err(Refusal::UnknownAuction);
            };
            if claim.signer != peer {
                let auction_type = running.book.announcement().auction_type.label();
                self.metrics.bid(auction_type, "refused");
                self.metrics.refused("bid", Refusal::WrongSigner.label());
                return Err(Refusal::WrongSigner);
            }
        }
        let bid = match open::<Bid>(bytes) {
            Ok(bid) => bid,
            Err(r) => {
                self.metrics.refused("bid", r.label());
                return Err(r);
            }
        };
        let now = now_ms();
        let Some(running) = self.running.get_mut(&bid.body.auction_id) else {
            self.metrics.refused("bid", Refusal::UnknownAuction.label());
            return Err(Refusal::UnknownAuction);
        };
        let auction_type = running.book.announcement().auction_type.label();
        let banned = self.reputation.is_banned(&bid.body.bidder, now);
        // A bidder without a verified result for us starts worse than neutral.
        let record = self.reputation.record(&bid.body.bidder, now);
        let weight = bidder_weight(
            record.map_or(crate::market::reputation::NEUTRAL, |r| r.score),
            record.is_none_or(|r| r.on_probation()),
            self.config.probation_weight,
        );
        let result = if bid.signer != peer {
            Err(Refusal::WrongSigner)
        } else if banned {
            Err(Refusal::Excluded)
        } else {
            running.book.offer(bid.clone(), weight, now)
        };
        match result {
            Ok(()) => {
                self.metrics.bid(auction_type, "accepted");
                self.metrics.bid_amount(bid.body.price);
                let task = running.task;
                let weight = running
                    .book
                    .entries()
                    .last()
                    .map_or(NEUTRAL_WEIGHT, |e| e.weight);
                if let Some(attempt) = self
                    .tasks
                    .get_mut(&task)
                    .and_then(|t| t.attempt(bid.body.auction_id))
                {
                    attempt.bids.push(BidView {
                        bidder: bid.body.bidder.to_string(),
                        price: bid.body.price,
                        weight,
                    });
                }
                Ok(())
            }
            Err(r) => {
                self.metrics.bid(auction_type, "refused");
                self.metrics.refused("bid", r.label());
                Err(r)
            }
        }
    }

    pub(super) fn on_result(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), Refusal> {
        // Cheap refusals first, on what the result claims: a lookup, not a signature check.
        if let Some(claim) = crate::market::wire::peek_result(bytes) {
            let from_winner = |winner: PeerId| winner == peer && claim.signer == peer;
            let refusal = match self.running.get(&claim.auction_id).map(|r| &r.phase) {
                None => Some(Refusal::UnknownAuction),
                Some(&Phase::Awarded { winner, .. }) if from_winner(winner) => None,
                Some(&Phase::Verifying { winner, .. }) if from_winner(winner) => {
                    // The winner sent its result again (a retry after a lost answer): the
                    // first one is being verified; no fault, nothing to do.
                    tracing::debug!(%peer, auction = %claim.auction_id, "duplicate result ignored");
                    return Ok(());
                }
                Some(_) => Some(Refusal::Unexpected),
            };
            if let Some(r) = refusal {
                self.metrics.refused("result", r.label());
                return Err(r);
            }
        }
        let result = match open::<TaskResult>(bytes) {
            Ok(r) => r,
            Err(r) => {
                self.metrics.refused("result", r.label());
                return Err(r);
            }
        };
        let auction = result.body.auction_id;
        let Some(running) = self.running.get_mut(&auction) else {
            self.metrics
                .refused("result", Refusal::UnknownAuction.label());
            return Err(Refusal::UnknownAuction);
        };
        let Phase::Awarded {
            winner,
            price,
            awarded_at,
        } = running.phase
        else {
            self.metrics.refused("result", Refusal::Unexpected.label());
            return Err(Refusal::Unexpected);
        };
        if winner != result.body.provider || peer != winner {
            self.metrics.refused("result", Refusal::Unexpected.label());
            return Err(Refusal::Unexpected);
        }
        running.phase = Phase::Verifying {
            winner,
            price,
            awarded_at,
        };
        let spec = running.book.announcement().task.clone();
        let task = running.task;
        if let Some(t) = self.tasks.get_mut(&task) {
            t.log(format!(
                "result received from {winner} (executed in {} ms)",
                result.body.execution_ms
            ));
        }
        let content = self.content.clone();
        let limit = Duration::from_millis(self.config.verify_timeout_ms);
        let output = result.body.output;
        self.jobs.spawn(async move {
            let check =
                std::panic::AssertUnwindSafe(kinds::verify(spec, output, &content)).catch_unwind();
            let result = match tokio::time::timeout(limit, check).await {
                Err(_) => Err(AttemptError::VerifyTimeout),
                Ok(Err(_panic)) => Err(AttemptError::VerifyFailed),
                Ok(Ok(result)) => result,
            };
            Job::Verified {
                auction,
                output,
                result,
            }
        });
        Ok(())
    }

    pub(super) fn result_deadline(&mut self, auction: AuctionId) {
        if self.awaiting_result(auction) {
            let detail = format!(
                "the winner delivered no result within {} ms of the award",
                u64::from(self.config.execution_timeout_ms) + self.config.award_timeout_ms
            );
            self.attempt_failed_because(auction, AttemptError::Timeout, detail);
        }
    }

    /// The winner's result verified: the escrow is released, and the task marked a success
    /// only once the release decision is durable (a crash in between must not leave a
    /// verified winner to be refunded).
    pub(super) fn result_verified(&mut self, auction: AuctionId, output: Output) {
        let Some(Phase::Verifying { winner, .. }) = self.running.get(&auction).map(|r| &r.phase)
        else {
            return;
        };
        let (winner, payments) = (*winner, self.payments.clone());
        let escrow = escrow_id(&self.local, auction);
        self.jobs.spawn(async move {
            let durable = payments.release_durably(winner, escrow).await;
            Job::Released {
                auction,
                output,
                durable,
            }
        });
    }

    /// The release of a verified winner's escrow is durable (or could not be made so: the
    /// result is verified all the same, and the task succeeds).
    pub(super) fn attempt_succeeded(
        &mut self,
        auction: AuctionId,
        output: Output,
        durable: Result<(), crate::payments::PaymentsError>,
    ) {
        let Some(running) = self.running.remove(&auction) else {
            return;
        };
        let Phase::Verifying {
            winner,
            price,
            awarded_at,
        } = running.phase
        else {
            return;
        };
        if let Err(e) = durable {
            tracing::warn!(%auction, %winner, error = %e, "the release of a verified task is not durable");
        }
        let auction_type = running.book.announcement().auction_type.label();
        self.metrics.auction(auction_type, "completed");
        self.provider_succeeded(winner, awarded_at.elapsed().as_millis() as u64, price);
        let Some(t) = self.tasks.get_mut(&running.task) else {
            return;
        };
        if let Some(a) = t.attempt(auction) {
            a.outcome = Some("success".into());
        }
        t.winner = Some(winner);
        t.price = Some(price);
        t.verification = Some("verified");
        t.result = Some(output);
        t.log(format!("result verified; paid {price} to {winner}"));
        let status = t.lifecycle.succeeded();
        self.finish(running.task, status, None, Some(price));
    }

    /// An attempt failed with `error`; what it means for the task is the lifecycle's call.
    pub(super) fn attempt_failed(&mut self, auction: AuctionId, error: AttemptError) {
        let detail = match error {
            AttemptError::WrongResult => "the winner's result did not verify",
            AttemptError::FetchFailed => "the winner's result could not be fetched from it",
            AttemptError::VerifyTimeout => "verifying the result took too long",
            AttemptError::VerifyFailed => "this node could not verify the result",
            AttemptError::InputFailed => "this node could not read the task's own input",
            _ => error.label(),
        };
        self.attempt_failed_because(auction, error, detail.to_owned());
    }

    /// An attempt failed with `error` (`detail` says why, in words). The winner, if any, is
    /// refunded and left out of the task's next auction, and blamed if it was its fault.
    pub(super) fn attempt_failed_because(
        &mut self,
        auction: AuctionId,
        error: AttemptError,
        detail: String,
    ) {
        let Some(running) = self.running.remove(&auction) else {
            return;
        };
        let announcement = running.book.announcement();
        self.metrics
            .task_error(TaskKind::of(&announcement.task).label(), error.label());
        let winner = running.phase.winner();
        if let Some((winner, awarded_at)) = winner {
            self.metrics
                .auction(announcement.auction_type.label(), "failed");
            // Whatever was locked for this attempt goes back (once the lock expires).
            let reason = match error {
                AttemptError::Timeout => "timeout",
                _ => "failed",
            };
            self.payments
                .refund(winner, escrow_id(&self.local, auction), reason);
            match error.fault() {
                Fault::Provider => {
                    self.provider_failed(winner, awarded_at.elapsed().as_millis() as u64);
                }
                Fault::Unreachable => self.provider_unreachable(winner),
                Fault::Requester | Fault::Nobody => {}
            }
        }
        // Whether the winner was on probation: a success is the only way off it, so the
        // failure just recorded does not change the answer.
        let winner = winner.map(|(peer, _)| Winner {
            peer,
            on_probation: self.on_probation(&peer, now_ms()),
        });
        let Some(t) = self.tasks.get_mut(&running.task) else {
            return;
        };
        if let Some(a) = t.attempt(auction) {
            a.outcome = Some(error.label().into());
        }
        t.log(format!("auction {auction} failed: {}", error.label()));
        if error.is_wrong_result() {
            t.verification = Some(error.label());
        }
        match t.lifecycle.attempt_failed(winner, error) {
            Next::Reauction => {
                if t.lifecycle.proven_only() {
                    t.log("re-auctioning (providers with history first)".into());
                } else {
                    t.log("re-auctioning".into());
                }
                self.announce(running.task);
            }
            Next::Finish(status) => self.finish(running.task, status, Some((error, detail)), None),
        }
    }

    fn finish(
        &mut self,
        task: AuctionId,
        status: TaskStatus,
        error: Option<(AttemptError, String)>,
        cost: Option<u64>,
    ) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        t.finished_ms = Some(now_ms());
        if let Some((error, detail)) = error {
            t.log(format!("task {}: {}", status.label(), error.label()));
            t.error = Some(format!("{}: {detail}", error.label()));
        }
        self.metrics
            .task_completed(t.kind.label(), status.label(), cost);
    }
}
