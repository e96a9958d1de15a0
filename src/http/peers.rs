//! Peers: `GET /api/v1/peers`, `POST /api/v1/peers/dial`, and blocking and unblocking a
//! peer (`POST /api/v1/blocklist`, `DELETE /api/v1/blocklist/{peer_id}`).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use libp2p::{Multiaddr, PeerId};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use super::error::{ApiError, parse_id};
use super::page::{Page, PageQuery, page};
use crate::p2p::PeerInfo;

/// The monitored peers, by peer id.
pub(super) async fn peers(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<PeerInfo>>, ApiError> {
    let q = page(query)?;
    let all = state.p2p.peers().await?;
    Ok(Json(Page::of(all, q.offset, q.limit)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DialRequest {
    addr: String,
}

pub(super) async fn dial(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlockRequest {
    peer_id: String,
}

pub(super) async fn block(
    State(state): State<ApiState>,
    body: Result<Json<BlockRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let peer: PeerId = parse_id("peer id", &body.peer_id)?;
    let newly = state.p2p.block(peer).await?;
    Ok(Json(json!({ "blocked": true, "newly_blocked": newly })).into_response())
}

pub(super) async fn unblock(
    State(state): State<ApiState>,
    Path(peer_id): Path<String>,
) -> Result<Response, ApiError> {
    let peer: PeerId = parse_id("peer id", &peer_id)?;
    if state.p2p.unblock(peer).await? {
        Ok(Json(json!({ "blocked": false })).into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{peer} is not blocked"),
        ))
    }
}
