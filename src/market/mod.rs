//! The task market: auctions announced on gossip, sealed signed bids sent straight to the
//! requester, verifiable awards, verified execution and reputation.
//!
//! The market is a service behind the swarm, like content and payments: an actor
//! ([`MarketActor`], split by role under `service/`) around pure parts — the task lifecycle
//! ([`task`]), the auction book ([`auction`]), the task kinds ([`kinds`]), the reputation
//! table ([`reputation`]) and the wire format ([`wire`]). Its gossip and requests arrive
//! through the routing; execution runs on a bounded pool of blocking threads.

pub mod auction;
pub mod kinds;
mod metrics;
pub mod reputation;
pub mod requesters;
mod service;
pub mod task;
mod view;
pub mod wire;

use serde::{Deserialize, Serialize};

pub use kinds::{TaskKind, TaskParams};
pub use metrics::MarketMetrics;
pub use reputation::ReputationConfig;
pub use service::{MarketActor, MarketDeps, MarketService, Observed, escrow_id};
pub use task::{AttemptError, Fault, TaskStatus};
pub use view::{
    AttemptView, BidView, ParametersView, PeerReputation, ResultView, TaskPage, TaskRequest,
    TaskView,
};

/// Market settings (`[market]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarketConfig {
    /// How long an auction takes bids, in milliseconds.
    pub bid_window_ms: u64,
    /// Time the winner has to deliver a result, from the award, in milliseconds.
    pub execution_timeout_ms: u32,
    /// Time the winner has to accept an award, in milliseconds.
    pub award_timeout_ms: u64,
    /// Time to fetch and verify a result, in milliseconds.
    pub verify_timeout_ms: u64,
    /// How often a failed or timed-out task is re-auctioned (without the providers that
    /// failed it).
    pub max_retries: u32,
    /// Most tasks of this node in progress at once; more submissions are refused.
    pub max_running_tasks: usize,
    /// Most tasks kept for the API; the oldest finished ones are forgotten.
    pub max_kept_tasks: usize,
    /// Maximum price of a task submitted without one.
    pub default_max_price: u64,
    /// Whether submitted tasks weight bids by reputation unless the request says otherwise.
    pub reputation_weighted: bool,
    /// Most of this node's awards a provider on probation (no verified result for this node
    /// yet) holds at once; its further bids are left out at the close.
    pub probation_max_awards: usize,
    /// Weight (per mille, 1000 neutral, 1500 worst) a provider on probation has at least in
    /// reputation-weighted auctions: a newcomer starts worse than neutral.
    pub probation_weight: u32,
    /// What this node offers as a provider.
    pub provider: ProviderConfig,
    /// How this node rates the peers that execute its tasks.
    pub reputation: ReputationConfig,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            bid_window_ms: 1_000,
            execution_timeout_ms: 30_000,
            award_timeout_ms: 5_000,
            verify_timeout_ms: 30_000,
            max_retries: 2,
            max_running_tasks: 256,
            max_kept_tasks: 1_000,
            default_max_price: 1_000,
            reputation_weighted: true,
            probation_max_awards: 1,
            probation_weight: 1_250,
            provider: ProviderConfig::default(),
            reputation: ReputationConfig::default(),
        }
    }
}

/// What a node offers as a provider (`[market.provider]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Task kinds this node bids on (`pow`, `matmul`); empty: it never bids.
    pub kinds: Vec<TaskKind>,
    /// Tasks it executes at once (worker threads); it bids only while one is free, with at
    /// most 4 open bids per worker.
    pub capacity: usize,
    /// Price of the smallest task.
    pub base_price: u64,
    /// Price per unit of work: 2^16 hashes for `pow`, 2^20 multiply-adds for `matmul`.
    pub unit_price: u64,
    /// Random spread of its prices, in percent (0 for fixed prices).
    pub price_jitter_percent: u32,
    /// After a requester refuses a bid, no bids for it for this long, in milliseconds;
    /// doubled with each refusal in a row, up to `penalty_secs`.
    pub refusal_backoff_ms: u64,
    /// How long a requester that let bids lapse without an award or left executed awards
    /// unpaid gets no bids, in seconds.
    pub penalty_secs: u64,
    /// Strikes (a bid lapsed without award: 1; an award left unpaid: 2) at which a requester
    /// is penalised; each strike before halves the bids it may hold.
    pub max_strikes: u32,
    /// Most of the workers one requester's tasks may hold, in percent of `capacity` (at
    /// least one worker).
    pub max_worker_share_percent: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kinds: TaskKind::ALL.to_vec(),
            capacity: 2,
            base_price: 10,
            unit_price: 1,
            price_jitter_percent: 10,
            refusal_backoff_ms: 1_000,
            penalty_secs: 300,
            max_strikes: 4,
            max_worker_share_percent: 50,
        }
    }
}

