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
    pub kinds: Vec<String>,
    /// Tasks it executes at once (worker threads); it bids only while one is free, with at
    /// most 4 open bids per worker.
    pub capacity: usize,
    /// Price of the smallest task.
    pub base_price: u64,
    /// Price per unit of work: 2^16 hashes for `pow`, 2^20 multiply-adds for `matmul`.
    pub unit_price: u64,
    /// Random spread of its prices, in percent (0 for fixed prices).
    pub price_jitter_percent: u32,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kinds: vec!["pow".into(), "matmul".into()],
            capacity: 2,
            base_price: 10,
            unit_price: 1,
            price_jitter_percent: 10,
        }
    }
}

/// The task kinds that exist.
pub const KINDS: [&str; 2] = ["pow", "matmul"];

impl MarketConfig {
    /// How long a task's escrow stays locked: the award, the execution (`execution_ms`, the
    /// announcement's), the verification, and a margin for clock skew.
    pub fn escrow_ttl_ms(&self, execution_ms: u32) -> u64 {
        self.award_timeout_ms
            .saturating_add(u64::from(execution_ms))
            .saturating_add(self.verify_timeout_ms)
            .saturating_add(service::ESCROW_SLACK_MS)
    }

    /// Checks the ranges; the message names the key and the allowed values.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.bid_window_ms == 0 || self.bid_window_ms > wire::MAX_BID_WINDOW_MS {
            return Err((
                "market.bid_window_ms",
                format!("must be 1..={} ms", wire::MAX_BID_WINDOW_MS),
            ));
        }
        if !wire::EXECUTION_TIMEOUT_MS.contains(&self.execution_timeout_ms) {
            return Err((
                "market.execution_timeout_ms",
                format!(
                    "must be {}..={} ms",
                    wire::EXECUTION_TIMEOUT_MS.start(),
                    wire::EXECUTION_TIMEOUT_MS.end()
                ),
            ));
        }
        if !wire::PRICE.contains(&self.default_max_price) {
            return Err(("market.default_max_price", "must be 1..=2^48".into()));
        }
        // A task's escrow stays locked for all of its time limits; a lock may last a day.
        let escrow_ms = self.escrow_ttl_ms(self.execution_timeout_ms);
        if escrow_ms > crate::payments::wire::MAX_LOCK_TTL_MS {
            return Err((
                "market.verify_timeout_ms",
                format!(
                    "award_timeout_ms + execution_timeout_ms + verify_timeout_ms is {escrow_ms} ms; a task's escrow may be locked for at most {} ms, so lower them",
                    crate::payments::wire::MAX_LOCK_TTL_MS - service::ESCROW_SLACK_MS
                ),
            ));
        }
        const DAY_MS: u64 = 24 * 3600 * 1000;
        let ranges: [(&'static str, u64, u64, u64); 8] = [
            ("market.award_timeout_ms", self.award_timeout_ms, 1, DAY_MS),
            (
                "market.verify_timeout_ms",
                self.verify_timeout_ms,
                1,
                DAY_MS,
            ),
            ("market.max_retries", self.max_retries.into(), 0, 100),
            (
                "market.max_running_tasks",
                self.max_running_tasks as u64,
                1,
                100_000,
            ),
            (
                "market.max_kept_tasks",
                self.max_kept_tasks as u64,
                1,
                1_000_000,
            ),
            (
                "market.provider.capacity",
                self.provider.capacity as u64,
                1,
                1024,
            ),
            (
                "market.reputation.ban_secs",
                self.reputation.ban_secs,
                0,
                30 * 24 * 3600,
            ),
            (
                "market.reputation.half_life_secs",
                self.reputation.half_life_secs,
                1,
                365 * 24 * 3600,
            ),
        ];
        for (key, value, least, most) in ranges {
            if value < least || value > most {
                return Err((
                    key,
                    format!("{value} is out of range: use a value from {least} to {most}"),
                ));
            }
        }
        let p = &self.provider;
        if p.base_price > 1 << 40 || p.unit_price > 1 << 40 {
            return Err((
                "market.provider.base_price",
                "base_price and unit_price must be at most 2^40".into(),
            ));
        }
        if let Some(k) = self
            .provider
            .kinds
            .iter()
            .find(|k| !KINDS.contains(&k.as_str()))
        {
            return Err((
                "market.provider.kinds",
                format!("unknown task kind `{k}`; the kinds are {KINDS:?}"),
            ));
        }
        if self.provider.price_jitter_percent > 100 {
            return Err((
                "market.provider.price_jitter_percent",
                "must be 0..=100".into(),
            ));
        }
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
