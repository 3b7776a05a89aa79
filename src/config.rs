//! The configuration tree: built-in defaults < TOML file < environment (`XMPP_CM_<SECTION>__<KEY>`),
//! layered with figment. [`Config::validate`] checks the cross-field rules; `main` exits 64 with
//! its one-line reason. Every key is documented in `config/example.toml`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: Http,
    pub admin: Admin,
    pub bosh: Bosh,
    pub websocket: WebSocket,
    pub polling: Polling,
    pub upstream: Upstream,
    pub log: Log,
    pub drain: Drain,
    pub limits: Limits,
    pub cluster: Cluster,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Public listeners: BOSH, WebSocket.
    pub listen: Vec<String>,
    pub bosh_path: String,
    pub websocket_path: String,
    /// Origins allowed by CORS on the BOSH path: `["*"]` (the default) allows any origin without
    /// credentials; a list of exact origins (`https://chat.example.org`) is echoed back with
    /// `Access-Control-Allow-Credentials: true`. Empty: no CORS headers at all.
    pub cors_allowed_origins: Vec<String>,
    /// Public base URL clients reach this service at (`https://chat.example.org`), advertised
    /// in XEP-0156 host-meta as `<public_url><bosh_path>` and `wss://…<websocket_path>`.
    /// Empty: derived from the request's Host header, only when it came over HTTPS
    /// (`X-Forwarded-Proto: https` from the TLS terminator).
    pub public_url: String,
    /// Peers (CIDRs, e.g. `10.0.0.0/8`, `127.0.0.1/32`) whose `Forwarded` / `X-Forwarded-For`
    /// / `X-Forwarded-Proto` headers are believed. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Seconds a client may take to send the request headers (slowloris).
    pub header_read_timeout: u64,
    /// Seconds a client may take to send a request body.
    pub body_read_timeout: u64,
    /// Serve the front page on `/` (what this endpoint is, its URLs, a browser test of the
    /// network; `crate::front_page`). Off: `/` is 404.
    pub front_page: bool,
    /// TLS on the public listeners (empty cert_file: plain HTTP).
    pub tls: HttpTls,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpTls {
    /// PEM certificate chain; with `key_file`, turns every public listener into HTTPS
    /// (TLS 1.2 and 1.3, ALPN h2 and http/1.1). Reloaded when the files change or on SIGHUP.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// Relay XEP-0368 Direct TLS clients (ALPN `xmpp-client`) to the upstream on the same port.
    pub xmpp_passthrough: bool,
    /// Seconds a client may take to finish the TLS handshake.
    pub handshake_timeout: u64,
    /// Seconds between checks of the certificate files for changes.
    pub reload_interval: u64,
}

impl Default for HttpTls {
    fn default() -> Self {
        HttpTls { cert_file: String::new(), key_file: String::new(), xmpp_passthrough: false, handshake_timeout: 10, reload_interval: 10 }
    }
}

/// Admission limits. 0 means unlimited for the counts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Sessions (all transports) at once; more → HTTP 503 / WebSocket refused.
    pub max_sessions: usize,
    /// Sessions at once from one client IP (IPv6 clients counted per /64); more → HTTP 429.
    pub max_sessions_per_ip: usize,
    /// New sessions per second from one client IP or IPv6 /64 (burst of the same size); more → HTTP 429.
    pub new_sessions_per_ip_per_sec: u32,
    /// Bytes queued for a slow client before xmpp-cm stops reading its upstream (backpressure).
    pub max_queued_bytes: usize,
    /// Bytes per second one session may send towards the upstream (0: unlimited). A client over
    /// it is not cut off: xmpp-cm stops reading from it until its token bucket (burst: one
    /// second's worth, at least `upstream.max_stanza_bytes`) has refilled (WS-25).
    pub client_bytes_per_sec: u32,
    /// Deepest XML nesting accepted from clients (the BOSH body counts as one level).
    pub max_xml_depth: usize,
    /// Most attributes on one element.
    pub max_xml_attrs: usize,
    /// Longest element or attribute name.
    pub max_xml_name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 100_000,
            max_sessions_per_ip: 100,
            new_sessions_per_ip_per_sec: 20,
            max_queued_bytes: 1 << 20,
            client_bytes_per_sec: 1 << 20,
            max_xml_depth: 64,
            max_xml_attrs: 64,
            max_xml_name_len: 256,
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: vec!["0.0.0.0:5280".into()],
            bosh_path: "/http-bind".into(),
            websocket_path: "/xmpp-websocket".into(),
            cors_allowed_origins: vec!["*".into()],
            public_url: String::new(),
            trusted_proxies: vec![],
            header_read_timeout: 20,
            body_read_timeout: 20,
            front_page: true,
            tls: HttpTls::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Admin listener (/metrics /healthz /readyz); empty disables it.
    pub listen: String,
}

