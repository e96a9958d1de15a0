//! `GET /api/v1/sd`: Prometheus HTTP service discovery of this node and its peers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::error::ApiError;
use crate::p2p::announce::MetricsUrl;

/// What `GET /api/v1/sd` lists besides the peers' announcements.
#[derive(Debug)]
pub(super) struct ServiceDiscovery {
    /// This node's metrics endpoint: the announced one, or the address serving `/metrics`.
    pub(super) own: MetricsUrl,
    /// Most targets listed.
    pub(super) max_targets: usize,
}

/// Prometheus HTTP service discovery (`http_sd_configs`): one target group per node, this
/// node first, then each peer that announced a metrics endpoint (connected peers first, the
/// longest connected first: a flood of new peers cannot push out the peers already known),
/// without duplicate targets, at most `metrics.max_sd_targets`. A peer's entry goes when the
/// peer monitor forgets the peer. Labels are `__meta_zerostate_*`, for relabelling: a plain
/// `peer_id` target label would clash with the economic families' own `peer_id`. The answer
/// is the bare array of target groups Prometheus reads, not a [`super::Page`].
pub(super) async fn service_discovery(State(state): State<ApiState>) -> Result<Response, ApiError> {
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
