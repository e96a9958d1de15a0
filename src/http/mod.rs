//! The HTTP server: `/metrics`, `/health`, `/ready` and the `/api/v1` control API.
//!
//! Build the app with [`router`] (tests drive it with `tower::ServiceExt::oneshot`) and serve
//! it with [`serve`], an accept loop with a header-read timeout and connection caps in total
//! and per client address, which `axum::serve` does not have.
//!
//! Every error answers an [`ApiError`] body, `{"error": "..."}`; every list endpoint answers
//! a [`Page`], `{"total", "offset", "items"}`, and takes `?offset=&limit=`.
//!
//! Inside: `error` (the error body, and the one parser of ids), `guards` (the `Host` check,
//! the token, the body limit and the request timeout), `server` (binding, and the accept loop
//! with its connection caps), `page` (the list shape), and one module per resource with its
//! handlers: `node` (health, readiness, node info), `content`, `market` (tasks, reputation),
//! `payments` (wallet, channels), `peers` (peers, dial, blocklist), `sd` (service discovery)
//! and `metrics` (`/metrics`, and the metrics-only listener's app).

mod content;
mod error;
mod guards;
mod market;
mod metrics;
mod node;
mod page;
mod payments;
mod peers;
mod sd;
mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{delete, get, post, put};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::content::ContentService;
use crate::health::Health;
use crate::market::MarketService;
use crate::p2p::P2pHandle;
use crate::p2p::announce::MetricsUrl;
use crate::payments::PaymentsService;

pub use error::ApiError;
pub use metrics::{metrics_only_router, metrics_router};
pub use node::NodeInfo;
pub use page::{DEFAULT_PAGE, MAX_PAGE, Page};
pub use server::{HttpMetrics, bind, serve};

use guards::BodyLimit;
use sd::ServiceDiscovery;

/// HTTP server settings (the `[api]` config section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Maximum concurrent HTTP connections; more are closed at once (and counted).
    pub max_connections: usize,
    /// Maximum concurrent HTTP connections from one client address.
    pub max_connections_per_ip: usize,
    /// A client must send its request headers within this many milliseconds.
    pub header_read_timeout_ms: u64,
    /// A request must be answered within this many milliseconds (408 otherwise).
    pub request_timeout_ms: u64,
    /// Largest accepted request body of JSON endpoints, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Host names accepted in the `Host` header besides `localhost` and IP literals (e.g.
    /// the name of a container). `"*"` accepts any (turns the DNS-rebinding check off).
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_ip: 32,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 10_000,
            max_body_bytes: 64 * 1024,
            allowed_hosts: Vec::new(),
        }
    }
}

/// The node's services the API calls.
#[derive(Clone)]
pub struct Services {
    /// The swarm.
    pub p2p: P2pHandle,
    /// Content.
    pub content: ContentService,
    /// The task market.
    pub market: MarketService,
    /// Payment channels and the wallet.
    pub payments: PaymentsService,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    registry: Arc<Registry>,
    p2p: P2pHandle,
    content: ContentService,
    market: MarketService,
    payments: PaymentsService,
    token: Arc<str>,
    bootstrap_configured: bool,
    token_hint: Arc<str>,
    allowed_hosts: Arc<[String]>,
    health: Health,
    sd: Option<Arc<ServiceDiscovery>>,
}

impl ApiState {
    /// State for a node: its frozen registry, its swarm, content and market handles, the API
    /// token and its health. `token_hint` tells a refused client where to find the token
    /// (without revealing paths).
    pub fn new(
        registry: Arc<Registry>,
        services: Services,
        token: String,
        bootstrap_configured: bool,
        token_hint: String,
        health: Health,
    ) -> Self {
        Self {
            registry,
            p2p: services.p2p,
            content: services.content,
            market: services.market,
            payments: services.payments,
            token: token.into(),
            bootstrap_configured,
            token_hint: token_hint.into(),
            allowed_hosts: Arc::from([]),
            health,
            sd: None,
        }
    }

    /// What `GET /api/v1/sd` lists: `own` (this node's metrics endpoint) first, then the
    /// endpoints its peers announced, at most `max_targets` in all.
    pub fn with_service_discovery(mut self, own: MetricsUrl, max_targets: usize) -> Self {
        self.sd = Some(Arc::new(ServiceDiscovery { own, max_targets }));
        self
    }

    /// Host names accepted in `Host` besides `localhost` and IP literals (`"*"`: any).
    pub fn with_allowed_hosts(mut self, hosts: &[String]) -> Self {
        self.allowed_hosts = hosts.into();
        self
    }
}

/// Builds the application: routes, auth on state-changing routes, body limits (JSON routes:
/// `api.max_body_bytes`; content upload: `max_object_bytes`), the request timeout, and JSON
/// 404 and 405 answers for paths and methods no route serves.
pub fn router(state: ApiState, config: &ApiConfig, max_object_bytes: u64) -> Router<()> {
    let auth = || middleware::from_fn_with_state(state.clone(), guards::require_token);
    let json_limit = BodyLimit {
        bytes: config.max_body_bytes,
        key: "api.max_body_bytes",
    };
    let json = metrics_router(state.registry.clone())
        .route("/health", get(node::health))
        .route("/ready", get(node::ready))
        .route("/api/v1/node", get(node::node_info))
        .route("/api/v1/peers", get(peers::peers))
        .route("/api/v1/sd", get(sd::service_discovery))
        .route("/api/v1/tasks", get(market::list_tasks))
        .route("/api/v1/tasks/{id}", get(market::show_task))
        .route("/api/v1/reputation", get(market::reputation))
        .route("/api/v1/wallet", get(payments::wallet))
        .route("/api/v1/channels", get(payments::list_channels))
        .route("/api/v1/channels/{id}", get(payments::show_channel))
        .merge(
            Router::new()
                .route("/api/v1/tasks", post(market::submit_task))
                .route("/api/v1/channels", post(payments::open_channel))
                .route("/api/v1/channels/{id}/pay", post(payments::pay_channel))
                .route("/api/v1/channels/{id}/close", post(payments::close_channel))
                .route("/api/v1/peers/dial", post(peers::dial))
                .route("/api/v1/blocklist", post(peers::block))
                .route("/api/v1/blocklist/{peer_id}", delete(peers::unblock))
                .route_layer(auth()),
        )
        .layer(DefaultBodyLimit::max(json_limit.bytes))
        .layer(middleware::from_fn_with_state(
            json_limit,
            guards::limit_body,
        ));
    let object_limit = BodyLimit {
        bytes: usize::try_from(max_object_bytes).unwrap_or(usize::MAX),
        key: "content.max_object_bytes",
    };
    let content = Router::new()
        .route(
            "/api/v1/content",
            put(content::put_content).route_layer(auth()),
        )
        .route(
            "/api/v1/content/{id}",
            get(content::get_content).head(content::head_content),
        )
        .layer(DefaultBodyLimit::max(object_limit.bytes))
        .layer(middleware::from_fn_with_state(
            object_limit,
            guards::limit_body,
        ));
    json.merge(content)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guards::check_host,
        ))
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(config.request_timeout_ms),
            guards::time_limit,
        ))
        .with_state(state)
}
