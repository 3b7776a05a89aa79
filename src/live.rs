//! The configuration in force, and what is built from it: the upstream context (TLS client
//! configs, resolver, routes) and the trusted-proxy list. One [`Live`] is swapped as a whole on
//! a reload ([`crate::state::AppState::replace_config`]), so a request never sees the new
//! routes with the old TLS trust. A session keeps the `Live` it started with for its own
//! settings (its limits, timers); what decides admission, routing and CORS is read per request.

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::front::client_ip::Trusted;
use crate::upstream::Upstream;

pub struct Live {
    pub config: Arc<Config>,
    pub upstream: Arc<Upstream>,
    pub trusted: Arc<Trusted>,
}

impl Live {
    /// Build everything a configuration needs (a bad `ca_file` fails here, before any swap).
    pub fn new(config: Arc<Config>) -> Result<Live, ConfigError> {
        Ok(Live {
            upstream: Arc::new(Upstream::new(config.clone())?),
            trusted: Arc::new(Trusted::new(&config.http.trusted_proxies)),
            config,
        })
    }
}

/// The settings a running process cannot change (listeners are bound, routes and the cluster
/// identity are fixed, the log format is set up once): `new` gets `old`'s values for them, and
/// the names of those that differed are returned, for the log.
pub fn keep_fixed(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($name:literal => $($f:ident).+),* $(,)?) => {$(
            if old.$($f).+ != new.$($f).+ {
                changed.push($name);
                new.$($f).+ = old.$($f).+.clone();
            }
        )*};
    }
    keep!(
        "http.listen" => http.listen,
        "http.bosh_path" => http.bosh_path,
        "http.websocket_path" => http.websocket_path,
        "polling.enabled" => polling.enabled,
        "polling.path" => polling.path,
        "http.tls" => http.tls,
        "admin.listen" => admin.listen,
        "cluster" => cluster,
        "log.format" => log.format,
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_settings_are_kept_and_named() {
        let old = Config::default();
        let mut new = Config::default();
        new.http.listen = vec!["127.0.0.1:1".into()];
        new.log.format = "json".into();
        new.upstream.domains = vec!["other.test".into()];
        new.limits.max_sessions = 7;
        assert_eq!(keep_fixed(&old, &mut new), vec!["http.listen", "log.format"]);
        assert_eq!(new.http.listen, old.http.listen);
        assert_eq!(new.log.format, old.log.format);
        // What can change live stays changed.
        assert_eq!(new.upstream.domains, vec!["other.test".to_string()]);
        assert_eq!(new.limits.max_sessions, 7);
    }
}
