//! The payments actor: one task that owns this node's channels, its wallet and the payment
//! metrics. Handles ([`PaymentsService`]) talk to it through a bounded command channel; the
//! swarm routes `/zerostate/channel/1` requests and the disputes topic to its inboxes.
//!
//! **Persist before reveal or acknowledge.** The actor handles whatever is ready, then
//! commits every changed channel and the wallet to the ledger in one durable transaction,
//! and only then sends what those changes produced: proposals, countersignatures, answers
//! to API callers, dispute evidence. A node killed at any instant therefore restarts with
//! every state it revealed; a proposal it signed but had not delivered is still pending in
//! the ledger and is re-sent byte for byte.
//!
//! Sending waits for the network, so it runs as a job whose answer comes back to the actor.
//! One proposal per channel is in flight at a time; operations queue behind it (bounded),
//! and queued payments are merged into one state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use lru::LruCache;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::channel::{Channel, CloseAnswer, Op, Received, Settlement, Status};
use super::escrow_book::EscrowBook;
use super::metrics::PaymentMetrics;
use super::record::{self, Wallet};
use super::view::{ChannelPage, ChannelView, WalletView};
use super::wire::{
    ChannelError, ChannelId, DISPUTES_TOPIC, EscrowId, Evidence, Request, Response, Side, State,
};
use super::{PaymentsConfig, PaymentsError};
use crate::clock::now_ms;
use crate::ledger::{Ledger, LedgerError, Loaded, Write};
use crate::p2p::{
    FrameInbox, GossipMessage, InboundRequest, P2pHandle, PaymentChannel, RequestError, Verdict,
};

/// Capacity of the command channel.
const COMMAND_QUEUE: usize = 256;
/// Capacity of the inboxes for requests and gossip.
const INBOX: usize = 256;
/// Most operations queued on one channel.
const MAX_QUEUED: usize = 1024;
/// Most inputs handled before one commit.
const MAX_BATCH: usize = 256;
/// How often timers are checked.
const TICK: Duration = Duration::from_millis(200);
/// How long one send waits for its answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Settled channels kept in memory for the API (the ledger keeps them all).
const KEPT_SETTLED: usize = 1024;
/// Convictions remembered, so repeated evidence counts once.
const CONVICTIONS: usize = 4096;
/// How long an unanswered open waits before its deposit goes back to the wallet.
const OPEN_GIVE_UP: Duration = Duration::from_secs(30);

type ViewReply = oneshot::Sender<Result<ChannelView, PaymentsError>>;
type LockReply = oneshot::Sender<Result<(), PaymentsError>>;

enum Command {
    Wallet(oneshot::Sender<WalletView>),
    Channels(usize, usize, oneshot::Sender<ChannelPage>),
    Channel(ChannelId, oneshot::Sender<Option<ChannelView>>),
    Open {
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
        reply: ViewReply,
    },
    Pay {
        id: ChannelId,
        amount: u64,
        reply: ViewReply,
    },
    Close {
        id: ChannelId,
        unilateral: bool,
        reply: ViewReply,
    },
    Lock {
        peer: PeerId,
        escrow: EscrowId,
        amount: u64,
        expires_at_ms: u64,
        kind: &'static str,
        reply: LockReply,
    },
    Release {
        peer: PeerId,
        escrow: EscrowId,
    },
    Refund {
        peer: PeerId,
        escrow: EscrowId,
        reason: &'static str,
    },
}

/// The handle to the payments service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PaymentsService {
    commands: mpsc::Sender<Command>,
    escrows: EscrowBook,
    ack_timeout: Duration,
}

impl PaymentsService {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, PaymentsError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| PaymentsError::Stopped)?;
        rx.await.map_err(|_| PaymentsError::Stopped)
    }

    /// Waits for a countersigned state, at most the configured ack timeout.
    async fn ask_acked<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, PaymentsError>>) -> Command,
    ) -> Result<T, PaymentsError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| PaymentsError::Stopped)?;
        match tokio::time::timeout(self.ack_timeout, rx).await {
            Err(_) => Err(PaymentsError::Pending),
            Ok(Err(_)) => Err(PaymentsError::Stopped),
            Ok(Ok(result)) => result,
        }
    }

    /// The wallet.
    pub async fn wallet(&self) -> Result<WalletView, PaymentsError> {
        self.ask(Command::Wallet).await
    }

    /// A page of channels, newest first.
    pub async fn channels(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<ChannelPage, PaymentsError> {
        self.ask(|tx| Command::Channels(offset, limit, tx)).await
    }

    /// One channel.
    pub async fn channel(&self, id: ChannelId) -> Result<Option<ChannelView>, PaymentsError> {
        self.ask(|tx| Command::Channel(id, tx)).await
    }

    /// Opens a channel to `peer` with our `deposit` and asking `their_deposit` of it;
    /// returns once the peer countersigned state 0.
    pub async fn open(
        &self,
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
    ) -> Result<ChannelView, PaymentsError> {
        self.ask_acked(|reply| Command::Open {
            peer,
            deposit,
            their_deposit,
            reply,
        })
        .await
    }

    /// Pays `amount` to the channel's other party; returns once the peer countersigned.
    pub async fn pay(&self, id: ChannelId, amount: u64) -> Result<ChannelView, PaymentsError> {
        self.ask_acked(|reply| Command::Pay { id, amount, reply })
            .await
    }

    /// Closes a channel: cooperatively (a final state both sign; returns once settled) or
    /// unilaterally (returns once the close is sent; it settles after the challenge window).
    pub async fn close(
        &self,
        id: ChannelId,
        unilateral: bool,
    ) -> Result<ChannelView, PaymentsError> {
        self.ask_acked(|reply| Command::Close {
            id,
            unilateral,
            reply,
        })
        .await
    }

    /// Locks `amount` for a task in our channel with `peer` (opening one if needed); returns
    /// once the peer countersigned the lock.
    pub async fn lock(
        &self,
        peer: PeerId,
        escrow: EscrowId,
        amount: u64,
        expires_at_ms: u64,
        kind: &'static str,
    ) -> Result<(), PaymentsError> {
        self.ask_acked(|reply| Command::Lock {
            peer,
            escrow,
            amount,
            expires_at_ms,
            kind,
            reply,
        })
        .await
    }

    /// Releases an escrow we locked to `peer` (its task was verified). Returns at once; the
    /// release is persisted and sent, and re-sent until countersigned.
    pub fn release(&self, peer: PeerId, escrow: EscrowId) {
        // Never dropped: a full queue is waited on (by a task, so the caller is not).
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let _ = commands.send(Command::Release { peer, escrow }).await;
        });
    }

    /// Refunds an escrow we locked to `peer` (its task failed), as soon as the lock expires.
    pub fn refund(&self, peer: PeerId, escrow: EscrowId, reason: &'static str) {
        if self
            .commands
            .try_send(Command::Refund {
                peer,
                escrow,
                reason,
            })
            .is_err()
        {
            tracing::warn!(%escrow, "payments queue full: refund deferred until the lock expires");
        }
    }

    /// The escrows peers locked for us.
    pub fn escrows(&self) -> &EscrowBook {
        &self.escrows
    }
}