impl Default for Admin {
    fn default() -> Self {
        Admin { listen: "127.0.0.1:9280".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Bosh {
    /// Seconds; caps the client's `wait`.
    pub max_wait: u64,
    /// Caps the client's `hold`.
    pub max_hold: u64,
    /// Seconds of inactivity after which a long-poll session ends.
    pub max_inactivity: u64,
    /// Shortest allowed interval between empty polls, seconds (advertised as `polling`).
    pub polling: u64,
    /// Longest `pause` a client may ask for, seconds (advertised as `maxpause`); 0 disables.
    pub max_pause: u64,
    /// Largest accepted HTTP request body.
    pub max_body_bytes: usize,
    /// Domain used when a creation request has no `to`; empty: `improper-addressing`.
    pub default_domain: String,
    /// How often the same rid may be repeated before `policy-violation`.
    pub max_rid_repeats: u32,
    /// HTTP compression of responses for clients whose `Accept-Encoding` allows it: `gzip`
    /// (the default) or `off`. It costs CPU and memory only while a response is encoded.
    pub compression: Compression,
    /// Smallest response body that is compressed, bytes (at least 64).
    pub compression_min_bytes: usize,
    /// Streams a client may hold in one session (XEP-0124 §16, each its own upstream
    /// connection and admission slot). 1, the default, leaves the feature off: no `stream`
    /// attribute is advertised and a `to` on a later request is ignored, as before.
    pub max_streams_per_session: usize,
}

/// Upper bound of `[bosh] max_streams_per_session`: each stream is an upstream connection and
/// a session's streams share one task, so a session is not a connection multiplier.
pub const MAX_STREAMS_PER_SESSION: usize = 64;

/// `[bosh] compression`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Off,
    Gzip,
}

/// Below this a gzip member (18 bytes of framing) rarely saves what it costs.
pub const MIN_COMPRESSION_BYTES: usize = 64;

impl Default for Bosh {
    fn default() -> Self {
        Bosh {
            max_wait: 60,
            max_hold: 1,
            max_inactivity: 60,
            polling: 2,
            max_pause: 120,
            max_body_bytes: 262_144,
            default_domain: String::new(),
            max_rid_repeats: 10,
            compression: Compression::Gzip,
            compression_min_bytes: 1024,
            max_streams_per_session: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocket {
    /// Origins allowed to open a WebSocket; empty means any.
    pub allowed_origins: Vec<String>,
    /// Accept the legacy `<stream:stream>` framing (tsung, old clients).
    pub legacy_framing: bool,
    /// Seconds between pings to the client; 0 disables.
    pub ping_interval: u64,
    /// Seconds without any frame from the client (after a ping) before the session ends.
    pub ping_timeout: u64,
    /// Largest accepted message.
    pub max_message_bytes: usize,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            allowed_origins: vec![],
            legacy_framing: true,
            ping_interval: 30,
            ping_timeout: 30,
            max_message_bytes: 262_144,
        }
    }
}

/// `[polling]`: legacy HTTP polling (XEP-0025, obsolete), for old embedded clients only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Polling {
    /// Serve XEP-0025 on `path`. Off: the path is not routed (404).
    pub enabled: bool,
    /// Path of the polling endpoint; also the `path` of the `ID` cookie.
    pub path: String,
    /// Seconds without a request after which a session ends (XEP-0025 recommends at least 300:
    /// its clients may wait two minutes between requests).
    pub inactivity: u64,
    /// Largest accepted HTTP request body (as `bosh.max_body_bytes`; larger: `-2:0`).
    pub max_body_bytes: usize,
}

impl Default for Polling {
    fn default() -> Self {
        Polling { enabled: false, path: "/http-poll".into(), inactivity: 300, max_body_bytes: 262_144 }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS (or direct TLS) is mandatory; a server that does not offer it is refused.
    Required,
    /// Use TLS when offered; go on in plaintext otherwise.
    Opportunistic,
    /// Never negotiate TLS (only for loopback or trusted networks).
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// Domains served; anything else is `host-unknown` before any DNS or TCP work.
    pub domains: Vec<String>,
    pub tls: TlsMode,
    /// Extra PEM trust anchors for upstream certificates.
    pub ca_file: String,
    /// Seconds for the whole connect (DNS, TCP, TLS, stream open).
    pub connect_timeout: u64,
    /// Static targets: domain → "host:port". Otherwise DNS SRV.
    pub routes: BTreeMap<String, String>,
    /// BOSH `route` values (`xmpp:host:port`) that may be honoured; any other is host-unknown.
    pub allow_route: Vec<String>,
    /// Largest stanza accepted in either direction.
    pub max_stanza_bytes: usize,
    /// Send the client's address to the upstream in a PROXY protocol header (v1 text, v2
    /// binary) as the first bytes of every upstream connection. The server must expect it
    /// (ejabberd `use_proxy_protocol: true`, Prosody mod_net_proxy).
    pub proxy_protocol: ProxyProtocol,
    /// Connect to SRV targets (and the domain:5222 fallback) that resolve to loopback,
    /// private (RFC 1918, 100.64/10), link-local, unique-local, unspecified, broadcast or
    /// multicast addresses (`upstream::resolve::refused_address`). Off: such
    /// targets are refused (SSRF guard). Static routes are trusted either way.
    pub allow_private_targets: bool,
    /// DNS servers ("ip:port") for SRV and address lookups instead of the system's
    /// (`/etc/resolv.conf`); its options and search domains still apply. Empty: the system's.
    pub resolver: Vec<String>,
}

/// `upstream.proxy_protocol`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            domains: vec!["example.org".into()],
            tls: TlsMode::Required,
            ca_file: String::new(),
            connect_timeout: 10,
            routes: BTreeMap::new(),
            allow_route: vec![],
            max_stanza_bytes: 262_144,
            proxy_protocol: ProxyProtocol::Off,
            allow_private_targets: false,
            resolver: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `human` or `json`.
    pub format: String,
    /// tracing filter, e.g. `info` or `xmpp_cm=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log { format: "human".into(), level: "info".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Drain {
    /// Seconds the process waits after SIGTERM for sessions to end before it exits (0).
    /// Keep Kubernetes' `terminationGracePeriodSeconds` above this plus the preStop sleep.
    pub grace: u64,
    /// Base URL of another replica (or the load balancer) serving the same paths. When set,
    /// draining sends BOSH clients `see-other-uri` (`<redirect_url><bosh_path>`) and WebSocket
    /// clients `<close see-other-uri='ws(s)://…<websocket_path>'/>` instead of
    /// `system-shutdown`. Never less secure than `http.public_url` (SEC-14).
    pub redirect_url: String,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { grace: 10, redirect_url: String::new() }
    }
}

impl Drain {
    /// The BOSH and WebSocket URLs to send clients to while draining, if configured.
    pub fn redirects(&self, http: &Http) -> Option<(String, String)> {
        let base = self.redirect_url.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            format!("ws://{}", base.strip_prefix("http://")?)
        };
        Some((format!("{base}{}", http.bosh_path), format!("{ws}{}", http.websocket_path)))
    }
}

