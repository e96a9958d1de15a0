//! The market actor: one task that owns the auctions this node runs, the bids it made, the
//! reputation table and the market metrics. Handles ([`MarketService`]) talk to it through a
//! bounded command channel; the swarm routes gossip and requests to its inboxes. Every slow
//! step (sending, fetching, executing, verifying, persisting) runs as a job in a `JoinSet`
//! whose result comes back to the actor, so the actor itself never waits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use lru::LruCache;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::auction::{AuctionBook, verify_award, weight_for};
use super::kinds::{Computed, Executor, Input, Matrix, freivalds, pow_verify};
use super::metrics::MarketMetrics;
use super::reputation::{Record, Reputation};
use super::view::{AttemptView, BidView, PeerReputation, TaskPage, TaskRequest, TaskView};
use super::wire::{
    self, AUCTIONS_TOPIC, Announcement, AuctionId, AuctionType, Award, Bid, NEUTRAL_WEIGHT, Output,
    RESULTS_TOPIC, Refusal, Request, Signed, TaskResult, TaskSpec, now_ms, open, sign,
};
use super::{MarketConfig, MarketError};
use crate::content::ContentService;
use crate::ledger::{Ledger, Write};
use crate::p2p::{GossipMessage, InboundRequest, Market, MarketInbox, P2pHandle, Verdict};
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
/// How long after the bid deadline a bid's capacity stays reserved awaiting an award.
const AWARD_GRACE: Duration = Duration::from_secs(5);
/// Open bids a provider may have per worker. A bid reserves nothing until it wins, and most
/// bids lose; a provider with a free worker bids, and a win beyond its free workers waits for
/// one (within the task's time limit).
const BIDS_PER_WORKER: usize = 4;
/// Most tries to deliver a task result, and the pause after the first failed one (growing).
const RESULT_SENDS: u32 = 3;
const RESULT_RETRY_AFTER: Duration = Duration::from_millis(500);
/// How often reputation is written to the ledger when it changed.
const PERSIST_EVERY: Duration = Duration::from_secs(1);

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

enum Command {
    Submit(TaskRequest, oneshot::Sender<Result<AuctionId, MarketError>>),
    Task(AuctionId, oneshot::Sender<Option<TaskView>>),
    Tasks(usize, usize, oneshot::Sender<TaskPage>),
    Reputation(oneshot::Sender<Vec<PeerReputation>>),
    Observed(AuctionKey, oneshot::Sender<Option<Observed>>),
}

/// The handle to the market: submit tasks, read them, read reputation. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MarketService {
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("market command")
    }
}

impl MarketService {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MarketError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| MarketError::Stopped)?;
        rx.await.map_err(|_| MarketError::Stopped)
    }

    /// Submits a task; returns its id once its first auction is being prepared.
    pub async fn submit(&self, request: TaskRequest) -> Result<AuctionId, MarketError> {
        request.validate().map_err(MarketError::Invalid)?;
        self.ask(|tx| Command::Submit(request, tx)).await?
    }

    /// A task of this node, with its timeline.
    pub async fn task(&self, id: AuctionId) -> Result<Option<TaskView>, MarketError> {
        self.ask(|tx| Command::Task(id, tx)).await
    }

    /// Tasks of this node, newest first.
    pub async fn tasks(&self, offset: usize, limit: usize) -> Result<TaskPage, MarketError> {
        self.ask(|tx| Command::Tasks(offset, limit, tx)).await
    }

    /// This node's reputation records, most recently updated first.
    pub async fn reputation(&self) -> Result<Vec<PeerReputation>, MarketError> {
        self.ask(Command::Reputation).await
    }

    /// The winner and price this node derived for `requester`'s auction, from its own
    /// records (as requester) or from the verified result it received (as observer).
    pub async fn observed(
        &self,
        requester: PeerId,
        auction: AuctionId,
    ) -> Result<Option<Observed>, MarketError> {
        self.ask(|tx| Command::Observed((requester, auction), tx))
            .await
    }
}

/// What the requester is waiting for in an auction.
enum Phase {
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

/// An auction this node runs.
struct Running {
    task: AuctionId,
    /// The announcement as signed and published, embedded byte for byte in the award.
    signed: Signed<Announcement>,
    book: AuctionBook,
    announced_at: Instant,
    phase: Phase,
}

/// A task of this node.
struct Task {
    id: AuctionId,
    kind: &'static str,
    spec: TaskSpec,
    auction_type: AuctionType,
    max_price: u64,
    weighted: bool,
    status: &'static str,
    winner: Option<PeerId>,
    price: Option<u64>,
    verification: Option<&'static str>,
    submitted_ms: u64,
    finished_ms: Option<u64>,
    attempts: Vec<AttemptView>,
    timeline: Vec<(u64, String)>,
    excluded: HashSet<PeerId>,
}

impl Task {
    fn log(&mut self, event: String) {
        self.timeline.push((now_ms(), event));
    }

