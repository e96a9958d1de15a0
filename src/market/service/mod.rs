//! The market actor: one task that owns the auctions this node runs, the bids it made, the
//! reputation table and the market metrics. Handles ([`MarketService`]) talk to it through a
//! bounded command channel; the swarm routes gossip and requests to its inboxes. Every slow
//! step (sending, fetching, executing, verifying, persisting) runs as a job in a `JoinSet`
//! whose result comes back to the actor as a [`Job`], so the actor itself never waits.
//!
//! The actor plays three roles, one file each, around pure parts:
//! - [`requester`]: this node's tasks, their auctions and what follows; the decisions after
//!   a failed attempt are the pure [`Lifecycle`](super::task::Lifecycle)'s; [`award`]: the
//!   escrow lock and the award that close an auction;
//! - [`provider`]: bidding on others' auctions, executing the awards this node won;
//! - [`observer`]: the gossip of announcements and published auction results;
//!
//! plus [`handle`] (the commands) and [`standing`] (reputation, bans and their persistence).

mod award;
mod handle;
mod observer;
mod provider;
mod requester;
mod standing;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use lru::LruCache;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use handle::Command;
pub use handle::MarketService;
use provider::{BidAnswer, PendingBid};
use requester::{Running, Task};

use super::kinds::{Executor, TaskKind};
use super::metrics::MarketMetrics;
use super::reputation::Reputation;
use super::requesters::Requesters;
use super::task::AttemptError;
use super::wire::{AuctionId, Output, Refusal, TaskSpec};
use super::{MarketConfig, MarketError};
use crate::content::ContentService;
use crate::ledger::{Ledger, Write};
use crate::p2p::{GossipMessage, InboundRequest, MarketInbox, P2pHandle, Verdict};
use crate::payments::PaymentsService;
use crate::payments::wire::EscrowId;

/// Capacity of the command channel.
const COMMAND_QUEUE: usize = 64;
/// Capacity of the inboxes for requests and gossip.
const INBOX: usize = 256;
/// Name of the file in the data dir where reputation was kept before the ledger; it is
/// imported into the ledger once, then removed.
pub const REPUTATION_FILE: &str = "reputation.json";
/// Slack added to an escrow's expiry beyond the task's own time limits, for clock skew.
pub(super) const ESCROW_SLACK_MS: u64 = 5_000;
/// Auctions remembered as observed (from results gossip).
const OBSERVED: usize = 4096;

/// An auction as other nodes know it: its requester and its id. The id alone is chosen by
/// the requester, so anyone can announce another auction under the same id.
type AuctionKey = (PeerId, AuctionId);

/// What an observer derived from an auction's published result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The winner.
    pub winner: PeerId,
    /// The price.
    pub price: u64,
}

/// A wake-up the actor asked for.
enum Timer {
    BidDeadline(AuctionId),
    ResultDeadline(AuctionId),
    BidExpiry(AuctionKey),
    /// An executed award's escrow has expired: was it paid?
    PaymentDue(AuctionKey),
    Unban(PeerId),
}

/// What a job reports back to the actor.
enum Job {
    Timer(Timer),
    /// A task's spec is ready (its inputs stored), or could not be made.
    Prepared {
        task: AuctionId,
        result: Result<TaskSpec, String>,
    },
    /// The escrow lock and the award's delivery to the winner ended.
    AwardDelivered {
        auction: AuctionId,
        task: AuctionId,
        award: Bytes,
        result: Result<(), (AttemptError, String)>,
    },
    /// This node, as a provider, finished an awarded task (delivered or not).
    Executed {
        kind: TaskKind,
        took: Option<Duration>,
        result: Result<(), String>,
        auction: AuctionKey,
    },
    /// A winner's result was verified, or not.
    Verified {
        auction: AuctionId,
        output: Output,
        result: Result<(), AttemptError>,
    },
    /// The release of a verified winner's escrow is durable, or could not be made so.
    Released {
        auction: AuctionId,
        output: Output,
        durable: Result<(), crate::payments::PaymentsError>,
    },
    /// A bid of this node reached its requester, or not.
    BidSent {
        auction: AuctionKey,
        auction_type: &'static str,
        answer: BidAnswer,
    },
    Done,
}

