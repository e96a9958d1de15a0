//! What the market shows through the API: task submissions, task timelines, reputation.

use serde::{Deserialize, Serialize};

use super::wire::{AuctionType, MATMUL_N, MAX_POW_INPUT, POW_DIFFICULTY, PRICE};

/// A task to submit (`POST /api/v1/tasks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// `pow` or `matmul`.
    pub kind: String,
    /// `pow`: leading zero bits wanted (1..=32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub difficulty: Option<u32>,
    /// `pow`: the input as text (random if absent), at most 1024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `matmul`: the dimension (1..=512); the matrices are random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// The highest price to pay (`market.default_max_price` if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<u64>,
    /// `first_price` or `second_price` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auction_type: Option<AuctionType>,
    /// Weight bids by reputation (`market.reputation_weighted` if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation_weighted: Option<bool>,
}

impl TaskRequest {
    /// Checks every field; the message says which one is wrong and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        match self.kind.as_str() {
            "pow" => {
                let d = self.difficulty.ok_or("`difficulty` is required for pow")?;
                if !POW_DIFFICULTY.contains(&d) {
                    return Err(format!("`difficulty` must be 1..=32, got {d}"));
                }
                if self.input.as_ref().is_some_and(|i| i.len() > MAX_POW_INPUT) {
                    return Err(format!("`input` is longer than {MAX_POW_INPUT} bytes"));
                }
                if self.n.is_some() {
                    return Err("`n` is for matmul tasks".into());
                }
            }
            "matmul" => {
                let n = self.n.ok_or("`n` is required for matmul")?;
                if !MATMUL_N.contains(&n) {
                    return Err(format!("`n` must be 1..=512, got {n}"));
                }
                if self.difficulty.is_some() || self.input.is_some() {
                    return Err("`difficulty` and `input` are for pow tasks".into());
                }
            }
            other => return Err(format!("unknown kind `{other}`; use `pow` or `matmul`")),
        }
        if let Some(p) = self.max_price
            && !PRICE.contains(&p)
        {
            return Err(format!("`max_price` must be 1..=2^48, got {p}"));
        }
        Ok(())
    }
}

/// A bid as the requester saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidView {
    /// The bidder.
    pub bidder: String,
    /// Its price.
    pub price: u64,
    /// The weight applied, per mille.
    pub weight: u32,
}

/// One auction of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptView {
    /// The auction's id.
    pub auction_id: String,
    /// The bids received.
    pub bids: Vec<BidView>,
    /// The winner, once selected.
    pub winner: Option<String>,
    /// The price, once selected.
    pub price: Option<u64>,
    /// `success`, or the error that ended this attempt; absent while it runs.
    pub outcome: Option<String>,
}

/// A task and its history (`GET /api/v1/tasks/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task's id.
    pub id: String,
    /// `pow` or `matmul`.
    pub kind: String,
    /// `first_price` or `second_price`.
    pub auction_type: AuctionType,
    /// The highest price.
    pub max_price: u64,
    /// `running`, `success`, `failed` or `timeout`.
    pub status: String,
    /// The provider that delivered the verified result.
    pub winner: Option<String>,
    /// The price paid.
    pub price: Option<u64>,
    /// How verification ended: `verified`, or the error.
    pub verification: Option<String>,
    /// When it was submitted (Unix ms).
    pub submitted_ms: u64,
    /// When it ended (Unix ms).
    pub finished_ms: Option<u64>,
    /// Its auctions, first to last.
    pub attempts: Vec<AttemptView>,
    /// What happened, in order: `(Unix ms, event)`.
    pub timeline: Vec<(u64, String)>,
}

/// A page of tasks (`GET /api/v1/tasks?offset=&limit=`), newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPage {
    /// Tasks known.
    pub total: usize,
    /// The offset of this page.
    pub offset: usize,
    /// The tasks.
    pub tasks: Vec<TaskView>,
}

/// One peer's reputation (`GET /api/v1/reputation`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReputation {
    /// The peer.
    pub peer_id: String,
    /// Its score now, 0..1 (neutral 0.5).
    pub score: f64,
    /// Tasks it finished for us.
    pub executed: u64,
    /// Verified successes.
    pub successes: u64,
    /// Failures.
    pub failures: u64,
    /// Successes over tasks.
    pub success_rate: f64,
    /// Mean time from award to verified result, seconds.
    pub mean_duration_secs: f64,
    /// Mean price of its successful tasks.
    pub mean_cost: f64,
    /// Whether it is banned now.
    pub banned: bool,
}
