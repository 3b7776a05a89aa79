//! Counting the public listeners' HTTP requests by matched route and status: the [`track_http`]
//! middleware, and [`HttpRoutes`], the table that turns a matched path into a [`Route`] label.

use std::time::Instant;

use super::{metrics, Route};

/// The public paths, to name the route of a request from its matched path. Given as data by
/// whoever composes the router (`crate::server`), so this module knows no handler.
#[derive(Debug, Clone, Default)]
pub struct HttpRoutes {
    pub paths: Vec<(String, Route)>,
}

impl HttpRoutes {
    fn classify(&self, matched: Option<&str>) -> Route {
        let Some(m) = matched else { return Route::Other };
        self.paths.iter().find(|(p, _)| p == m).map_or(Route::Other, |(_, r)| *r)
    }
}

/// Middleware for the public router: counts every request by matched route and status and
/// observes its duration (for a WebSocket, the handshake only).
pub async fn track_http(
    axum::extract::State(routes): axum::extract::State<std::sync::Arc<HttpRoutes>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = routes.classify(req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str()));
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics().http_request(route, resp.status().as_u16(), start.elapsed());
    resp
}