enum Waiter {
    View(ViewReply),
    Lock(LockReply),
}

impl Waiter {
    fn fail(self, e: PaymentsError) {
        match self {
            Self::View(r) => {
                let _ = r.send(Err(e));
            }
            Self::Lock(r) => {
                let _ = r.send(Err(e));
            }
        }
    }
}

struct Queued {
    op: Op,
    waiters: Vec<Waiter>,
}

struct Entry {
    channel: Channel,
    queue: VecDeque<Queued>,
    /// Waiting for the pending proposal.
    waiting: Vec<Waiter>,
    in_flight: bool,
    retry_at: Option<Instant>,
    attempts: u32,
    proposed_at: Instant,
    last_heard: Instant,
    close_requested: Option<Instant>,
    refunds_due: Vec<(EscrowId, &'static str)>,
    kinds: HashMap<EscrowId, &'static str>,
    refund_reasons: HashMap<EscrowId, &'static str>,
    closing_sent: bool,
    /// Answers in a row that made no progress (refusals to retry, transport errors).
    stalls: u32,
}

impl Entry {
    fn new(channel: Channel) -> Self {
        Self {
            channel,
            queue: VecDeque::new(),
            waiting: Vec::new(),
            in_flight: false,
            retry_at: Some(Instant::now()),
            attempts: 0,
            proposed_at: Instant::now(),
            last_heard: Instant::now(),
            close_requested: None,
            refunds_due: Vec::new(),
            kinds: HashMap::new(),
            refund_reasons: HashMap::new(),
            closing_sent: false,
            stalls: 0,
        }
    }

    /// The pause before retrying after `stalls` answers without progress: 20 ms doubling to
    /// 5 s, with jitter, so two parties proposing at once do not collide again.
    fn backoff(&self) -> Duration {
        let base = 20u64 << self.stalls.min(8);
        let jitter = rand::thread_rng().gen_range(0..=base / 2);
        Duration::from_millis((base + jitter).min(5_000))
    }

    /// Whether `escrow` is to be released: decided (a persisted intent) or queued.
    fn releasing(&self, escrow: &EscrowId) -> bool {
        self.channel.release_intents.contains(escrow) || self.releasing_queued(escrow)
    }

    /// Whether a release of `escrow` is queued or pending.
    fn releasing_queued(&self, escrow: &EscrowId) -> bool {
        self.queue
            .iter()
            .any(|q| matches!(&q.op, Op::Release(r) if r == escrow))
            || self.channel.pending.as_ref().is_some_and(|p| {
                self.channel.lock(escrow).is_some()
                    && p.state.locks.iter().all(|l| l.escrow_id != *escrow)
            })
    }

    /// What we could still lock or pay: our balance, less what the pending proposal and the
    /// queue take.
    fn spendable(&self) -> u64 {
        let mut left = self.channel.balance();
        if let Some(p) = &self.channel.pending {
            left = left.min(p.state.balance(self.channel.local));
        }
        for q in &self.queue {
            let amount = match q.op {
                Op::Pay(a) | Op::Lock { amount: a, .. } => a,
                _ => 0,
            };
            left = left.saturating_sub(amount);
        }
        left
    }

