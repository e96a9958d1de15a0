//! The HTTP server: `/metrics`, `/health`, `/ready` and the `/api/v1` control API.
//!
//! Build the app with [`router`] (tests drive it with `tower::ServiceExt::oneshot`) and serve
//! it with [`serve`], an accept loop with a header-read timeout and connection caps in total
//! and per client address, which `axum::serve` does not have.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use libp2p::{Multiaddr, PeerId};
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::content::{ContentError, ContentService};
use crate::content_id::ContentId;
use crate::health::{Health, readiness};
use crate::market::{MarketError, MarketService, TaskRequest};
use crate::metrics::{self, ReasonLabels};
use crate::p2p::announce::MetricsUrl;
use crate::p2p::{HandleError, P2pHandle};
use crate::payments::wire::ChannelId;
use crate::payments::{PaymentsError, PaymentsService};

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

/// The HTTP server's metrics.
#[derive(Clone, Debug, Default)]
pub struct HttpMetrics {
    refused: Family<ReasonLabels, Counter>,
}

impl HttpMetrics {
    /// Registers into the `zerostate` registry.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.sub_registry_with_prefix("http").register(
            "connections_refused",
            "HTTP connections closed at once because of a connection cap, by reason (per_ip, busy)",
            m.refused.clone(),
        );
        m
    }

    fn refused(&self, reason: &'static str) {
        let c = self.refused.get_or_create(&ReasonLabels { reason });
        c.inc();
    }
}

/// Delay before answering a request with a wrong token, to slow down guessing.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(250);
/// Time an open connection gets to finish its request once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

/// What `GET /api/v1/sd` lists besides the peers' announcements.
#[derive(Debug)]
struct ServiceDiscovery {
    /// This node's metrics endpoint: the announced one, or the address serving `/metrics`.
    own: MetricsUrl,
    /// Most targets listed.
    max_targets: usize,
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

    /// Whether the request carries the API token (compared in constant time).
    fn authorized(&self, headers: &HeaderMap) -> Option<bool> {
        let presented = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        Some(presented.is_some_and(|t| bool::from(t.as_bytes().ct_eq(self.token.as_bytes()))))
    }
}

/// An API error: a status and a message, answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<HandleError> for ApiError {
    fn from(e: HandleError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        Self::new(e.status(), e.body_text())
    }
}

/// Builds the application: routes, auth on state-changing routes, body limits (JSON routes:
/// `api.max_body_bytes`; content upload: `max_object_bytes`) and the request timeout.
pub fn router(state: ApiState, config: &ApiConfig, max_object_bytes: u64) -> Router<()> {
    let auth = || middleware::from_fn_with_state(state.clone(), require_token);
    let json = metrics_router(state.registry.clone())
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/v1/node", get(node_info))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/sd", get(service_discovery))
        .route("/api/v1/tasks", get(list_tasks))
        .route("/api/v1/tasks/{id}", get(show_task))
        .route("/api/v1/reputation", get(reputation))
        .route("/api/v1/wallet", get(wallet))
        .route("/api/v1/channels", get(list_channels))
        .route("/api/v1/channels/{id}", get(show_channel))
        .merge(
            Router::new()
                .route("/api/v1/tasks", post(submit_task))
                .route("/api/v1/channels", post(open_channel))
                .route("/api/v1/channels/{id}/pay", post(pay_channel))
                .route("/api/v1/channels/{id}/close", post(close_channel))
                .route("/api/v1/peers/dial", post(dial))
                .route("/api/v1/blocklist", post(block))
                .route("/api/v1/blocklist/{peer_id}", delete(unblock))
                .route_layer(auth()),
        )
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes));
    let object_limit = usize::try_from(max_object_bytes).unwrap_or(usize::MAX);
    let content = Router::new()
        .route("/api/v1/content", put(put_content).route_layer(auth()))
        .route("/api/v1/content/{id}", get(get_content).head(head_content))
        .layer(DefaultBodyLimit::max(object_limit))
        .layer(RequestBodyLimitLayer::new(object_limit));
    json.merge(content)
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.request_timeout_ms),
        ))
        .with_state(state)
}

