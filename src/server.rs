//! Builds the public router (BOSH, WebSocket) and the admin router, binds the listeners, and
//! drains on shutdown. `serve` takes already-bound listeners so tests can bind port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::upstream::Upstream;
use crate::Config;

/// Everything a request handler needs; shared by all transports.
pub struct AppState {
    pub config: Arc<Config>,
    pub upstream: Arc<Upstream>,
    /// Cancelled on SIGTERM: transports stop taking new sessions and end live ones.
    pub shutdown: CancellationToken,
    /// Every session task is spawned on this tracker so the drain can wait for them.
    pub tracker: TaskTracker,
    /// Live BOSH sessions.
    pub bosh: crate::bosh::Registry,
}

impl AppState {
    pub fn new(config: Arc<Config>) -> Result<Arc<AppState>, crate::config::ConfigError> {
        let upstream = Arc::new(Upstream::new(config.clone())?);
        Ok(Arc::new(AppState {
            config,
            upstream,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            bosh: crate::bosh::Registry::new(),
        }))
    }
}

/// The public router: BOSH and WebSocket on their configured paths.
pub fn public_router(state: Arc<AppState>) -> Router {
    let c = &state.config.http;
    let bosh = get(crate::bosh::http::get).post(crate::bosh::http::post).options(crate::bosh::http::options);
    Router::new()
        .route(&c.bosh_path, bosh)
        .route(&c.websocket_path, get(crate::websocket::handler))
        .with_state(state)
}

/// The admin router: health and readiness (metrics come with the operations work).
pub fn admin_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|axum::extract::State(s): axum::extract::State<Arc<AppState>>| async move {
                if s.shutdown.is_cancelled() {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    (axum::http::StatusCode::OK, "ready\n")
                }
            }),
        )
        .with_state(state)
}

/// Serve until `state.shutdown` is cancelled, then drain: sessions are told (BOSH
/// `system-shutdown`, WebSocket stream error) and given `grace` to finish.
pub async fn serve(listeners: Vec<TcpListener>, admin: Option<TcpListener>, state: Arc<AppState>, grace: Duration) -> std::io::Result<()> {
    let mut servers = Vec::new();
    for l in listeners {
        info!(addr = %l.local_addr()?, "public listener");
        let app = public_router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let token = state.shutdown.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(l, app).with_graceful_shutdown(async move { token.cancelled().await }).await
        }));
    }
    if let Some(l) = admin {
        info!(addr = %l.local_addr()?, "admin listener");
        let app = admin_router(state.clone());
        let token = state.shutdown.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(l, app).with_graceful_shutdown(async move { token.cancelled().await }).await
        }));
    }
    state.shutdown.cancelled().await;
    info!("draining");
    state.tracker.close();
    let _ = tokio::time::timeout(grace, state.tracker.wait()).await;
    for s in servers {
        // In-flight HTTP requests were answered by their sessions; don't wait on idle sockets.
        let _ = tokio::time::timeout(Duration::from_secs(1), s).await;
    }
    Ok(())
}

/// Bind every configured listener (fails with the address in the message).
pub async fn bind(config: &Config) -> std::io::Result<(Vec<TcpListener>, Option<TcpListener>)> {
    let mut public = Vec::new();
    for addr in &config.http.listen {
        let l = TcpListener::bind(addr).await.map_err(|e| std::io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
        public.push(l);
    }
    let admin = if config.admin.listen.is_empty() {
        None
    } else {
        let a = &config.admin.listen;
        Some(TcpListener::bind(a).await.map_err(|e| std::io::Error::new(e.kind(), format!("bind {a}: {e}")))?)
    };
    Ok((public, admin))
}