/// `[cluster]`: several replicas sharing BOSH sessions (ARCHITECTURE.md §5, `crate::cluster`).
/// Off while `secret_file` is empty: one replica behaves as if this section did not exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// The key every replica shares (a Kubernetes Secret): the file's content, surrounding
    /// whitespace trimmed, at least 32 bytes. Set: clustering on.
    pub secret_file: String,
    /// The internal listener forwarded requests arrive on (bound only when clustering is on).
    pub listen: String,
    /// This replica's internal address (`ip:port`), written (encrypted) into its sids.
    pub advertise: String,
    /// The only addresses ever dialled for a forward; `advertise` must be inside.
    pub peer_cidrs: Vec<String>,
    /// Dial plus the hop's handshake to an owner, in milliseconds; an owner that is gone gives the
    /// client `item-not-found` within this.
    pub connect_timeout_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { secret_file: String::new(), listen: "0.0.0.0:5281".into(), advertise: String::new(), peer_cidrs: Vec::new(), connect_timeout_ms: 300 }
    }
}

impl Cluster {
    pub fn enabled(&self) -> bool {
        !self.secret_file.is_empty()
    }

    /// Read the shared key (trimmed); the reason names the key when it is unusable.
    pub fn read_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let raw = std::fs::read(&self.secret_file)
            .map_err(|e| ConfigError(format!("cluster.secret_file: '{}' cannot be read: {e}", self.secret_file)))?;
        let key = raw.trim_ascii().to_vec();
        if key.len() < 32 {
            return Err(ConfigError(format!(
                "cluster.secret_file: the key in '{}' is {} bytes; at least 32 are needed (openssl rand -base64 48)",
                self.secret_file,
                key.len()
            )));
        }
        Ok(key)
    }

    /// The cross-field rules of `[cluster]` (only when it is on).
    fn validate(&self, http: &Http, admin: &Admin) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if !self.enabled() {
            return Ok(());
        }
        self.read_secret()?;
        let Ok(listen) = self.listen.parse::<SocketAddr>() else {
            return err(format!("cluster.listen: '{}' is not an address:port", self.listen));
        };
        let clash = |other: &str| {
            other.parse::<SocketAddr>().is_ok_and(|o| {
                o.port() == listen.port() && (o.ip() == listen.ip() || o.ip().is_unspecified() || listen.ip().is_unspecified())
            })
        };
        if let Some(l) = http.listen.iter().find(|l| clash(l)) {
            return err(format!("cluster.listen: '{}' is the same as the public listener '{l}'", self.listen));
        }
        if clash(&admin.listen) {
            return err(format!("cluster.listen: '{}' is the same as the admin listener '{}'", self.listen, admin.listen));
        }
        if self.peer_cidrs.is_empty() {
            return err("cluster.peer_cidrs is empty: list the network the replicas' internal addresses are in".into());
        }
        let mut cidrs = Vec::new();
        for c in &self.peer_cidrs {
            match parse_cidr(c) {
                Some(n) => cidrs.push(n),
                None => return err(format!("cluster.peer_cidrs: '{c}' is not an address or CIDR")),
            }
        }
        let Ok(adv) = self.advertise.parse::<SocketAddr>() else {
            return err(format!("cluster.advertise: '{}' must be this replica's internal ip:port (e.g. $(POD_IP):5281)", self.advertise));
        };
        if adv.ip().is_unspecified() || adv.port() == 0 {
            return err(format!("cluster.advertise: '{adv}' is not an address peers can dial"));
        }
        if !cidrs.iter().any(|n| cidr_contains(*n, adv.ip())) {
            return err(format!("cluster.advertise: '{adv}' is outside cluster.peer_cidrs {:?}", self.peer_cidrs));
        }
        if self.connect_timeout_ms == 0 || self.connect_timeout_ms > 10_000 {
            return err("cluster.connect_timeout_ms must be between 1 and 10000".into());
        }
        Ok(())
    }
}

