//! The provider's side: bidding on other nodes' auctions, taking the awards this node won
//! (only with the price locked in escrow for it), executing them on the worker pool and
//! delivering the results.
//!
//! Requesters are judged ([`Requesters`]): a refused bid frees its slot at once and backs off
//! from its requester; lapsed bids and awards left unpaid past their escrow's expiry thin,
//! then stop, the bids a requester gets; an executed (requester, auction id) is never bid on
//! or executed again; one requester's tasks hold at most its share of the workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use rand::Rng;
use tokio::sync::Semaphore;

use super::{AuctionKey, Job, MarketActor, Timer, after, escrow_id};
use crate::content::ContentService;
use crate::market::ProviderConfig;
use crate::market::auction::verify_award;
use crate::market::kinds::{self, Executor, TaskKind};
use crate::market::requesters::{Policy, Requesters, Settled};
use crate::market::wire::{
    self, Announcement, Award, Bid, Refusal, Request, Signed, TaskResult, TaskSpec, now_ms, open,
    sign,
};
use crate::p2p::{Market, P2pHandle};

/// How long after the bid deadline a bid's capacity stays reserved awaiting an award: the
/// default `market.award_timeout_ms` (5 s, the escrow lock and the award together) plus 3 s
/// for the award's way and clock skew, so an award sent in time is never judged late here.
const AWARD_GRACE: Duration = Duration::from_secs(8);
/// Open bids a provider may have per worker. A bid reserves nothing until it wins, and most
/// bids lose; a provider with a free worker bids, and a win beyond its free workers waits for
/// one (within the task's time limit).
const BIDS_PER_WORKER: usize = 4;
/// Most tries to deliver a task result, and the pause after the first failed one (growing).
const RESULT_SENDS: u32 = 3;
const RESULT_RETRY_AFTER: Duration = Duration::from_millis(500);
/// After an executed award's escrow expires, the wait before judging whether it was paid (a
/// release countersigned at the last moment lands meanwhile).
const PAYMENT_GRACE: Duration = Duration::from_secs(2);
/// Requesters remembered (an idle one is forgotten first).
const MAX_REQUESTERS: usize = 1024;
/// Executed (requester, auction id) remembered, never bid on or executed again.
const MAX_EXECUTED: usize = 8192;

/// How a requester answered a bid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BidAnswer {
    /// It took the bid.
    Accepted,
    /// It refused it (any reason): the slot is free, and the requester is backed off from.
    Refused,
    /// It was never reached: the slot is free, and nothing is held against it.
    Undelivered,
}

/// The requesters table for a provider configured by `p`.
pub(super) fn requesters(p: &ProviderConfig) -> Requesters<PeerId> {
    let slots = p.capacity * BIDS_PER_WORKER;
    let share = usize::try_from(p.max_worker_share_percent).unwrap_or(100);
    let policy = Policy {
        // One requester may hold at most half of the bid slots, so a requester flooding
        // announcements cannot take them all.
        bid_cap: slots / 2,
        worker_cap: (p.capacity * share / 100).max(1),
        backoff_ms: p.refusal_backoff_ms,
        penalty_ms: p.penalty_secs.saturating_mul(1_000),
        max_strikes: p.max_strikes,
    };
    Requesters::new(policy, MAX_REQUESTERS, MAX_EXECUTED)
}

/// A bid this node made and may be awarded.
pub(super) struct PendingBid {
    pub(super) bid: Signed<Bid>,
    pub(super) announcement: Signed<Announcement>,
}

impl MarketActor {
    fn price_for(&self, task: &TaskSpec) -> u64 {
        let p = &self.config.provider;
        let price = p
            .base_price
            .saturating_add(p.unit_price.saturating_mul(kinds::work_units(task)));
        let jitter = u64::from(p.price_jitter_percent);
        if jitter == 0 {
            return price.max(1);
        }
        let percent = rand::thread_rng().gen_range(100 - jitter.min(99)..=100 + jitter);
        (price.saturating_mul(percent) / 100).max(1)
    }

