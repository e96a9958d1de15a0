//! `PUT /api/v1/content`, `GET` and `HEAD /api/v1/content/{id}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::error::{ApiError, parse_id};
use super::guards::unauthorized;
use crate::content::ContentError;
use crate::content_id::ContentId;

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

pub(super) async fn put_content(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
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
pub(super) async fn get_content(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let network = match state.authorized(&headers) {
        None => false,
        Some(true) => true,
        Some(false) => return Err(unauthorized(&state).await),
    };
    let id: ContentId = parse_id("content id", &id)?;
    let data = state.content.get(id, network).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

pub(super) async fn head_content(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: ContentId = parse_id("content id", &id)?;
    Ok(if state.content.has(id).await? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}
