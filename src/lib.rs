//! xmpp-cm: an XMPP connection manager.
//!
//! Clients speak BOSH (XEP-0124 + XEP-0206) or XMPP over WebSocket (RFC 7395) to xmpp-cm; for
//! each client session xmpp-cm opens one ordinary client-to-server TCP stream (RFC 6120) to an
//! unmodified upstream XMPP server. See `ARCHITECTURE.md` in the repository.
//!
//! Module map (layers only point down):
//! - [`server`]: binds the public and admin listeners, builds the routers, drains on shutdown.
//! - [`bosh`]: the BOSH transport (body parser, rid window, session task, registry, HTTP handler).
//! - [`websocket`]: the RFC 7395 transport (and legacy `<stream:stream>` framing).
//! - [`cluster`]: several replicas sharing BOSH sessions: sids that name their owner, the
//!   authenticated internal hop a non-owner forwards a request over.
//! - [`relay`]: every rewrite of what crosses the proxy, shared by all transports.
//! - [`upstream`]: resolving, connecting, STARTTLS/direct TLS, the upstream XML stream.
//! - [`xml`]: the element tree, the streaming framer, stream headers. No IO.
//! - [`admin`]: the admin listener (/metrics, /healthz, /readyz); [`hostmeta`]: XEP-0156
//!   discovery documents on the public listeners.
//! - [`front_page`]: `GET /`, what this endpoint is and a browser test of the network.
//! - [`reload`]: live configuration reload (SIGHUP, a changed file); [`live`]: the
//!   configuration in force and what is built from it.
//! - [`check`]: `xmpp-cm check`, the operator's walk of a session's upstream path (over
//!   `upstream`'s observer) and of the front's certificate and settings.
//! - [`config`], [`error`], [`metrics`], [`shutdown`]: the ground floor.

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
pub mod live;
pub mod metrics;
pub mod passthrough;
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
