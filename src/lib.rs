//! xmpp-cm: an XMPP connection manager.
//!
//! Clients speak BOSH (XEP-0124 + XEP-0206) or XMPP over WebSocket (RFC 7395) to xmpp-cm; for
//! each client session xmpp-cm opens one ordinary client-to-server TCP stream (RFC 6120) to an
//! unmodified upstream XMPP server. `ARCHITECTURE.md` in the repository traces a request
//! through these modules; `python3 scripts/deps.py` checks that their imports only point down.
//!
//! Module map (top layer first):
//! - [`server`]: binds the public, admin and cluster listeners, composes the routers, drains.
//! - [`front`]: the public edge: accept, TLS, HTTP/1.1 (lean loop) or hyper, or Direct TLS;
//!   the client address after the trusted-proxy rules ([`front::client_ip`]).
//! - [`state`]: what every transport shares ([`state::AppState`]).
//! - [`bosh`]: the BOSH transport (body parser, rid window, the session's rules as a pure state
//!   machine `bosh::core`, the session task that runs it, registry, HTTP handler).
//! - [`websocket`]: the RFC 7395 transport (and legacy `<stream:stream>` framing);
//!   [`passthrough`]: XEP-0368 Direct TLS clients, framed and handed to the WebSocket session.
//! - [`polling`]: legacy HTTP polling (XEP-0025, obsolete), served only with `[polling] enabled`.
//! - [`cluster`]: several replicas sharing BOSH sessions: sids that name their owner, the
//!   authenticated internal hop a non-owner forwards a request over.
//! - [`relay`]: every rewrite of what crosses the proxy, shared by all transports.
//! - [`link`]: one session's upstream stream, the same for every transport: open, restart,
//!   batched writes, counting, rewrites on the way back, and the one teardown rule.
//! - [`upstream`]: resolving, connecting, STARTTLS/direct TLS, the upstream XML stream.
//! - [`xml`]: the element tree, the streaming framer, stream headers. No IO.
//! - [`admin`]: the admin listener (/metrics, /healthz, /readyz); [`hostmeta`]: XEP-0156
//!   discovery documents on the public listeners.
//! - [`front_page`]: `GET /`, what this endpoint is and a browser test of the network.
//! - [`reload`]: live configuration reload (SIGHUP, a changed file); [`live`]: the
//!   configuration in force and what is built from it.
//! - [`check`]: `xmpp-cm check`, the operator's walk of a session's upstream path (over
//!   `upstream`'s observer) and of the front's certificate and settings.
//! - [`config`], [`error`], [`metrics`], [`limits`] (admission, the client rate, the client-side
//!   XML limits), [`shutdown`]: the ground floor, with [`xml`] and [`relay`].

pub mod admin;
pub mod bosh;
pub mod check;
pub mod cluster;
pub mod config;
pub mod error;
pub mod front;
pub mod front_page;
pub mod hostmeta;
pub mod limits;
pub mod link;
pub mod live;
pub mod metrics;
pub mod passthrough;
pub mod polling;
pub mod relay;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod upstream;
pub mod websocket;
pub mod xml;

pub use config::Config;
pub use error::{Error, Side};

/// The committed seeds of one fuzz corpus (`fuzz/corpus/NAME/seed-*`, real client traffic),
/// sorted: the fuzz targets' properties are also checked over them in the ordinary test suite.
#[cfg(test)]
pub(crate) fn fuzz_seeds(corpus: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(corpus);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("seed-"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// A seed of `corpus` ([`fuzz_seeds`]) picked by `pick`, with a few bytes replaced (`edits`):
/// the fuzz targets' mutations in miniature. `None` when the corpus has no seeds.
#[cfg(test)]
pub(crate) fn mutated_seed(corpus: &str, pick: proptest::sample::Index, edits: &[(proptest::sample::Index, u8)]) -> Option<Vec<u8>> {
    let seeds = fuzz_seeds(corpus);
    let mut s = seeds.get(pick.index(seeds.len().max(1)))?.clone();
    for (at, b) in edits {
        let i = at.index(s.len());
        s[i] = *b;
    }
    Some(s)
}
