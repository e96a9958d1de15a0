//! `GET /health`, `GET /ready` and `GET /api/v1/node`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ApiState;
use crate::health::readiness;

/// Liveness: 200 while every vital task runs; 503 with the reason once one has failed.
pub(super) async fn health(State(state): State<ApiState>) -> Response {
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
pub(super) async fn ready(State(state): State<ApiState>) -> Response {
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

pub(super) async fn node_info(State(state): State<ApiState>) -> Json<NodeInfo> {
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