    /// Bids on an announced auction if this node offers its kind, has room, and its price is
    /// within the maximum.
    pub(super) fn consider_bidding(&mut self, announcement: Signed<Announcement>) {
        let a = &announcement.body;
        let slots = self.config.provider.capacity * BIDS_PER_WORKER;
        if !self.offered.contains(&TaskKind::of(&a.task))
            || self.pending_bids.contains_key(&(a.requester, a.auction_id))
            || self.executing >= self.config.provider.capacity
            || self.pending_bids.len() >= slots
        {
            return;
        }
        let price = self.price_for(&a.task);
        let now = now_ms();
        if price > a.max_price || a.bid_deadline_ms <= now {
            return;
        }
        // What this requester did before decides whether it gets this bid.
        if let Err(withheld) = self.requesters.may_bid(a.requester, a.auction_id, now) {
            tracing::debug!(auction = %a.auction_id, requester = %a.requester, reason = withheld.label(), "bid withheld");
            self.metrics.withheld(withheld.label());
            return;
        }
        self.requesters.bid_placed(a.requester);
        let bid = sign(
            &self.key,
            Bid {
                auction_id: a.auction_id,
                requester: a.requester,
                bidder: self.local,
                price,
                expires_at_ms: a.bid_deadline_ms + AWARD_GRACE.as_millis() as u64,
            },
        );
        let auction = (a.requester, a.auction_id);
        let requester = a.requester;
        let auction_type = a.auction_type.label();
        let reserve = Duration::from_millis(a.bid_deadline_ms.saturating_sub(now)) + AWARD_GRACE;
        let frame = Request::Bid(bid.bytes.clone()).encode();
        self.pending_bids
            .insert(auction, PendingBid { bid, announcement });
        let p2p = self.p2p.clone();
        self.jobs.spawn(async move {
            // A provider is rarely connected to every requester: find it first.
            let delivered = match p2p.connect(requester).await {
                Err(e) => Err(format!("requester unreachable: {e}")),
                Ok(()) => p2p
                    .request::<Market>(requester, frame)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        wire::decode_response(&bytes).map_err(|e| format!("bad answer: {e}"))
                    }),
            };
            let answer = match delivered {
                Ok(Ok(())) => BidAnswer::Accepted,
                Ok(Err(reason)) => {
                    tracing::debug!(auction = %auction.1, reason, "bid refused");
                    BidAnswer::Refused
                }
                Err(e) => {
                    tracing::debug!(auction = %auction.1, error = e, "bid not delivered");
                    BidAnswer::Undelivered
                }
            };
            Job::BidSent {
                auction,
                auction_type,
                answer,
            }
        });
        self.jobs.spawn(after(reserve, Timer::BidExpiry(auction)));
    }

    pub(super) fn bid_sent(
        &mut self,
        auction: AuctionKey,
        auction_type: &'static str,
        answer: BidAnswer,
    ) {
        let requester = auction.0;
        match answer {
            BidAnswer::Accepted => {
                self.metrics.bid(auction_type, "sent");
                self.requesters.bid_accepted(requester);
            }
            BidAnswer::Refused => {
                self.metrics.bid(auction_type, "sent");
                // A refused bid frees its slot at once; the requester's back-off keeps a
                // requester that refuses every bid from making us bid without pause.
                if self.pending_bids.remove(&auction).is_some() {
                    self.requesters.bid_refused(requester, now_ms());
                }
            }
            BidAnswer::Undelivered => {
                if self.pending_bids.remove(&auction).is_some() {
                    // Never reached the requester: free the capacity it reserved.
                    self.metrics.bid(auction_type, "undelivered");
                    self.requesters.bid_undelivered(requester);
                }
            }
        }
    }

    pub(super) fn bid_expired(&mut self, auction: AuctionKey) {
        if let Some(p) = self.pending_bids.remove(&auction) {
            // No award and no result seen: the bid lapsed, a strike for its requester.
            self.metrics
                .bid(p.announcement.body.auction_type.label(), "lost");
            self.requesters.bid_lapsed(auction.0, now_ms());
        }
    }

    /// A verified auction result was published: our bid lost if it is the result of the
    /// very auction we bid on and another node won.
    pub(super) fn bid_lost_to(&mut self, award: &Award) {
        let key = (award.announcement.body.requester, award.auction_id());
        let ours = self
            .pending_bids
            .get(&key)
            .is_some_and(|p| p.announcement.bytes == award.announcement.bytes);
        if award.winner() != self.local
            && ours
            && let Some(pending) = self.pending_bids.remove(&key)
        {
            self.metrics
                .bid(pending.announcement.body.auction_type.label(), "lost");
            self.requesters.bid_lost(key.0, now_ms());
        }
    }

    pub(super) fn on_award(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), Refusal> {
        // Cheap refusals first, on what the award claims: an award for no bid of ours (a
        // replayed or self-signed one) costs a lookup, not three signature checks.
        if let Some(claim) = wire::peek_award(bytes) {
            let mine = self
                .pending_bids
                .get(&(claim.requester, claim.auction_id))
                .is_some_and(|p| {
                    p.bid.bytes == claim.winner_bid && p.announcement.bytes == claim.announcement
                });
            let refusal = if self
                .requesters
                .was_executed(claim.requester, claim.auction_id)
            {
                // Executed once already: one escrow lock never pays for two executions.
                Some(Refusal::Replay)
            } else if !mine {
                Some(Refusal::NotWinner)
            } else if claim.requester != peer {
                Some(Refusal::WrongSigner)
            } else {
                None
            };
            if let Some(r) = refusal {
                self.metrics.refused("award", r.label());
                return Err(r);
            }
        }
        let award = open::<Award>(bytes)
            .and_then(|a| verify_award(&a.body).map(|()| a))
            .and_then(|a| {
                // The award must be for the bid we made on the announcement we saw.
                let mine = self
                    .pending_bids
                    .get(&(a.signer, a.body.auction_id()))
                    .is_some_and(|p| {
                        p.bid.bytes == a.body.winner_bid.bytes
                            && p.announcement.bytes == a.body.announcement.bytes
                    });
                let locked = self
                    .payments
                    .escrows()
                    .locked(&a.signer, &escrow_id(&a.signer, a.body.auction_id()));
                // Locked for at least the price, until after the task's time is up.
                let need_until =
                    now_ms() + u64::from(a.body.announcement.body.execution_timeout_ms);
                let escrowed = locked
                    .is_some_and(|l| l.amount >= a.body.price && l.expires_at_ms >= need_until);
                if a.body.winner() == self.local
                    && self.requesters.was_executed(a.signer, a.body.auction_id())
                {
                    // Executed once already: one escrow lock never pays for two executions.
                    Err(Refusal::Replay)
                } else if a.body.winner() != self.local || !mine {
                    Err(Refusal::NotWinner)
                } else if a.signer != peer {
                    Err(Refusal::WrongSigner)
                } else if !escrowed {
                    // No execution without the price locked for us first.
                    Err(Refusal::NoEscrow)
                } else {
                    Ok(a)
                }
            });
        let award = match award {
            Ok(a) => a,
            Err(r) => {
                self.metrics.refused("award", r.label());
                return Err(r);
            }
        };
        let auction = award.body.auction_id();
        let pending = self
            .pending_bids
            .remove(&(award.signer, auction))
            .expect("checked above");
        let announcement = pending.announcement.body;
        self.metrics.bid(announcement.auction_type.label(), "won");
        self.record_observed(&award.body);
        self.executing += 1;
        let requester = award.signer;
        let now = now_ms();
        self.requesters.awarded(requester, auction, now);
        // Whether it was paid is judged once its escrow has expired.
        let expires_at_ms = self
            .payments
            .escrows()
            .locked(&requester, &escrow_id(&requester, auction))
            .map_or(now, |l| l.expires_at_ms);
        let due = Duration::from_millis(expires_at_ms.saturating_sub(now)) + PAYMENT_GRACE;
        self.jobs
            .spawn(after(due, Timer::PaymentDue((requester, auction))));
        let worker_cap = self.requesters.policy().worker_cap;
        let share = self
            .requester_workers
            .entry(requester)
            .or_insert_with(|| Arc::new(Semaphore::new(worker_cap)))
            .clone();
        let kind = TaskKind::of(&announcement.task);
        let job = Execution {
            key: self.key.clone(),
            p2p: self.p2p.clone(),
            content: self.content.clone(),
            executor: self.executor.clone(),
            workers: self.workers.clone(),
            share,
            announcement,
            local: self.local,
        };
        tracing::debug!(%auction, %kind, "executing awarded task");
        self.jobs.spawn(async move {
            // A panic must still give the worker back.
            let (took, result) = std::panic::AssertUnwindSafe(job.run())
                .catch_unwind()
                .await
                .unwrap_or_else(|_| (None, Err("the executor panicked".into())));
            Job::Executed {
                auction: (requester, auction),
                kind,
                took,
                result,
            }
        });
        Ok(())
    }

    pub(super) fn executed(
        &mut self,
        (requester, auction): AuctionKey,
        kind: TaskKind,
        took: Option<Duration>,
        result: Result<(), String>,
    ) {
        self.executing -= 1;
        self.requesters
            .execution_ended(requester, auction, result.is_ok());
        if self
            .requesters
            .standing(&requester)
            .is_none_or(|s| s.executing == 0)
        {
            self.requester_workers.remove(&requester);
        }
        if let Some(took) = took {
            self.metrics.task_executed(kind.label(), took.as_secs_f64());
        }
        if let Err(e) = result {
            tracing::info!(%auction, error = e, "task execution failed");
        }
    }

    /// The escrow of an award this node executed has expired: released to us, or not.
    pub(super) fn payment_due(&mut self, (requester, auction): AuctionKey) {
        let released = self
            .payments
            .escrows()
            .released(&requester, &escrow_id(&requester, auction));
        let outcome = self
            .requesters
            .settle(requester, auction, released, now_ms());
        if outcome == Settled::Unpaid {
            tracing::info!(%auction, %requester, "an executed award was not paid");
        }
        if outcome != Settled::Unknown {
            self.metrics.settled(outcome.label());
        }
        self.refresh_requester_gauge();
    }

    /// Sets the gauge of requesters this node gives no bids to for now.
    pub(super) fn refresh_requester_gauge(&self) {
        self.metrics
            .requesters_penalised(self.requesters.penalised(now_ms()));
    }
}

