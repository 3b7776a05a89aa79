//! The upstream leg: one ordinary RFC 6120 client-to-server TCP stream per client session.
//!
//! [`connect`] resolves the domain ([`resolve`]: static route → SRV `_xmpps-client` /
//! `_xmpp-client` → domain:5222), opens TCP with a timeout, negotiates STARTTLS (or direct TLS
//! for `_xmpps-client` targets) with verified certificates ([`tls`]), and returns a
//! [`Connection`] whose stream is open and whose first post-TLS `<stream:features/>` has been
//! read. Nothing here knows which transport the client uses.

pub mod connect;
pub mod proxy;
pub mod resolve;
pub mod tls;

#[cfg(test)]
mod tests;

pub use connect::{connect, connect_via, Connection, UpstreamReader, UpstreamWriter};
pub use resolve::Target;

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
    /// The client's address (after the trusted-proxy rules; port 0 when unknown), sent in the
    /// PROXY protocol header when `upstream.proxy_protocol` is on. `None`: not known.
    pub client: Option<std::net::SocketAddr>,
}

/// Shared, built once at startup: the config, the rustls client configs, the DNS resolver.
pub struct Upstream {
    pub config: std::sync::Arc<crate::Config>,
    /// STARTTLS and direct-TLS client configs; building them reads `ca_file`, so once only.
    pub tls: tls::TlsConfigs,
    /// One resolver (and so one cache) for every session, rather than one per connect.
    pub resolver: hickory_resolver::TokioAsyncResolver,
}

impl Upstream {
    /// Builds the TLS configs (a bad `ca_file` is a [`ConfigError`](crate::config::ConfigError))
    /// and the resolver (system config; defaults when `/etc/resolv.conf` is unusable).
    pub fn new(config: std::sync::Arc<crate::Config>) -> Result<Self, crate::config::ConfigError> {
        let tls = tls::build(&config.upstream.ca_file)?;
        Ok(Upstream { config, tls, resolver: new_resolver() })
    }
}

fn new_resolver() -> hickory_resolver::TokioAsyncResolver {
    use hickory_resolver::config::{LookupIpStrategy, ResolverConfig, ResolverOpts};
    let (conf, mut opts) = match hickory_resolver::system_conf::read_system_conf() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "system resolver configuration unusable; using defaults");
            (ResolverConfig::default(), ResolverOpts::default())
        }
    };
    // UP-04: every A and AAAA address of a target is tried, so ask for both.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    hickory_resolver::TokioAsyncResolver::tokio(conf, opts)
}
