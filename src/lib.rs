//! ZeroState: a libp2p node for a decentralized compute market whose economics you can watch.
//!
//! The binary `zerostate` wraps this library. [`node::start`] runs a node from a
//! [`config::Config`]; everything it does reports into one prometheus-client registry that
//! the HTTP server exposes on `/metrics`.

pub mod actor;
pub mod client;
pub mod clock;
pub mod config;
pub mod config_value;
pub mod content;
pub mod content_id;
pub mod health;
pub mod http;
pub mod identity;
pub mod ledger;
pub mod market;
pub mod metrics;
pub mod node;
pub mod p2p;
pub mod payments;

pub use config::Config;
pub use node::{NodeHandle, start};
