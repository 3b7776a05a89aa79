//! The upstream leg: one ordinary RFC 6120 client-to-server TCP stream per client session.
//!
//! [`connect`] resolves the domain ([`resolve`]: static route → SRV `_xmpps-client` /
//! `_xmpp-client` → domain:5222), opens TCP with a timeout, negotiates STARTTLS (or direct TLS
//! for `_xmpps-client` targets) with verified certificates ([`tls`]), and returns a
//! [`Connection`] whose stream is open and whose first post-TLS `<stream:features/>` has been
//! read ([`connect`](mod@connect): negotiation; [`stream`]: the open stream's reader and writer
//! halves). Nothing here knows which transport the client uses. [`connect_observed`] is the
//! same walk, reporting each step to an [`observe::Observer`] (`xmpp-cm check`).

pub mod connect;
pub mod observe;
pub mod proxy;
pub mod resolve;
pub mod stream;
pub mod tls;

#[cfg(test)]
pub(crate) mod tests;

pub use connect::{connect, connect_observed, connect_via};
pub use stream::{Connection, UpstreamReader, UpstreamWriter};
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

/// Shared by sessions, built at startup and again on every configuration reload (`crate::live`):
/// the config, the rustls client configs, the DNS resolver.
pub struct Upstream {
    pub config: std::sync::Arc<crate::Config>,
    /// STARTTLS and direct-TLS client configs; building them reads `ca_file`, so once per configuration.
    pub tls: tls::TlsConfigs,
    /// One resolver (and so one cache) for every session, rather than one per connect.
    pub resolver: hickory_resolver::TokioAsyncResolver,
}

impl Upstream {
    /// Builds the TLS configs (a bad `ca_file` is a [`ConfigError`](crate::config::ConfigError))
    /// and the resolver (`upstream.resolver`, else the system config; defaults when
    /// `/etc/resolv.conf` is unusable).
    pub fn new(config: std::sync::Arc<crate::Config>) -> Result<Self, crate::config::ConfigError> {
        let tls = tls::build(&config.upstream.ca_file)?;
        let resolver = new_resolver(&config.upstream.resolver)?;
        Ok(Upstream { config, tls, resolver })
    }

    /// [`Upstream::new`], but the TLS configs also record each certificate verification
    /// ([`tls::build_observed`]), for `xmpp-cm check`. Not for sessions: one shared slot.
    pub fn new_observed(config: std::sync::Arc<crate::Config>) -> Result<Self, crate::config::ConfigError> {
        let tls = tls::build_observed(&config.upstream.ca_file)?;
        let resolver = new_resolver(&config.upstream.resolver)?;
        Ok(Upstream { config, tls, resolver })
    }
}

/// The system resolver configuration, with its name servers replaced by `servers`
/// (`upstream.resolver`, "ip:port", each asked over UDP and TCP) when there are any; options
/// and search domains stay the system's.
fn new_resolver(servers: &[String]) -> Result<hickory_resolver::TokioAsyncResolver, crate::config::ConfigError> {
    use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
    let (mut conf, mut opts) = match hickory_resolver::system_conf::read_system_conf() {
        Ok(c) => c,
        Err(e) => {
            if servers.is_empty() {
                tracing::warn!(error = %e, "system resolver configuration unusable; using defaults");
            }
            (ResolverConfig::default(), ResolverOpts::default())
        }
    };
    if !servers.is_empty() {
        let mut own = ResolverConfig::from_parts(conf.domain().cloned(), conf.search().to_vec(), Vec::new());
        for s in servers {
            let addr: std::net::SocketAddr = s.parse().map_err(|_| {
                crate::config::ConfigError(format!("upstream.resolver: '{s}' is not an ip:port"))
            })?;
            for protocol in [Protocol::Udp, Protocol::Tcp] {
                let mut ns = NameServerConfig::new(addr, protocol);
                // As for resolv.conf servers: a negative answer from one does not stop the others.
                ns.trust_negative_responses = false;
                own.add_name_server(ns);
            }
        }
        conf = own;
    }
    // UP-04: every A and AAAA address of a target is tried, so ask for both.
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    Ok(hickory_resolver::TokioAsyncResolver::tokio(conf, opts))
}
