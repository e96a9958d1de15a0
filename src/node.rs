//! [`start`] wires a node together: identity, metrics, swarm, services, HTTP server; the
//! [`NodeHandle`] controls it and shuts it down gracefully.
//!
//! This is where the layers meet: the swarm's event loop knows no service, so `start`
//! creates each service's inbox and hands the senders to the loop as its [`Routes`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libp2p::PeerId;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::content::{CacheMetrics, ContentCache, ContentMetrics, ContentService};
use crate::health::{Health, readiness, supervise};
use crate::http::{self, ApiState, HttpMetrics};
use crate::identity::{self, IdentityError};
use crate::ledger::{Ledger, LedgerError};
use crate::market::kinds::{BuiltIn, Executor};
use crate::market::wire::{AUCTIONS_TOPIC, RESULTS_TOPIC};
use crate::market::{MarketDeps, MarketMetrics, MarketService};
use crate::metrics;
use crate::p2p::announce::MetricsUrl;
use crate::p2p::{
    self, EventLoop, FrameProtocol, MonitorMetrics, P2pError, P2pHandle, P2pMetrics, PeerMonitor,
    Routes,
};
use crate::payments::wire::DISPUTES_TOPIC;
use crate::payments::{PaymentMetrics, PaymentsService};

/// Name of the file, in the data dir, that tells tools where a running node can be reached.
pub const NODE_INFO_FILE: &str = "node.json";

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data dir, the identity key or the API token could not be used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The swarm could not be built or could not listen.
    #[error(transparent)]
    P2p(#[from] P2pError),
    /// The HTTP server could not bind.
    #[error("{0}")]
    Http(std::io::Error),
    /// The ledger could not be opened.
    #[error("{0} (is another process using this data dir, or is the file damaged?)")]
    Ledger(#[from] LedgerError),
}

/// A running node.
pub struct NodeHandle {
    peer_id: PeerId,
    http_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    api_token: String,
    p2p: P2pHandle,
    content: ContentService,
    market: MarketService,
    payments: PaymentsService,
    ledger_thread: crate::ledger::LedgerThread,
    registry: Arc<Registry>,
    health: Health,
    cancel: CancellationToken,
    tasks: TaskTracker,
    _lock: std::fs::File,
}

impl NodeHandle {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Where the HTTP server listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the `/metrics`-only server listens (`metrics.listen`), if it runs.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bearer token of the control API.
    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// The handle to the swarm's event loop.
    pub fn p2p(&self) -> &P2pHandle {
        &self.p2p
    }

    /// The node's content: put, get (local or from the network), has.
    pub fn content(&self) -> &ContentService {
        &self.content
    }

    /// The node's task market: submit tasks, read them and reputation.
    pub fn market(&self) -> &MarketService {
        &self.market
    }

    /// The node's payment channels and wallet.
    pub fn payments(&self) -> &PaymentsService {
        &self.payments
    }

    /// The node's metrics registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The node's health.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Waits until the node listens on at least one p2p address.
    pub async fn wait_listening(&self) {
        let mut status = self.p2p.watch_status();
        let _ = status.wait_for(|s| !s.listen_addrs.is_empty()).await;
    }

    /// Stops the HTTP server, the services and the swarm, and waits for every task.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        // Every holder of the ledger has stopped: wait until it is closed, so the data dir
        // can be used again at once.
        drop(self.payments);
        drop(self.market);
        self.ledger_thread.join().await;
        tracing::info!(peer_id = %self.peer_id, "node stopped");
    }
}

/// What the node writes to `<data_dir>/node.json` for scripts and operators.
#[derive(Debug, Serialize)]
struct RuntimeInfo<'a> {
    peer_id: String,
    listen_addrs: Vec<String>,
    http: String,
    pid: u32,
    version: &'a str,
}

/// Starts a node from a validated config. Returns once it is listening for HTTP and has
/// started listening for p2p connections.
pub async fn start(config: Config) -> Result<NodeHandle, NodeError> {
    start_with_executor(config, Arc::new(BuiltIn)).await
}