/// A configuration problem, with a one-line reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Defaults < `file` (if any) < environment `XMPP_CM_*`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::figment(file).extract::<Config>().map_err(|e| ConfigError(one_line(&e.to_string())))
            .and_then(|c| c.validate().map(|_| c))
    }

    pub fn figment(file: Option<&Path>) -> Figment {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = file {
            f = f.merge(Toml::file_exact(p));
        }
        f.merge(Env::prefixed("XMPP_CM_").split("__"))
    }

    /// Cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        for l in &self.http.listen {
            if l.parse::<SocketAddr>().is_err() {
                return err(format!("http.listen: '{l}' is not an address:port"));
            }
        }
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<SocketAddr>().is_err() {
            return err(format!("admin.listen: '{}' is not an address:port", self.admin.listen));
        }
        for (name, p) in [("http.bosh_path", &self.http.bosh_path), ("http.websocket_path", &self.http.websocket_path)] {
            if !p.starts_with('/') {
                return err(format!("{name}: '{p}' must start with '/'"));
            }
        }
        if self.http.bosh_path == self.http.websocket_path {
            return err("http.bosh_path and http.websocket_path must differ".into());
        }
        for o in &self.http.cors_allowed_origins {
            let ok = o == "*" || ((o.starts_with("https://") || o.starts_with("http://")) && !o.ends_with('/') && !o[8..].contains('/'));
            if !ok {
                return err(format!("http.cors_allowed_origins: '{o}' is not \"*\" or an origin like https://chat.example.org (scheme and host, no path or trailing slash)"));
            }
        }
        for c in &self.http.trusted_proxies {
            if parse_cidr(c).is_none() {
                return err(format!("http.trusted_proxies: '{c}' is not an address or CIDR"));
            }
        }
        let t = &self.http.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            return err("http.tls: cert_file and key_file go together".into());
        }
        if t.xmpp_passthrough && t.cert_file.is_empty() {
            return err("http.tls.xmpp_passthrough needs http.tls.cert_file and key_file".into());
        }
        for (name, f) in [("http.tls.cert_file", &t.cert_file), ("http.tls.key_file", &t.key_file)] {
            if !f.is_empty() && !Path::new(f).is_file() {
                return err(format!("{name}: '{f}' is not a readable file"));
            }
        }
        if self.http.header_read_timeout == 0 || self.http.body_read_timeout == 0 || t.handshake_timeout == 0 {
            return err("http timeouts must be at least 1 second".into());
        }
        if self.limits.max_xml_depth < 4 || self.limits.max_xml_attrs < 8 || self.limits.max_xml_name_len < 32 {
            return err("limits.max_xml_*: too small for XMPP (depth >= 4, attrs >= 8, name >= 32)".into());
        }
        if self.limits.max_queued_bytes < self.upstream.max_stanza_bytes {
            return err("limits.max_queued_bytes must be at least upstream.max_stanza_bytes".into());
        }
        if self.bosh.max_wait == 0 || self.bosh.max_wait > 300 {
            return err("bosh.max_wait must be between 1 and 300 seconds".into());
        }
        if self.bosh.max_hold == 0 || self.bosh.max_hold > 5 {
            return err("bosh.max_hold must be between 1 and 5".into());
        }
        if self.bosh.max_inactivity < 5 {
            return err("bosh.max_inactivity must be at least 5 seconds".into());
        }
        if self.bosh.polling >= self.bosh.max_inactivity {
            return err("bosh.polling must be shorter than bosh.max_inactivity".into());
        }
        if self.bosh.max_body_bytes < 1024 {
            return err("bosh.max_body_bytes must be at least 1024".into());
        }
        if self.bosh.compression_min_bytes < MIN_COMPRESSION_BYTES {
            return err(format!("bosh.compression_min_bytes must be at least {MIN_COMPRESSION_BYTES} (smaller bodies do not shrink)"));
        }
        if !(1..=MAX_STREAMS_PER_SESSION).contains(&self.bosh.max_streams_per_session) {
            return err(format!("bosh.max_streams_per_session must be between 1 (off) and {MAX_STREAMS_PER_SESSION}"));
        }
        let pp = &self.polling.path;
        if !pp.starts_with('/') || !pp.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',')) {
            return err(format!("polling.path: '{pp}' must start with '/' and hold no space, ';' or ','"));
        }
        if pp == &self.http.bosh_path || pp == &self.http.websocket_path {
            return err("polling.path must differ from http.bosh_path and http.websocket_path".into());
        }
        if pp == "/" || pp.starts_with("/.well-known/") || pp.starts_with("/xmpp-cm/") {
            // The front page, host-meta and the page's assets.
            return err(format!("polling.path: '{pp}' is a path xmpp-cm serves itself"));
        }
        if self.polling.inactivity == 0 {
            return err("polling.inactivity must be at least 1 second".into());
        }
        if self.polling.max_body_bytes < 1024 {
            return err("polling.max_body_bytes must be at least 1024".into());
        }
        if self.polling.enabled && self.cluster.enabled() {
            // An XEP-0025 identifier cannot name the replica that owns the session.
            return err("polling.enabled: XEP-0025 polling is not available in cluster mode ([cluster] secret_file is set)".into());
        }
        if self.upstream.max_stanza_bytes < 1024 {
            return err("upstream.max_stanza_bytes must be at least 1024".into());
        }
        if self.websocket.max_message_bytes < 1024 {
            return err("websocket.max_message_bytes must be at least 1024".into());
        }
        if self.upstream.connect_timeout == 0 {
            return err("upstream.connect_timeout must be at least 1 second".into());
        }
        if self.upstream.domains.is_empty() && self.upstream.routes.is_empty() {
            return err("upstream.domains is empty: no domain would be served".into());
        }
        for (d, target) in &self.upstream.routes {
            if split_host_port(target).is_none() {
                return err(format!("upstream.routes.\"{d}\": '{target}' is not host:port"));
            }
        }
        for r in &self.upstream.resolver {
            if r.parse::<SocketAddr>().map_or(true, |a| a.port() == 0) {
                return err(format!("upstream.resolver: '{r}' is not an ip:port name server (e.g. \"10.0.0.2:53\", \"[2001:db8::53]:53\")"));
            }
        }
        if !self.upstream.ca_file.is_empty() && !Path::new(&self.upstream.ca_file).is_file() {
            return err(format!("upstream.ca_file: '{}' is not a readable file", self.upstream.ca_file));
        }
        let pu = &self.http.public_url;
        if !pu.is_empty() && (!pu.starts_with("https://") || pu.len() <= "https://".len()) {
            // DISCO-03: host-meta advertises only https:// and wss:// URLs.
            return err(format!("http.public_url: '{pu}' must be an https:// URL"));
        }
        let ru = &self.drain.redirect_url;
        if !ru.is_empty() {
            if !(ru.starts_with("https://") || ru.starts_with("http://")) {
                return err(format!("drain.redirect_url: '{ru}' must be an http:// or https:// URL"));
            }
            if pu.starts_with("https://") && !ru.starts_with("https://") {
                // SEC-14 / WS-20: never redirect to a less secure scheme.
                return err(format!("drain.redirect_url: '{ru}' is less secure than http.public_url '{pu}'"));
            }
        }
        self.cluster.validate(&self.http, &self.admin)?;
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return err(format!("log.format: '{}' must be human or json", self.log.format));
        }
        Ok(())
    }

    /// Is `domain` served (allow-list or static route)? Compared case-insensitively.
    pub fn serves(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        self.upstream.domains.iter().any(|x| x.eq_ignore_ascii_case(d))
            || self.upstream.routes.keys().any(|x| x.eq_ignore_ascii_case(d))
    }

    /// The static route for `domain`, if one is configured.
    pub fn route_for(&self, domain: &str) -> Option<(String, u16)> {
        let d = domain.trim_end_matches('.');
        self.upstream
            .routes
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(d))
            .and_then(|(_, v)| split_host_port(v))
    }
}