impl MarketConfig {
    /// How long a task's escrow stays locked: the award, the execution (`execution_ms`, the
    /// announcement's), the verification, and a margin for clock skew.
    pub fn escrow_ttl_ms(&self, execution_ms: u32) -> u64 {
        self.award_timeout_ms
            .saturating_add(u64::from(execution_ms))
            .saturating_add(self.verify_timeout_ms)
            .saturating_add(service::ESCROW_SLACK_MS)
    }

    /// Checks the ranges; the error names the key and the allowed values.
    pub fn validate(&self) -> Result<(), crate::config_value::ConfigValueError> {
        use crate::config_value::{ConfigValueError, DAY_MS, in_range};
        use crate::payments::wire::MAX_LOCK_TTL_MS;
        let bid_window = self.bid_window_ms;
        in_range(
            "market.bid_window_ms",
            bid_window,
            1..=wire::MAX_BID_WINDOW_MS,
        )?;
        let execution = self.execution_timeout_ms;
        in_range(
            "market.execution_timeout_ms",
            execution,
            wire::EXECUTION_TIMEOUT_MS,
        )?;
        in_range(
            "market.default_max_price",
            self.default_max_price,
            wire::PRICE,
        )?;
        in_range("market.award_timeout_ms", self.award_timeout_ms, 1..=DAY_MS)?;
        in_range(
            "market.verify_timeout_ms",
            self.verify_timeout_ms,
            1..=DAY_MS,
        )?;
        // A task's escrow stays locked for all of its time limits; a lock may last a day.
        let escrow_ms = self.escrow_ttl_ms(self.execution_timeout_ms);
        if escrow_ms > MAX_LOCK_TTL_MS {
            return Err(ConfigValueError::new(
                "market.verify_timeout_ms",
                format!(
                    "award_timeout_ms + execution_timeout_ms + verify_timeout_ms is {escrow_ms} ms; a task's escrow may be locked for at most {} ms, so lower them",
                    MAX_LOCK_TTL_MS - service::ESCROW_SLACK_MS
                ),
            ));
        }
        in_range("market.max_retries", self.max_retries, 0..=100)?;
        in_range(
            "market.max_running_tasks",
            self.max_running_tasks,
            1..=100_000,
        )?;
        in_range("market.max_kept_tasks", self.max_kept_tasks, 1..=1_000_000)?;
        in_range(
            "market.probation_max_awards",
            self.probation_max_awards,
            1..=100_000,
        )?;
        in_range(
            "market.probation_weight",
            self.probation_weight,
            wire::NEUTRAL_WEIGHT..=*wire::WEIGHT.end(),
        )?;
        let p = &self.provider;
        in_range("market.provider.capacity", p.capacity, 1..=1024)?;
        in_range("market.provider.base_price", p.base_price, 0..=1 << 40)?;
        in_range("market.provider.unit_price", p.unit_price, 0..=1 << 40)?;
        let jitter = p.price_jitter_percent;
        in_range("market.provider.price_jitter_percent", jitter, 0..=100)?;
        let backoff = p.refusal_backoff_ms;
        in_range("market.provider.refusal_backoff_ms", backoff, 0..=600_000)?;
        in_range("market.provider.penalty_secs", p.penalty_secs, 1..=604_800)?;
        in_range("market.provider.max_strikes", p.max_strikes, 1..=64)?;
        let share = p.max_worker_share_percent;
        in_range("market.provider.max_worker_share_percent", share, 1..=100)?;
        self.reputation.validate()
    }
}

/// Why a market call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    /// The request is invalid; the message says which field and why.
    #[error("invalid task: {0}")]
    Invalid(String),
    /// Too many tasks are in progress.
    #[error("too many tasks in progress (market.max_running_tasks = {0}); try again later")]
    Busy(usize),
    /// The content for a task could not be stored.
    #[error("cannot store the task's input: {0}")]
    Content(String),
    /// The market service has stopped (the node is shutting down).
    #[error("the market service has stopped")]
    Stopped,
}
