//! The handle's calls: each is a command to the actor, answered over a oneshot.

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot};

use super::{AuctionKey, MarketActor, Observed};
use crate::market::MarketError;
use crate::market::view::{PeerReputation, TaskPage, TaskRequest, TaskView};
use crate::market::wire::{AuctionId, now_ms};

pub(super) enum Command {
    Submit(TaskRequest, oneshot::Sender<Result<AuctionId, MarketError>>),
    Task(AuctionId, oneshot::Sender<Option<TaskView>>),
    Tasks(usize, usize, oneshot::Sender<TaskPage>),
    Reputation(oneshot::Sender<Vec<PeerReputation>>),
    Observed(AuctionKey, oneshot::Sender<Option<Observed>>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("market command")
    }
}

/// The handle to the market: submit tasks, read them, read reputation. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MarketService {
    commands: mpsc::Sender<Command>,
}

impl MarketService {
    pub(super) fn from_sender(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, MarketError> {
        Ok(crate::actor::ask(&self.commands, make).await?)
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

impl MarketActor {
    pub(super) fn on_command(&mut self, command: Command) {
        match command {
            Command::Submit(request, reply) => {
                let _ = reply.send(self.submit(request));
            }
            Command::Task(id, reply) => {
                let _ = reply.send(self.tasks.get(&id).map(|t| t.view()));
            }
            Command::Tasks(offset, limit, reply) => {
                let tasks = self
                    .order
                    .iter()
                    .rev()
                    .skip(offset)
                    .take(limit)
                    .filter_map(|id| self.tasks.get(id).map(|t| t.view()))
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
}
