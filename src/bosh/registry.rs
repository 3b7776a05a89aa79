//! The registry of live BOSH sessions: sid → the channel of the task that owns the session.
//! Creating a session applies the policy that must hold before any DNS or TCP work: not
//! draining, `to` present, domain served, `route` allow-listed. A sharded map; nothing is held across `.await`.

use std::sync::Arc;

use base64::Engine as _;
use dashmap::DashMap;
use tokio::sync::mpsc;

use super::session::{Incoming, Params, Session};
use crate::error::Error;
use crate::server::AppState;

/// How many requests may queue for one session before the handler waits. Clients keep at most
/// `requests` (2) in flight, so this only bounds abuse.
const SESSION_QUEUE: usize = 8;

#[derive(Default)]
pub struct Registry {
    /// Boxed requests: tokio's channel allocates 32 slots per block up front, and an unboxed
    /// `Incoming` (~0.5 KiB) would make that ~16 KiB per idle session.
    sessions: DashMap<String, mpsc::Sender<Box<Incoming>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, sid: &str) -> Option<mpsc::Sender<Box<Incoming>>> {
        self.sessions.get(sid).map(|s| s.clone())
    }

    pub fn remove(&self, sid: &str) {
        self.sessions.remove(sid);
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Check the creation policy and start the session task; the task answers `inc.reply`. On a
    /// refusal `inc` is dropped and the caller answers with the error.
    /// `client` is the client's address (IP after the trusted-proxy rules); its IP is what the
    /// admission limits count, and it goes to the upstream in the PROXY header when configured.
    pub fn create(&self, state: &Arc<AppState>, inc: Incoming, client: Option<std::net::SocketAddr>) -> Result<(), Error> {
        let ip = client.map(|c| c.ip());
        if state.shutdown.is_cancelled() {
            return Err(state.drain_error(crate::metrics::Transport::Bosh));
        }
        let cfg = state.config();
        let domain = match inc.req.to.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
            Some(d) => d.to_ascii_lowercase(),
            None if !cfg.bosh.default_domain.is_empty() => cfg.bosh.default_domain.to_ascii_lowercase(),
            None => return Err(Error::ImproperAddressing),
        };
        // Not an open relay: anything not served is refused before any DNS or TCP work.
        if !cfg.serves(&domain) {
            return Err(Error::HostUnknown);
        }
        // `route` is honoured only when allow-listed verbatim; any other value is host-unknown
        // (BOSH-S-14, issue 5), before any DNS or TCP work.
        let route = match inc.req.route.as_deref() {
            None => None,
            Some(r) => match allowed_route(&cfg.upstream.allow_route, r) {
                Some(t) => Some(t),
                None => {
                    tracing::info!(route = r, "BOSH route not in upstream.allow_route: host-unknown");
                    return Err(Error::HostUnknown);
                }
            },
        };
        let permit = state.admission.admit(ip)?;
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let sid = loop {
            // In a cluster the sid names this replica (crate::cluster::sid).
            let sid = state.cluster.as_ref().map_or_else(new_sid, |c| c.mint());
            if let dashmap::Entry::Vacant(v) = self.sessions.entry(sid.clone()) {
                v.insert(tx);
                break sid;
            }
        };
        let mut params = Params::negotiate(sid, &inc.req, &cfg.bosh, domain);
        params.route = route;
        params.open.client = client;
        let st = state.clone();
        // One span per session; the caller's span (client IP) is its parent.
        let span = tracing::info_span!("session", transport = "bosh", sid = %super::session::short(&params.sid));
        let session = async move {
            // The admission slot is held for the session's whole life.
            let _permit = permit;
            Session::run(st, params, inc, rx).await
        };
        state.tracker.spawn(tracing::Instrument::instrument(session, span));
        Ok(())
    }
}

/// `xmpp:host:port` when it is on the allow-list, as a STARTTLS target. Never parsed as a URI.
pub fn allowed_route(allow: &[String], route: &str) -> Option<crate::upstream::Target> {
    if !allow.iter().any(|a| a == route) {
        return None;
    }
    let rest = route.strip_prefix("xmpp:")?;
    let (host, port) = crate::config::split_host_port(rest)?;
    Some(crate::upstream::Target { host, port, direct_tls: false, trusted: true })
}

/// 128 bits from the OS CSPRNG, URL-safe base64 (22 characters). SEC-01.
pub fn new_sid() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random source is unavailable");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_when_allow_listed() {
        let allow = vec!["xmpp:127.0.0.1:5222".to_string()];
        let t = allowed_route(&allow, "xmpp:127.0.0.1:5222").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 5222));
        for r in ["xmpp:127.0.0.1:22", "xmpp:169.254.169.254:80", "http://127.0.0.1:5222", "127.0.0.1:5222"] {
            assert!(allowed_route(&allow, r).is_none(), "{r}");
        }
        assert!(allowed_route(&["bogus".into()], "bogus").is_none());
    }

    #[test]
    fn sids_are_unique_and_128_bits() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let s = new_sid();
            assert_eq!(s.len(), 22);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert!(seen.insert(s));
        }
    }
}
