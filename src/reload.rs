//! Live configuration reload (issue 16 §2): on SIGHUP, and when the config file's content
//! changes (checked every `[http.tls] reload_interval` seconds), the whole configuration is
//! read again (file and environment, as at startup) and validated. A good one is put in force
//! with [`AppState::replace_config`]: domains, routes and everything else under `[upstream]`,
//! limits, CORS origins, trusted proxies, drain settings, `[bosh]` / `[websocket]` settings of
//! new sessions, and the log level. Live sessions stay up with the settings they started
//! with; sessions of a domain no longer served end with `host-gone`. A configuration that does
//! not validate is logged with its one-line reason and the running one is kept. Settings a
//! running process cannot change (listen addresses, paths, `[http.tls]` files — those reload
//! on their own — `[cluster]`, the log format) keep their values and are named in the log.
//! Counted in `xmpp_cm_config_reloads_total{result}`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::{info, warn};

use crate::state::AppState;
use crate::Config;

type LogLevelHook = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_LEVEL: OnceLock<LogLevelHook> = OnceLock::new();

/// How the binary's logging applies a new `[log] level` (set once, by `main`).
pub fn set_log_level_hook(f: LogLevelHook) {
    let _ = LOG_LEVEL.set(f);
}

/// Watch for SIGHUP and changes of `path` until the drain begins.
pub fn watch(state: Arc<AppState>, path: PathBuf) {
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = std::fs::read(&path).ok();
        // A change is applied once two checks in a row read the same new content: an editor
        // that writes the file in place is not caught halfway.
        let mut changed: Option<Option<Vec<u8>>> = None;
        loop {
            let every = Duration::from_secs(state.config().http.tls.reload_interval.max(1));
            // A change just seen is confirmed within a second.
            let wait = if changed.is_some() { every.min(Duration::from_secs(1)) } else { every };
            let why = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = tokio::time::sleep(wait) => {
                    let now = std::fs::read(&path).ok();
                    if now == seen {
                        changed = None;
                        continue;
                    }
                    if changed.as_ref() != Some(&now) {
                        changed = Some(now);
                        continue;
                    }
                    "the file changed"
                }
            };
            changed = None;
            seen = std::fs::read(&path).ok();
            reload(&state, &path, why);
        }
    });
}

/// Read `path` (and the environment) again and put the result in force; false when it was
/// refused (the running configuration stays).
pub fn reload(state: &AppState, path: &std::path::Path, why: &str) -> bool {
    let new = Config::load(Some(path));
    let level = new.as_ref().ok().map(|c| c.log.level.clone());
    let res = new.and_then(|c| state.replace_config(c));
    match res {
        Err(e) => {
            crate::metrics::metrics().config_reload("invalid");
            warn!(file = %path.display(), reason = %e, trigger = why, "configuration reload refused; the running configuration is kept");
            false
        }
        Ok(fixed) => {
            crate::metrics::metrics().config_reload("ok");
            if let (Some(level), Some(hook)) = (level, LOG_LEVEL.get()) {
                if let Err(e) = hook(&level) {
                    warn!(level, error = %e, "log.level not applied");
                }
            }
            if !fixed.is_empty() {
                warn!(settings = ?fixed, "these settings changed in the file but need a restart; their running values are kept");
            }
            info!(file = %path.display(), trigger = why, "configuration reloaded");
            true
        }
    }
}