    fn view(&self) -> TaskView {
        TaskView {
            id: self.id.to_string(),
            kind: self.kind.to_owned(),
            auction_type: self.auction_type,
            max_price: self.max_price,
            status: self.status.to_owned(),
            winner: self.winner.map(|p| p.to_string()),
            price: self.price,
            verification: self.verification.map(str::to_owned),
            submitted_ms: self.submitted_ms,
            finished_ms: self.finished_ms,
            attempts: self.attempts.clone(),
            timeline: self.timeline.clone(),
        }
    }

    fn attempt(&mut self, auction: AuctionId) -> Option<&mut AttemptView> {
        let id = auction.to_string();
        self.attempts.iter_mut().rev().find(|a| a.auction_id == id)
    }
}

/// A bid this node made and may be awarded.
struct PendingBid {
    bid: Signed<Bid>,
    announcement: Signed<Announcement>,
}

enum Timer {
    BidDeadline(AuctionId),
    ResultDeadline(AuctionId),
    BidExpiry(AuctionKey),
    Unban(PeerId),
}

/// What a job reports back to the actor.
enum Job {
    Timer(Timer),
    Prepared {
        task: AuctionId,
        result: Result<TaskSpec, MarketError>,
    },
    AwardDelivered {
        auction: AuctionId,
        task: AuctionId,
        award: Bytes,
        /// The award was sent after the winner's bid expired (the winner is not to blame).
        late: bool,
        result: Result<(), (&'static str, String)>,
    },
    Executed {
        auction: AuctionId,
        kind: &'static str,
        took: Option<Duration>,
        result: Result<(), String>,
    },
    Verified {
        auction: AuctionId,
        result: Result<(), Failure>,
    },
    BidSent {
        auction: AuctionKey,
        auction_type: &'static str,
        delivered: bool,
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
    commands: mpsc::Receiver<Command>,
    requests: mpsc::Receiver<InboundRequest<Vec<u8>, Vec<u8>>>,
    gossip: mpsc::Receiver<GossipMessage>,
    jobs: JoinSet<Job>,
    tasks: HashMap<AuctionId, Task>,
    order: VecDeque<AuctionId>,
    running: HashMap<AuctionId, Running>,
    pending_bids: HashMap<AuctionKey, PendingBid>,
    executing: usize,
    observed: LruCache<AuctionKey, Observed>,
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
        let legacy = deps.data_dir.join(REPUTATION_FILE);
        let (stored, legacy_file) = match deps.reputation {
            Some(bytes) => (Some(bytes), None),
            None => match std::fs::read(&legacy) {
                Ok(bytes) => (Some(bytes), Some(legacy)),
                Err(_) => (None, None),
            },
        };
        let reputation = match stored {
            Some(bytes) => {
                Reputation::from_json(config.reputation.clone(), &bytes).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "ignoring unreadable reputation records");
                    Reputation::new(config.reputation.clone())
                })
            }
            None => Reputation::new(config.reputation.clone()),
        };
        let dirty = legacy_file.is_some();
        let actor = MarketActor {
            local: key.public().to_peer_id(),
            key,
            p2p,
            content,
            workers: Arc::new(Semaphore::new(config.provider.capacity.max(1))),
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
            observed: LruCache::new(std::num::NonZeroUsize::new(OBSERVED).expect("nonzero")),
            reputation,
            legacy_file,
            ledger: deps.ledger,
            payments: deps.payments,
            convictions: deps.convictions,
            dirty,
        };
        (Self { commands: tx }, actor, req_tx, gossip_tx)
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
        let mut persist = tokio::time::interval(PERSIST_EVERY);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some(request) = self.requests.recv() => self.on_request(request),
                Some(cheater) = self.convictions.recv() => {
                    let update = self.reputation.misbehaved(cheater, now_ms());
                    self.peer_updated(cheater, &update.record);
                    if update.banned {
                        self.ban(cheater, self.config.reputation.ban_secs * 1000);
                    }
                }
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

    /// Scores decay with time: the gauges of the tracked peers follow.
    fn refresh_peer_gauges(&mut self) {
        let now = now_ms();
        for peer in self.metrics.tracked_peers() {
            if let Some(record) = self.reputation.record(&peer, now) {
                self.metrics.refresh_score(peer, record.score);
            }
        }
    }

