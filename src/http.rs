//! The HTTP server: `/metrics`, `/health`, `/ready` and the `/api/v1` control API.
//!
//! Build the app with [`router`] (tests drive it with `tower::ServiceExt::oneshot`) and serve
//! it with [`serve`], an accept loop with a header-read timeout and a connection cap, which
//! `axum::serve` does not have.

use std::net::SocketAddr;
use std::sync::Arc;
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
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::config::ApiConfig;
use crate::content::{ContentError, ContentService};
use crate::content_id::ContentId;
use crate::metrics;
use crate::p2p::{HandleError, P2pHandle};

/// Delay before answering a request with a wrong token, to slow down guessing.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(250);
/// Time an open connection gets to finish its request once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    registry: Arc<Registry>,
    p2p: P2pHandle,
    content: ContentService,
    token: Arc<str>,
    bootstrap_configured: bool,
    token_hint: Arc<str>,
    loopback_only: bool,
}

impl ApiState {
    /// State for a node: its frozen registry, its swarm and content handles and the API
    /// token. `token_hint` tells a refused client where to find the token.
    pub fn new(
        registry: Arc<Registry>,
        p2p: P2pHandle,
        content: ContentService,
        token: String,
        bootstrap_configured: bool,
        token_hint: String,
    ) -> Self {
        Self {
            registry,
            p2p,
            content,
            token: token.into(),
            bootstrap_configured,
            token_hint: token_hint.into(),
            loopback_only: true,
        }
    }

    /// Whether the server listens on loopback only; then requests must name a loopback
    /// host (`localhost`, `127.x.x.x`, `[::1]`) in `Host`, which defeats DNS rebinding.
    pub fn with_loopback_only(mut self, loopback_only: bool) -> Self {
        self.loopback_only = loopback_only;
        self
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
    let json = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/v1/node", get(node_info))
        .route("/api/v1/peers", get(peers))
        .merge(
            Router::new()
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

/// Whether a `Host` header value names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses requests whose `Host` is not a loopback name when the server is loopback-only:
/// a web page whose domain resolves to 127.0.0.1 must not reach the API.
async fn check_host(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if state.loopback_only
        && let Some(host) = headers.get(header::HOST)
    {
        let host = host.to_str().unwrap_or("");
        if !is_loopback_host(host) {
            let message = format!(
                "Host `{host}` is not allowed: this API listens on loopback and answers only to localhost, 127.0.0.1 or [::1]"
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
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = presented.is_some_and(|t| bool::from(t.as_bytes().ct_eq(state.token.as_bytes())));
    if !ok {
        tokio::time::sleep(AUTH_FAILURE_DELAY).await;
        let message = format!(
            "missing or invalid bearer token: send `Authorization: Bearer <token>`; {}",
            state.token_hint
        );
        return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    }
    next.run(request).await
}

async fn metrics_handler(State(state): State<ApiState>) -> Response {
    match metrics::encode(&state.registry) {
        Ok(body) => (
            [(header::CONTENT_TYPE, metrics::OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed")
            .into_response(),
    }
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: listening, and connected to a peer when bootstrap peers are configured.
async fn ready(State(state): State<ApiState>) -> Response {
    let status = state.p2p.status();
    let reason = if status.listen_addrs.is_empty() {
        Some("not listening on any p2p address yet")
    } else if state.bootstrap_configured && status.connected_peers == 0 {
        Some("bootstrap peers are configured but no peer is connected yet")
    } else {
        None
    };
    match reason {
        None => (
            StatusCode::OK,
            Json(json!({ "ready": true, "connected_peers": status.connected_peers })),
        )
            .into_response(),
        Some(reason) => (
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

impl From<ContentError> for ApiError {
    fn from(e: ContentError) -> Self {
        let status = match e {
            ContentError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ContentError::NotFound { .. } | ContentError::TimedOut { .. } => StatusCode::NOT_FOUND,
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

async fn get_content(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_content_id(&id)?;
    let data = state.content.get(id).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn head_content(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_content_id(&id)?;
    Ok(if state.content.has(&id) {
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

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts_are_recognised() {
        for ok in [
            "localhost",
            "LOCALHOST:9464",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.1.2.3:1",
            "[::1]:9464",
            "[::1]",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9464",
            "10.0.0.1:80",
            "[2001:db8::1]:80",
            "localhost.evil.example",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
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

/// Serves `app` on `listener` until `cancel` fires: at most `max_connections` at once, each
/// with a header-read timeout; on cancel, open connections get a short grace period.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ApiConfig,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let header_timeout = Duration::from_millis(config.header_read_timeout_ms);
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
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
        let service = TowerToHyperService::new(app.clone());
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
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