/// Whether a `Host` header value is acceptable: `localhost`, an IP literal (a DNS
/// rebinding attack needs a name), or one of `allowed` (`"*"` allows any).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok()
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(name))
}

/// Refuses requests whose `Host` is not allowed, whatever address the server is bound to: a
/// web page whose domain resolves to this node must not reach the API.
async fn check_host(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(host) = headers.get(header::HOST) {
        let host = host.to_str().unwrap_or("");
        if !host_allowed(host, &state.allowed_hosts) {
            let message = format!(
                "Host `{host}` is not allowed: this API answers to localhost, IP addresses and the names in api.allowed_hosts"
            );
            return ApiError::new(StatusCode::FORBIDDEN, message).into_response();
        }
    }
    next.run(request).await
}

async fn require_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if state.authorized(&headers) != Some(true) {
        return unauthorized(&state).await.into_response();
    }
    next.run(request).await
}

/// The answer to a missing or wrong token, after a delay that slows down guessing.
async fn unauthorized(state: &ApiState) -> ApiError {
    tokio::time::sleep(AUTH_FAILURE_DELAY).await;
    let message = format!(
        "missing or invalid bearer token: send `Authorization: Bearer <token>`; {}",
        state.token_hint
    );
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// `GET /metrics`: `registry` as OpenMetrics text. The node's [`router`] includes it.
pub fn metrics_router<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    let endpoint = MetricsEndpoint {
        registry,
        encoder: metrics::Encoder::default(),
    };
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(Arc::new(endpoint))
}

/// The registry `/metrics` encodes, and its encoder (which sizes the buffer from the last
/// scrape).
struct MetricsEndpoint {
    registry: Arc<Registry>,
    encoder: metrics::Encoder,
}

async fn metrics_handler(State(endpoint): State<Arc<MetricsEndpoint>>) -> Response {
    match endpoint.encoder.encode(&endpoint.registry) {
        Ok(body) => (
            [(header::CONTENT_TYPE, metrics::OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed")
            .into_response(),
    }
}

/// Liveness: 200 while every vital task runs; 503 with the reason once one has failed.
async fn health(State(state): State<ApiState>) -> Response {
    match state.health.failure() {
        None => Json(json!({ "status": "ok" })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failed", "reason": reason })),
        )
            .into_response(),
    }
}

/// Readiness: listening, and connected to a peer when bootstrap peers are configured.
async fn ready(State(state): State<ApiState>) -> Response {
    let status = state.p2p.status();
    match readiness(
        !status.listen_addrs.is_empty(),
        status.connected_peers,
        state.bootstrap_configured,
    ) {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "ready": true, "connected_peers": status.connected_peers })),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// What `/api/v1/node` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// This node's peer id.
    pub peer_id: String,
    /// The p2p addresses it listens on.
    pub listen_addrs: Vec<String>,
    /// Crate version.
    pub version: String,
    /// Number of connected peers.
    pub connected_peers: usize,
}

async fn node_info(State(state): State<ApiState>) -> Json<NodeInfo> {
    let status = state.p2p.status();
    Json(NodeInfo {
        peer_id: state.p2p.local_peer_id().to_string(),
        listen_addrs: status
            .listen_addrs
            .iter()
            .map(ToString::to_string)
            .collect(),
        version: env!("CARGO_PKG_VERSION").into(),
        connected_peers: status.connected_peers,
    })
}

async fn peers(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let peers = state.p2p.peers().await?;
    Ok(Json(json!({ "peers": peers })).into_response())
}

/// Prometheus HTTP service discovery (`http_sd_configs`): one target group per node, this
/// node first, then each peer that announced a metrics endpoint (connected peers first, the
/// longest connected first: a flood of new peers cannot push out the peers already known),
/// without duplicate targets, at most `metrics.max_sd_targets`. A peer's entry goes when the
/// peer monitor forgets the peer. Labels are `__meta_zerostate_*`, for relabelling: a plain
/// `peer_id` target label would clash with the economic families' own `peer_id`.
async fn service_discovery(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let Some(sd) = state.sd.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "service discovery is not set up on this server",
        ));
    };
    let mut peers = state.p2p.peers().await?;
    peers.sort_by(|a, b| {
        let since = |p: &crate::p2p::PeerInfo| p.connected_secs.unwrap_or(0.0);
        (!a.connected)
            .cmp(&!b.connected)
            .then(since(b).total_cmp(&since(a)))
            .then(a.peer_id.cmp(&b.peer_id))
    });
    let own = (
        sd.own.clone(),
        state.p2p.local_peer_id().to_string(),
        "self",
    );
    let announced = peers
        .into_iter()
        .filter_map(|p| Some((p.metrics_url?, p.peer_id, "peer")));
    let mut seen = std::collections::HashSet::new();
    let groups: Vec<serde_json::Value> = std::iter::once(own)
        .chain(announced)
        .filter(|(url, _, _)| seen.insert(url.to_string()))
        .take(sd.max_targets)
        .map(|(url, peer_id, source)| {
            json!({
                "targets": [url.target()],
                "labels": {
                    "__scheme__": url.scheme(),
                    "__metrics_path__": url.path(),
                    "__meta_zerostate_peer_id": peer_id,
                    "__meta_zerostate_source": source,
                },
            })
        })
        .collect();
    Ok(Json(groups).into_response())
}

