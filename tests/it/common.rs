//! Helpers shared by the integration tests: real nodes on 127.0.0.1 with port 0.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response;
use libp2p::{Multiaddr, StreamProtocol};
use zerostate::{Config, NodeHandle};

/// A config for a test node: loopback, free ports, fast discovery and pings.
pub fn test_config(data_dir: &Path, bootstrap: Vec<Multiaddr>) -> Config {
    let mut c = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        http: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        allow_private_addrs: true,
        ..Config::default()
    };
    c.discovery.random_walk_interval_secs = 2;
    c.discovery.bootstrap_backoff_initial_ms = 200;
    c.discovery.bootstrap_backoff_max_ms = 1_000;
    c.monitor.ping_interval_ms = 500;
    c.validate().expect("test config is valid");
    c
}

/// Starts a node and waits until it listens.
pub async fn start(config: Config) -> NodeHandle {
    let node = zerostate::start(config).await.expect("node starts");
    tokio::time::timeout(Duration::from_secs(10), node.wait_listening())
        .await
        .expect("node listens within 10 s");
    node
}

/// The node's first listen address with its peer id, for use as a bootstrap address.
pub fn p2p_addr(node: &NodeHandle) -> Multiaddr {
    let addr = node.p2p().status().listen_addrs[0].clone();
    addr.with(libp2p::multiaddr::Protocol::P2p(node.peer_id()))
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GETs `path` from the node's HTTP server and returns status and body.
pub async fn get(node: &NodeHandle, path: &str) -> (u16, String) {
    let url = format!("http://{}{}", node.http_addr(), path);
    let resp = reqwest::get(&url).await.expect("http request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The sum of every sample of `name` (exact metric name, any labels) in an exposition.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let metric = series.split('{').next().unwrap();
        if metric == name {
            let v: f64 = value.parse().ok()?;
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The value of one exact series (name with labels as printed), if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Starts `n` nodes; nodes 2..n know only node 1. Waits until each has `n - 1` peers.
pub async fn start_network(
    dirs: &[tempfile::TempDir],
    tweak: impl Fn(&mut Config),
) -> Vec<NodeHandle> {
    let mut config = test_config(dirs[0].path(), vec![]);
    tweak(&mut config);
    let first = start(config).await;
    let bootstrap = p2p_addr(&first);
    let mut nodes = vec![first];
    for dir in &dirs[1..] {
        let mut config = test_config(dir.path(), vec![bootstrap.clone()]);
        tweak(&mut config);
        nodes.push(start(config).await);
    }
    let want = dirs.len() - 1;
    for (i, node) in nodes.iter().enumerate() {
        eventually(
            Duration::from_secs(60),
            &format!("node {i} connected to {want}"),
            || async { (node.p2p().connected_peers().await.ok()?.len() >= want).then_some(()) },
        )
        .await;
    }
    nodes
}

/// A raw libp2p swarm on TCP (noise, yamux) with a new identity and `behaviour`, for tests
/// that play a peer; idle connections stay open for 60 s.
pub fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Scrapes `/metrics` of a node.
pub async fn scrape(node: &NodeHandle) -> String {
    get(node, "/metrics").await.1
}

/// A request-response codec for hostile peers: sends whatever bytes it is given, and reads
/// up to 1 KiB back.
#[derive(Clone, Default)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        io.take(64 * 1024).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        self.write_request(p, io, res).await
    }
}