/// Like [`start`], with `executor` executing the tasks this node wins as a provider.
pub async fn start_with_executor(
    config: Config,
    executor: Arc<dyn Executor>,
) -> Result<NodeHandle, NodeError> {
    let data_dir = config.data_dir.clone();
    let lock = identity::lock_data_dir(&data_dir)?;
    let key = identity::load_or_create(&data_dir)?;
    let peer_id = key.public().to_peer_id();
    let api_token = identity::load_or_create_token(&data_dir, &config.api_token)?;
    let token_hint = if config.api_token.is_empty() {
        format!(
            "the token is in the file `{}` of the node's data dir",
            identity::TOKEN_FILE
        )
    } else {
        "the token is the configured `api_token`".to_owned()
    };

    // The HTTP server binds first: the metrics endpoint announced to peers may take its port.
    let listener = http::bind(config.http).await.map_err(NodeError::Http)?;
    let http_addr = listener.local_addr().map_err(NodeError::Http)?;
    if !config.http_is_loopback() {
        tracing::warn!(%http_addr, "HTTP API is reachable from other hosts; state-changing calls still need the token");
    }
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            NodeError::Http(std::io::Error::new(
                e.kind(),
                format!("cannot bind the metrics server to {addr}: {e} (set `metrics.listen` or ZEROSTATE_METRICS_LISTEN to a free address, or port 0)"),
            ))
        })?),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => Some(l.local_addr().map_err(NodeError::Http)?),
        None => None,
    };
    let metrics_endpoint = metrics_addr.unwrap_or(http_addr);
    let announce = config.metrics_announce(metrics_endpoint.port());
    if let Some(url) = &announce {
        tracing::info!(%url, "announcing the metrics endpoint to peers");
    }

    let mut registry = metrics::new_registry();
    let zs = registry.sub_registry_with_prefix(metrics::NAMESPACE);
    metrics::register_node_info(zs, tokio::runtime::Handle::current());
    let ready = metrics::register_ready(zs);
    let label_values = metrics::LabelValueMetrics::register(zs);
    let mut p2p_config = config.p2p_config();
    p2p_config.metrics_announce = announce.clone();
    let p2p_metrics = P2pMetrics::register(zs);
    let monitor = PeerMonitor::new(config.monitor.clone(), MonitorMetrics::register(zs));
    let cache = ContentCache::new(config.cache.clone(), CacheMetrics::register(zs));
    let content_metrics = ContentMetrics::register(zs);
    let http_metrics = HttpMetrics::register(zs);
    let market_metrics = MarketMetrics::register(zs, config.metrics.max_peer_series, &label_values);
    let payment_metrics =
        PaymentMetrics::register(zs, config.metrics.max_channel_series, &label_values);
    let (ledger, loaded, ledger_thread) = Ledger::open(&data_dir)?;
    let (swarm, libp2p_metrics) = p2p::build_swarm(key.clone(), &p2p_config, zs, &p2p_metrics)?;
    let registry = Arc::new(registry);

    // The services need the swarm's handle, and the event loop their inboxes.
    let (event_loop, p2p) =
        EventLoop::new(swarm, &p2p_config, libp2p_metrics, p2p_metrics, monitor);
    let (content, content_actor, content_inbox) =
        ContentService::new(cache, p2p.clone(), config.content.clone(), content_metrics);
    let (convicted, convictions) = tokio::sync::mpsc::channel(256);
    let (payments, payments_actor, channel_inbox, disputes_gossip) = PaymentsService::new(
        key.clone(),
        p2p.clone(),
        ledger.clone(),
        &loaded,
        config.payments.clone(),
        payment_metrics,
        convicted,
    );
    let (market, market_actor, market_inbox, market_gossip) = MarketService::new(
        key,
        p2p.clone(),
        content.clone(),
        config.market.clone(),
        market_metrics,
        MarketDeps {
            ledger,
            reputation: loaded.reputation,
            data_dir: data_dir.clone(),
            payments: payments.clone(),
            convictions,
        },
        executor,
    );
    let event_loop = event_loop.with_routes(Routes {
        content: Some(content_inbox),
        frames: [
            (FrameProtocol::Market, market_inbox),
            (FrameProtocol::Channel, channel_inbox),
        ]
        .into(),
        gossip: [
            (AUCTIONS_TOPIC, market_gossip.clone()),
            (RESULTS_TOPIC, market_gossip),
            (DISPUTES_TOPIC, disputes_gossip),
        ]
        .into(),
    });

    let health = Health::default();
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(supervise(
        "the p2p event loop",
        event_loop.run(cancel.clone()),
        health.clone(),
        cancel.clone(),
    ));
    tasks.spawn(supervise(
        "the content service",
        content_actor.run(cancel.clone()),
        health.clone(),
        cancel.clone(),
    ));
    tasks.spawn(supervise(
        "the market service",
        market_actor.run(cancel.clone()),
        health.clone(),
        cancel.clone(),
    ));
    tasks.spawn(supervise(
        "the payments service",
        payments_actor.run(cancel.clone()),
        health.clone(),
        cancel.clone(),
    ));

    let bootstrap_configured = config
        .bootstrap_peers()
        .iter()
        .any(|(id, _)| *id != peer_id);
    tasks.spawn(track_readiness(
        p2p.clone(),
        bootstrap_configured,
        ready,
        cancel.clone(),
    ));
    let state = ApiState::new(
        registry.clone(),
        http::Services {
            p2p: p2p.clone(),
            content: content.clone(),
            market: market.clone(),
            payments: payments.clone(),
        },
        api_token.clone(),
        bootstrap_configured,
        token_hint,
        health.clone(),
    )
    .with_allowed_hosts(&config.api.allowed_hosts)
    .with_service_discovery(
        announce.unwrap_or_else(|| MetricsUrl::of_http_server(metrics_endpoint)),
        config.metrics.max_sd_targets,
    );
    let app = http::router(state, &config.api, config.content.max_object_bytes);
    if let Some(metrics_listener) = metrics_listener {
        tasks.spawn(http::serve(
            metrics_listener,
            http::metrics_only_router(registry.clone()),
            config.api.clone(),
            http_metrics.clone(),
            cancel.clone(),
        ));
    }
    tasks.spawn(http::serve(
        listener,
        app,
        config.api.clone(),
        http_metrics,
        cancel.clone(),
    ));
    tasks.spawn(write_runtime_info(
        data_dir,
        p2p.clone(),
        http_addr,
        cancel.clone(),
    ));

    tracing::info!(%peer_id, %http_addr, "node started");
    Ok(NodeHandle {
        peer_id,
        http_addr,
        metrics_addr,
        api_token,
        p2p,
        content,
        market,
        payments,
        ledger_thread,
        registry,
        health,
        cancel,
        tasks,
        _lock: lock,
    })
}

