//! Middleware in front of the handlers: the `Host` check (against DNS rebinding), the API
//! token on state-changing routes, the body-size limit and the request timeout, each
//! answering an [`ApiError`].

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiState;
use super::error::ApiError;

/// Delay before answering a request with a wrong token, to slow down guessing.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(250);

impl ApiState {
    /// Whether the request carries the API token (compared in constant time); `None`
    /// without an `Authorization` header.
    pub(super) fn authorized(&self, headers: &HeaderMap) -> Option<bool> {
        let presented = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        Some(presented.is_some_and(|t| bool::from(t.as_bytes().ct_eq(self.token.as_bytes()))))
    }
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
pub(super) async fn check_host(
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

/// Lets only requests with the API token through.
pub(super) async fn require_token(
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
pub(super) async fn unauthorized(state: &ApiState) -> ApiError {
    tokio::time::sleep(AUTH_FAILURE_DELAY).await;
    let message = format!(
        "missing or invalid bearer token: send `Authorization: Bearer <token>`; {}",
        state.token_hint
    );
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// The largest request body a group of routes accepts, and the config key that sets it.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimit {
    /// The limit in bytes.
    pub(super) bytes: usize,
    /// The config key, named in the 413.
    pub(super) key: &'static str,
}

/// Answers 413 at once to a request that declares a body above the limit, before it is
/// read (a client that waits for `100 Continue` gets the answer instead). A body without
/// a declared length is cut off at the limit by `DefaultBodyLimit` as it is read.
pub(super) async fn limit_body(
    State(limit): State<BodyLimit>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(n) if n > u64::try_from(limit.bytes).unwrap_or(u64::MAX) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body of {n} bytes exceeds the limit of {} bytes ({})",
                limit.bytes, limit.key
            ),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// Answers 408 to a request not answered within the duration (`api.request_timeout_ms`).
pub(super) async fn time_limit(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "no answer within {} ms (api.request_timeout_ms)",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::middleware;
    use axum::routing::{get, put};
    use tower::ServiceExt;

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

    async fn answer(app: Router, request: Request) -> (StatusCode, serde_json::Value) {
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    #[tokio::test]
    async fn a_declared_body_above_the_limit_gets_a_json_413_naming_the_key() {
        let limit = BodyLimit {
            bytes: 8,
            key: "api.max_body_bytes",
        };
        let app = Router::new()
            .route("/", put(|b: Bytes| async move { b.len().to_string() }))
            .layer(middleware::from_fn_with_state(limit, limit_body));
        let request = |n: usize| {
            Request::put("/")
                .header(header::CONTENT_LENGTH, n)
                .body(Body::from(vec![0u8; n]))
                .unwrap()
        };
        let (status, v) = answer(app.clone(), request(9)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            v["error"],
            "the request body of 9 bytes exceeds the limit of 8 bytes (api.max_body_bytes)"
        );
        let response = app.oneshot(request(8)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_slow_answer_gets_a_json_408() {
        let app = Router::new()
            .route(
                "/",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .layer(middleware::from_fn_with_state(
                Duration::from_millis(20),
                time_limit,
            ));
        let (status, v) = answer(app, Request::get("/").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            v["error"],
            "no answer within 20 ms (api.request_timeout_ms)"
        );
    }
}
