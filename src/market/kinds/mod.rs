//! Task kinds: what providers execute and how requesters verify it, at a fraction of the cost.
//!
//! - [`pow`]: a nonce whose hash has enough leading zero bits; verified with one hash.
//! - [`matmul`]: the product of two matrices over a prime field; verified with Freivalds'
//!   check.
//!
//! **This file is the one place a kind plugs in.** Each kind supplies, in its own module and
//! through one arm of each `match` below: its request parameters ([`TaskParams`]), how the
//! requester prepares its spec ([`prepare`]), how the winner loads its input ([`load_input`])
//! and stores what it computed ([`store_output`]), how the requester verifies the output
//! ([`verify`]), its units of work for pricing ([`work_units`]), and how the API shows its
//! parameters and result. The wire form of a kind is [`TaskSpec`] and [`Output`] (and the
//! protobuf schema in `proto/market.proto`).
//!
//! Execution runs on the provider's worker pool through the [`Executor`] trait, so a library
//! user can plug in other implementations of these kinds; verification is not pluggable.

pub mod matmul;
pub mod pow;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use matmul::{FREIVALDS_ROUNDS, MODULUS, Matrix, freivalds};
pub use pow::{leading_zero_bits, pow_hash, pow_solve, pow_verify};

use super::task::AttemptError;
use super::view::{ParametersView, ResultView};
use super::wire::{MATMUL_N, MAX_POW_INPUT, Output, POW_DIFFICULTY, TaskSpec};
use crate::content::ContentService;

/// The kinds of task the market knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Proof of work.
    Pow,
    /// Matrix multiplication.
    Matmul,
}

impl TaskKind {
    /// Every kind.
    pub const ALL: [TaskKind; 2] = [Self::Pow, Self::Matmul];

    /// The kind's name: the `kind` of the API and the `type` label of the task metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pow => "pow",
            Self::Matmul => "matmul",
        }
    }

    /// The kind of a task on the wire.
    pub fn of(spec: &TaskSpec) -> Self {
        match spec {
            TaskSpec::Pow { .. } => Self::Pow,
            TaskSpec::Matmul { .. } => Self::Matmul,
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A name that is not a task kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind `{0}`; use one of: pow, matmul")]
pub struct UnknownKind(pub String);

impl FromStr for TaskKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.label() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// What a user asks to compute: the kind and its own parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskParams {
    /// A `pow` task.
    Pow {
        /// Leading zero bits wanted (1..=32).
        difficulty: u32,
        /// The input as text (random bytes if absent), at most 1024 bytes.
        input: Option<String>,
    },
    /// A `matmul` task on two random n×n matrices.
    Matmul {
        /// The dimension (1..=512).
        n: u32,
    },
}

impl TaskParams {
    /// The kind.
    pub fn kind(&self) -> TaskKind {
        match self {
            Self::Pow { .. } => TaskKind::Pow,
            Self::Matmul { .. } => TaskKind::Matmul,
        }
    }

    /// Checks the ranges; the message names the field and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Pow { difficulty, input } => {
                if !POW_DIFFICULTY.contains(difficulty) {
                    return Err(format!("`difficulty` must be 1..=32, got {difficulty}"));
                }
                if input.as_ref().is_some_and(|i| i.len() > MAX_POW_INPUT) {
                    return Err(format!("`input` is longer than {MAX_POW_INPUT} bytes"));
                }
            }
            Self::Matmul { n } => {
                if !MATMUL_N.contains(n) {
                    return Err(format!("`n` must be 1..=512, got {n}"));
                }
            }
        }
        Ok(())
    }
}

/// Why execution stopped without a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The per-task time limit passed.
    #[error("the task's time limit passed")]
    TimeLimit,
    /// The input cannot be executed.
    #[error("bad input: {0}")]
    BadInput(String),
}

/// A task's input, ready to execute.
#[derive(Debug, Clone)]
pub enum Input {
    /// A pow task.
    Pow {
        /// The input bytes.
        input: Vec<u8>,
        /// Leading zero bits wanted.
        difficulty: u32,
    },
    /// A matmul task with its matrices fetched and parsed.
    Matmul {
        /// Left.
        a: Matrix,
        /// Right.
        b: Matrix,
    },
}

/// What execution produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Computed {
    /// A pow nonce.
    Nonce(u64),
    /// A matmul product.
    Product(Matrix),
}

/// Executes tasks. Called on a worker thread, never on an async task; must return by
/// `deadline` (with [`ExecError::TimeLimit`] if unfinished).
pub trait Executor: Send + Sync + 'static {
    /// Executes `input`.
    fn execute(&self, input: &Input, deadline: Instant) -> Result<Computed, ExecError>;
}