/// The actor. Create with [`MarketService::new`], run with [`MarketActor::run`].
pub struct MarketActor {
    key: Keypair,
    local: PeerId,
    p2p: P2pHandle,
    content: ContentService,
    config: MarketConfig,
    metrics: MarketMetrics,
    executor: Arc<dyn Executor>,
    workers: Arc<Semaphore>,
    /// The kinds this node bids on.
    offered: HashSet<TaskKind>,
    commands: mpsc::Receiver<Command>,
    requests: mpsc::Receiver<InboundRequest<Vec<u8>, Vec<u8>>>,
    gossip: mpsc::Receiver<GossipMessage>,
    jobs: JoinSet<Job>,
    // Requester.
    tasks: HashMap<AuctionId, Task>,
    order: VecDeque<AuctionId>,
    running: HashMap<AuctionId, Running>,
    // Provider.
    pending_bids: HashMap<AuctionKey, PendingBid>,
    executing: usize,
    /// What this node knows of the requesters it bids for, and the awards it executed.
    requesters: Requesters<PeerId>,
    /// Each requester's share of the workers, while it has tasks executing.
    requester_workers: HashMap<PeerId, Arc<Semaphore>>,
    // Observer.
    observed: LruCache<AuctionKey, Observed>,
    // Standing.
    reputation: Reputation,
    /// The reputation file of an older version, removed once imported into the ledger.
    legacy_file: Option<PathBuf>,
    ledger: Ledger,
    payments: PaymentsService,
    convictions: mpsc::Receiver<PeerId>,
    dirty: bool,
}

/// The escrow id of a task's auction: 32 bytes bound to the requester and the auction, so
/// neither side can mistake one task's escrow for another's.
pub fn escrow_id(requester: &PeerId, auction: AuctionId) -> EscrowId {
    let mut h = blake3::Hasher::new();
    h.update(b"zerostate-escrow\0");
    h.update(&requester.to_bytes());
    h.update(&auction.0);
    EscrowId(*h.finalize().as_bytes())
}

/// What the market keeps in the node: where it persists, how it pays, who was convicted.
pub struct MarketDeps {
    /// The ledger, for reputation.
    pub ledger: Ledger,
    /// The reputation table as the ledger held it at start.
    pub reputation: Option<Vec<u8>>,
    /// The node's data dir (for the reputation file of older versions).
    pub data_dir: PathBuf,
    /// Escrow for awarded tasks.
    pub payments: PaymentsService,
    /// Peers that dispute evidence convicted of cheating.
    pub convictions: mpsc::Receiver<PeerId>,
}

impl MarketService {
    /// Creates the market: its handle, its actor, and the inboxes for the event loop
    /// (market requests; gossip of the auctions and results topics). Reputation comes from
    /// the ledger; tasks are executed by `executor`.
    pub fn new(
        key: Keypair,
        p2p: P2pHandle,
        content: ContentService,
        config: MarketConfig,
        metrics: MarketMetrics,
        deps: MarketDeps,
        executor: Arc<dyn Executor>,
    ) -> (Self, MarketActor, MarketInbox, mpsc::Sender<GossipMessage>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (req_tx, req_rx) = mpsc::channel(INBOX);
        let (gossip_tx, gossip_rx) = mpsc::channel(INBOX);
        let (reputation, legacy_file) =
            standing::load_reputation(&config, deps.reputation, &deps.data_dir);
        let dirty = legacy_file.is_some();
        let offered = config.provider.kinds.iter().copied().collect();
        let requesters = provider::requesters(&config.provider);
        let actor = MarketActor {
            local: key.public().to_peer_id(),
            key,
            p2p,
            content,
            workers: Arc::new(Semaphore::new(config.provider.capacity.max(1))),
            offered,
            config,
            metrics,
            executor,
            commands: rx,
            requests: req_rx,
            gossip: gossip_rx,
            jobs: JoinSet::new(),
            tasks: HashMap::new(),
            order: VecDeque::new(),
            running: HashMap::new(),
            pending_bids: HashMap::new(),
            executing: 0,
            requesters,
            requester_workers: HashMap::new(),
            observed: LruCache::new(std::num::NonZeroUsize::new(OBSERVED).expect("nonzero")),
            reputation,
            legacy_file,
            ledger: deps.ledger,
            payments: deps.payments,
            convictions: deps.convictions,
            dirty,
        };
        (Self::from_sender(tx), actor, req_tx, gossip_tx)
    }
}

/// The gossip verdict on a refused message: rejected (not forwarded, its sender penalised by
/// gossipsub scoring) when it is the sender's fault, ignored (not forwarded, no penalty) when
/// an honest peer could have sent it, such as a message that expired on its way.
fn verdict(refusal: Refusal) -> Verdict {
    if refusal.is_fault() {
        Verdict::Reject
    } else {
        Verdict::Ignore
    }
}

