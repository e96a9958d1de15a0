//! Real nodes for the benchmarks: loopback addresses, free ports, quiet logs.
#![allow(dead_code)] // each benchmark uses its own part

use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use zerostate::{Config, NodeHandle};

/// A node config on 127.0.0.1 with free ports, storing in `dir`, joining `bootstrap`.
pub fn config(dir: &Path, bootstrap: Vec<Multiaddr>) -> Config {
    let mut c = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        http: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        allow_private_addrs: true,
        ..Config::default()
    };
    c.discovery.bootstrap_backoff_initial_ms = 200;
    c.validate().unwrap();
    c
}

/// Starts a node and waits until it listens. (Not validated again: a benchmark may set what
/// the config file may not, such as a cache of no entries.)
pub async fn start(config: Config) -> NodeHandle {
    let node = zerostate::start(config).await.unwrap();
    node.wait_listening().await;
    node
}

/// The node's first listen address with its peer id.
pub fn addr(node: &NodeHandle) -> Multiaddr {
    node.p2p().status().listen_addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id()))
}

/// Waits until `node` has a connection.
pub async fn connected(node: &NodeHandle) {
    while node.p2p().connected_peers().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
