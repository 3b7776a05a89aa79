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
///
/// Not an `async fn`: a held BOSH request keeps this future for up to `wait` seconds, and an
/// async fn would keep its `Request` argument (and `Next::run`'s copy of it) all that time.
/// The rest of the stack is called at once, so the future holds only that call, the route and
/// the start time.
pub fn track_http(
    axum::extract::State(routes): axum::extract::State<std::sync::Arc<HttpRoutes>>,
    req: axum::extract::Request,
    mut next: axum::middleware::Next,
) -> impl std::future::Future<Output = axum::response::Response> + Send {
    let route = routes.classify(req.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str()));
    let start = Instant::now();
    // What `Next::run` does, without keeping the request: the stack is always ready.
    let call = tower::Service::call(&mut next, req);
    async move {
        let resp = match call.await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        metrics().http_request(route, resp.status().as_u16(), start.elapsed());
        resp
    }
}
