//! The integration tests, in one binary (one link step instead of one per file): real nodes
//! in-process on 127.0.0.1 with port 0, the real binary for the CLI, raw libp2p swarms that
//! play hostile peers, and a real Prometheus for the end-to-end test.

mod common;

mod attack_channels;
mod attack_flood;
mod attack_requesters;
mod attack_winners;
mod channel_vectors;
mod cli;
mod content;
mod e2e_prometheus;
mod hostile;
mod http_api;
mod layering;
mod malformed;
mod market;
mod market_hostile;
mod monitor;
mod network;
mod operator;
mod payments;
mod vectors;
