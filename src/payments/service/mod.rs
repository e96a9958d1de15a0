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

mod commands;
mod handle;
mod ids;
mod inbound;
mod outbound;
mod timers;
mod upkeep;

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
use super::exposure;
use super::metrics::PaymentMetrics;
use super::payment_ids::{MAX_PAYMENT_IDS, Paid, PaymentId, PaymentIds};
use super::record::{self, Wallet};
use super::view::{ChannelPage, ChannelView, PaymentKind, PaymentStatus, PaymentView, WalletView};
use super::wire::{
    ChannelError, ChannelId, DISPUTES_TOPIC, EscrowId, Evidence, Request, Response, Side, State,
};
use super::{Funds, PaymentsConfig, PaymentsError, Unusable};
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
/// Failed sends in a row (or answers without progress) after which a channel is unusable.
const UNUSABLE_STALLS: u32 = 3;

type ViewReply = oneshot::Sender<Result<ChannelView, PaymentsError>>;
type LockReply = oneshot::Sender<Result<(), PaymentsError>>;
type PaymentReply = oneshot::Sender<Result<PaymentView, PaymentsError>>;

enum Command {
    Wallet(oneshot::Sender<WalletView>),
    Channels(usize, usize, oneshot::Sender<ChannelPage>),
    Channel(ChannelId, oneshot::Sender<Option<ChannelView>>),
    Open {
        peer: PeerId,
        deposit: u64,
        their_deposit: u64,
        /// Told the channel's id at once (a call without a payment id).
        opened: Option<oneshot::Sender<ChannelId>>,
        waiter: Waiter,
    },
    Pay {
        id: ChannelId,
        amount: u64,
        waiter: Waiter,
    },
    /// Where the payment (or open) of a payment id stands, for the request with this tag.
    Payment(PaymentId, u64, oneshot::Sender<Option<PaymentView>>),
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
        /// Answered once the release decision is committed.
        durable: Option<LockReply>,
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

enum Waiter {
    View(ViewReply),
    Lock(LockReply),
    /// A request for a payment or open under a payment id (`request`: its tag; the id's
    /// payment was made by another request, i.e. this one is replayed, if the id's record
    /// carries another tag).
    Payment {
        id: PaymentId,
        reply: PaymentReply,
        request: u64,
    },
}

impl Waiter {
    /// The payment id it waits under, if any.
    fn payment_id(&self) -> Option<&PaymentId> {
        match self {
            Self::Payment { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The change it waited for is durable: the channel as it is now, or done.
    fn succeed(self, channel: Option<&Channel>) {
        match self {
            Self::View(r) => {
                let view = channel
                    .map(ChannelView::from)
                    .ok_or(PaymentsError::UnknownChannel);
                let _ = r.send(view);
            }
            Self::Lock(r) => {
                let _ = r.send(Ok(()));
            }
            Self::Payment { reply, .. } => {
                // Answered by the actor, which knows the payment ids (see `answer`).
                let _ = reply.send(Err(PaymentsError::UnknownChannel));
            }
        }
    }

    fn fail(self, e: PaymentsError) {
        match self {
            Self::View(r) => {
                let _ = r.send(Err(e));
            }
            Self::Lock(r) => {
                let _ = r.send(Err(e));
            }
            Self::Payment { reply, .. } => {
                let _ = reply.send(Err(e));
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
    proposed_at: Instant,
    last_heard: Instant,
    close_requested: Option<Instant>,
    refunds_due: Vec<(EscrowId, &'static str)>,
    kinds: HashMap<EscrowId, &'static str>,
    refund_reasons: HashMap<EscrowId, &'static str>,
    closing_sent: bool,
    /// Answers in a row that made no progress (refusals to retry, transport errors).
    stalls: u32,
    /// The peer refused or ignored our states: no lock goes here, none to the peer until
    /// this channel settles, and it is closed unilaterally.
    unusable: Option<Unusable>,
    /// When a state was last proposed or became binding here (idle channels are closed).
    last_change: Instant,
    /// When this node started closing the channel because it was idle.
    idle_close: Option<Instant>,
}

impl Entry {
    fn new(channel: Channel) -> Self {
        Self {
            channel,
            queue: VecDeque::new(),
            waiting: Vec::new(),
            in_flight: false,
            retry_at: Some(Instant::now()),
            proposed_at: Instant::now(),
            last_heard: Instant::now(),
            close_requested: None,
            refunds_due: Vec::new(),
            kinds: HashMap::new(),
            refund_reasons: HashMap::new(),
            closing_sent: false,
            unusable: None,
            last_change: Instant::now(),
            idle_close: None,
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

    /// Answers every caller waiting on this channel, queued or pending, with `error`.
    fn fail_all(&mut self, error: &PaymentsError) {
        for w in self.waiting.drain(..) {
            w.fail(error.clone());
        }
        for q in self.queue.drain(..) {
            for w in q.waiters {
                w.fail(error.clone());
            }
        }
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
    /// Answer a caller whose change to the channel is now durable.
    Answer(Waiter, ChannelId),
    /// Tell a caller that its release decision is now durable.
    Durable(LockReply),
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
    /// The payment ids remembered, with the channel and state that carry each payment.
    payment_ids: PaymentIds,
    /// Every channel id this node ever held (settled ones leave memory, not this set): an id
    /// is never opened twice.
    known: HashSet<ChannelId>,
    /// Peers that completed a task for this node: an escrow of ours to them was released.
    /// Channels with other peers hold at most `newcomer_share_percent` of the credit.
    completed: HashSet<PeerId>,
    dirty: Vec<ChannelId>,
    wallet_dirty: bool,
    /// A channel settled in this batch (settled ones beyond the kept number leave memory).
    settled_any: bool,
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
        let mut completed = HashSet::new();
        for bytes in &loaded.channels {
            match record::decode(bytes) {
                Ok(c) => {
                    escrows.sync(&c);
                    known.insert(c.id());
                    if released_to_peer(&c) {
                        completed.insert(c.peer());
                    }
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
            payment_ids: PaymentIds::load(MAX_PAYMENT_IDS, &loaded.payment_ids),
            known,
            completed,
            dirty: Vec::new(),
            wallet_dirty,
            settled_any: false,
            settlements: Vec::new(),
            after: Vec::new(),
        };
        actor.prune_settled();
        actor.drop_failed_payment_ids();
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

/// Whether the channel's history shows an escrow of ours released to the peer, as far as the
/// record tells: a channel we opened without a deposit of the peer's, with a release in it
/// (the peer had nothing to lock with but what we paid it).
fn released_to_peer(c: &Channel) -> bool {
    c.local == Side::A
        && c.latest.state.deposit_b == 0
        && c.resolved
            .iter()
            .any(|(_, o)| *o == super::channel::Outcome::Released)
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
        // In the same transaction as the states that carry their payments.
        writes.extend(self.payment_ids.take_writes());
        if !writes.is_empty() {
            self.refresh_gauges();
            if let Err(e) = self.ledger.commit(writes).await {
                tracing::error!(error = %e, "cannot persist channel states; stopping payments");
                for a in self.after.drain(..) {
                    if let After::Answer(w, _) = a {
                        w.fail(PaymentsError::Ledger(e.clone()));
                    }
                }
                return Err(e);
            }
        }
        if std::mem::take(&mut self.settled_any) {
            self.prune_settled();
        }
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
                After::Answer(waiter, id) => self.answer(waiter, id),
                After::Durable(reply) => {
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
        let (_, newcomers) = self.credit();
        let unusable = self.unsettled().filter(|e| e.unusable.is_some()).count();
        self.metrics.exposure(newcomers, unusable);
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
}