impl From<ContentError> for ApiError {
    fn from(e: ContentError) -> Self {
        let status = match e {
            ContentError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ContentError::NotFound { .. }
            | ContentError::TimedOut { .. }
            | ContentError::NotCached { .. } => StatusCode::NOT_FOUND,
            ContentError::Invalid { .. } => StatusCode::BAD_GATEWAY,
            ContentError::Busy | ContentError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

fn parse_content_id(s: &str) -> Result<ContentId, ApiError> {
    s.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{s}` is not a content id: {e}"),
        )
    })
}

async fn put_content(State(state): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let size = body.len();
    let id = state.content.put(body).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id.to_string(), "size": size })),
    )
        .into_response())
}

/// Without the token, only the cache answers: a fetch from the network changes state (it
/// inserts, evicts and announces), and a web page must not be able to trigger it.
async fn get_content(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let network = match state.authorized(&headers) {
        None => false,
        Some(true) => true,
        Some(false) => return Err(unauthorized(&state).await),
    };
    let id = parse_content_id(&id)?;
    let data = state.content.get(id, network).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn head_content(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_content_id(&id)?;
    Ok(if state.content.has(id).await? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DialRequest {
    addr: String,
}

async fn dial(
    State(state): State<ApiState>,
    body: Result<Json<DialRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let addr: Multiaddr = body.addr.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`addr` is not a multiaddr: {e}"),
        )
    })?;
    state
        .p2p
        .dial(addr)
        .await?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "dialing": true }))).into_response())
}

impl From<MarketError> for ApiError {
    fn from(e: MarketError) -> Self {
        let status = match e {
            MarketError::Invalid(_) => StatusCode::BAD_REQUEST,
            MarketError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            MarketError::Content(_) => StatusCode::INTERNAL_SERVER_ERROR,
            MarketError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

async fn submit_task(
    State(state): State<ApiState>,
    body: Result<Json<TaskRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let id = state.market.submit(request).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id.to_string() }))).into_response())
}

async fn show_task(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let parsed = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a task id (32 hex digits)"),
        )
    })?;
    match state.market.task(parsed).await? {
        Some(task) => Ok(Json(task).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task {id} on this node"),
        )),
    }
}

/// Largest page of `GET /api/v1/tasks`.
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
struct PageQuery {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

async fn list_tasks(
    State(state): State<ApiState>,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = page(query)?;
    Ok(Json(state.market.tasks(q.offset, q.limit).await?).into_response())
}

fn page(
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<PageQuery, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if q.limit == 0 || q.limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`limit` must be 1..={MAX_PAGE}"),
        ));
    }
    Ok(q)
}

async fn reputation(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let peers = state.market.reputation().await?;
    Ok(Json(json!({ "peers": peers })).into_response())
}

impl From<PaymentsError> for ApiError {
    fn from(e: PaymentsError) -> Self {
        use crate::payments::wire::ChannelError as C;
        let status = match &e {
            PaymentsError::Channel(C::InsufficientFunds | C::Settled | C::Closing) => {
                StatusCode::CONFLICT
            }
            PaymentsError::Channel(C::TooManyChannels) | PaymentsError::Busy => {
                StatusCode::TOO_MANY_REQUESTS
            }
            PaymentsError::Channel(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PaymentsError::UnknownChannel => StatusCode::NOT_FOUND,
            PaymentsError::Refused(_)
            | PaymentsError::InsufficientFunds { .. }
            | PaymentsError::OpenPending { .. } => StatusCode::CONFLICT,
            PaymentsError::PaymentIdReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            PaymentsError::InvalidPaymentId(_) => StatusCode::BAD_REQUEST,
            PaymentsError::Pending(_) => StatusCode::ACCEPTED,
            PaymentsError::Ledger(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PaymentsError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

async fn wallet(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(state.payments.wallet().await?).into_response())
}

async fn list_channels(
    State(state): State<ApiState>,
    query: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = page(query)?;
    Ok(Json(state.payments.channels(q.offset, q.limit).await?).into_response())
}

fn parse_channel(id: &str) -> Result<ChannelId, ApiError> {
    id.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a channel id: {e}"),
        )
    })
}

async fn show_channel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match state.payments.channel(parse_channel(&id)?).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no channel {id} on this node"),
        )),
    }
}

/// `POST /api/v1/channels`; the payment id may also come as the `Idempotency-Key` header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenRequest {
    peer_id: String,
    deposit: u64,
    #[serde(default)]
    peer_deposit: u64,
    #[serde(default)]
    payment_id: Option<String>,
}

/// 201 with the channel once countersigned; 202 with the pending open (a `PaymentView`).
async fn open_channel(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<OpenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    use crate::payments::{PaymentId, PaymentStatus, payment_ids as ids};
    let Json(body) = body?;
    let peer = parse_peer(&body.peer_id)?;
    let key = headers.get(ids::IDEMPOTENCY_KEY).map(|v| v.as_bytes());
    let payment_id = PaymentId::of_request(key, body.payment_id.as_deref())
        .map_err(crate::payments::PaymentsError::from)?;
    let view = state
        .payments
        .open_with_id(peer, body.deposit, body.peer_deposit, payment_id)
        .await?;
    let headers = [
        (ids::IDEMPOTENCY_KEY, view.payment_id.clone()),
        (ids::IDEMPOTENT_REPLAYED, view.replayed.to_string()),
    ];
    Ok(match view.status {
        PaymentStatus::Done => (StatusCode::CREATED, headers, Json(view.channel)).into_response(),
        PaymentStatus::Pending => (StatusCode::ACCEPTED, headers, Json(view)).into_response(),
    })
}

/// `POST /api/v1/channels/{id}/pay`; the payment id may also come as the `Idempotency-Key`
/// header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    amount: u64,
    #[serde(default)]
    payment_id: Option<String>,
}

/// 200 with the channel once countersigned; 202 with the pending payment (a
/// `PaymentView`).
async fn pay_channel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PayRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    use crate::payments::{PaymentId, PaymentStatus, payment_ids as ids};
    let id = parse_channel(&id)?;
    let Json(body) = body?;
    let key = headers.get(ids::IDEMPOTENCY_KEY).map(|v| v.as_bytes());
    let payment_id = PaymentId::of_request(key, body.payment_id.as_deref())
        .map_err(crate::payments::PaymentsError::from)?;
    let view = state
        .payments
        .pay_with_id(id, body.amount, payment_id)
        .await?;
    let headers = [
        (ids::IDEMPOTENCY_KEY, view.payment_id.clone()),
        (ids::IDEMPOTENT_REPLAYED, view.replayed.to_string()),
    ];
    Ok(match view.status {
        PaymentStatus::Done => (StatusCode::OK, headers, Json(view.channel)).into_response(),
        PaymentStatus::Pending => (StatusCode::ACCEPTED, headers, Json(view)).into_response(),
    })
}

/// `POST /api/v1/channels/{id}/close`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseRequest {
    #[serde(default)]
    unilateral: bool,
}

async fn close_channel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Option<Json<CloseRequest>>,
) -> Result<Response, ApiError> {
    let id = parse_channel(&id)?;
    let unilateral = body.is_some_and(|Json(b)| b.unilateral);
    Ok(Json(state.payments.close(id, unilateral).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_against_names_not_addresses() {
        let none: Vec<String> = vec![];
        for ok in [
            "localhost",
            "LOCALHOST:9464",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.1.2.3:1",
            "[::1]:9464",
            "[::1]",
            "10.0.0.1:80",
            "[2001:db8::1]:80",
        ] {
            assert!(host_allowed(ok, &none), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "node1:9464",
            "",
        ] {
            assert!(!host_allowed(bad, &none), "{bad}");
        }
        let named = vec!["node1".to_owned()];
        assert!(host_allowed("node1:9464", &named));
        assert!(host_allowed("NODE1", &named));
        assert!(!host_allowed("node2:9464", &named));
        assert!(host_allowed("anything.example", &["*".to_owned()]));
    }

    #[test]
    fn connection_slots_are_capped_in_total_and_per_address() {
        let slots = Slots::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.1".parse().unwrap());
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), "per_ip");
        let _b1 = slots.take(b).unwrap();
        assert_eq!(slots.take(b).unwrap_err(), "busy");
        drop(a1);
        let _b2 = slots.take(b).unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(slots.take(mapped).unwrap_err(), "busy");
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockRequest {
    peer_id: String,
}

fn parse_peer(s: &str) -> Result<PeerId, ApiError> {
    s.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{s}` is not a peer id: {e}"),
        )
    })
}

