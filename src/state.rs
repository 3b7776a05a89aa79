//! What every transport's sessions and handlers share ([`AppState`]): the configuration in
//! force ([`crate::live`]), shutdown and the session tracker, admission, the BOSH registry, the
//! cluster identity, the public certificate. A low module: it knows no transport, and the
//! routers that use it are composed above it in [`crate::server`].

use std::sync::Arc;
use std::time::Duration;

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
    drain_started: std::sync::OnceLock<(tokio::time::Instant, Duration)>,
}

impl AppState {
    pub fn new(config: Arc<Config>) -> Result<Arc<AppState>, crate::config::ConfigError> {
        let live = Live::new(config.clone())?;
        let cluster = crate::cluster::Cluster::from_config(&config.cluster, config.bosh.max_wait)?.map(Arc::new);
        if cluster.is_some() {
            crate::metrics::metrics().cluster_on(&crate::cluster::hop::HopError::RESULTS, &crate::cluster::Refusal::ALL.map(crate::cluster::Refusal::as_str));
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
        if !self.config().serves(domain) {
            // A reload stopped serving it between the session's own check and now (the config
            // is swapped before this lock is taken in `replace_config`): end at once.
            let gone = self.shutdown.child_token();
            gone.cancel();
            return gone;
        }
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
        if let Some(c) = &self.cluster {
            c.hop.set_answer_within(crate::cluster::answer_within(new.bosh.max_wait));
        }
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
        let (start, grace) = self.drain_window();
        Some(start + grace.mul_f64(0.8 * f64::from(jitter) / f64::from(u32::MAX)))
    }

    /// When the drain began and its grace (`[drain] grace` at that moment: a reload during the
    /// drain does not move it), the same for the sessions' spread and the process's exit.
    pub fn drain_window(&self) -> (tokio::time::Instant, Duration) {
        *self.drain_started.get_or_init(|| (tokio::time::Instant::now(), Duration::from_secs(self.config().drain.grace)))
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