/// Everything a provider needs to execute an awarded task and deliver its result.
struct Execution {
    key: Keypair,
    p2p: P2pHandle,
    content: ContentService,
    executor: Arc<dyn Executor>,
    workers: Arc<Semaphore>,
    /// The requester's share of the workers, taken before a worker.
    share: Arc<Semaphore>,
    announcement: Announcement,
    local: PeerId,
}

impl Execution {
    /// Executes and delivers; reports the execution time if execution finished.
    async fn run(self) -> (Option<Duration>, Result<(), String>) {
        let mut took = None;
        let result = self.execute_and_deliver(&mut took).await;
        (took, result)
    }

    async fn execute_and_deliver(&self, took_out: &mut Option<Duration>) -> Result<(), String> {
        let a = &self.announcement;
        let limit = Duration::from_millis(u64::from(a.execution_timeout_ms));
        let deadline = Instant::now() + limit;
        let input = tokio::time::timeout(limit, kinds::load_input(&a.task, &self.content))
            .await
            .map_err(|_| "fetching the inputs timed out".to_owned())??;
        let share = tokio::time::timeout_at(deadline.into(), self.share.clone().acquire_owned())
            .await
            .map_err(|_| "no worker of this requester's share was free in time".to_owned())?
            .map_err(|_| "worker pool closed".to_owned())?;
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "worker pool closed".to_owned())?;
        let executor = self.executor.clone();
        let started = Instant::now();
        let computed = tokio::task::spawn_blocking(move || {
            let _permit = (permit, share);
            executor.execute(&input, deadline)
        })
        .await
        .map_err(|e| format!("executor panicked: {e}"))?
        .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        *took_out = Some(took);
        let output = kinds::store_output(computed, &self.content).await?;
        let result = sign(
            &self.key,
            TaskResult {
                auction_id: a.auction_id,
                provider: self.local,
                output,
                execution_ms: took.as_millis() as u64,
            },
        );
        self.deliver(Request::Result(result.bytes).encode(), deadline)
            .await
    }

    /// Sends the result to the requester; a transient failure must not cost the task, so it
    /// is retried until the deadline.
    async fn deliver(&self, frame: Vec<u8>, deadline: Instant) -> Result<(), String> {
        let requester = self.announcement.requester;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sent = async {
                self.p2p
                    .connect(requester)
                    .await
                    .map_err(|e| format!("requester unreachable: {e}"))?;
                self.p2p
                    .request::<Market>(requester, frame.clone())
                    .await
                    .map_err(|e| e.to_string())
            };
            match sent.await {
                Ok(answer) => {
                    return match wire::decode_response(&answer) {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(reason)) => Err(format!("result refused: {reason}")),
                        Err(e) => Err(format!("bad answer: {e}")),
                    };
                }
                Err(e) if attempt >= RESULT_SENDS || Instant::now() >= deadline => {
                    return Err(format!("result not delivered after {attempt} tries: {e}"));
                }
                Err(e) => {
                    tracing::debug!(auction = %self.announcement.auction_id, error = e, "result not delivered; retrying");
                    tokio::time::sleep(RESULT_RETRY_AFTER * attempt).await;
                }
            }
        }
    }
}
