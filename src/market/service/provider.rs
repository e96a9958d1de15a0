//! The provider's side: bidding on other nodes' auctions, taking the awards this node won
//! (only with the price locked in escrow for it), executing them on the worker pool and
//! delivering the results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use rand::Rng;
use tokio::sync::Semaphore;

use super::{AuctionKey, Job, MarketActor, Timer, after, escrow_id};
use crate::content::ContentService;
use crate::market::auction::verify_award;
use crate::market::kinds::{self, Executor, TaskKind};
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
            // One requester may hold at most half of them, so a requester flooding
            // announcements cannot take every bid slot.
            || self
                .pending_bids
                .values()
                .filter(|p| p.announcement.body.requester == a.requester)
                .count()
                >= slots / 2
        {
            return;
        }
        let price = self.price_for(&a.task);
        let now = now_ms();
        if price > a.max_price || a.bid_deadline_ms <= now {
            return;
        }
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
            let delivered = match delivered {
                Ok(Ok(())) => true,
                Ok(Err(reason)) => {
                    tracing::debug!(auction = %auction.1, reason, "bid refused");
                    true
                }
                Err(e) => {
                    tracing::debug!(auction = %auction.1, error = e, "bid not delivered");
                    false
                }
            };
            Job::BidSent {
                auction,
                auction_type,
                delivered,
            }
        });
        self.jobs.spawn(after(reserve, Timer::BidExpiry(auction)));
    }

    pub(super) fn bid_sent(
        &mut self,
        auction: AuctionKey,
        auction_type: &'static str,
        delivered: bool,
    ) {
        if delivered {
            // A refused bid keeps its slot until it expires: a requester that refuses every
            // bid at once must not make us bid without pause.
            self.metrics.bid(auction_type, "sent");
        } else if self.pending_bids.remove(&auction).is_some() {
            // Never reached the requester: free the capacity it reserved.
            self.metrics.bid(auction_type, "undelivered");
        }
    }

    pub(super) fn bid_expired(&mut self, auction: AuctionKey) {
        if let Some(p) = self.pending_bids.remove(&auction) {
            // No award and no result seen: the bid simply lapsed.
            self.metrics
                .bid(p.announcement.body.auction_type.label(), "lost");
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
        }
    }

    pub(super) fn on_award(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), Refusal> {
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
                if a.body.winner() != self.local || !mine {
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
        let kind = TaskKind::of(&announcement.task);
        let job = Execution {
            key: self.key.clone(),
            p2p: self.p2p.clone(),
            content: self.content.clone(),
            executor: self.executor.clone(),
            workers: self.workers.clone(),
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
                auction,
                kind,
                took,
                result,
            }
        });
        Ok(())
    }

    pub(super) fn executed(
        &mut self,
        auction: wire::AuctionId,
        kind: TaskKind,
        took: Option<Duration>,
        result: Result<(), String>,
    ) {
        self.executing -= 1;
        if let Some(took) = took {
            self.metrics.task_executed(kind.label(), took.as_secs_f64());
        }
        if let Err(e) = result {
            tracing::info!(%auction, error = e, "task execution failed");
        }
    }
}

/// Everything a provider needs to execute an awarded task and deliver its result.
struct Execution {
    key: Keypair,
    p2p: P2pHandle,
    content: ContentService,
    executor: Arc<dyn Executor>,
    workers: Arc<Semaphore>,
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
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "worker pool closed".to_owned())?;
        let executor = self.executor.clone();
        let started = Instant::now();
        let computed = tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
