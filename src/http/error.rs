//! [`ApiError`], the JSON error body every failure answers with, the conversions of the
//! errors every resource meets, and the one parser of ids in paths and bodies.

use std::fmt::Display;
use std::str::FromStr;

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::p2p::HandleError;

/// An API error: a status and a message, answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
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

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}

/// A raw body that could not be read, e.g. a body without a declared length that grows
/// past the limit (413).
impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        Self::new(e.status(), e.body_text())
    }
}

/// Parses an id from a path or a body: `what` names it in the 400 answered when `s` is not
/// one (`` `s` is not a <what>: <why> ``).
pub(super) fn parse_id<T>(what: &str, s: &str) -> Result<T, ApiError>
where
    T: FromStr,
    T::Err: Display,
{
    s.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{s}` is not a {what}: {e}"),
        )
    })
}

/// The answer to a path no route serves.
pub(super) async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// The answer to a method a route does not serve.
pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not answer {method}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content_id::ContentId;
    use crate::payments::wire::ChannelId;
    use libp2p::PeerId;

    async fn body(e: ApiError) -> (StatusCode, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn ids_that_do_not_parse_say_what_they_should_be() {
        for (e, says) in [
            (
                parse_id::<PeerId>("peer id", "not-a-peer").unwrap_err(),
                "`not-a-peer` is not a peer id: ",
            ),
            (
                parse_id::<ContentId>("content id", "hello").unwrap_err(),
                "`hello` is not a content id: ",
            ),
            (
                parse_id::<ChannelId>("channel id", "nothex").unwrap_err(),
                "`nothex` is not a channel id: ",
            ),
        ] {
            let (status, v) = body(e).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let message = v["error"].as_str().unwrap();
            assert!(message.starts_with(says), "{message}");
            assert!(message.len() > says.len(), "the reason follows: {message}");
        }
        let peer = PeerId::random();
        assert_eq!(
            parse_id::<PeerId>("peer id", &peer.to_string()).unwrap(),
            peer
        );
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_answer_json() {
        let (status, v) = body(not_found("/nope?x=1".parse().unwrap()).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(v["error"], "no such endpoint: /nope");
        let (status, v) =
            body(method_not_allowed(Method::DELETE, "/api/v1/wallet".parse().unwrap()).await).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(v["error"], "/api/v1/wallet does not answer DELETE");
    }
}