async fn block(
    State(state): State<ApiState>,
    body: Result<Json<BlockRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let peer = parse_peer(&body.peer_id)?;
    let newly = state.p2p.block(peer).await?;
    Ok(Json(json!({ "blocked": true, "newly_blocked": newly })).into_response())
}

async fn unblock(
    State(state): State<ApiState>,
    Path(peer_id): Path<String>,
) -> Result<Response, ApiError> {
    let peer = parse_peer(&peer_id)?;
    if state.p2p.unblock(peer).await? {
        Ok(Json(json!({ "blocked": false })).into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{peer} is not blocked"),
        ))
    }
}

/// Binds the HTTP listener, with a message that says what to change on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind HTTP server to {addr}: {e} (set `http`, ZEROSTATE_HTTP or --http to a free address, or port 0)"),
        )
    })
}

/// Connection slots: at most `total` at once, and `per_ip` from one client address.
#[derive(Clone, Debug)]
struct Slots {
    inner: Arc<Mutex<SlotCounts>>,
}

#[derive(Debug)]
struct SlotCounts {
    total: usize,
    max_total: usize,
    max_per_ip: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A taken slot; dropping it frees the slot.
#[derive(Debug)]
struct Slot {
    slots: Slots,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.slots.lock();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl Slots {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(SlotCounts {
                total: 0,
                max_total,
                max_per_ip,
                per_ip: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotCounts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a client at `ip`, or says which cap is reached.
    fn take(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut c = self.lock();
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= c.max_per_ip {
            return Err("per_ip");
        }
        if c.total >= c.max_total {
            return Err("busy");
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        drop(c);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

/// Serves `app` on `listener` until `cancel` fires: at most `max_connections` at once and
/// `max_connections_per_ip` per client address (further connections are closed at once and
/// counted), each with a header-read timeout; on cancel, open connections get a short grace
/// period.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ApiConfig,
    metrics: HttpMetrics,
    cancel: CancellationToken,
) {
    let slots = Slots::new(config.max_connections, config.max_connections_per_ip);
    let header_timeout = Duration::from_millis(config.header_read_timeout_ms);
    let connections = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match slots.take(remote.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                metrics.refused(reason);
                tracing::debug!(%remote, reason, "http connection refused");
                drop(stream);
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "http connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}