    fn persist(&mut self) {
        self.dirty = false;
        let bytes = self.reputation.to_json();
        let ledger = self.ledger.clone();
        let legacy = self.legacy_file.take();
        self.jobs.spawn(async move {
            match ledger.commit(vec![Write::Reputation(bytes)]).await {
                Err(e) => tracing::warn!(error = %e, "cannot save reputation"),
                Ok(()) => {
                    if let Some(path) = legacy {
                        // Imported into the ledger: the old file has served its purpose.
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            Job::Done
        });
    }

    fn block_banned_peers(&mut self) {
        let now = now_ms();
        for (peer, record) in self.reputation.snapshot(now) {
            if record.banned_until_ms > now {
                self.ban(peer, record.banned_until_ms - now);
            }
        }
    }

    fn ban(&mut self, peer: PeerId, for_ms: u64) {
        tracing::warn!(%peer, secs = for_ms / 1000, "banning peer for bad reputation");
        let p2p = self.p2p.clone();
        self.jobs.spawn(async move {
            let _ = p2p.block(peer).await;
            Job::Done
        });
        self.jobs
            .spawn(after(Duration::from_millis(for_ms), Timer::Unban(peer)));
    }

    // ----- commands -----

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Submit(request, reply) => {
                let _ = reply.send(self.submit(request));
            }
            Command::Task(id, reply) => {
                let _ = reply.send(self.tasks.get(&id).map(Task::view));
            }
            Command::Tasks(offset, limit, reply) => {
                let tasks = self
                    .order
                    .iter()
                    .rev()
                    .skip(offset)
                    .take(limit)
                    .filter_map(|id| self.tasks.get(id).map(Task::view))
                    .collect();
                let _ = reply.send(TaskPage {
                    total: self.order.len(),
                    offset,
                    tasks,
                });
            }
            Command::Reputation(reply) => {
                let now = now_ms();
                let peers = self
                    .reputation
                    .snapshot(now)
                    .into_iter()
                    .map(|(peer, r)| PeerReputation {
                        peer_id: peer.to_string(),
                        score: r.score,
                        executed: r.executed,
                        successes: r.successes,
                        failures: r.failures,
                        success_rate: r.success_rate(),
                        mean_duration_secs: r.mean_duration_secs(),
                        mean_cost: r.mean_cost(),
                        banned: r.banned_until_ms > now,
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Observed(key, reply) => {
                let _ = reply.send(self.observed.peek(&key).copied());
            }
        }
    }

    fn in_progress(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| t.status == "running")
            .count()
    }

    fn submit(&mut self, request: TaskRequest) -> Result<AuctionId, MarketError> {
        if self.in_progress() >= self.config.max_running_tasks {
            return Err(MarketError::Busy(self.config.max_running_tasks));
        }
        let id = AuctionId::random();
        let auction_type = request.auction_type.unwrap_or(AuctionType::SecondPrice);
        let max_price = request.max_price.unwrap_or(self.config.default_max_price);
        let weighted = request
            .reputation_weighted
            .unwrap_or(self.config.reputation_weighted);
        let kind: &'static str = if request.kind == "pow" {
            "pow"
        } else {
            "matmul"
        };
        // The spec is final once the inputs are stored; a placeholder until then.
        let placeholder = TaskSpec::Pow {
            input: Vec::new(),
            difficulty: 1,
        };
        let mut task = Task {
            id,
            kind,
            spec: placeholder,
            auction_type,
            max_price,
            weighted,
            status: "running",
            winner: None,
            price: None,
            verification: None,
            submitted_ms: now_ms(),
            finished_ms: None,
            attempts: Vec::new(),
            timeline: Vec::new(),
            excluded: HashSet::new(),
        };
        task.log(format!("submitted ({kind})"));
        self.metrics.task_submitted(kind);
        self.remember(task);
        let content = self.content.clone();
        self.jobs.spawn(async move {
            let result = prepare(request, content).await;
            Job::Prepared { task: id, result }
        });
        Ok(id)
    }

    fn remember(&mut self, task: Task) {
        let id = task.id;
        self.tasks.insert(id, task);
        self.order.push_back(id);
        while self.order.len() > self.config.max_kept_tasks {
            let Some(pos) = self
                .order
                .iter()
                .position(|id| self.tasks.get(id).is_some_and(|t| t.status != "running"))
            else {
                break;
            };
            if let Some(old) = self.order.remove(pos) {
                self.tasks.remove(&old);
            }
        }
    }

    /// Announces a new auction for `task`.
    fn announce(&mut self, task_id: AuctionId) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        let now = now_ms();
        let announcement = Announcement {
            auction_id: AuctionId::random(),
            requester: self.local,
            task: task.spec.clone(),
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
        self.metrics.auction(task.auction_type.label(), "created");
        self.running.insert(
            auction,
            Running {
                task: task_id,
                signed: signed.clone(),
                book: AuctionBook::new(announcement, task.excluded.clone()),
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

    fn publish(&mut self, topic: &'static str, data: Bytes) {
        let p2p = self.p2p.clone();
        self.jobs.spawn(async move {
            if let Err(e) = p2p.publish(topic, data.to_vec()).await {
                tracing::debug!(topic, error = %e, "market message not published");
            }
            Job::Done
        });
    }

    // ----- inbound requests -----

    fn on_request(&mut self, request: InboundRequest<Vec<u8>, Vec<u8>>) {
        let InboundRequest {
            peer,
            request,
            reply,
        } = request;
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
        let _ = reply.send(wire::encode_response(result));
    }

    /// A peer misbehaved in a way the protocol forbids: its score falls.
    fn penalise(&mut self, peer: PeerId) {
        let update = self.reputation.misbehaved(peer, now_ms());
        self.dirty = true;
        self.metrics.peer_score(peer, update.record.score);
        if update.banned {
            self.ban(peer, self.config.reputation.ban_secs * 1000);
        }
    }

    fn on_bid(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), Refusal> {
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
        let weight = weight_for(self.reputation.score(&bid.body.bidder, now));
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

    fn on_award(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), Refusal> {
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
        let job = Execution {
            key: self.key.clone(),
            p2p: self.p2p.clone(),
            content: self.content.clone(),
            executor: self.executor.clone(),
            workers: self.workers.clone(),
            announcement,
            local: self.local,
        };
        let kind = job.announcement.task.kind();
        tracing::debug!(%auction, kind, "executing awarded task");
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

    fn on_result(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), Refusal> {
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
            let check = std::panic::AssertUnwindSafe(verify(spec, output, content)).catch_unwind();
            let result = match tokio::time::timeout(limit, check).await {
                Err(_) => Err(Failure::provider("verify_timeout")),
                Ok(Err(_panic)) => Err(Failure::ours("verify_failed")),
                Ok(Ok(result)) => result,
            };
            Job::Verified { auction, result }
        });
        Ok(())
    }

    // ----- gossip -----

    fn on_gossip(&mut self, message: GossipMessage) {
        let verdict = match message.topic {
            AUCTIONS_TOPIC => self.on_announcement(&message.data),
            RESULTS_TOPIC => self.on_auction_result(&message.data),
            _ => Verdict::Reject,
        };
        let _ = message.verdict.send(verdict);
    }

    fn on_announcement(&mut self, data: &[u8]) -> Verdict {
        let announcement =
            open::<Announcement>(data).and_then(|a| a.body.check_fresh(now_ms()).map(|()| a));
        let announcement = match announcement {
            Ok(a) => a,
            Err(r) => {
                self.metrics.refused("announcement", r.label());
                return verdict(r);
            }
        };
        if announcement.body.requester != self.local {
            self.consider_bidding(announcement);
        }
        Verdict::Accept
    }

    fn on_auction_result(&mut self, data: &[u8]) -> Verdict {
        let award = open::<Award>(data)
            .and_then(|a| a.body.check_fresh(now_ms()).map(|()| a))
            .and_then(|a| verify_award(&a.body).map(|()| a));
        let award = match award {
            Ok(a) => a,
            Err(r) => {
                self.metrics.refused("award", r.label());
                return verdict(r);
            }
        };
        let key = (award.signer, award.body.auction_id());
        if self.observed.contains(&key) {
            return Verdict::Ignore;
        }
        self.record_observed(&award.body);
        // Our bid lost only if this is the result of the very auction we bid on.
        let ours = self
            .pending_bids
            .get(&key)
            .is_some_and(|p| p.announcement.bytes == award.body.announcement.bytes);
        if award.body.winner() != self.local
            && ours
            && let Some(pending) = self.pending_bids.remove(&key)
        {
            self.metrics
                .bid(pending.announcement.body.auction_type.label(), "lost");
        }
        Verdict::Accept
    }

    fn record_observed(&mut self, award: &Award) {
        self.observed.put(
            (award.announcement.body.requester, award.auction_id()),
            Observed {
                winner: award.winner(),
                price: award.price,
            },
        );
    }

    // ----- provider -----

    fn price_for(&self, task: &TaskSpec) -> u64 {
        let p = &self.config.provider;
        let units = match task {
            TaskSpec::Pow { difficulty, .. } => (1u64 << difficulty).div_ceil(1 << 16),
            TaskSpec::Matmul { n, .. } => u64::from(*n).pow(3).div_ceil(1 << 20),
        };
        let price = p
            .base_price
            .saturating_add(p.unit_price.saturating_mul(units));
        let jitter = u64::from(p.price_jitter_percent);
        if jitter == 0 {
            return price.max(1);
        }
        let percent = rand::thread_rng().gen_range(100 - jitter.min(99)..=100 + jitter);
        (price.saturating_mul(percent) / 100).max(1)
    }

    fn consider_bidding(&mut self, announcement: Signed<Announcement>) {
        let a = &announcement.body;
        let kind = a.task.kind();
        if !self.config.provider.kinds.iter().any(|k| k == kind)
            || self.pending_bids.contains_key(&(a.requester, a.auction_id))
            || self.executing >= self.config.provider.capacity
            || self.pending_bids.len() >= self.config.provider.capacity * BIDS_PER_WORKER
            // One requester may hold at most half of them, so a requester flooding
            // announcements cannot take every bid slot.
            || self
                .pending_bids
                .values()
                .filter(|p| p.announcement.body.requester == a.requester)
                .count()
                >= self.config.provider.capacity * BIDS_PER_WORKER / 2
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
            match delivered {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    tracing::debug!(auction = %auction.1, reason, "bid refused");
                }
                Err(e) => {
                    tracing::debug!(auction = %auction.1, error = e, "bid not delivered");
                    return Job::BidSent {
                        auction,
                        auction_type,
                        delivered: false,
                    };
                }
            }
            Job::BidSent {
                auction,
                auction_type,
                delivered: true,
            }
        });
        self.jobs.spawn(after(reserve, Timer::BidExpiry(auction)));
    }

    // ----- jobs -----

    fn on_job(&mut self, job: Job) {
        match job {
            Job::Done => {}
            Job::BidSent {
                auction,
                auction_type,
                delivered,
            } => {
                if delivered {
                    // A refused bid keeps its slot until it expires: a requester that refuses
                    // every bid at once must not make us bid without pause.
                    self.metrics.bid(auction_type, "sent");
                } else if self.pending_bids.remove(&auction).is_some() {
                    // Never reached the requester: free the capacity it reserved.
                    self.metrics.bid(auction_type, "undelivered");
                }
            }
            Job::Timer(Timer::BidDeadline(auction)) => self.close_auction(auction),
            Job::Timer(Timer::ResultDeadline(auction)) => {
                if matches!(
                    self.running.get(&auction).map(|r| &r.phase),
                    Some(Phase::Awarded { .. })
                ) {
                    self.attempt_failed(auction, "timeout", true);
                }
            }
            Job::Timer(Timer::BidExpiry(auction)) => {
                if let Some(p) = self.pending_bids.remove(&auction) {
                    // No award and no result seen: the bid simply lapsed.
                    self.metrics
                        .bid(p.announcement.body.auction_type.label(), "lost");
                }
            }
            Job::Timer(Timer::Unban(peer)) => {
                let p2p = self.p2p.clone();
                self.jobs.spawn(async move {
                    let _ = p2p.unblock(peer).await;
                    Job::Done
                });
            }
            Job::Prepared { task, result } => match result {
                Ok(spec) => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.spec = spec;
                    }
                    self.announce(task);
                }
                Err(e) => {
                    tracing::warn!(task = %task, error = %e, "cannot prepare task");
                    let kind = self.tasks.get(&task).map_or("matmul", |t| t.kind);
                    self.metrics.task_error(kind, "input_failed");
                    self.finish(task, "failed", Some("input_failed"), None);
                }
            },
            Job::AwardDelivered {
                auction,
                task,
                award,
                late,
                result,
            } => {
                // Losers and observers learn the outcome once the winner took the award.
                if result.is_ok() {
                    self.publish(RESULTS_TOPIC, award);
                }
                self.on_award_delivered(auction, task, result, late);
            }
            Job::Executed {
                auction,
                kind,
                took,
                result,
            } => {
                self.executing -= 1;
                if let Some(took) = took {
                    self.metrics.task_executed(kind, took.as_secs_f64());
                }
                if let Err(e) = result {
                    tracing::info!(%auction, error = e, "task execution failed");
                }
            }
            Job::Verified { auction, result } => match result {
                Ok(()) => self.attempt_succeeded(auction),
                Err(f) => self.attempt_failed(auction, f.error, f.blame),
            },
        }
    }

