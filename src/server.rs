//! Builds the public router (BOSH, WebSocket) and the admin router, binds the listeners, and
//! drains on shutdown. `serve` takes already-bound listeners so tests can bind port 0.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::live::Live;
use crate::Config;

/// Everything a request handler needs; shared by all transports.
pub struct AppState {
    /// The configuration in force and what is built from it; replaced whole on a reload.
    live: std::sync::RwLock<Arc<Live>>,
    /// One token per served domain, children of `shutdown`: cancelled when a reload stops
    /// serving the domain, so its sessions end with `host-gone`.
    domains: std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>,
    /// Cancelled on SIGTERM: transports stop taking new sessions and end live ones.
    pub shutdown: CancellationToken,
    /// Every session task is spawned on this tracker so the drain can wait for them.
    pub tracker: TaskTracker,
    /// Live BOSH sessions.
    pub bosh: crate::bosh::Registry,
    /// Session admission limits (total, per IP, rate), shared by all transports.
    pub admission: Arc<crate::limits::Admission>,
    /// The public listeners' certificate, when `[http.tls]` is set.
    pub certs: Option<Arc<crate::front::tls::CertStore>>,
    /// This replica's place in a cluster, when `[cluster] secret_file` is set.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// When the drain began (set by the first session that sees it; cluster mode spreads
    /// session ends from here).
    drain_started: std::sync::OnceLock<tokio::time::Instant>,
}

impl AppState {
    pub fn new(config: Arc<Config>) -> Result<Arc<AppState>, crate::config::ConfigError> {
        let live = Live::new(config.clone())?;
        let cluster = crate::cluster::Cluster::from_config(&config.cluster, config.bosh.max_wait)?.map(Arc::new);
        if cluster.is_some() {
            crate::metrics::metrics().cluster_on();
        }
        Ok(Arc::new(AppState {
            cluster,
            drain_started: std::sync::OnceLock::new(),
            live: std::sync::RwLock::new(Arc::new(live)),
            domains: Default::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            bosh: crate::bosh::Registry::new(),
            admission: crate::limits::Admission::new(config.limits.clone(), config.http.trusted_proxies.is_empty()),
            certs: if config.http.tls.cert_file.is_empty() {
                None
            } else {
                Some(crate::front::tls::CertStore::load(&config.http.tls)?)
            },
        }))
    }

    /// The configuration in force (read per request; a reload swaps it).
    pub fn config(&self) -> Arc<Config> {
        self.live().config.clone()
    }

    /// The upstream context of the configuration in force.
    pub fn upstream(&self) -> Arc<crate::upstream::Upstream> {
        self.live().upstream.clone()
    }

    /// The trusted proxies of the configuration in force.
    pub fn trusted(&self) -> Arc<crate::front::Trusted> {
        self.live().trusted.clone()
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A token that is cancelled when the process drains or when a reload stops serving
    /// `domain` (tell the two apart with `shutdown.is_cancelled()`).
    pub fn domain_token(&self, domain: &str) -> CancellationToken {
        let mut d = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        d.entry(domain.to_ascii_lowercase()).or_insert_with(|| self.shutdown.child_token()).clone()
    }

    /// Put `new` in force (live reload): settings that cannot change in a running process keep
    /// their values (their names are returned), admission limits apply at once, and sessions
    /// of domains no longer served end with `host-gone`. Nothing changes when `new` cannot be
    /// built (its reason is the error).
    pub fn replace_config(&self, mut new: Config) -> Result<Vec<&'static str>, crate::config::ConfigError> {
        let old = self.config();
        let fixed = crate::live::keep_fixed(&old, &mut new);
        let new = Arc::new(new);
        let live = Live::new(new.clone())?;
        self.admission.set_limits(new.limits.clone(), new.http.trusted_proxies.is_empty());
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
        let mut d = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        d.retain(|domain, token| {
            let keep = new.serves(domain);
            if !keep {
                info!(domain = %domain, "domain no longer served: its sessions end with host-gone");
                token.cancel();
            }
            keep
        });
        Ok(fixed)
    }

    /// In cluster mode, when a draining session with this `jitter` (any random `u32`, fixed
    /// per session) is to end: its own point spread uniformly over the first 80 % of
    /// `[drain] grace`, so thousands of clients do not reconnect in the same second and a
    /// session keeps being served (forwarded requests too) until then. `None` outside cluster
    /// mode: sessions end as soon as the drain begins.
    pub fn drain_at(&self, jitter: u32) -> Option<tokio::time::Instant> {
        self.cluster.as_ref()?;
        let start = *self.drain_started.get_or_init(tokio::time::Instant::now);
        let spread = Duration::from_secs(self.config().drain.grace).mul_f64(0.8);
        Some(start + spread.mul_f64(f64::from(jitter) / f64::from(u32::MAX)))
    }

    /// How a draining process ends a session of `transport` (or refuses a new one):
    /// `Redirect` to the peer in `[drain] redirect_url`, else `Shutdown`.
    pub fn drain_error(&self, transport: crate::metrics::Transport) -> crate::Error {
        let config = self.config();
        match config.drain.redirects(&config.http) {
            Some((bosh, _)) if transport == crate::metrics::Transport::Bosh => crate::Error::Redirect(bosh),
            Some((_, ws)) => crate::Error::Redirect(ws),
            None => crate::Error::Shutdown,
        }
    }
}

/// The public router: BOSH and WebSocket on their configured paths.
pub fn public_router(state: Arc<AppState>) -> Router {
    let config = state.config();
    let c = &config.http;
    let bosh = get(crate::bosh::http::get).post(crate::bosh::http::post).options(crate::bosh::http::options);
    let routes = Arc::new(crate::metrics::HttpRoutes { bosh: c.bosh_path.clone(), websocket: c.websocket_path.clone() });
    Router::new()
        .route(&c.bosh_path, bosh)
        // `any`: WebSocket over HTTP/2 arrives as an extended CONNECT (RFC 8441), not a GET.
        .route(&c.websocket_path, axum::routing::any(crate::websocket::handler))
        .merge(crate::hostmeta::routes())
        .merge(crate::front_page::routes(c))
        .layer(axum::middleware::from_fn_with_state(routes, crate::metrics::track_http))
        .with_state(state)
}

/// Serve the internal listener until `stop`: each peer's connection speaks the hop protocol
/// ([`crate::cluster::hop`]); its requests are answered by [`crate::bosh::http::from_peer`].
async fn serve_cluster(listener: TcpListener, state: Arc<AppState>, stop: CancellationToken) {
    let Some(cluster) = state.cluster.clone() else { return };
    let max = state.config().bosh.max_body_bytes;
    loop {
        let (tcp, _peer) = tokio::select! {
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
        let st = state.clone();
        let handler = move |f| crate::bosh::http::from_peer(st.clone(), f);
        tokio::spawn(crate::cluster::hop::serve(cluster.hop.clone(), tcp, max, handler, crate::bosh::http::hop_refused, stop.clone()));
    }
}

/// The admin router: /metrics, /healthz, /readyz (see [`crate::admin`]).
pub fn admin_router(state: Arc<AppState>) -> Router {
    crate::admin::router(state)
}

/// Serve until `state.shutdown` is cancelled, then drain: sessions are told (BOSH
/// `system-shutdown`, WebSocket stream error) and given `grace` to finish.
pub async fn serve(bound: Listeners, state: Arc<AppState>, grace: Duration) -> std::io::Result<()> {
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