    /// Whether `escrow` is a lock of ours here: binding, pending or queued.
    fn holds(&self, escrow: &EscrowId) -> bool {
        let local = self.channel.local;
        let ours = |l: &super::wire::Lock| l.escrow_id == *escrow && l.payer == local;
        self.channel.latest.state.locks.iter().any(ours)
            || self
                .channel
                .pending
                .as_ref()
                .is_some_and(|p| p.state.locks.iter().any(ours))
            || self
                .queue
                .iter()
                .any(|q| matches!(q.op, Op::Lock { escrow_id, .. } if escrow_id == *escrow))
    }
}

enum Job {
    Answer {
        id: ChannelId,
        number: u64,
        result: Result<(Response, u64), String>,
    },
    CloseAnswer {
        id: ChannelId,
        result: Result<(Response, u64), String>,
    },
    Done,
}

/// What to do once the current batch is durable.
enum After {
    Respond(oneshot::Sender<Vec<u8>>, Vec<u8>),
    Send(ChannelId),
    SendClose(ChannelId),
    Publish(Vec<u8>),
    Convict(PeerId),
    View(ViewReply, ChannelId),
    Lock(LockReply),
}

/// The payments actor. Create with [`PaymentsService::new`], run with [`PaymentsActor::run`].
pub struct PaymentsActor {
    key: Keypair,
    local: PeerId,
    p2p: P2pHandle,
    ledger: Ledger,
    config: PaymentsConfig,
    metrics: PaymentMetrics,
    commands: mpsc::Receiver<Command>,
    requests: mpsc::Receiver<InboundRequest<Vec<u8>, Vec<u8>>>,
    gossip: mpsc::Receiver<GossipMessage>,
    convictions: mpsc::Sender<PeerId>,
    jobs: JoinSet<Job>,
    channels: HashMap<ChannelId, Entry>,
    wallet: Wallet,
    escrows: EscrowBook,
    convicted: LruCache<(ChannelId, PeerId), ()>,
    /// Every channel id this node ever held (settled ones leave memory, not this set): an id
    /// is never opened twice.
    known: HashSet<ChannelId>,
    dirty: Vec<ChannelId>,
    wallet_dirty: bool,
    settlements: Vec<(ChannelId, Vec<u8>)>,
    after: Vec<After>,
}

impl PaymentsService {
    /// Creates the service from what the ledger holds: its handle, its actor, and the
    /// inboxes for the event loop (channel requests; the disputes topic). Convicted
    /// cheaters are sent to `convictions` (the market lowers their reputation).
    pub fn new(
        key: Keypair,
        p2p: P2pHandle,
        ledger: Ledger,
        loaded: &Loaded,
        config: PaymentsConfig,
        metrics: PaymentMetrics,
        convictions: mpsc::Sender<PeerId>,
    ) -> (Self, PaymentsActor, FrameInbox, mpsc::Sender<GossipMessage>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (req_tx, req_rx) = mpsc::channel(INBOX);
        let (gossip_tx, gossip_rx) = mpsc::channel(INBOX);
        let escrows = EscrowBook::default();
        let (wallet, wallet_dirty) = match loaded.wallet.as_deref().map(Wallet::decode) {
            Some(Ok(w)) => (w, false),
            other => {
                if let Some(Err(e)) = other {
                    tracing::error!(error = %e, "unreadable wallet in the ledger; starting from the configured credit");
                }
                (
                    Wallet {
                        initial_credit: config.initial_credit,
                        available: config.initial_credit,
                    },
                    true,
                )
            }
        };
        let mut channels = HashMap::new();
        let mut known = HashSet::new();
        for bytes in &loaded.channels {
            match record::decode(bytes) {
                Ok(c) => {
                    escrows.sync(&c);
                    known.insert(c.id());
                    channels.insert(c.id(), Entry::new(c));
                }
                Err(e) => tracing::error!(error = %e, "skipping an unreadable channel record"),
            }
        }
        let mut actor = PaymentsActor {
            local: key.public().to_peer_id(),
            key,
            p2p,
            ledger,
            config: config.clone(),
            metrics,
            commands: rx,
            requests: req_rx,
            gossip: gossip_rx,
            convictions,
            jobs: JoinSet::new(),
            channels,
            wallet,
            escrows: escrows.clone(),
            convicted: LruCache::new(std::num::NonZeroUsize::new(CONVICTIONS).expect("nonzero")),
            known,
            dirty: Vec::new(),
            wallet_dirty,
            settlements: Vec::new(),
            after: Vec::new(),
        };
        actor.prune_settled();
        actor.metrics.wallet(actor.wallet.available);
        for e in actor.channels.values() {
            if !e.channel.is_settled() {
                actor.metrics.balances(
                    e.channel.id(),
                    e.channel.balance(),
                    e.channel.peer_balance(),
                );
            }
        }
        let handle = Self {
            commands: tx,
            escrows,
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
        };
        (handle, actor, req_tx, gossip_tx)
    }
}

/// Sends `frame` to `peer` (finding and connecting it first) and decodes the answer.
async fn exchange(p2p: P2pHandle, peer: PeerId, frame: Vec<u8>) -> Result<(Response, u64), String> {
    let bytes = tokio::time::timeout(SEND_TIMEOUT, async {
        p2p.connect(peer).await.map_err(RequestError::Failed)?;
        p2p.request::<PaymentChannel>(peer, frame).await
    })
    .await
    .unwrap_or(Err(RequestError::Timeout))
    .map_err(|e| e.to_string())?;
    Response::decode(&bytes).map_err(|e| format!("malformed answer: {e}"))
}

impl PaymentsActor {
    /// Runs until `cancel` fires or every handle is gone. Stops early if the ledger fails:
    /// nothing may be acknowledged that is not durable (the node then stops as unhealthy).
    pub async fn run(self, cancel: CancellationToken) {
        if let Err(e) = self.serve(cancel).await {
            tracing::error!(error = %e, "the ledger failed; the payments service stops");
        }
    }