    fn on_award_delivered(
        &mut self,
        auction: AuctionId,
        task: AuctionId,
        result: Result<(), (&'static str, String)>,
        late: bool,
    ) {
        match result {
            Ok(()) => {
                // The result may already be in: log into the task, not the auction.
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.log(format!("award accepted (auction {auction})"));
                }
            }
            Err((error, detail)) => {
                if matches!(
                    self.running.get(&auction).map(|r| &r.phase),
                    Some(Phase::Awarded { .. })
                ) {
                    tracing::debug!(%auction, error, detail, "award not accepted");
                    // A winner that refused an award sent before its bid expired is to blame
                    // (what it answers does not decide that). One we could not reach is left
                    // out of the next auction but not blamed: the network may be at fault.
                    let blame = error == "award_refused" && !late;
                    self.attempt_failed(auction, error, blame);
                }
            }
        }
    }

    fn close_auction(&mut self, auction: AuctionId) {
        let Some(running) = self.running.get_mut(&auction) else {
            return;
        };
        let announcement = running.book.announcement().clone();
        let auction_type = announcement.auction_type.label();
        let Some(selection) = running.book.select() else {
            self.metrics.auction(auction_type, "failed");
            self.attempt_failed(auction, "no_bids", false);
            return;
        };
        self.metrics
            .auction_closed_after(running.announced_at.elapsed().as_secs_f64());
        self.metrics.auction(auction_type, "closed");
        let winner = selection.winner.bid.body.bidder;
        let award = Award {
            announcement: running.signed.clone(),
            winner_bid: selection.winner.bid.clone(),
            runner_up_bid: selection.runner_up.as_ref().map(|e| e.bid.clone()),
            price: selection.price,
            winner_weight: selection.winner.weight,
            runner_up_weight: selection
                .runner_up
                .as_ref()
                .map_or(NEUTRAL_WEIGHT, |e| e.weight),
        };
        running.phase = Phase::Awarded {
            winner,
            price: selection.price,
            awarded_at: Instant::now(),
        };
        let task = running.task;
        let signed = sign(&self.key, award);
        self.record_observed(&signed.body);
        if let Some(t) = self.tasks.get_mut(&task) {
            if let Some(a) = t.attempt(auction) {
                a.winner = Some(winner.to_string());
                a.price = Some(selection.price);
            }
            t.log(format!(
                "auction {auction} closed: {winner} wins at {}",
                selection.price
            ));
        }
        // The award goes to the winner first, then to everyone as the auction's result (so
        // the winner's copy does not queue behind the gossip).
        let p2p = self.p2p.clone();
        let award = signed.bytes.clone();
        let winner_expires_ms = selection.winner.bid.body.expires_at_ms;
        let frame = Request::Award(signed.bytes).encode();
        let limit = Duration::from_millis(self.config.award_timeout_ms);
        // The price is locked in escrow before the award goes out: the winner checks it
        // before executing. It may be refunded once the task's time is up.
        let payments = self.payments.clone();
        let escrow = escrow_id(&self.local, auction);
        let price = selection.price;
        let kind = announcement.task.kind();
        let expires_at_ms = now_ms() + self.config.escrow_ttl_ms(announcement.execution_timeout_ms);
        self.jobs.spawn(async move {
            // Locking and delivering share the award's time limit, so the result deadline
            // (award + execution time) leaves the winner its whole execution time.
            let started = tokio::time::Instant::now();
            let locked = tokio::time::timeout(
                limit,
                payments.lock(winner, escrow, price, expires_at_ms, kind),
            )
            .await;
            let refused = match locked {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("the lock was not countersigned in time".to_owned()),
            };
            if let Some(reason) = refused {
                return Job::AwardDelivered {
                    auction,
                    task,
                    award,
                    late: false,
                    result: Err(("escrow_failed", reason)),
                };
            }
            let limit = limit.saturating_sub(started.elapsed());
            let late = now_ms() > winner_expires_ms;
            let deliver = async {
                // The bid's connection may have closed since: find the winner again.
                p2p.connect(winner)
                    .await
                    .map_err(crate::p2p::RequestError::Failed)?;
                p2p.request::<Market>(winner, frame).await
            };
            let sent = tokio::time::timeout(limit, deliver).await;
            let result = match sent {
                Err(_) => Err(("unreachable", "no answer in time".to_owned())),
                Ok(Err(e)) => Err(("unreachable", e.to_string())),
                Ok(Ok(bytes)) => match wire::decode_response(&bytes) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(reason)) => Err(("award_refused", reason)),
                    Err(e) => Err(("award_refused", e.to_string())),
                },
            };
            Job::AwardDelivered {
                auction,
                task,
                award,
                late,
                result,
            }
        });
        let deadline = Duration::from_millis(
            u64::from(self.config.execution_timeout_ms) + self.config.award_timeout_ms,
        );
        self.jobs
            .spawn(after(deadline, Timer::ResultDeadline(auction)));
    }

    fn attempt_succeeded(&mut self, auction: AuctionId) {
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
        let auction_type = running.book.announcement().auction_type.label();
        self.metrics.auction(auction_type, "completed");
        self.payments
            .release(winner, escrow_id(&self.local, auction));
        let took = awarded_at.elapsed().as_millis() as u64;
        let update = self.reputation.success(winner, took, price, now_ms());
        self.peer_updated(winner, &update.record);
        if let Some(t) = self.tasks.get_mut(&running.task) {
            if let Some(a) = t.attempt(auction) {
                a.outcome = Some("success".into());
            }
            t.winner = Some(winner);
            t.price = Some(price);
            t.verification = Some("verified");
            t.log(format!("result verified; paid {price} to {winner}"));
        }
        self.finish(running.task, "success", None, Some(price));
    }

    /// An attempt failed with `error`; the winner (if any, and if `blame`) loses reputation
    /// and is excluded from the task's next auction.
    fn attempt_failed(&mut self, auction: AuctionId, error: &'static str, blame: bool) {
        let Some(running) = self.running.remove(&auction) else {
            return;
        };
        let kind = running.book.announcement().task.kind();
        self.metrics.task_error(kind, error);
        let winner = match running.phase {
            Phase::Bidding => None,
            Phase::Awarded {
                winner, awarded_at, ..
            }
            | Phase::Verifying {
                winner, awarded_at, ..
            } => {
                self.metrics
                    .auction(running.book.announcement().auction_type.label(), "failed");
                Some((winner, awarded_at))
            }
        };
        if let Some((winner, _)) = winner {
            // Whatever was locked for this attempt goes back (once the lock expires).
            let reason = if error == "timeout" {
                "timeout"
            } else {
                "failed"
            };
            self.payments
                .refund(winner, escrow_id(&self.local, auction), reason);
        }
        if blame && let Some((winner, awarded_at)) = winner {
            let took = awarded_at.elapsed().as_millis() as u64;
            let update = self.reputation.failure(winner, took, now_ms());
            self.peer_updated(winner, &update.record);
            if update.banned {
                self.ban(winner, self.config.reputation.ban_secs * 1000);
            }
        }
        let Some(t) = self.tasks.get_mut(&running.task) else {
            return;
        };
        if let Some(a) = t.attempt(auction) {
            a.outcome = Some(error.into());
        }
        // The next auction goes on without the winner that failed this one, blamed or not.
        if let Some((winner, _)) = winner {
            t.excluded.insert(winner);
        }
        t.log(format!("auction {auction} failed: {error}"));
        if error == "wrong_result" {
            t.verification = Some("wrong_result");
        }
        // Our own inputs failing would fail every retry too.
        if error != "input_failed" && t.attempts.len() as u32 <= self.config.max_retries {
            t.log("re-auctioning".into());
            self.announce(running.task);
        } else {
            let status = if error == "timeout" {
                "timeout"
            } else {
                "failed"
            };
            self.finish(running.task, status, Some(error), None);
        }
    }

    fn peer_updated(&mut self, peer: PeerId, record: &Record) {
        self.dirty = true;
        self.metrics.peer_record(peer, record);
    }

    fn finish(
        &mut self,
        task: AuctionId,
        status: &'static str,
        error: Option<&'static str>,
        cost: Option<u64>,
    ) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        t.status = status;
        t.finished_ms = Some(now_ms());
        if let Some(e) = error {
            t.log(format!("task {status}: {e}"));
        }
        self.metrics.task_completed(t.kind, status, cost);
    }
}