/// The built-in executor of both kinds.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltIn;

impl Executor for BuiltIn {
    fn execute(&self, input: &Input, deadline: Instant) -> Result<Computed, ExecError> {
        match input {
            Input::Pow { input, difficulty } => {
                pow_solve(input, *difficulty, deadline).map(Computed::Nonce)
            }
            Input::Matmul { a, b } => a.multiply(b, deadline).map(Computed::Product),
        }
    }
}

/// The requester's side: builds the task's spec from its parameters (stores matmul inputs
/// as content).
pub async fn prepare(params: &TaskParams, content: &ContentService) -> Result<TaskSpec, String> {
    match params {
        TaskParams::Pow { difficulty, input } => Ok(TaskSpec::Pow {
            input: match input {
                Some(text) => text.clone().into_bytes(),
                None => rand::random::<[u8; 16]>().to_vec(),
            },
            difficulty: *difficulty,
        }),
        TaskParams::Matmul { n } => {
            let (a, b) = matmul::prepare(*n, content).await?;
            Ok(TaskSpec::Matmul { n: *n, a, b })
        }
    }
}

/// The winner's side: what its executor needs, fetched and parsed.
pub async fn load_input(spec: &TaskSpec, content: &ContentService) -> Result<Input, String> {
    match spec {
        TaskSpec::Pow { input, difficulty } => Ok(Input::Pow {
            input: input.clone(),
            difficulty: *difficulty,
        }),
        TaskSpec::Matmul { n, a, b } => {
            let (a, b) = matmul::load(*n, *a, *b, content).await?;
            Ok(Input::Matmul { a, b })
        }
    }
}

/// The winner's side: what it sends back for what it computed (storing a product as
/// content).
pub async fn store_output(computed: Computed, content: &ContentService) -> Result<Output, String> {
    match computed {
        Computed::Nonce(n) => Ok(Output::PowNonce(n)),
        Computed::Product(m) => content
            .put(Bytes::from(m.to_bytes()))
            .await
            .map(Output::MatmulProduct)
            .map_err(|e| format!("storing the product: {e}")),
    }
}

/// The requester's side: checks an output against the task, at a fraction of the work.
pub async fn verify(
    spec: TaskSpec,
    output: Output,
    content: &ContentService,
) -> Result<(), AttemptError> {
    match (spec, output) {
        (TaskSpec::Pow { input, difficulty }, Output::PowNonce(nonce)) => {
            if pow_verify(&input, difficulty, nonce) {
                Ok(())
            } else {
                Err(AttemptError::WrongResult)
            }
        }
        (TaskSpec::Matmul { n, a, b }, Output::MatmulProduct(c)) => {
            matmul::verify(n, a, b, c, content).await
        }
        // An output of another kind than the task's.
        _ => Err(AttemptError::WrongResult),
    }
}

/// Units of work of a task, for a provider's price.
pub fn work_units(spec: &TaskSpec) -> u64 {
    match spec {
        TaskSpec::Pow { difficulty, .. } => pow::work_units(*difficulty),
        TaskSpec::Matmul { n, .. } => matmul::work_units(*n),
    }
}

/// How the API shows a task's parameters.
pub fn parameters_view(spec: &TaskSpec) -> ParametersView {
    match spec {
        TaskSpec::Pow { input, difficulty } => ParametersView::Pow {
            difficulty: *difficulty,
            input: std::str::from_utf8(input).ok().map(str::to_owned),
            input_hex: hex::encode(input),
        },
        TaskSpec::Matmul { n, a, b } => ParametersView::Matmul {
            n: *n,
            a: a.to_string(),
            b: b.to_string(),
        },
    }
}

/// How the API shows a verified result.
pub fn result_view(output: &Output) -> ResultView {
    match output {
        Output::PowNonce(nonce) => ResultView::Nonce(*nonce),
        Output::MatmulProduct(id) => ResultView::Product(id.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_from_their_labels_only() {
        for k in TaskKind::ALL {
            assert_eq!(k.label().parse::<TaskKind>(), Ok(k));
        }
        let err = "sort".parse::<TaskKind>().unwrap_err();
        assert!(err.to_string().contains("unknown kind `sort`"), "{err}");
    }

    #[test]
    fn parameters_are_range_checked() {
        assert!(
            TaskParams::Pow {
                difficulty: 33,
                input: None
            }
            .validate()
            .unwrap_err()
            .contains("`difficulty` must be 1..=32")
        );
        assert!(
            TaskParams::Matmul { n: 0 }
                .validate()
                .unwrap_err()
                .contains("`n` must be 1..=512")
        );
        assert!(TaskParams::Matmul { n: 512 }.validate().is_ok());
    }
}
