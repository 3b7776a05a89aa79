//! Every Prometheus metric xmpp-cm exports, in one registry, with closed label sets only.
//!
//! Names are prefixed `xmpp_cm_`. Label values come from the small enums below ([`Transport`],
//! [`Direction`], [`Route`]), from [`Limit`] (`error.rs`'s, re-exported) or from [`Error::kind`] / [`ConnectKind::as_str`], which
//! are closed sets too; a sid, JID, IP or free-text error never becomes a label. Transports call
//! the small methods on [`Metrics`] through the process-wide [`metrics()`]; the admin listener
//! ([`crate::admin`]) encodes the registry as OpenMetrics text. Grafana's dashboard
//! (`dashboards/xmpp-cm.json`) queries only names defined here, and a test checks that.
//!
//! This file holds the labels, the registry and the counters API; the HTTP middleware that
//! counts requests is `http.rs`'s ([`track_http`], [`HttpRoutes`]), the `/proc/self` collector
//! `proc.rs`'s.
//!
//! Exported (OpenMetrics names):
//! - `xmpp_cm_build_info{version}` — always 1.
//! - `xmpp_cm_sessions_active{transport}` — gauge; `transport` is `bosh`, `websocket`, `direct_tls`
//!   (XEP-0368 passthrough) or `polling` (XEP-0025).
//! - `xmpp_cm_sessions_created_total{transport}`, `xmpp_cm_sessions_ended_total{transport,side,condition}`
//!   (`condition` is [`Error::kind`]), `xmpp_cm_sessions_refused_total{transport,condition}`
//!   (creation refused before a session existed: host-unknown, shutdown …).
//! - `xmpp_cm_session_duration_seconds{transport}` — histogram.
//! - `xmpp_cm_upstream_connect_duration_seconds` — histogram of successful connects;
//!   `xmpp_cm_upstream_connect_failures_total{kind}` with kind dns, tcp, tls, starttls, stream, timeout.
//! - `xmpp_cm_http_requests_total{route,status}`, `xmpp_cm_http_request_duration_seconds{route}`,
//!   `xmpp_cm_bosh_hold_seconds` (how long a BOSH request waited for its answer).
//! - `xmpp_cm_stanzas_relayed_total{direction}`, `xmpp_cm_relayed_bytes_total{direction}`.
//! - `xmpp_cm_limit_hits_total{limit}`.
//! - `xmpp_cm_websocket_pings_missed_total`.
//! - `xmpp_cm_draining` — 1 once SIGTERM arrived.
//! - `xmpp_cm_config_reloads_total{result}` — configuration reloads (SIGHUP or a changed file):
//!   `ok`, or `invalid` (the new file was refused and the running configuration kept).
//! - Clustering ([`crate::cluster`]): `xmpp_cm_cluster_enabled` (1 when `cluster.secret_file`
//!   is set), `xmpp_cm_cluster_forwards_total{result}` (`ok`, `connect_failed`, `lost`,
//!   `refused`), `xmpp_cm_cluster_forward_duration_seconds` (a forwarded request until the
//!   owner's answer, hold time included), `xmpp_cm_cluster_served_total` (requests answered
//!   for a peer), `xmpp_cm_cluster_refused_total{reason}` (`bad_sid`, `stale_epoch`,
//!   `outside_peer_cidrs`, `forwarded_twice`, `hop_auth`: refused without any network
//!   attempt), `xmpp_cm_cluster_peers_seen` (distinct peers forwarded to or heard from).
//! - `xmpp_cm_process_cpu_seconds_total`, `xmpp_cm_process_resident_memory_bytes`,
//!   `xmpp_cm_process_open_fds` — read from `/proc/self` at scrape time (Linux only).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::error::{ConnectKind, Error};
use crate::Side;

mod http;
mod proc;

pub use http::{track_http, HttpRoutes};