/// Builds the task's spec: stores matmul inputs as content.
async fn prepare(request: TaskRequest, content: ContentService) -> Result<TaskSpec, MarketError> {
    match request.kind.as_str() {
        "pow" => {
            let input = match request.input {
                Some(text) => text.into_bytes(),
                None => rand::random::<[u8; 16]>().to_vec(),
            };
            Ok(TaskSpec::Pow {
                input,
                difficulty: request.difficulty.unwrap_or(1),
            })
        }
        _ => {
            let n = request.n.unwrap_or(1);
            let (a, b) = tokio::task::spawn_blocking(move || {
                let mut rng = rand::thread_rng();
                let a = Matrix::random(n as usize, &mut rng).to_bytes();
                let b = Matrix::random(n as usize, &mut rng).to_bytes();
                (a, b)
            })
            .await
            .map_err(|e| MarketError::Content(e.to_string()))?;
            let a = content
                .put(Bytes::from(a))
                .await
                .map_err(|e| MarketError::Content(e.to_string()))?;
            let b = content
                .put(Bytes::from(b))
                .await
                .map_err(|e| MarketError::Content(e.to_string()))?;
            Ok(TaskSpec::Matmul { n, a, b })
        }
    }
}

/// Why an attempt failed, and whether the provider is to blame.
#[derive(Debug, Clone, Copy)]
struct Failure {
    error: &'static str,
    blame: bool,
}