/// Keeps `zerostate_node_ready` equal to what `GET /ready` answers, at every change of the
/// swarm's status.
async fn track_readiness(
    p2p: P2pHandle,
    bootstrap_configured: bool,
    ready: prometheus_client::metrics::gauge::Gauge,
    cancel: CancellationToken,
) {
    let mut status = p2p.watch_status();
    loop {
        let is_ready = {
            let s = status.borrow_and_update();
            readiness(
                !s.listen_addrs.is_empty(),
                s.connected_peers,
                bootstrap_configured,
            )
            .is_ok()
        };
        ready.set(i64::from(is_ready));
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

/// Keeps `<data_dir>/node.json` up to date with the listen addresses.
async fn write_runtime_info(
    data_dir: PathBuf,
    p2p: P2pHandle,
    http_addr: SocketAddr,
    cancel: CancellationToken,
) {
    let mut status = p2p.watch_status();
    let mut written: Option<Vec<String>> = None;
    loop {
        let listen_addrs: Vec<String> = status
            .borrow_and_update()
            .listen_addrs
            .iter()
            .map(ToString::to_string)
            .collect();
        // The status also changes with every connection; rewrite only when addresses do.
        if written.as_ref() != Some(&listen_addrs) {
            write_info_file(
                &data_dir,
                p2p.local_peer_id(),
                listen_addrs.clone(),
                http_addr,
            );
            written = Some(listen_addrs);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}

fn write_info_file(dir: &Path, peer_id: PeerId, listen_addrs: Vec<String>, http: SocketAddr) {
    let info = RuntimeInfo {
        peer_id: peer_id.to_string(),
        listen_addrs,
        http: http.to_string(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let json = serde_json::to_vec_pretty(&info).expect("serializable");
    if let Err(e) = identity::write_private(&dir.join(NODE_INFO_FILE), &json) {
        tracing::warn!(error = %e, "cannot write node info file");
    }
}
