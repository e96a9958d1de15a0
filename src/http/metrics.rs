//! `GET /metrics`: the registry as OpenMetrics text, on the node's server ([`metrics_router`],
//! part of [`super::router`]) and on the metrics-only listener (`metrics.listen`,
//! [`metrics_only_router`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use super::error::{self, ApiError};
use crate::metrics;

/// `GET /metrics`: `registry` as OpenMetrics text. The node's [`super::router`] includes it.
pub fn metrics_router<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    let endpoint = MetricsEndpoint {
        registry,
        encoder: metrics::Encoder::default(),
    };
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(Arc::new(endpoint))
}

/// The app of the metrics-only listener (`metrics.listen`): `GET /metrics`, and a JSON 404
/// (405) for any other path (method).
pub fn metrics_only_router(registry: Arc<Registry>) -> Router {
    metrics_router(registry)
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
}

/// The registry `/metrics` encodes, and its encoder (which sizes the buffer from the last
/// scrape).
struct MetricsEndpoint {
    registry: Arc<Registry>,
    encoder: metrics::Encoder,
}

async fn metrics_handler(State(endpoint): State<Arc<MetricsEndpoint>>) -> Response {
    match endpoint.encoder.encode(&endpoint.registry) {
        Ok(body) => (
            [(header::CONTENT_TYPE, metrics::OPENMETRICS_CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_metrics_only_app_serves_metrics_and_json_errors_elsewhere() {
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("probe", "A probe", counter.clone());
        counter.inc();
        let app = metrics_only_router(Arc::new(registry));
        let ask = |method: &str, path: &str| {
            app.clone().oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
        };
        let response = ask("GET", "/metrics").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&text).contains("probe_total 1"));
        for (method, path, status) in [
            ("GET", "/api/v1/node", StatusCode::NOT_FOUND),
            ("GET", "/health", StatusCode::NOT_FOUND),
            ("POST", "/metrics", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let response = ask(method, path).await.unwrap();
            assert_eq!(response.status(), status, "{method} {path}");
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"].as_str().unwrap().contains(path), "{v}");
        }
    }
}
