//! What the market shows through the API: task submissions, task timelines, reputation.

use serde::{Deserialize, Serialize};

use super::kinds::{TaskKind, TaskParams, UnknownKind};
use super::task::TaskStatus;
use super::wire::{AuctionType, PRICE};

/// A task to submit (`POST /api/v1/tasks`). In JSON it is tagged by `kind`:
/// `{"kind":"pow","difficulty":8,"input":"hello"}` or `{"kind":"matmul","n":64}`, with the
/// common fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TaskRequestBody", into = "TaskRequestBody")]
pub struct TaskRequest {
    /// What to compute.
    pub params: TaskParams,
    /// The highest price to pay (`market.default_max_price` if absent).
    pub max_price: Option<u64>,
    /// `first_price` or `second_price` (default).
    pub auction_type: Option<AuctionType>,
    /// Weight bids by reputation (`market.reputation_weighted` if absent).
    pub reputation_weighted: Option<bool>,
}

impl TaskRequest {
    /// A task of `params` with every other field at the node's default.
    pub fn new(params: TaskParams) -> Self {
        Self {
            params,
            max_price: None,
            auction_type: None,
            reputation_weighted: None,
        }
    }

    /// Checks every field; the message says which one is wrong and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        self.params.validate()?;
        if let Some(p) = self.max_price
            && !PRICE.contains(&p)
        {
            return Err(format!("`max_price` must be 1..=2^48, got {p}"));
        }
        Ok(())
    }
}

/// The JSON form of a [`TaskRequest`]: one flat object whose `kind` says which of the
/// other fields belong to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskRequestBody {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    difficulty: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_price: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auction_type: Option<AuctionType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reputation_weighted: Option<bool>,
}

impl TryFrom<TaskRequestBody> for TaskRequest {
    type Error = String;

    fn try_from(b: TaskRequestBody) -> Result<Self, String> {
        let kind: TaskKind = b.kind.parse().map_err(|e: UnknownKind| e.to_string())?;
        let params = match kind {
            TaskKind::Pow => {
                if b.n.is_some() {
                    return Err("`n` is for matmul tasks".into());
                }
                TaskParams::Pow {
                    difficulty: b.difficulty.ok_or("`difficulty` is required for pow")?,
                    input: b.input,
                }
            }
            TaskKind::Matmul => {
                if b.difficulty.is_some() || b.input.is_some() {
                    return Err("`difficulty` and `input` are for pow tasks".into());
                }
                TaskParams::Matmul {
                    n: b.n.ok_or("`n` is required for matmul")?,
                }
            }
        };
        Ok(Self {
            params,
            max_price: b.max_price,
            auction_type: b.auction_type,
            reputation_weighted: b.reputation_weighted,
        })
    }
}

impl From<TaskRequest> for TaskRequestBody {
    fn from(r: TaskRequest) -> Self {
        let kind = r.params.kind().label().to_owned();
        let (difficulty, input, n) = match r.params {
            TaskParams::Pow { difficulty, input } => (Some(difficulty), input, None),
            TaskParams::Matmul { n } => (None, None, Some(n)),
        };
        Self {
            kind,
            difficulty,
            input,
            n,
            max_price: r.max_price,
            auction_type: r.auction_type,
            reputation_weighted: r.reputation_weighted,
        }
    }
}

/// A task's parameters as the API shows them, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ParametersView {
    /// A `pow` task.
    Pow {
        /// Leading zero bits wanted.
        difficulty: u32,
        /// The input, when it is text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<String>,
        /// The input's bytes in hex (what the nonce is hashed with).
        input_hex: String,
    },
    /// A `matmul` task.
    Matmul {
        /// The dimension.
        n: u32,
        /// The content id of the left matrix.
        a: String,
        /// The content id of the right matrix.
        b: String,
    },
}

/// A verified result as the API shows it: `{"nonce":123}` or `{"product":"bafkr4i..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultView {
    /// The nonce that solves a `pow` task.
    Nonce(u64),
    /// The content id of a `matmul` product (`GET /api/v1/content/{id}` fetches it).
    Product(String),
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
    /// The kind.
    pub kind: TaskKind,
    /// What it computes.
    pub parameters: Option<ParametersView>,
    /// `first_price` or `second_price`.
    pub auction_type: AuctionType,
    /// The highest price.
    pub max_price: u64,
    /// `running`, `success`, `failed` or `timeout`.
    pub status: TaskStatus,
    /// The provider that delivered the verified result.
    pub winner: Option<String>,
    /// The price paid.
    pub price: Option<u64>,
    /// How verification ended: `verified`, or the error.
    pub verification: Option<String>,
    /// The verified result, once the task succeeded.
    pub result: Option<ResultView>,
    /// Why the task failed, in words, once it failed.
    pub error: Option<String>,
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