impl Failure {
    fn provider(error: &'static str) -> Self {
        Self { error, blame: true }
    }

    fn ours(error: &'static str) -> Self {
        Self {
            error,
            blame: false,
        }
    }
}

/// Checks a result against the task: one hash for pow, Freivalds for matmul. Problems with
/// our own inputs are not the provider's fault.
async fn verify(spec: TaskSpec, output: Output, content: ContentService) -> Result<(), Failure> {
    match (spec, output) {
        (TaskSpec::Pow { input, difficulty }, Output::PowNonce(nonce)) => {
            if pow_verify(&input, difficulty, nonce) {
                Ok(())
            } else {
                Err(Failure::provider("wrong_result"))
            }
        }
        (TaskSpec::Matmul { n, a, b }, Output::MatmulProduct(c)) => {
            let (a, b) = futures::try_join!(content.get(a, true), content.get(b, true))
                .map_err(|_| Failure::ours("input_failed"))?;
            let c = content.get(c, true).await.map_err(|e| match e {
                // Our own content service being overloaded or stopping is not the
                // provider's doing.
                crate::content::ContentError::Busy | crate::content::ContentError::Stopped => {
                    Failure::ours("verify_failed")
                }
                _ => Failure::provider("fetch_failed"),
            })?;
            let n = n as usize;
            tokio::task::spawn_blocking(move || {
                let parse = |bytes: &Bytes| Matrix::from_bytes(n, bytes);
                let (Ok(a), Ok(b)) = (parse(&a), parse(&b)) else {
                    return Err(Failure::ours("input_failed"));
                };
                let Ok(c) = parse(&c) else {
                    return Err(Failure::provider("wrong_result"));
                };
                if freivalds(&a, &b, &c, &mut rand::thread_rng()) {
                    Ok(())
                } else {
                    Err(Failure::provider("wrong_result"))
                }
            })
            .await
            .unwrap_or(Err(Failure::ours("verify_failed")))
        }
        _ => Err(Failure::provider("wrong_result")),
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
        let input = match &a.task {
            TaskSpec::Pow { input, difficulty } => Input::Pow {
                input: input.clone(),
                difficulty: *difficulty,
            },
            TaskSpec::Matmul { n, a: ma, b: mb } => {
                let fetch = async {
                    futures::try_join!(self.content.get(*ma, true), self.content.get(*mb, true))
                };
                let (ba, bb) = tokio::time::timeout(limit, fetch)
                    .await
                    .map_err(|_| "fetching the inputs timed out".to_owned())?
                    .map_err(|e| format!("fetching the inputs: {e}"))?;
                let n = *n as usize;
                Input::Matmul {
                    a: Matrix::from_bytes(n, &ba).map_err(|e| e.to_string())?,
                    b: Matrix::from_bytes(n, &bb).map_err(|e| e.to_string())?,
                }
            }
        };
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
        let output = match computed {
            Computed::Nonce(n) => Output::PowNonce(n),
            Computed::Product(m) => Output::MatmulProduct(
                self.content
                    .put(Bytes::from(m.to_bytes()))
                    .await
                    .map_err(|e| format!("storing the product: {e}"))?,
            ),
        };
        let result = sign(
            &self.key,
            TaskResult {
                auction_id: a.auction_id,
                provider: self.local,
                output,
                execution_ms: took.as_millis() as u64,
            },
        );
        let frame = Request::Result(result.bytes).encode();
        // A transient failure must not cost the task: retry until the deadline.
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sent = async {
                self.p2p
                    .connect(a.requester)
                    .await
                    .map_err(|e| format!("requester unreachable: {e}"))?;
                self.p2p
                    .request::<Market>(a.requester, frame.clone())
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
                    tracing::debug!(auction = %a.auction_id, error = e, "result not delivered; retrying");
                    tokio::time::sleep(RESULT_RETRY_AFTER * attempt).await;
                }
            }
        }
    }
}