async fn after(delay: Duration, timer: Timer) -> Job {
    tokio::time::sleep(delay).await;
    Job::Timer(timer)
}

impl MarketActor {
    /// Runs until `cancel` fires or every handle is gone; writes reputation last.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.block_banned_peers();
        let mut persist = tokio::time::interval(standing::PERSIST_EVERY);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(request) = self.requests.recv() => self.on_request(request),
                Some(cheater) = self.convictions.recv() => self.convicted(cheater),
                Some(message) = self.gossip.recv() => self.on_gossip(message),
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => match done {
                    Ok(job) => self.on_job(job),
                    Err(e) if e.is_panic() => {
                        // A job that panics is a bug; the market goes on without it.
                        tracing::error!(error = %e, "market job panicked");
                    }
                    Err(_) => {}
                },
                _ = persist.tick() => {
                    self.refresh_peer_gauges();
                    self.refresh_requester_gauge();
                    if self.dirty {
                        self.persist();
                    }
                }
            }
        }
        self.jobs.shutdown().await;
        if self.dirty {
            let bytes = self.reputation.to_json();
            if let Err(e) = self.ledger.commit(vec![Write::Reputation(bytes)]).await {
                tracing::warn!(error = %e, "cannot save reputation");
            }
        }
        tracing::debug!("market service stopped");
    }

    /// Routes a job's report to the role it belongs to.
    fn on_job(&mut self, job: Job) {
        match job {
            Job::Done => {}
            Job::Timer(Timer::BidDeadline(auction)) => self.close_auction(auction),
            Job::Timer(Timer::ResultDeadline(auction)) => self.result_deadline(auction),
            Job::Timer(Timer::BidExpiry(auction)) => self.bid_expired(auction),
            Job::Timer(Timer::PaymentDue(auction)) => self.payment_due(auction),
            Job::Timer(Timer::Unban(peer)) => self.unban(peer),
            Job::Prepared { task, result } => self.prepared(task, result),
            Job::AwardDelivered {
                auction,
                task,
                award,
                result,
            } => self.award_delivered(auction, task, award, result),
            Job::Executed {
                kind,
                took,
                result,
                auction,
            } => self.executed(auction, kind, took, result),
            Job::Verified {
                auction,
                output,
                result,
            } => match result {
                Ok(()) => self.result_verified(auction, output),
                Err(error) => self.attempt_failed(auction, error),
            },
            Job::Released {
                auction,
                output,
                durable,
            } => self.attempt_succeeded(auction, output, durable),
            Job::BidSent {
                auction,
                auction_type,
                answer,
            } => self.bid_sent(auction, auction_type, answer),
        }
    }

    /// Publishes on a topic from a job (the swarm answers through its handle).
    fn publish(&mut self, topic: &'static str, data: Bytes) {
        let p2p = self.p2p.clone();
        self.jobs.spawn(async move {
            if let Err(e) = p2p.publish(topic, data.to_vec()).await {
                tracing::debug!(topic, error = %e, "market message not published");
            }
            Job::Done
        });
    }

    /// An inbound market request: decoded here, handled by the role its message is for.
    fn on_request(&mut self, request: InboundRequest<Vec<u8>, Vec<u8>>) {
        use super::wire::Request;
        let InboundRequest {
            peer,
            request,
            reply,
        } = request;
        if reply.is_closed() {
            // The event loop gave up on it (counted there as `no_reply`), and the sender
            // counts it as undelivered: a bid it thinks lost must not be booked.
            tracing::debug!(%peer, "market request skipped: its answer is no longer awaited");
            return;
        }
        let result = match Request::decode(&request) {
            Err(refusal) => {
                self.metrics.refused("request", refusal.label());
                Err(refusal)
            }
            Ok(Request::Bid(bytes)) => self.on_bid(peer, &bytes),
            Ok(Request::Award(bytes)) => self.on_award(peer, &bytes),
            Ok(Request::Result(bytes)) => self.on_result(peer, &bytes),
        };
        if let Err(refusal) = result
            && refusal.is_fault()
        {
            self.penalise(peer);
        }
        let _ = reply.send(super::wire::encode_response(result));
    }
}

impl From<crate::actor::Stopped> for MarketError {
    fn from(_: crate::actor::Stopped) -> Self {
        Self::Stopped
    }
}