/// "10.0.0.0/8", "::1/128" or a bare address → (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

/// Is `ip` inside `net/len`? (IPv4-mapped IPv6 peers compare as IPv4.)
pub fn cidr_contains((net, len): (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// "host:port" or "[v6]:port" → (host, port).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
// figment::Jail's closures return figment::Error (large); that is its API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn layering_file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[bosh]\nmax_wait = 30\nmax_hold = 2\n[upstream]\ndomains=['a.test']\n[upstream.routes]\n\"a.test\" = \"127.0.0.1:5222\"\n")?;
            jail.set_env("XMPP_CM_BOSH__MAX_WAIT", "20");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.0)?;
            assert_eq!(c.bosh.max_wait, 20);
            assert_eq!(c.bosh.max_hold, 2);
            assert_eq!(c.route_for("A.test"), Some(("127.0.0.1".into(), 5222)));
            assert!(c.serves("a.test") && !c.serves("b.test"));
            Ok(())
        });
    }

    /// Issue 17: gzip on by default, off and the threshold settable from the file.
    #[test]
    fn bosh_compression_settings() {
        assert_eq!((Bosh::default().compression, Bosh::default().compression_min_bytes), (Compression::Gzip, 1024));
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[bosh]\ncompression = 'off'\ncompression_min_bytes = 64\n")?;
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.0)?;
            assert_eq!((c.bosh.compression, c.bosh.compression_min_bytes), (Compression::Off, 64));
            Ok(())
        });
    }

    /// Issue 18: multiple streams per BOSH session are off (1) by default, settable from the file.
    #[test]
    fn bosh_max_streams_per_session() {
        assert_eq!(Bosh::default().max_streams_per_session, 1);
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[bosh]\nmax_streams_per_session = 8\n")?;
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.0)?;
            assert_eq!(c.bosh.max_streams_per_session, 8);
            Ok(())
        });
    }

    #[test]
    fn bad_values_have_one_line_reasons() {
        let cases: &[(&str, &str)] = &[
            ("[bosh]\nmax_wait = 0\n", "bosh.max_wait"),
            ("[http]\nlisten = ['nope']\n", "http.listen"),
            ("[upstream]\ntls = 'sometimes'\n", "tls"),
            ("[upstream.routes]\n'x' = 'no-port'\n", "upstream.routes"),
            ("[bosh]\nunknown_key = 1\n", "unknown_key"),
            ("[upstream]\nresolver = ['dns.example:53']\n", "upstream.resolver"),
            ("[upstream]\nresolver = ['10.0.0.2']\n", "upstream.resolver"),
            ("[upstream]\nresolver = ['10.0.0.2:0']\n", "upstream.resolver"),
            ("[polling]\npath = 'http-poll'\n", "polling.path"),
            ("[polling]\npath = '/http-bind'\n", "polling.path"),
            ("[polling]\npath = '/'\n", "polling.path"),
            ("[polling]\ninactivity = 0\n", "polling.inactivity"),
            ("[polling]\nenabled = 'yes'\n", "enabled"),
            ("[polling]\nunknown_key = 1\n", "unknown_key"),
            ("[bosh]\ncompression = 'br'\n", "compression"),
            ("[bosh]\ncompression_min_bytes = 10\n", "bosh.compression_min_bytes"),
            ("[bosh]\nmax_streams_per_session = 0\n", "bosh.max_streams_per_session"),
            ("[bosh]\nmax_streams_per_session = 65\n", "bosh.max_streams_per_session"),
        ];
        for (toml, want) in cases {
            figment::Jail::expect_with(|jail| {
                jail.create_file("c.toml", toml)?;
                let e = Config::load(Some(Path::new("c.toml"))).unwrap_err().0;
                assert!(e.contains(want), "{toml:?}: {e}");
                assert!(!e.contains('\n'));
                Ok(())
            });
        }
    }

    /// Issue 14: `[cluster]` mistakes are one-line reasons (exit 64 from main); without a key
    /// nothing of it is checked.
    #[test]
    fn cluster_rules() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.key");
        std::fs::write(&good, "0123456789abcdef0123456789abcdef0123\n").unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "only-31-bytes-long-after-trim!!\n\n").unwrap();
        let cluster = |secret: &std::path::Path, listen: &str, advertise: &str, cidrs: &[&str]| {
            let cluster = Cluster {
                secret_file: secret.to_str().unwrap().into(),
                listen: listen.into(),
                advertise: advertise.into(),
                peer_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
                ..Cluster::default()
            };
            let c = Config { cluster, ..Config::default() };
            c.validate().err().map(|e| e.0)
        };
        assert_eq!(cluster(&good, "0.0.0.0:5281", "10.1.2.3:5281", &["10.0.0.0/8"]), None);
        assert_eq!(cluster(&good, "127.0.0.1:5281", "[fd00::1]:5281", &["10.0.0.0/8", "fd00::/8"]), None);
        for (secret, listen, advertise, cidrs, want) in [
            (&short, "0.0.0.0:5281", "10.1.2.3:5281", &["10.0.0.0/8"][..], "at least 32"),
            (&dir.path().join("missing"), "0.0.0.0:5281", "10.1.2.3:5281", &["10.0.0.0/8"][..], "cannot be read"),
            (&good, "0.0.0.0:5281", "192.168.1.2:5281", &["10.0.0.0/8"][..], "outside cluster.peer_cidrs"),
            (&good, "0.0.0.0:5281", "", &["10.0.0.0/8"][..], "cluster.advertise"),
            (&good, "0.0.0.0:5281", "0.0.0.0:5281", &["0.0.0.0/0"][..], "cluster.advertise"),
            (&good, "0.0.0.0:5281", "10.1.2.3:5281", &[][..], "peer_cidrs is empty"),
            (&good, "0.0.0.0:5281", "10.1.2.3:5281", &["10.0.0.0/33"][..], "cluster.peer_cidrs"),
            // The default public listener is 0.0.0.0:5280; the admin one 127.0.0.1:9280.
            (&good, "10.1.2.3:5280", "10.1.2.3:5281", &["10.0.0.0/8"][..], "public listener"),
            (&good, "0.0.0.0:9280", "10.1.2.3:5281", &["10.0.0.0/8"][..], "admin listener"),
            (&good, "nowhere", "10.1.2.3:5281", &["10.0.0.0/8"][..], "cluster.listen"),
        ] {
            let e = cluster(secret, listen, advertise, cidrs).unwrap_or_else(|| panic!("{listen} {advertise} {cidrs:?} validated"));
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        // Off: nothing is checked, whatever the other keys say.
        let mut off = Config::default();
        off.cluster.advertise = "nonsense".into();
        off.validate().unwrap();
        // XEP-0025 polling has no sid that names a replica: refused with clustering on.
        let mut polling = Config::default();
        polling.polling.enabled = true;
        polling.cluster = Cluster { secret_file: good.to_str().unwrap().into(), advertise: "10.1.2.3:5281".into(), peer_cidrs: vec!["10.0.0.0/8".into()], ..Cluster::default() };
        assert!(polling.validate().unwrap_err().0.contains("cluster mode"));
    }
}
