//! Payments: `GET /api/v1/wallet`, `GET /api/v1/channels[/{id}]`, and opening, paying and
//! closing channels.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use libp2p::PeerId;
use serde::Deserialize;

use super::ApiState;
use super::error::{ApiError, parse_id};
use super::page::{Page, PageQuery, page};
use crate::payments::wire::ChannelId;
use crate::payments::{
    ChannelPage, ChannelView, PaymentId, PaymentStatus, PaymentView, PaymentsError,
    payment_ids as ids,
};

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
            | PaymentsError::OpenPending { .. }
            | PaymentsError::ChannelUnusable { .. }
            | PaymentsError::NewcomerShare { .. } => StatusCode::CONFLICT,
            PaymentsError::PaymentIdReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            PaymentsError::InvalidPaymentId(_) => StatusCode::BAD_REQUEST,
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

/// `POST /api/v1/channels`; the payment id may also come as the `Idempotency-Key` header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenRequest {
    peer_id: String,
    deposit: u64,
    #[serde(default)]
    peer_deposit: u64,
    #[serde(default)]
    payment_id: Option<String>,
}

/// The payment id of a request: its `Idempotency-Key` header or its body's `payment_id`
/// (they must agree), or a new one.
fn payment_id(headers: &HeaderMap, body: Option<&str>) -> Result<PaymentId, ApiError> {
    let key = headers.get(ids::IDEMPOTENCY_KEY).map(|v| v.as_bytes());
    Ok(PaymentId::of_request(key, body).map_err(PaymentsError::from)?)
}

/// `done` once countersigned (with the channel), 202 with the pending payment otherwise;
/// both carry the payment id and whether this request replayed an earlier one.
fn payment_answer(view: PaymentView, done: StatusCode) -> Response {
    let headers = [
        (ids::IDEMPOTENCY_KEY, view.payment_id.clone()),
        (ids::IDEMPOTENT_REPLAYED, view.replayed.to_string()),
    ];
    match view.status {
        PaymentStatus::Done => (done, headers, Json(view.channel)).into_response(),
        PaymentStatus::Pending => (StatusCode::ACCEPTED, headers, Json(view)).into_response(),
    }
}

/// 201 with the channel once countersigned; 202 with the pending open (a `PaymentView`).
pub(super) async fn open_channel(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<OpenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let peer = parse_peer(&body.peer_id)?;
    let payment_id = payment_id(&headers, body.payment_id.as_deref())?;
    let view = state
        .payments
        .open_with_id(peer, body.deposit, body.peer_deposit, payment_id)
        .await?;
    Ok(payment_answer(view, StatusCode::CREATED))
}

/// `POST /api/v1/channels/{id}/pay`; the payment id may also come as the `Idempotency-Key`
/// header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PayRequest {
    amount: u64,
    #[serde(default)]
    payment_id: Option<String>,
}

/// 200 with the channel once countersigned; 202 with the pending payment (a `PaymentView`).
pub(super) async fn pay_channel(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PayRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_channel(&id)?;
    let Json(body) = body?;
    let payment_id = payment_id(&headers, body.payment_id.as_deref())?;
    let view = state
        .payments
        .pay_with_id(id, body.amount, payment_id)
        .await?;
    Ok(payment_answer(view, StatusCode::OK))
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
