//! Composes the public router (BOSH, WebSocket, host-meta, the front page) and the admin router,
//! binds the listeners (public, admin, the cluster's internal one), and drains on shutdown. `serve` takes already-bound listeners so tests can bind port 0.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Config;

pub use crate::state::AppState;

/// The public router: BOSH and WebSocket on their configured paths, host-meta, the front page.
pub fn public_router(state: Arc<AppState>) -> Router {
    let config = state.config();
    let c = &config.http;
    let bosh = get(crate::bosh::http::get).post(crate::bosh::http::post).options(crate::bosh::http::options);
    use crate::metrics::Route;
    let mut paths = vec![(c.bosh_path.clone(), Route::Bosh), (c.websocket_path.clone(), Route::WebSocket)];
    paths.push((crate::hostmeta::XRD_PATH.into(), Route::HostMeta));
    paths.push((crate::hostmeta::JRD_PATH.into(), Route::HostMetaJson));
    for p in crate::front_page::PATHS {
        paths.push((p.into(), Route::FrontPage));
    }
    // XEP-0025 polling (obsolete) is routed only when enabled: off, its path is a 404.
    let polling = &config.polling;
    if polling.enabled {
        paths.push((polling.path.clone(), Route::Polling));
    }
    let routes = Arc::new(crate::metrics::HttpRoutes { paths });
    let mut router = Router::new()
        .route(&c.bosh_path, bosh)
        // `any`: WebSocket over HTTP/2 arrives as an extended CONNECT (RFC 8441), not a GET.
        .route(&c.websocket_path, axum::routing::any(crate::websocket::handler))
        .merge(crate::hostmeta::routes())
        .merge(crate::front_page::routes(c));
    if polling.enabled {
        router = router.route(&polling.path, crate::polling::route(&state));
    }
    router.layer(axum::middleware::from_fn_with_state(routes, crate::metrics::track_http)).with_state(state)
}

/// Serve the internal listener until `stop`: each peer's connection speaks the hop protocol
/// ([`crate::cluster::hop`]); its requests are answered by [`crate::bosh::http::from_peer`].
async fn serve_cluster(listener: TcpListener, state: Arc<AppState>, stop: CancellationToken) {
    let Some(cluster) = state.cluster.clone() else { return };
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !cluster.is_peer(peer.ip()) {
            // Only replicas (inside cluster.peer_cidrs) may even try the handshake.
            crate::bosh::http::hop_refused();
            continue;
        }
        let st = state.clone();
        let handler = move |f| crate::bosh::http::from_peer(st.clone(), f);
        let max = crate::cluster::hop::MAX_REQUEST;
        tokio::spawn(crate::cluster::hop::serve(cluster.hop.clone(), tcp, max, handler, crate::bosh::http::hop_refused, stop.clone()));
    }
}

/// The admin router: /metrics, /healthz, /readyz (see [`crate::admin`]).
pub fn admin_router(state: Arc<AppState>) -> Router {
    crate::admin::router(state)
}

/// Serve until `state.shutdown` is cancelled, then drain: sessions are told (BOSH
/// `system-shutdown`, WebSocket stream error) and given `[drain] grace` (as configured when the
/// drain begins) to finish.
pub async fn serve(bound: Listeners, state: Arc<AppState>) -> std::io::Result<()> {
    let Listeners { public: listeners, admin, cluster } = bound;
    // The listeners outlive `state.shutdown`: during the drain the public ones still answer
    // (new sessions get an explicit refusal, clients fetch their terminal bodies) and the
    // admin one reports /readyz 503. They stop when the drain is over.
    let stopped = CancellationToken::new();
    let mut servers = Vec::new();
    let tls = match &state.certs {
        Some(store) => {
            let config = state.config();
            store.clone().watch(Duration::from_secs(config.http.tls.reload_interval.max(1)), stopped.clone());
            let cfg = crate::front::tls::server_config(store.clone(), config.http.tls.xmpp_passthrough)
                .map_err(|e| std::io::Error::other(e.0))?;
            Some(tokio_rustls::TlsAcceptor::from(cfg))
        }
        None => None,
    };
    let edge = crate::front::Edge {
        router: public_router(state.clone()),
        state: state.clone(),
        tls,
    };
    for l in listeners {
        info!(addr = %l.local_addr()?, tls = edge.tls.is_some(), "public listener");
        let token = stopped.clone();
        let edge = edge.clone();
        servers.push(tokio::spawn(async move {
            crate::front::run(l, edge, token).await;
            Ok::<(), std::io::Error>(())
        }));
    }
    if let Some(l) = admin {
        info!(addr = %l.local_addr()?, "admin listener");
        let app = admin_router(state.clone());
        let token = stopped.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(l, app).with_graceful_shutdown(async move { token.cancelled().await }).await
        }));
    }
    if let Some(l) = cluster {
        // Up until the drain is over: a draining owner still answers its peers' forwards.
        info!(addr = %l.local_addr()?, advertise = ?state.cluster.as_ref().map(|c| c.advertise), "cluster listener");
        servers.push(tokio::spawn({
            let (state, token) = (state.clone(), stopped.clone());
            async move {
                serve_cluster(l, state, token).await;
                Ok(())
            }
        }));
    }
    state.shutdown.cancelled().await;
    crate::metrics::metrics().set_draining();
    let (_, grace) = state.drain_window();
    info!(grace_secs = grace.as_secs(), "draining");
    state.tracker.close();
    if tokio::time::timeout(grace, state.tracker.wait()).await.is_err() {
        tracing::warn!(left = state.tracker.len(), "drain grace over; exiting with sessions still open");
    }
    stopped.cancel();
    for s in servers {
        // In-flight HTTP requests were answered by their sessions; don't wait on idle sockets.
        let _ = tokio::time::timeout(Duration::from_secs(1), s).await;
    }
    Ok(())
}

/// The bound listeners [`serve`] runs.
pub struct Listeners {
    pub public: Vec<TcpListener>,
    pub admin: Option<TcpListener>,
    /// `[cluster] listen`, when clustering is on.
    pub cluster: Option<TcpListener>,
}

/// Bind every configured listener (fails with the address in the message).
pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
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
    let cluster = if config.cluster.enabled() {
        let a = &config.cluster.listen;
        Some(TcpListener::bind(a).await.map_err(|e| std::io::Error::new(e.kind(), format!("bind {a}: {e}")))?)
    } else {
        None
    };
    Ok(Listeners { public, admin, cluster })
}