/// Which client transport a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Bosh,
    WebSocket,
    /// XEP-0368 Direct TLS passthrough on the HTTPS port (`crate::passthrough`).
    DirectTls,
    /// Legacy XEP-0025 HTTP polling (`crate::polling`).
    Polling,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Bosh => "bosh",
            Transport::WebSocket => "websocket",
            Transport::DirectTls => "direct_tls",
            Transport::Polling => "polling",
        }
    }
}

/// Which way a stanza (top-level element) or byte went through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToUpstream,
    ToClient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToUpstream => "to_upstream",
            Direction::ToClient => "to_client",
        }
    }
}

pub use crate::error::Limit;

/// The matched route of an HTTP request (never the raw URI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Bosh,
    WebSocket,
    HostMeta,
    HostMetaJson,
    /// `/` and its script, style and icon ([`crate::front_page`]).
    FrontPage,
    /// `[polling] path` (XEP-0025), when enabled.
    Polling,
    Other,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Bosh => "bosh",
            Route::WebSocket => "websocket",
            Route::HostMeta => "host_meta",
            Route::HostMetaJson => "host_meta_json",
            Route::FrontPage => "front_page",
            Route::Polling => "polling",
            Route::Other => "other",
        }
    }
}

fn side_str(s: Side) -> &'static str {
    match s {
        Side::Client => "client",
        Side::Upstream => "upstream",
        Side::Internal => "internal",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportL {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedL {
    transport: &'static str,
    side: &'static str,
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedL {
    transport: &'static str,
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindL {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpL {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteL {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionL {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitL {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultL {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonL {
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Sessions last from seconds to days: 1 s … ~36 h.
fn session_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 9))
}

/// Connects and HTTP requests: 5 ms … ~82 s (BOSH requests are held up to `max_wait`).
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The registry and every metric in it.
pub struct Metrics {
    /// Owns the encoding; the handles below are clones sharing the same atomics.
    registry: Registry,
    sessions_active: Family<TransportL, Gauge>,
    sessions_created: Family<TransportL, Counter>,
    sessions_ended: Family<EndedL, Counter>,
    sessions_refused: Family<RefusedL, Counter>,
    session_duration: HistogramFamily<TransportL>,
    upstream_connect_duration: Histogram,
    upstream_connect_failures: Family<KindL, Counter>,
    http_requests: Family<HttpL, Counter>,
    http_duration: HistogramFamily<RouteL>,
    bosh_hold: Histogram,
    stanzas: Family<DirectionL, Counter>,
    bytes: Family<DirectionL, Counter>,
    limit_hits: Family<LimitL, Counter>,
    ws_pings_missed: Counter,
    draining: Gauge,
    config_reloads: Family<ResultL, Counter>,
    cluster_enabled: Gauge,
    cluster_forwards: Family<ResultL, Counter>,
    cluster_forward_duration: Histogram,
    cluster_served: Counter,
    cluster_refused: Family<ReasonL, Counter>,
    cluster_peers_seen: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry (tests make their own; the process uses [`metrics()`]).
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("xmpp_cm");
        r.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let m = Metrics {
            sessions_active: Family::default(),
            sessions_created: Family::default(),
            sessions_ended: Family::default(),
            sessions_refused: Family::default(),
            session_duration: Family::new_with_constructor(session_buckets),
            upstream_connect_duration: latency_buckets(),
            upstream_connect_failures: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_buckets),
            bosh_hold: latency_buckets(),
            stanzas: Family::default(),
            bytes: Family::default(),
            limit_hits: Family::default(),
            ws_pings_missed: Counter::default(),
            draining: Gauge::default(),
            config_reloads: Family::default(),
            cluster_enabled: Gauge::default(),
            cluster_forwards: Family::default(),
            cluster_forward_duration: latency_buckets(),
            cluster_served: Counter::default(),
            cluster_refused: Family::default(),
            cluster_peers_seen: Gauge::default(),
            registry: Registry::default(),
        };
        r.register("sessions_active", "Live client sessions", m.sessions_active.clone());
        r.register("sessions_created", "Client sessions started", m.sessions_created.clone());
        r.register(
            "sessions_ended",
            "Client sessions ended, by the side and kind of what ended them",
            m.sessions_ended.clone(),
        );
        r.register(
            "sessions_refused",
            "Session creations refused before a session existed",
            m.sessions_refused.clone(),
        );
        r.register_with_unit("session_duration", "Session lifetime", Unit::Seconds, m.session_duration.clone());
        r.register_with_unit(
            "upstream_connect_duration",
            "Time to a usable upstream stream (DNS, TCP, TLS, stream open, features)",
            Unit::Seconds,
            m.upstream_connect_duration.clone(),
        );
        r.register(
            "upstream_connect_failures",
            "Failed upstream connects, by the step that failed",
            m.upstream_connect_failures.clone(),
        );
        r.register("http_requests", "HTTP requests on the public listeners", m.http_requests.clone());
        r.register_with_unit(
            "http_request_duration",
            "HTTP request duration on the public listeners (BOSH includes the hold time)",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register_with_unit(
            "bosh_hold",
            "How long a BOSH request waited in its session before being answered",
            Unit::Seconds,
            m.bosh_hold.clone(),
        );
        r.register("stanzas_relayed", "Top-level XML elements relayed", m.stanzas.clone());
        r.register("relayed_bytes", "Bytes written to and read from upstream streams", m.bytes.clone());
        r.register("limit_hits", "Requests or sessions refused by a configured limit", m.limit_hits.clone());
        r.register(
            "websocket_pings_missed",
            "WebSocket sessions ended because the client did not answer a ping",
            m.ws_pings_missed.clone(),
        );
        r.register("draining", "1 while the process drains after SIGTERM", m.draining.clone());
        for result in ["ok", "invalid"] {
            let _ = m.config_reloads.get_or_create(&ResultL { result });
        }
        r.register("config_reloads", "Configuration reloads (SIGHUP or a changed file), by result", m.config_reloads.clone());
        r.register("cluster_enabled", "1 when clustering is on (cluster.secret_file set)", m.cluster_enabled.clone());
        r.register("cluster_forwards", "BOSH requests forwarded to their owner replica, by result", m.cluster_forwards.clone());
        r.register_with_unit(
            "cluster_forward_duration",
            "A forwarded BOSH request until the owner's answer (includes the hold time)",
            Unit::Seconds,
            m.cluster_forward_duration.clone(),
        );
        r.register("cluster_served", "BOSH requests answered for a peer replica (arrived over the internal hop)", m.cluster_served.clone());
        r.register(
            "cluster_refused",
            "Requests refused by the cluster rules without any network attempt, by reason",
            m.cluster_refused.clone(),
        );
        r.register("cluster_peers_seen", "Distinct peer replicas forwarded to or heard from", m.cluster_peers_seen.clone());
        r.register_collector(Box::new(proc::ProcessCollector));
        Metrics { registry: r, ..m }
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A session started; the guard records its end (and duration) when dropped.
    pub fn session_started(&'static self, transport: Transport) -> SessionGuard {
        let l = TransportL { transport: transport.as_str() };
        self.sessions_created.get_or_create(&l).inc();
        self.sessions_active.get_or_create(&l).inc();
        SessionGuard { m: self, transport, started: Instant::now(), ended: None }
    }

    fn session_ended(&self, transport: Transport, side: Side, condition: &'static str, lasted: Duration) {
        let t = TransportL { transport: transport.as_str() };
        self.sessions_active.get_or_create(&t).dec();
        self.session_duration.get_or_create(&t).observe(lasted.as_secs_f64());
        let l = EndedL { transport: transport.as_str(), side: side_str(side), condition };
        self.sessions_ended.get_or_create(&l).inc();
    }

    /// A configuration reload finished: `ok` or `invalid`.
    pub fn config_reload(&self, result: &'static str) {
        self.config_reloads.get_or_create(&ResultL { result }).inc();
    }

    /// Clustering is on: the forward `results` and refusal `reasons` (the closed label sets of
    /// `crate::cluster`) show as 0 from the start.
    pub fn cluster_on(&self, results: &[&'static str], reasons: &[&'static str]) {
        self.cluster_enabled.set(1);
        for &result in results {
            let _ = self.cluster_forwards.get_or_create(&ResultL { result });
        }
        for &reason in reasons {
            let _ = self.cluster_refused.get_or_create(&ReasonL { reason });
        }
    }

    /// A forward finished with `result` (`ok`, or why it failed: `crate::cluster::hop`).
    pub fn cluster_forward(&self, result: &'static str, took: Duration) {
        self.cluster_forwards.get_or_create(&ResultL { result }).inc();
        if result == "ok" {
            self.cluster_forward_duration.observe(took.as_secs_f64());
        }
    }

    /// A request refused by the cluster rules, with `reason` (`crate::cluster::Refusal`).
    pub fn cluster_refused(&self, reason: &'static str) {
        self.cluster_refused.get_or_create(&ReasonL { reason }).inc();
    }

    pub fn cluster_served(&self) {
        self.cluster_served.inc();
    }

    pub fn cluster_peers_seen(&self, n: usize) {
        self.cluster_peers_seen.set(n as i64);
    }

    /// A creation request (or an answer before any session existed) failed with `err`:
    /// counts limit hits, and refusals of new sessions.
    pub fn pre_session(&self, transport: Transport, err: &Error) {
        if let Some(limit) = err.limit() {
            self.limit_hit(limit);
        }
        if matches!(err, Error::Shutdown | Error::HostUnknown | Error::ImproperAddressing | Error::TooMany { .. }) {
            let l = RefusedL { transport: transport.as_str(), condition: err.kind() };
            self.sessions_refused.get_or_create(&l).inc();
        }
    }

    /// One upstream connect attempt (all targets) finished after `took`.
    pub fn upstream_connect<T>(&self, took: Duration, res: &Result<T, Error>) {
        match res {
            Ok(_) => self.upstream_connect_duration.observe(took.as_secs_f64()),
            Err(Error::Connect { kind, .. }) => {
                self.upstream_connect_failures.get_or_create(&KindL { kind: kind.as_str() }).inc();
            }
            Err(_) => {
                self.upstream_connect_failures.get_or_create(&KindL { kind: ConnectKind::Stream.as_str() }).inc();
            }
        }
    }

    /// One top-level element of `bytes` serialized bytes went `direction`.
    pub fn stanza(&self, direction: Direction) {
        self.stanzas.get_or_create(&DirectionL { direction: direction.as_str() }).inc();
    }

    /// `n` bytes went `direction` on an upstream socket.
    pub fn bytes(&self, direction: Direction, n: usize) {
        self.bytes.get_or_create(&DirectionL { direction: direction.as_str() }).inc_by(n as u64);
    }

    /// An HTTP request on a public listener finished.
    pub fn http_request(&self, route: Route, status: u16, took: Duration) {
        self.http_requests.get_or_create(&HttpL { route: route.as_str(), status }).inc();
        self.http_duration.get_or_create(&RouteL { route: route.as_str() }).observe(took.as_secs_f64());
    }

    /// A BOSH request was answered by its session after `held`.
    pub fn bosh_held(&self, held: Duration) {
        self.bosh_hold.observe(held.as_secs_f64());
    }

    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits.get_or_create(&LimitL { limit: limit.as_str() }).inc();
    }

    /// A WebSocket client did not answer a ping within `websocket.ping_timeout`.
    pub fn ws_ping_missed(&self) {
        self.ws_pings_missed.inc();
    }

    /// SIGTERM arrived.
    pub fn set_draining(&self) {
        self.draining.set(1);
    }
}

/// Records the end of one session when dropped: active gauge down, duration observed, the
/// ended counter labelled with the first reason given to [`SessionGuard::end`] (or
/// `internal` if the task ended without one, which would be a bug worth seeing).
pub struct SessionGuard {
    m: &'static Metrics,
    transport: Transport,
    started: Instant,
    ended: Option<(Side, &'static str)>,
}

impl SessionGuard {
    /// The transport this session is counted under.
    pub fn transport(&self) -> Transport {
        self.transport
    }
}

impl std::fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGuard").field("transport", &self.transport).field("ended", &self.ended).finish()
    }
}

impl SessionGuard {
    /// Why the session ends; the first call wins (later errors are consequences).
    pub fn end(&mut self, err: &Error) {
        if self.ended.is_none() {
            self.ended = Some((err.side(), err.kind()));
            if let Some(limit) = err.limit() {
                self.m.limit_hit(limit);
            }
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let (side, condition) = self.ended.unwrap_or((Side::Internal, "internal"));
        self.m.session_ended(self.transport, side, condition, self.started.elapsed());
    }
}

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked() -> &'static Metrics {
        Box::leak(Box::new(Metrics::new()))
    }

    #[test]
    fn a_session_is_counted_with_closed_labels() {
        let m = leaked();
        {
            let mut g = m.session_started(Transport::Bosh);
            g.end(&Error::ClientTerminate);
            g.end(&Error::Internal("later".into()));
        }
        drop(m.session_started(Transport::WebSocket).tap_end(&Error::PolicyViolation(crate::error::Policy::TooManyRequests)));
        let text = m.encode();
        for line in [
            "xmpp_cm_sessions_created_total{transport=\"bosh\"} 1",
            "xmpp_cm_sessions_active{transport=\"bosh\"} 0",
            "xmpp_cm_sessions_ended_total{transport=\"bosh\",side=\"client\",condition=\"client_terminate\"} 1",
            "xmpp_cm_sessions_ended_total{transport=\"websocket\",side=\"client\",condition=\"policy_violation\"} 1",
            "xmpp_cm_limit_hits_total{limit=\"requests\"} 1",
            "xmpp_cm_session_duration_seconds_count{transport=\"bosh\"} 1",
            "xmpp_cm_build_info{version=\"0.1.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn connects_http_relay_and_refusals() {
        let m = leaked();
        m.upstream_connect::<()>(Duration::from_millis(20), &Ok(()));
        m.upstream_connect::<()>(Duration::from_millis(20), &Err(Error::Connect { kind: ConnectKind::Tls, detail: "x".into() }));
        m.http_request(Route::Bosh, 200, Duration::from_millis(3));
        m.stanza(Direction::ToUpstream);
        m.bytes(Direction::ToClient, 42);
        m.pre_session(Transport::Bosh, &Error::Shutdown);
        m.pre_session(Transport::Bosh, &Error::PolicyViolation(crate::error::Policy::BodyTooLarge));
        let text = m.encode();
        for line in [
            "xmpp_cm_upstream_connect_duration_seconds_count 1",
            "xmpp_cm_upstream_connect_failures_total{kind=\"tls\"} 1",
            "xmpp_cm_http_requests_total{route=\"bosh\",status=\"200\"} 1",
            "xmpp_cm_stanzas_relayed_total{direction=\"to_upstream\"} 1",
            "xmpp_cm_relayed_bytes_total{direction=\"to_client\"} 42",
            "xmpp_cm_sessions_refused_total{transport=\"bosh\",condition=\"shutdown\"} 1",
            "xmpp_cm_limit_hits_total{limit=\"body_size\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every metric name carries the prefix.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("xmpp_cm_"), "{l}");
        }
    }

    trait TapEnd {
        fn tap_end(self, e: &Error) -> Self;
    }
    impl TapEnd for SessionGuard {
        fn tap_end(mut self, e: &Error) -> Self {
            self.end(e);
            self
        }
    }
}
