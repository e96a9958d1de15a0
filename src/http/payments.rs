//! Payments: `GET /api/v1/wallet`, `GET /api/v1/channels[/{id}]`, and opening, paying and
//! closing channels.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use libp2p::PeerId;
use serde::Deserialize;

use super::ApiState;
use super::error::{ApiError, parse_id};
use super::page::{Page, PageQuery, page};
use crate::payments::wire::ChannelId;
use crate::payments::{ChannelPage, ChannelView, PaymentsError};

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
            PaymentsError::Refused(_) => StatusCode::CONFLICT,
            PaymentsError::Pending(_) => StatusCode::ACCEPTED,
            PaymentsError::Ledger(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PaymentsError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The payments service's own page of channels, in the shape every list endpoint answers.
impl From<ChannelPage> for Page<ChannelView> {
    fn from(p: ChannelPage) -> Self {
        Self {
            total: p.total,
            offset: p.offset,
            items: p.channels,
        }
    }
}

fn parse_channel(id: &str) -> Result<ChannelId, ApiError> {
    parse_id("channel id", id)
}

fn parse_peer(id: &str) -> Result<PeerId, ApiError> {
    parse_id("peer id", id)
}

pub(super) async fn wallet(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(state.payments.wallet().await?).into_response())
}

/// This node's channels, newest first.
pub(super) async fn list_channels(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<ChannelView>>, ApiError> {
    let q = page(query)?;
    Ok(Json(
        state.payments.channels(q.offset, q.limit).await?.into(),
    ))
}

pub(super) async fn show_channel(
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

/// `POST /api/v1/channels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenRequest {
    peer_id: String,
    deposit: u64,
    #[serde(default)]
    peer_deposit: u64,
}

pub(super) async fn open_channel(
    State(state): State<ApiState>,
    body: Result<Json<OpenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let peer = parse_peer(&body.peer_id)?;
    let view = state
        .payments
        .open(peer, body.deposit, body.peer_deposit)
        .await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `POST /api/v1/channels/{id}/pay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PayRequest {
    amount: u64,
}

pub(super) async fn pay_channel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<PayRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_channel(&id)?;
    let Json(body) = body?;
    Ok(Json(state.payments.pay(id, body.amount).await?).into_response())
}

/// `POST /api/v1/channels/{id}/close`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CloseRequest {
    #[serde(default)]
    unilateral: bool,
}

/// Without a body (no `Content-Type`), a cooperative close.
pub(super) async fn close_channel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Option<Json<CloseRequest>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_channel(&id)?;
    let unilateral = body?.is_some_and(|Json(b)| b.unilateral);
    Ok(Json(state.payments.close(id, unilateral).await?).into_response())
}