    async fn serve(mut self, cancel: CancellationToken) -> Result<(), LedgerError> {
        // Releases decided before a restart go on (their locks would otherwise expire and
        // be refunded).
        let intents: Vec<(ChannelId, EscrowId)> = self
            .channels
            .values()
            .flat_map(|e| {
                let id = e.channel.id();
                e.channel.release_intents.iter().map(move |x| (id, *x))
            })
            .collect();
        for (id, escrow) in intents {
            self.enqueue(id, Op::Release(escrow), Vec::new());
        }
        self.refresh_gauges();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                Some(r) = self.requests.recv() => self.on_request(r),
                Some(m) = self.gossip.recv() => self.on_gossip(m),
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if let Ok(job) = done {
                        self.on_job(job);
                    }
                }
                _ = tick.tick() => self.on_tick(),
            }
            // Whatever else is ready joins this batch: one commit for all of it.
            for _ in 0..MAX_BATCH {
                if let Ok(c) = self.commands.try_recv() {
                    self.on_command(c);
                } else if let Ok(r) = self.requests.try_recv() {
                    self.on_request(r);
                } else if let Some(Ok(job)) = self.jobs.try_join_next() {
                    self.on_job(job);
                } else {
                    break;
                }
            }
            self.flush().await?;
        }
        self.jobs.shutdown().await;
        self.flush().await?;
        tracing::debug!("payments service stopped");
        Ok(())
    }

    /// Commits every change of the batch, then does what the changes produced.
    async fn flush(&mut self) -> Result<(), LedgerError> {
        let mut writes = Vec::new();
        self.dirty.sort();
        self.dirty.dedup();
        for id in std::mem::take(&mut self.dirty) {
            if let Some(e) = self.channels.get(&id) {
                writes.push(Write::Channel(id.0.to_vec(), record::encode(&e.channel)));
            }
        }
        if std::mem::take(&mut self.wallet_dirty) {
            writes.push(Write::Wallet(self.wallet.encode()));
            self.metrics.wallet(self.wallet.available);
        }
        for (id, bytes) in std::mem::take(&mut self.settlements) {
            writes.push(Write::Settlement(id.0.to_vec(), bytes));
        }
        if !writes.is_empty() {
            self.refresh_gauges();
            if let Err(e) = self.ledger.commit(writes).await {
                tracing::error!(error = %e, "cannot persist channel states; stopping payments");
                for a in self.after.drain(..) {
                    match a {
                        After::View(r, _) => {
                            let _ = r.send(Err(PaymentsError::Ledger(e.clone())));
                        }
                        After::Lock(r) => {
                            let _ = r.send(Err(PaymentsError::Ledger(e.clone())));
                        }
                        _ => {}
                    }
                }
                return Err(e);
            }
        }
        self.prune_settled();
        for a in std::mem::take(&mut self.after) {
            match a {
                After::Respond(reply, bytes) => {
                    let _ = reply.send(bytes);
                }
                After::Send(id) => self.send(id),
                After::SendClose(id) => self.send_close(id),
                After::Publish(data) => {
                    let p2p = self.p2p.clone();
                    self.jobs.spawn(async move {
                        if let Err(e) = p2p.publish(DISPUTES_TOPIC, data).await {
                            tracing::debug!(error = %e, "cannot publish dispute evidence");
                        }
                        Job::Done
                    });
                }
                After::Convict(peer) => {
                    let _ = self.convictions.try_send(peer);
                }
                After::View(reply, id) => {
                    let view = self
                        .channels
                        .get(&id)
                        .map(|e| ChannelView::from(&e.channel))
                        .ok_or(PaymentsError::UnknownChannel);
                    let _ = reply.send(view);
                }
                After::Lock(reply) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        Ok(())
    }

    fn touch(&mut self, id: ChannelId) {
        self.dirty.push(id);
        if let Some(e) = self.channels.get(&id) {
            self.escrows.sync(&e.channel);
            if !e.channel.is_settled() {
                self.metrics
                    .balances(id, e.channel.balance(), e.channel.peer_balance());
            }
        }
    }

    fn refresh_gauges(&self) {
        let mut counts: HashMap<(&'static str, bool), i64> = HashMap::new();
        for state in ["opening", "open", "closing"] {
            for opener in [true, false] {
                counts.insert((state, opener), 0);
            }
        }
        for e in self.channels.values() {
            let state = match e.channel.status {
                Status::Opening => "opening",
                Status::Open => "open",
                Status::Closing(_) => "closing",
                Status::Settled { .. } => continue,
            };
            *counts
                .entry((state, e.channel.local == Side::A))
                .or_default() += 1;
        }
        for ((state, opener), n) in counts {
            self.metrics.set_active(state, opener, n);
        }
    }

    fn unsettled(&self) -> impl Iterator<Item = &Entry> {
        self.channels.values().filter(|e| !e.channel.is_settled())
    }

    /// Keeps at most [`KEPT_SETTLED`] settled channels in memory, the latest ones.
    fn prune_settled(&mut self) {
        let mut settled: Vec<(u64, ChannelId)> = self
            .channels
            .values()
            .filter_map(|e| match e.channel.status {
                Status::Settled { at_ms, .. } => Some((at_ms, e.channel.id())),
                _ => None,
            })
            .collect();
        if settled.len() <= KEPT_SETTLED {
            return;
        }
        settled.sort();
        for (_, id) in &settled[..settled.len() - KEPT_SETTLED] {
            self.channels.remove(id);
        }
    }

    // ----- commands -----

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Wallet(reply) => {
                let _ = reply.send(self.wallet_view());
            }
            Command::Channels(offset, limit, reply) => {
                let mut all: Vec<&Entry> = self.channels.values().collect();
                all.sort_by_key(|e| std::cmp::Reverse((e.channel.opened_at_ms, e.channel.id())));
                let page = ChannelPage {
                    total: all.len(),
                    offset,
                    channels: all
                        .iter()
                        .skip(offset)
                        .take(limit)
                        .map(|e| ChannelView::from(&e.channel))
                        .collect(),
                };
                let _ = reply.send(page);
            }
            Command::Channel(id, reply) => {
                let _ = reply.send(
                    self.channels
                        .get(&id)
                        .map(|e| ChannelView::from(&e.channel)),
                );
            }
            Command::Open {
                peer,
                deposit,
                their_deposit,
                reply,
            } => match self.open(peer, deposit, their_deposit) {
                Ok(id) => self
                    .channels
                    .get_mut(&id)
                    .expect("just opened")
                    .waiting
                    .push(Waiter::View(reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Pay { id, amount, reply } => {
                self.enqueue(id, Op::Pay(amount), vec![Waiter::View(reply)]);
            }
            Command::Close {
                id,
                unilateral: false,
                reply,
            } => self.enqueue(id, Op::Close, vec![Waiter::View(reply)]),
            Command::Close {
                id,
                unilateral: true,
                reply,
            } => match self.close_unilaterally(id) {
                Ok(()) => self.after.push(After::View(reply, id)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Lock {
                peer,
                escrow,
                amount,
                expires_at_ms,
                kind,
                reply,
            } => self.lock(peer, escrow, amount, expires_at_ms, kind, reply),
            Command::Release { peer, escrow } => match self.holder(&peer, &escrow) {
                Some(id) => {
                    // Persisted with the channel in this batch: a restart still releases.
                    let e = self.channels.get_mut(&id).expect("holder exists");
                    if !e.channel.release_intents.contains(&escrow) {
                        e.channel.release_intents.push(escrow);
                        self.dirty.push(id);
                    }
                    if !e.releasing_queued(&escrow) {
                        self.enqueue(id, Op::Release(escrow), Vec::new());
                    }
                }
                None => tracing::debug!(%escrow, "release of an escrow no channel holds"),
            },
            Command::Refund {
                peer,
                escrow,
                reason,
            } => {
                if let Some(id) = self.holder(&peer, &escrow) {
                    let e = self.channels.get_mut(&id).expect("holder exists");
                    e.refund_reasons.insert(escrow, reason);
                    e.refunds_due.push((escrow, reason));
                    self.due_refunds(id);
                }
            }
        }
    }

    fn wallet_view(&self) -> WalletView {
        let mut in_channels = 0u64;
        let mut locked = 0u64;
        let mut n = 0;
        for e in self.unsettled() {
            n += 1;
            let s = &e.channel.latest.state;
            in_channels = in_channels.saturating_add(e.channel.balance());
            locked = s
                .locks
                .iter()
                .filter(|l| l.payer == e.channel.local)
                .fold(locked, |sum, l| sum.saturating_add(l.amount));
        }
        WalletView {
            peer_id: self.local.to_string(),
            initial_credit: self.wallet.initial_credit,
            available: self.wallet.available,
            in_channels,
            locked,
            channels: n,
        }
    }

    fn holder(&self, peer: &PeerId, escrow: &EscrowId) -> Option<ChannelId> {
        self.channels
            .values()
            .find(|e| e.channel.peer() == *peer && !e.channel.is_settled() && e.holds(escrow))
            .map(|e| e.channel.id())
    }

    fn open(
        &mut self,
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
    ) -> Result<ChannelId, PaymentsError> {
        if peer == self.local {
            return Err(ChannelError::WrongSigner.into());
        }
        // Our own channels have their own quota, so peers opening channels with us cannot
        // use it up; and a peer that never answers gets at most a few of our deposits.
        let ours: Vec<&Entry> = self
            .unsettled()
            .filter(|e| e.channel.local == Side::A)
            .collect();
        if ours.len() >= self.config.max_channels
            || ours.iter().filter(|e| e.channel.peer() == peer).count()
                >= self.config.max_channels_per_peer
        {
            return Err(ChannelError::TooManyChannels.into());
        }
        if deposit > self.wallet.available {
            return Err(ChannelError::InsufficientFunds.into());
        }
        let id = ChannelId::random();
        let (channel, _) = Channel::open(&self.key, peer, id, deposit, their_deposit, now_ms())?;
        self.known.insert(id);
        self.wallet.available -= deposit;
        self.wallet_dirty = true;
        self.channels.insert(id, Entry::new(channel));
        self.touch(id);
        self.after.push(After::Send(id));
        Ok(id)
    }

    fn lock(
        &mut self,
        peer: PeerId,
        escrow: EscrowId,
        amount: u64,
        expires_at_ms: u64,
        kind: &'static str,
        reply: LockReply,
    ) {
        let found = self
            .channels
            .values()
            .filter(|e| {
                e.channel.peer() == peer
                    && matches!(e.channel.status, Status::Open | Status::Opening)
                    && e.stalls < 3
                    && e.queue.len() < MAX_QUEUED
                    && e.spendable() >= amount
            })
            .map(|e| e.channel.id())
            .next();
        let id = match found {
            Some(id) => id,
            None => {
                let deposit = self.config.channel_deposit.max(amount);
                let deposit = if deposit > self.wallet.available {
                    self.wallet.available
                } else {
                    deposit
                };
                if deposit < amount {
                    let _ = reply.send(Err(ChannelError::InsufficientFunds.into()));
                    return;
                }
                match self.open(peer, deposit, 0) {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
            }
        };
        let e = self.channels.get_mut(&id).expect("found");
        e.kinds.insert(escrow, kind);
        self.enqueue(
            id,
            Op::Lock {
                escrow_id: escrow,
                amount,
                expires_at_ms,
            },
            vec![Waiter::Lock(reply)],
        );
    }

    fn enqueue(&mut self, id: ChannelId, op: Op, waiters: Vec<Waiter>) {
        let Some(e) = self.channels.get_mut(&id) else {
            for w in waiters {
                w.fail(PaymentsError::UnknownChannel);
            }
            return;
        };
        if e.queue.len() >= MAX_QUEUED {
            for w in waiters {
                w.fail(PaymentsError::Busy);
            }
            return;
        }
        e.queue.push_back(Queued { op, waiters });
        self.pump(id);
    }

    /// Proposes the next queued operation(s) of a channel if nothing is pending.
    fn pump(&mut self, id: ChannelId) {
        let now = now_ms();
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        if e.channel.pending.is_some() || e.in_flight {
            return;
        }
        if e.retry_at.is_some_and(|t| t > Instant::now()) {
            // Backing off after a refusal: the timer pumps.
            return;
        }
        match e.channel.status {
            Status::Open => {}
            Status::Opening => return,
            Status::Closing(_) | Status::Settled { .. } => {
                let err = if e.channel.is_settled() {
                    ChannelError::Settled
                } else {
                    ChannelError::Closing
                };
                for q in e.queue.drain(..) {
                    for w in q.waiters {
                        w.fail(err.into());
                    }
                }
                return;
            }
        }
        while let Some(first) = e.queue.pop_front() {
            let mut op = first.op;
            let mut waiters = first.waiters;
            // Payments queued behind each other become one state.
            if let Op::Pay(mut total) = op {
                while let Some(Queued {
                    op: Op::Pay(next), ..
                }) = e.queue.front()
                {
                    match total.checked_add(*next) {
                        Some(t) if t <= e.channel.balance() => total = t,
                        _ => break,
                    }
                    let q = e.queue.pop_front().expect("front exists");
                    waiters.extend(q.waiters);
                }
                op = Op::Pay(total);
            }
            match e.channel.propose(&self.key, &op, now) {
                Ok(_) => {
                    e.waiting = waiters;
                    e.proposed_at = Instant::now();
                    e.attempts = 0;
                    e.retry_at = None;
                    self.dirty.push(id);
                    self.after.push(After::Send(id));
                    return;
                }
                Err(err) => {
                    if let Op::Release(x) = &op {
                        // Nothing left to release (refunded or settled): drop the intent.
                        e.channel.release_intents.retain(|r| r != x);
                        self.dirty.push(id);
                    }
                    for w in waiters {
                        w.fail(err.into());
                    }
                }
            }
        }
    }

    fn close_unilaterally(&mut self, id: ChannelId) -> Result<(), PaymentsError> {
        let e = self
            .channels
            .get_mut(&id)
            .ok_or(PaymentsError::UnknownChannel)?;
        e.channel.close_unilaterally(&self.key, now_ms())?;
        e.close_requested = Some(Instant::now());
        for w in e.waiting.drain(..) {
            w.fail(ChannelError::Closing.into());
        }
        self.metrics.channel("closing", true);
        self.touch(id);
        self.after.push(After::SendClose(id));
        self.pump(id);
        Ok(())
    }

    // ----- sending -----

    fn send(&mut self, id: ChannelId) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let Some(p) = &e.channel.pending else {
            return;
        };
        if e.in_flight {
            return;
        }
        e.in_flight = true;
        e.attempts += 1;
        let number = p.state.number;
        let frame = if e.channel.status == Status::Opening {
            Request::Open(p.clone())
        } else {
            Request::Update(p.clone())
        }
        .encode();
        let request = exchange(self.p2p.clone(), e.channel.peer(), frame);
        self.jobs.spawn(async move {
            let result = request.await;
            Job::Answer { id, number, result }
        });
    }

    fn send_close(&mut self, id: ChannelId) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let Status::Closing(close) = &e.channel.status else {
            return;
        };
        if e.closing_sent {
            return;
        }
        e.closing_sent = true;
        let frame = Request::Close(close.clone()).encode();
        let request = exchange(self.p2p.clone(), e.channel.peer(), frame);
        self.jobs.spawn(async move {
            let result = request.await;
            Job::CloseAnswer { id, result }
        });
    }

    // ----- answers to our requests -----

    fn on_job(&mut self, job: Job) {
        match job {
            Job::Done => {}
            Job::Answer { id, number, result } => self.on_answer(id, number, result),
            Job::CloseAnswer { id, result } => self.on_close_answer(id, result),
        }
    }

    fn on_answer(&mut self, id: ChannelId, number: u64, result: Result<(Response, u64), String>) {
        let now = now_ms();
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        e.in_flight = false;
        if e.channel.pending.as_ref().map(|p| p.state.number) != Some(number) {
            return;
        }
        let opening = e.channel.status == Status::Opening;
        let prev = e.channel.latest.state.clone();
        let (response, highest) = match result {
            Ok(r) => r,
            Err(error) => {
                // Keep the signed proposal; re-send it, byte for byte, with backoff.
                e.stalls += 1;
                let backoff = e.backoff().max(Duration::from_millis(100));
                tracing::debug!(channel = %id, error, ?backoff, "proposal not delivered; will re-send");
                e.retry_at = Some(Instant::now() + backoff);
                return;
            }
        };
        match response {
            Response::Countersig(sig) => match e.channel.countersigned(&sig, now) {
                Ok(op) => {
                    e.stalls = 0;
                    e.last_heard = Instant::now();
                    let took = e.proposed_at.elapsed().as_secs_f64();
                    let waiters = std::mem::take(&mut e.waiting);
                    match op {
                        None => self.metrics.channel("opened", true),
                        Some(op) => self.on_applied(id, &op, true, took, &prev),
                    }
                    for w in waiters {
                        self.after.push(match w {
                            Waiter::View(r) => After::View(r, id),
                            Waiter::Lock(r) => After::Lock(r),
                        });
                    }
                    self.touch(id);
                    self.pump(id);
                }
                Err(err) => {
                    tracing::warn!(channel = %id, error = %err, "peer's countersignature does not verify; re-sending");
                    self.metrics.refused("countersig", err.label());
                    e.stalls += 1;
                    e.retry_at = Some(Instant::now() + e.backoff().max(Duration::from_secs(1)));
                }
            },
            Response::Refused(reason) => {
                // A refusal is an answer, not progress: it does not keep the peer "alive".
                e.stalls += 1;
                let op = e.channel.refused(highest, now);
                let waiters = std::mem::take(&mut e.waiting);
                let retry =
                    reason == ChannelError::Busy.label() || reason == ChannelError::Stale.label();
                let gone = reason == ChannelError::Settled.label()
                    || reason == ChannelError::UnknownChannel.label();
                match op {
                    Some(op) if retry => {
                        // Both sides proposed at once, or our number was behind: propose the
                        // same change again, numbered above the peer's, after a pause.
                        e.queue.push_front(Queued { op, waiters });
                        e.retry_at = Some(Instant::now() + e.backoff());
                    }
                    op => {
                        tracing::info!(channel = %id, reason, "peer refused our proposal");
                        if matches!(op, Some(Op::Pay(_) | Op::Release(_))) {
                            self.metrics.payment_rejected();
                        }
                        for w in waiters {
                            w.fail(PaymentsError::Refused(reason.clone()));
                        }
                        if opening {
                            self.abandon_open(id, &reason);
                        } else if gone {
                            // The peer holds the channel settled (or not at all): settle our
                            // side on what we hold, through a close it can still dispute.
                            tracing::warn!(channel = %id, reason, "the peer no longer holds the channel open; closing");
                            let _ = self.close_unilaterally(id);
                        }
                    }
                }
                self.touch(id);
                if !retry {
                    self.pump(id);
                }
            }
            Response::Dispute(_) | Response::CloseAccepted => {
                // Not an answer to a proposal.
                e.stalls += 1;
                e.retry_at = Some(Instant::now() + e.backoff().max(Duration::from_secs(1)));
            }
        }
    }

    /// Our state 0 was refused, or never answered: the channel never opened. Our deposit
    /// comes back (the peer can at most close with state 0, which pays it back to us too).
    fn abandon_open(&mut self, id: ChannelId, why: &str) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        if e.channel.status != Status::Opening {
            return;
        }
        tracing::info!(channel = %id, why, "channel not opened; its deposit returns to the wallet");
        let deposit = e.channel.latest.state.deposit(Side::A);
        e.channel.pending = None;
        e.channel.status = Status::Settled {
            how: Settlement::Abandoned,
            at_ms: now_ms(),
        };
        self.wallet.available = self.wallet.available.saturating_add(deposit);
        self.wallet_dirty = true;
        for w in e.waiting.drain(..) {
            w.fail(PaymentsError::Refused(why.to_owned()));
        }
        for q in e.queue.drain(..) {
            for w in q.waiters {
                w.fail(PaymentsError::Refused(why.to_owned()));
            }
        }
        self.touch(id);
    }

    fn on_close_answer(&mut self, id: ChannelId, result: Result<(Response, u64), String>) {
        let now = now_ms();
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        match result {
            Ok((Response::CloseAccepted, _)) => {
                e.last_heard = Instant::now();
                if e.channel.settle_unilaterally(now).is_ok() {
                    self.settle(id, true);
                }
            }
            Ok((Response::Dispute(higher), _)) => {
                e.last_heard = Instant::now();
                match e.channel.on_dispute(*higher, now) {
                    Ok(()) => {
                        tracing::warn!(channel = %id, "our close was disputed with a higher state");
                        self.metrics.dispute("resolved");
                        self.settle(id, true);
                    }
                    Err(err) => self.metrics.refused("dispute", err.label()),
                }
            }
            other => {
                // Not delivered, or refused: the peer may not know yet. Re-send within the
                // challenge window; it settles when the window ends anyway.
                tracing::info!(channel = %id, answer = ?other, "close not accepted; re-sending");
                e.closing_sent = false;
                e.stalls += 1;
                e.retry_at = Some(Instant::now() + e.backoff().max(Duration::from_millis(500)));
            }
        }
    }

    /// Metrics and bookkeeping of an operation that became binding; `prev` is the state
    /// before it.
    fn on_applied(&mut self, id: ChannelId, op: &Op, ours: bool, took: f64, prev: &State) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let local = e.channel.local;
        let lock_of = |x: &EscrowId| prev.locks.iter().find(|l| l.escrow_id == *x);
        match op {
            Op::Pay(amount) if ours => self.metrics.payment_accepted(*amount, took),
            Op::Lock {
                escrow_id, amount, ..
            } if ours => {
                let kind = e.kinds.get(escrow_id).copied().unwrap_or("api");
                self.metrics.escrow_created(kind, *amount);
            }
            Op::Release(escrow) if ours => {
                e.channel.release_intents.retain(|r| r != escrow);
                let amount = lock_of(escrow).map_or(0, |l| l.amount);
                self.metrics.escrow_released("verified");
                self.metrics.payment_accepted(amount, took);
                e.kinds.remove(escrow);
                e.refund_reasons.remove(escrow);
            }
            Op::Refund(escrow) => {
                // Our lock came back, whoever proposed the refund.
                if lock_of(escrow).is_some_and(|l| l.payer == local) {
                    let reason = e.refund_reasons.remove(escrow).unwrap_or("expired");
                    self.metrics.escrow_refunded(reason);
                }
                e.kinds.remove(escrow);
                e.refunds_due.retain(|(x, _)| x != escrow);
            }
            Op::Close => self.settle(id, ours),
            _ => {}
        }
    }

    /// A channel settled: its payout goes back to the wallet, its series go, and the
    /// settlement is recorded.
    fn settle(&mut self, id: ChannelId, by_us: bool) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let Status::Settled { how, at_ms } = e.channel.status else {
            return;
        };
        let payout = e.channel.payout();
        self.wallet.available = self.wallet.available.saturating_add(payout);
        self.wallet_dirty = true;
        for lock in &e.channel.latest.state.locks {
            if lock.payer == e.channel.local {
                self.metrics.escrow_refunded("settled");
            }
        }
        for w in e.waiting.drain(..) {
            w.fail(ChannelError::Settled.into());
        }
        for q in e.queue.drain(..) {
            for w in q.waiters {
                w.fail(ChannelError::Settled.into());
            }
        }
        e.channel.pending = None;
        let lifetime = at_ms.saturating_sub(e.channel.opened_at_ms) as f64 / 1000.0;
        let since_close = e
            .close_requested
            .map_or(e.proposed_at.elapsed(), |t| t.elapsed())
            .as_secs_f64();
        let state = &e.channel.latest.state;
        let settlement = serde_json::json!({
            "channel_id": id.to_string(),
            "how": how.label(),
            "number": state.number,
            "payout": payout,
            "peer_payout": state.payout(e.channel.local.other()),
            "at_ms": at_ms,
        });
        self.settlements
            .push((id, serde_json::to_vec(&settlement).expect("json")));
        self.metrics.settled(id, how.label(), lifetime, since_close);
        self.metrics.channel("closed", by_us);
        tracing::info!(channel = %id, how = how.label(), payout, "channel settled");
        self.touch(id);
    }

    // ----- requests from peers -----

    fn on_request(&mut self, request: InboundRequest<Vec<u8>, Vec<u8>>) {
        let InboundRequest {
            peer,
            request,
            reply,
        } = request;
        let (label, result) = match Request::decode(&request) {
            Err(e) => ("frame", Err((e, 0))),
            Ok(r) => {
                let label = r.label();
                (label, self.handle(peer, r))
            }
        };
        let bytes = match result {
            Ok((response, highest)) => response.encode(highest),
            Err((e, highest)) => {
                self.metrics.refused(label, e.label());
                tracing::debug!(%peer, message = label, reason = e.label(), "refused channel request");
                Response::Refused(e.label().to_owned()).encode(highest)
            }
        };
        // Answered only once whatever it changed is durable.
        self.after.push(After::Respond(reply, bytes));
    }

    fn handle(
        &mut self,
        peer: PeerId,
        request: Request,
    ) -> Result<(Response, u64), (ChannelError, u64)> {
        let now = now_ms();
        match request {
            Request::Open(p) => {
                let id = p.state.channel_id;
                if p.channel != id {
                    return Err((ChannelError::WrongChannel, 0));
                }
                if let Some(e) = self.channels.get(&id) {
                    // The opener restarted and re-sent state 0: the same answer again.
                    if e.channel.latest.bytes == p.bytes && e.channel.peer() == peer {
                        let sig = e.channel.latest.sig(e.channel.local).to_vec();
                        return Ok((Response::Countersig(sig), e.channel.highest_signed));
                    }
                    return Err((ChannelError::DuplicateChannel, 0));
                }
                if self.known.contains(&id) {
                    // Settled long ago and out of memory: an id is never opened twice.
                    return Err((ChannelError::DuplicateChannel, 0));
                }
                // Channels peers open have their own quota, apart from ours.
                let theirs: Vec<&Entry> = self
                    .unsettled()
                    .filter(|e| e.channel.local == Side::B)
                    .collect();
                if theirs.len() >= self.config.max_channels
                    || theirs.iter().filter(|e| e.channel.peer() == peer).count()
                        >= self.config.max_channels_per_peer
                {
                    return Err((ChannelError::TooManyChannels, 0));
                }
                let max_deposit = self
                    .config
                    .max_counterparty_deposit
                    .min(self.wallet.available);
                let (channel, sig) = Channel::accept_open(&self.key, peer, &p, max_deposit, now)
                    .map_err(|e| (e, 0))?;
                self.wallet.available -= channel.latest.state.deposit_b;
                self.wallet_dirty = true;
                self.known.insert(id);
                self.channels.insert(id, Entry::new(channel));
                self.metrics.channel("opened", false);
                self.touch(id);
                Ok((Response::Countersig(sig), 0))
            }
            Request::Update(p) => {
                let id = p.channel;
                let e = self
                    .channels
                    .get_mut(&id)
                    .ok_or((ChannelError::UnknownChannel, 0))?;
                let highest = e.channel.highest_signed;
                let prev = e.channel.latest.state.clone();
                match e.channel.receive(&self.key, peer, &p, now) {
                    Ok(Received::Repeat(sig)) => Ok((Response::Countersig(sig), highest)),
                    Ok(Received::New { sig, op }) => {
                        e.last_heard = Instant::now();
                        let highest = e.channel.highest_signed;
                        self.on_applied(id, &op, false, 0.0, &prev);
                        self.touch(id);
                        Ok((Response::Countersig(sig), highest))
                    }
                    Err(err) => Err((err, e.channel.highest_signed.max(highest))),
                }
            }
            Request::Close(close) => {
                let id = close.state.state.channel_id;
                let e = self
                    .channels
                    .get_mut(&id)
                    .ok_or((ChannelError::UnknownChannel, 0))?;
                let was_settled = e.channel.is_settled();
                let answer = e
                    .channel
                    .on_close(peer, &close, now)
                    .map_err(|err| (err, 0))?;
                let highest = e.channel.highest_signed;
                if !was_settled {
                    e.close_requested = Some(Instant::now());
                    self.metrics.channel("closing", false);
                }
                match answer {
                    CloseAnswer::Accepted => {
                        if !was_settled {
                            self.settle(id, false);
                        }
                        Ok((Response::CloseAccepted, highest))
                    }
                    CloseAnswer::Disputed(higher) => {
                        if !was_settled {
                            tracing::warn!(channel = %id, %peer, "stale unilateral close: disputing with our latest state");
                            self.metrics.dispute("opened");
                            self.metrics.dispute("resolved");
                            self.settle(id, false);
                            // Cheating only if our state is above all the closer admitted to
                            // have signed: a closer whose proposal we countersigned but whose
                            // answer was lost disclosed it, and is not to blame.
                            if higher.state.number > close.admitted() {
                                let evidence = Evidence {
                                    close: *close,
                                    higher: (*higher).clone(),
                                };
                                self.convicted.put((id, peer), ());
                                self.after.push(After::Publish(evidence.encode()));
                                self.after.push(After::Convict(peer));
                            }
                        }
                        Ok((Response::Dispute(higher), highest))
                    }
                }
            }
        }
    }

    fn on_gossip(&mut self, message: GossipMessage) {
        // Evidence already judged is dropped before its signatures are checked.
        let judged = Evidence::peek(&message.data)
            .and_then(|(channel, closer)| Some((channel, PeerId::from_bytes(&closer).ok()?)))
            .is_some_and(|key| self.convicted.contains(&key));
        if judged {
            let _ = message.verdict.send(Verdict::Ignore);
            return;
        }
        let verdict = match Evidence::open(&message.data) {
            Ok((evidence, cheater)) => {
                let key = (evidence.higher.state.channel_id, cheater);
                if self.convicted.put(key, ()).is_some() {
                    Verdict::Ignore
                } else {
                    tracing::warn!(%cheater, channel = %key.0, "verified dispute evidence: the closer used a stale state");
                    self.metrics.dispute("convicted");
                    self.after.push(After::Convict(cheater));
                    Verdict::Accept
                }
            }
            Err(e) => {
                self.metrics.refused("evidence", e.label());
                if e.is_fault() {
                    Verdict::Reject
                } else {
                    Verdict::Ignore
                }
            }
        };
        let _ = message.verdict.send(verdict);
    }

    // ----- timers -----

    fn on_tick(&mut self) {
        let now = Instant::now();
        let now_ms = now_ms();
        let challenge = self.config.challenge_secs * 1000;
        let vanished = Duration::from_secs(self.config.vanished_close_secs);
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            let Some(e) = self.channels.get_mut(&id) else {
                continue;
            };
            match &e.channel.status {
                Status::Settled { .. } => continue,
                Status::Closing(close) => {
                    if now_ms >= close.at_ms.saturating_add(challenge) {
                        let _ = e.channel.settle_unilaterally(now_ms);
                        self.settle(id, true);
                    } else if !e.closing_sent && e.retry_at.is_none_or(|t| t <= now) {
                        self.send_close(id);
                    }
                    continue;
                }
                Status::Open | Status::Opening => {}
            }
            if e.channel.status == Status::Opening
                && now.duration_since(e.last_heard) >= OPEN_GIVE_UP
            {
                self.abandon_open(id, "the peer did not answer the open");
                continue;
            }
            let waiting_on_peer = e.channel.pending.is_some()
                || e.channel
                    .latest
                    .state
                    .locks
                    .iter()
                    .any(|l| l.payer == e.channel.local && l.expires_at_ms <= now_ms);
            if waiting_on_peer
                && e.channel.status == Status::Open
                && now.duration_since(e.last_heard) >= vanished
            {
                tracing::warn!(channel = %id, peer = %e.channel.peer(), "peer vanished: closing unilaterally");
                let _ = self.close_unilaterally(id);
                continue;
            }
            if e.channel.pending.is_some() && !e.in_flight && e.retry_at.is_some_and(|t| t <= now) {
                e.retry_at = None;
                self.send(id);
                continue;
            }
            if e.channel.pending.is_none() && !e.in_flight && e.retry_at.is_some_and(|t| t <= now) {
                e.retry_at = None;
                self.pump(id);
            }
            self.sweep_expired(id, now_ms);
            self.due_refunds(id);
        }
    }

    /// Refunds our own expired locks that nothing else will resolve (their task was lost in
    /// a restart, or its refund was asked for earlier).
    fn sweep_expired(&mut self, id: ChannelId, now_ms: u64) {
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let local = e.channel.local;
        let expired: Vec<EscrowId> = e
            .channel
            .latest
            .state
            .locks
            .iter()
            .filter(|l| l.payer == local && l.expires_at_ms <= now_ms)
            .map(|l| l.escrow_id)
            .filter(|x| {
                // A lock whose task was verified is released, whatever its age.
                !e.releasing(x)
                    && !e.refunds_due.iter().any(|(d, _)| d == x)
                    && !e
                        .queue
                        .iter()
                        .any(|q| matches!(&q.op, Op::Refund(r) if r == x))
            })
            .collect();
        for x in expired {
            e.refunds_due.push((x, "expired"));
        }
    }

    /// Queues the refunds whose locks have expired.
    fn due_refunds(&mut self, id: ChannelId) {
        let now = now_ms();
        let Some(e) = self.channels.get_mut(&id) else {
            return;
        };
        let mut ready = Vec::new();
        let releasing: Vec<EscrowId> = e
            .refunds_due
            .iter()
            .map(|(x, _)| *x)
            .filter(|x| e.releasing(x))
            .collect();
        e.refunds_due.retain(|(x, reason)| {
            let Some(lock) = e.channel.lock(x) else {
                // Released, refunded or not yet locked: nothing to refund now.
                return e.channel.pending.is_some()
                    || e.queue
                        .iter()
                        .any(|q| matches!(&q.op, Op::Lock { escrow_id, .. } if escrow_id == x));
            };
            if releasing.contains(x) {
                // Verified after all (a retry may have found the result late): no refund.
                false
            } else if lock.expires_at_ms <= now {
                ready.push((*x, *reason));
                false
            } else {
                true
            }
        });
        for (x, reason) in ready {
            let queued = e
                .queue
                .iter()
                .any(|q| matches!(&q.op, Op::Release(r) | Op::Refund(r) if *r == x));
            let pending = e
                .channel
                .pending
                .as_ref()
                .is_some_and(|p| p.state.locks.iter().all(|l| l.escrow_id != x));
            if !queued && !pending {
                e.refund_reasons.entry(x).or_insert(reason);
                e.queue.push_back(Queued {
                    op: Op::Refund(x),
                    waiters: Vec::new(),
                });
            }
        }
        self.pump(id);
    }
}
