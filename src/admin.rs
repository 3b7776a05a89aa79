//! The admin listener (`[admin] listen`): `/metrics` (OpenMetrics text from [`crate::metrics`]),
//! `/healthz` (the process is alive) and `/readyz` (accepting sessions: 503 once draining).
//!
//! It is served on its own port, away from the public listeners, and keeps answering during the
//! drain so that a Kubernetes readiness probe sees the 503 (the server stops it last).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// OpenMetrics' content type (Prometheus negotiates it; plain-text scrapers read it too).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics() -> Response {
    let mut r = crate::metrics::metrics().encode().into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    r
}

async fn readyz(State(s): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    if s.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(app: Router, path: &str) -> (StatusCode, String, Option<String>) {
        let req = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let r = app.oneshot(req).await.unwrap();
        let status = r.status();
        let ct = r.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned(), ct)
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let state = AppState::new(Arc::new(crate::Config::default())).unwrap();
        let app = router(state.clone());
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body, ct) = get(app.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ct.unwrap().starts_with("application/openmetrics-text"));
        assert!(body.contains("xmpp_cm_build_info{version="), "{body}");
        assert!(body.ends_with("# EOF\n"));
        state.shutdown.cancel();
        let (status, body, _) = get(app, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "draining\n"));
    }
}
