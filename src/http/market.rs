//! The task market: `POST /api/v1/tasks`, `GET /api/v1/tasks[/{id}]` and
//! `GET /api/v1/reputation`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::error::{ApiError, parse_id};
use super::page::{Page, PageQuery, page};
use crate::market::wire::AuctionId;
use crate::market::{MarketError, PeerReputation, TaskPage, TaskRequest, TaskView};

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

/// The market's own page of tasks, in the shape every list endpoint answers.
impl From<TaskPage> for Page<TaskView> {
    fn from(p: TaskPage) -> Self {
        Self {
            total: p.total,
            offset: p.offset,
            items: p.tasks,
        }
    }
}

pub(super) async fn submit_task(
    State(state): State<ApiState>,
    body: Result<Json<TaskRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let id = state.market.submit(request).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": id.to_string() }))).into_response())
}

pub(super) async fn show_task(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let parsed: AuctionId = parse_id("task id (32 hex digits)", &id)?;
    match state.market.task(parsed).await? {
        Some(task) => Ok(Json(task).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task {id} on this node"),
        )),
    }
}

/// This node's tasks, newest first.
pub(super) async fn list_tasks(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<TaskView>>, ApiError> {
    let q = page(query)?;
    Ok(Json(state.market.tasks(q.offset, q.limit).await?.into()))
}

/// This node's reputation records, most recently updated first.
pub(super) async fn reputation(
    State(state): State<ApiState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<PeerReputation>>, ApiError> {
    let q = page(query)?;
    let all = state.market.reputation().await?;
    Ok(Json(Page::of(all, q.offset, q.limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_market_page_becomes_the_common_page() {
        let page: Page<TaskView> = TaskPage {
            total: 9,
            offset: 4,
            tasks: Vec::new(),
        }
        .into();
        assert_eq!((page.total, page.offset, page.remaining()), (9, 4, 5));
        assert!(page.items.is_empty());
    }
}
