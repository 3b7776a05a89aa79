//! The upstream leg: one ordinary RFC 6120 client-to-server TCP stream per client session.
//!
//! [`connect`] resolves the domain ([`resolve`]: static route → SRV `_xmpps-client` /
//! `_xmpp-client` → domain:5222), opens TCP with a timeout, negotiates STARTTLS (or direct TLS
//! for `_xmpps-client` targets) with verified certificates ([`tls`]), and returns a
//! [`Connection`] whose stream is open and whose first post-TLS `<stream:features/>` has been
//! read. Nothing here knows which transport the client uses.

pub mod connect;
pub mod resolve;
pub mod tls;

pub use connect::{connect, Connection, UpstreamReader, UpstreamWriter};

/// What the client asked for when opening (or restarting) the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenParams {
    /// The XMPP domain (`to` of the header, SNI, and the certificate name checked).
    pub domain: String,
    /// `xml:lang` of the header.
    pub lang: String,
    /// `version` of the header (normally "1.0").
    pub version: String,
    /// Optional `from`, sent only once the stream is encrypted (UP-19).
    pub from: Option<String>,
}

/// Shared, built once at startup: the config, the rustls client config, the DNS resolver.
pub struct Upstream {
    pub config: std::sync::Arc<crate::Config>,
}

impl Upstream {
    pub fn new(config: std::sync::Arc<crate::Config>) -> Result<Self, crate::config::ConfigError> {
        Ok(Upstream { config })
    }
}
