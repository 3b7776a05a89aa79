//! The domain check: [`domain`] runs [`upstream::connect_observed`] — the connect every
//! session makes — with an observer that turns each step into a report line, then looks at
//! the features the server offered and which of them `relay::filter_features` hides from
//! clients. Describing is all it does; every decision (route, SSRF guard, TLS mode,
//! certificate verification, feature filtering) is the session code's own.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls::CertificateError;

use crate::config::{Config, ProxyProtocol};
use crate::error::{ConnectKind, Error};
use crate::upstream::observe::{Guard, Observer, StartTls, What};
use crate::upstream::resolve::{Resolution, Source, Target};
use crate::upstream::tls::Verification;
use crate::upstream::{self, OpenParams, Upstream};
use crate::xml::{ns, Element, Frame};

use super::{x509, Report, Verdict};

/// A valid certificate expiring within this many days gets a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Walk a session to `domain` and report each step; the verdict.
pub async fn domain(up: &Upstream, domain: &str, report: &Report) -> Verdict {
    let config = &up.config;
    let t0 = Instant::now();
    let d = domain.trim_end_matches('.');
    if !config.serves(d) {
        report.fail(
            "domain",
            t0.elapsed(),
            format!(
                "{d} is not served: it is neither in upstream.domains {:?} nor in upstream.routes; a session for it \
                 gets host-unknown before any DNS or TCP work",
                config.upstream.domains
            ),
        );
        return Verdict::fail(format!("{d} is not served by this configuration: add it to upstream.domains"));
    }
    let listed = config.upstream.domains.iter().any(|x| x.eq_ignore_ascii_case(d));
    let why = if listed { "listed in upstream.domains" } else { "has a static route in upstream.routes" };
    report.ok("domain", t0.elapsed(), format!("{d} is served: {why}"));

    let params = OpenParams { domain: d.to_string(), lang: "en".into(), version: "1.0".into(), from: None, client: None };
    let walk = Walk { report, config, domain: d, reached: Mutex::new(None) };
    let t0 = Instant::now();
    let res = upstream::connect_observed(up, &params, None, &walk).await;
    let total = t0.elapsed();
    let mut conn = match res {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, Error::Connect { kind: ConnectKind::Timeout, .. }) {
                let last = report.steps().last().map(|s| s.name).unwrap_or("config");
                report.fail("timeout", total, format!("{}; the last step that finished was {last}", describe(&e)));
            }
            let step = report.last_failed(steps_for(&e)).unwrap_or("connect");
            return Verdict::fail(format!("a session for {d} would fail at {step}: {}", describe(&e)));
        }
    };
    let t = Instant::now();
    let offer = Features::of(&conn.features);
    if offer.for_clients.is_empty() {
        report.fail("features", t.elapsed(), offer.detail());
    } else if !conn.secure {
        report.warn("features", t.elapsed(), format!("{}; the upstream hop is not encrypted", offer.detail()));
    } else {
        report.ok("features", t.elapsed(), offer.detail());
    }
    close(&mut conn).await;
    if offer.for_clients.is_empty() {
        return Verdict::fail(format!("a session for {d} would fail at features: no SASL mechanism would reach clients"));
    }
    let (addr, how) = walk.reached.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or((SocketAddr::from(([0, 0, 0, 0], 0)), "?"));
    Verdict::ok(format!("a session for {d} would work: {how} to {addr}; clients are offered SASL {}", offer.for_clients.join(", ")))
}

/// Which steps a session's final error can come from (the verdict names the last of them
/// that failed: connect keeps the error of the attempt that got furthest, later on ties).
fn steps_for(e: &Error) -> &'static [&'static str] {
    match e {
        Error::Connect { kind: ConnectKind::Dns, .. } => &["route", "address", "ssrf_guard"],
        Error::Connect { kind: ConnectKind::Tcp, .. } => &["tcp_connect", "proxy_header"],
        Error::Connect { kind: ConnectKind::Tls, .. } => &["certificate", "tls", "stream_open"],
        Error::Connect { kind: ConnectKind::StartTls, .. } => &["starttls"],
        Error::Connect { kind: ConnectKind::Stream, .. } => &["stream_open", "starttls"],
        Error::Connect { kind: ConnectKind::Timeout, .. } => &["timeout"],
        Error::UpstreamStreamError(_) => &["stream_open", "starttls"],
        _ => &[],
    }
}

/// `</stream:stream>`, and the server's own close (bounded): the check leaves no half-open
/// session behind on the server.
async fn close(conn: &mut upstream::Connection) {
    let bound = Duration::from_secs(1);
    let _ = tokio::time::timeout(bound, conn.writer.close()).await;
    let _ = tokio::time::timeout(bound, async {
        while let Ok(f) = conn.reader.next().await {
            if matches!(f, Frame::StreamClose) {
                break;
            }
        }
    })
    .await;
}

/// An error as an operator reads it: the connect detail, or the stream error's condition.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Connect { detail, .. } => detail.clone(),
        Error::UpstreamStreamError(el) => {
            let cond = el
                .elements()
                .find(|c| c.ns == ns::STREAMS_ERR && c.name != "text")
                .map(|c| c.name.clone())
                .unwrap_or_else(|| "undefined-condition".into());
            let text = el.child("text", ns::STREAMS_ERR).map(|t| format!(" ({})", t.text().trim())).unwrap_or_default();
            format!("the server sent <stream:error/> <{cond}/>{text}")
        }
        other => other.to_string(),
    }
}

/// The observer: one report line per step.
struct Walk<'a> {
    report: &'a Report,
    config: &'a Config,
    domain: &'a str,
    /// The last address TCP reached and how its stream is carried, for the verdict.
    reached: Mutex<Option<(SocketAddr, &'static str)>>,
}

impl Walk<'_> {
    fn reached(&self, addr: Option<SocketAddr>, how: &'static str) {
        let mut r = self.reached.lock().unwrap_or_else(|e| e.into_inner());
        let addr = addr.or(r.map(|(a, _)| a)).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        *r = Some((addr, how));
    }

    fn resolver(&self) -> String {
        if self.config.upstream.resolver.is_empty() {
            "the system resolver".into()
        } else {
            format!("upstream.resolver {}", self.config.upstream.resolver.join(", "))
        }
    }

    fn route(&self, took: Duration, res: &Resolution) {
        let srv = res
            .srv
            .iter()
            .map(|a| match &a.failure {
                Some(f) => format!("{} {f}", a.name),
                None => format!("{} {} record(s)", a.name, a.records.len()),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let d = self.domain;
        let targets = match &res.targets {
            Err(e) => {
                self.report.fail("route", took, format!("DNS SRV via {}: {srv}: {}", self.resolver(), describe(e)));
                return;
            }
            Ok(t) => t,
        };
        let detail = match res.source {
            Source::Static => format!(
                "static route upstream.routes.\"{d}\" = \"{}\": used as written, no DNS query (the certificate must \
                 still name {d})",
                targets.iter().map(hostport).collect::<Vec<_>>().join(", ")
            ),
            Source::Given => format!("given route {}", targets.iter().map(hostport).collect::<Vec<_>>().join(", ")),
            Source::Fallback => format!(
                "no usable SRV record via {} ({srv}): the domain itself, {d}:{} with STARTTLS (RFC 6120 §3.2.2 fallback)",
                self.resolver(),
                upstream::resolve::DEFAULT_PORT
            ),
            Source::Srv => {
                let order: Vec<String> = targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let set = if t.direct_tls { 0 } else { 1 };
                        let rec = res.srv.get(set).and_then(|a| a.records.iter().find(|r| r.target == t.host && r.port == t.port));
                        let pw = rec.map(|r| format!(", priority {}, weight {}", r.priority, r.weight)).unwrap_or_default();
                        format!("{}. {} {}{pw}", i + 1, hostport(t), mode(t))
                    })
                    .collect();
                format!(
                    "DNS SRV via {}: {srv}; targets in order (priority ascending, weighted random within a priority): {}",
                    self.resolver(),
                    order.join(", ")
                )
            }
        };
        self.report.ok("route", took, detail);
    }

    fn guard(&self, took: Duration, target: &Target, g: &Guard) {
        let host = &target.host;
        let refused = g.refused.iter().map(|(ip, why)| format!("{ip} ({why})")).collect::<Vec<_>>().join(", ");
        let allowed = join(&g.allowed);
        match g.bypassed {
            Some(why) => self.report.ok("ssrf_guard", took, format!("{host}: not applied ({why}); {allowed} will be tried")),
            None if g.refused.is_empty() => self.report.ok("ssrf_guard", took, format!("{host}: {allowed} public, allowed")),
            None if g.allowed.is_empty() => self.report.fail(
                "ssrf_guard",
                took,
                format!(
                    "{host}: refused by the SSRF guard: resolves only to non-public addresses {refused}; a target learned \
                     from DNS must be public: set upstream.allow_private_targets = true, or add a static route in \
                     upstream.routes"
                ),
            ),
            None => self.report.warn("ssrf_guard", took, format!("{host}: {refused} refused (SSRF guard), {allowed} allowed")),
        }
    }

    fn certificate(&self, v: &Verification) {
        let now = x509::now();
        let summaries: Vec<Option<x509::Summary>> = v.chain.iter().map(|c| x509::summarize(c)).collect();
        let chain = summaries
            .iter()
            .zip(&v.chain)
            .enumerate()
            .map(|(i, (s, der))| match s {
                Some(s) => format!("[{i}] {}", cert_line(s, now)),
                None => format!("[{i}] unreadable certificate ({} bytes)", der.len()),
            })
            .collect::<Vec<_>>()
            .join(" | ");
        let ca = &self.config.upstream.ca_file;
        let trust = if ca.is_empty() {
            "the webpki roots (upstream.ca_file is empty)".to_string()
        } else {
            format!("the webpki roots + upstream.ca_file '{ca}'")
        };
        let name = &v.server_name;
        match &v.result {
            Ok(()) => {
                let left = summaries.first().and_then(|s| s.as_ref()).map(|s| (s.not_after - now) / 86_400);
                let detail = format!("verified for \"{name}\" against {trust}; chain sent: {chain}");
                match left {
                    Some(days) if days < EXPIRY_WARNING_DAYS => {
                        self.report.warn("certificate", v.took, format!("{detail}; expires in {days} days: renew it"))
                    }
                    _ => self.report.ok("certificate", v.took, detail),
                }
            }
            Err(e) => self.report.fail(
                "certificate",
                v.took,
                format!("NOT verified for \"{name}\" against {trust}: {e}{}; chain sent: {chain}", hint(e, name)),
            ),
        }
    }
}

/// What a certificate says, on one line: subject, names, validity, issuer.
pub fn cert_line(s: &x509::Summary, now: i64) -> String {
    let names = s.names();
    let names = if names.is_empty() { "no subjectAltName".to_string() } else { names.join(", ") };
    let left = if s.not_after < now {
        format!("EXPIRED {} days ago", (now - s.not_after) / 86_400)
    } else if s.not_before > now {
        "NOT VALID YET".to_string()
    } else {
        format!("{} days left", (s.not_after - now) / 86_400)
    };
    format!(
        "{}; names: {names}; valid {} to {} ({left}); issuer {}",
        s.subject,
        x509::date(s.not_before),
        x509::date(s.not_after),
        s.issuer
    )
}

/// What a verification error means for the operator, after rustls's own words.
fn hint(e: &rustls::Error, name: &str) -> String {
    let rustls::Error::InvalidCertificate(ce) = e else { return String::new() };
    match ce {
        CertificateError::UnknownIssuer => " — unknown issuer: no trust anchor in the webpki roots or upstream.ca_file \
             issued this chain (put the CA that issued the server's certificate in upstream.ca_file, or have the server \
             send its intermediate certificates)"
            .into(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            " — the certificate has expired: renew it on the XMPP server".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            " — not valid yet: check the clocks of both machines".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
            " — name mismatch: the certificate does not name \"{name}\" (xmpp-cm always checks the XMPP domain, never \
             the host name of a route or SRV target)"
        ),
        _ => String::new(),
    }
}

impl Observer for Walk<'_> {
    fn step(&self, took: Duration, what: What<'_>) {
        let r = self.report;
        match what {
            What::Route(res) => self.route(took, res),
            What::Skipped { target } => r.warn(
                "target",
                took,
                format!("{}: direct-TLS target skipped: upstream.tls = \"none\" never negotiates TLS", hostport(target)),
            ),
            What::Addresses { target, result } => match result {
                Ok(_) if target.host.parse::<IpAddr>().is_ok() => {
                    r.ok("address", took, format!("{} is an IP address: no lookup", target.host))
                }
                Ok(ips) => r.ok("address", took, format!("{} has {} (A/AAAA via {})", target.host, join(ips), self.resolver())),
                Err(e) => r.fail("address", took, format!("{} (via {})", describe(e), self.resolver())),
            },
            What::Guard { target, decision } => self.guard(took, target, decision),
            What::Tcp { addr, result } => match result {
                Ok(local) => {
                    self.reached(Some(addr), "plaintext");
                    r.ok("tcp_connect", took, format!("{addr} connected (from {local})"))
                }
                Err(e) => r.fail("tcp_connect", took, describe(e)),
            },
            What::ProxyHeader { version, len, result } => {
                let (v, unknown) = match version {
                    ProxyProtocol::V2 => ("v2", "the LOCAL command"),
                    _ => ("v1", "PROXY UNKNOWN"),
                };
                match result {
                    Ok(()) => r.ok(
                        "proxy_header",
                        took,
                        format!(
                            "PROXY protocol {v} header sent first ({len} bytes); a check has no client, so it is {unknown}, \
                             where a session sends its client's address"
                        ),
                    ),
                    Err(e) => r.fail("proxy_header", took, describe(e)),
                }
            }
            What::StreamOpen { secure, result } => {
                let over = if secure { "over TLS" } else { "plaintext" };
                match result {
                    Ok((h, f)) => {
                        let attr = |v: &Option<String>| v.as_deref().unwrap_or("-").to_string();
                        r.ok(
                            "stream_open",
                            took,
                            format!(
                                "{over}: server header from='{}' id='{}' version='{}'; features: {}",
                                attr(&h.from),
                                attr(&h.id),
                                attr(&h.version),
                                feature_list(f)
                            ),
                        )
                    }
                    Err(e) => r.fail("stream_open", took, format!("{over}: {}", describe(e))),
                }
            }
            What::StartTls(res) => match res {
                Ok(StartTls::Proceeded) => r.ok("starttls", took, "<starttls/> answered with <proceed/>"),
                Ok(StartTls::NotOffered) => {
                    self.reached(None, "plaintext");
                    r.warn(
                        "starttls",
                        took,
                        "the server offers no STARTTLS and upstream.tls = \"opportunistic\": the upstream hop stays plaintext",
                    )
                }
                Ok(StartTls::Disabled) => {
                    self.reached(None, "plaintext");
                    r.warn("starttls", took, "upstream.tls = \"none\": not attempted, the upstream hop is plaintext")
                }
                Err(e) => {
                    let why = describe(e);
                    let and = if why.contains("does not offer") { " while upstream.tls = \"required\"" } else { "" };
                    r.fail("starttls", took, format!("{why}{and}"))
                }
            },
            What::Tls { direct, result, verification } => {
                let rejected = verification.as_ref().is_some_and(|v| v.result.is_err());
                if let Some(v) = &verification {
                    self.certificate(v);
                }
                let how = if direct { "direct TLS (XEP-0368)" } else { "STARTTLS" };
                match result {
                    Ok(info) => {
                        self.reached(None, if direct { "direct TLS" } else { "STARTTLS" });
                        let alpn = match (&info.alpn, direct) {
                            (Some(p), _) => format!(", ALPN {p}"),
                            (None, true) => ", no ALPN agreed (xmpp-client was offered)".to_string(),
                            (None, false) => String::new(),
                        };
                        r.ok("tls", took, format!("{how} handshake: {} {}{alpn}", info.version, info.cipher))
                    }
                    // The certificate line already says why.
                    Err(_) if rejected => {}
                    Err(e) => r.fail("tls", took, format!("{how} handshake: {}", describe(e))),
                }
            }
        }
    }
}

fn hostport(t: &Target) -> String {
    if t.host.contains(':') {
        format!("[{}]:{}", t.host, t.port)
    } else {
        format!("{}:{}", t.host, t.port)
    }
}

fn mode(t: &Target) -> &'static str {
    if t.direct_tls {
        "direct TLS"
    } else {
        "STARTTLS"
    }
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ")
}

/// Names of the SASL mechanisms in a features element, in order.
fn mechanisms(f: &Element) -> Vec<String> {
    f.child("mechanisms", ns::SASL).map(mechanisms_of).unwrap_or_default()
}

/// A feature as an operator knows it: `starttls (required)`, `sm (sm:3)`, `mechanisms (…)`.
fn feature_label(e: &Element) -> String {
    if e.is("starttls", ns::TLS) {
        return if e.child("required", ns::TLS).is_some() { "starttls (required)".into() } else { "starttls".into() };
    }
    if e.is("mechanisms", ns::SASL) {
        return format!("mechanisms ({})", mechanisms_of(e).join(", "));
    }
    if e.name == "compression" {
        let methods: Vec<String> = e.elements().map(|m| m.text().trim().to_string()).collect();
        return format!("compression ({})", methods.join(", "));
    }
    match e.ns.strip_prefix("urn:xmpp:") {
        Some(short) if short != e.name => format!("{} ({short})", e.name),
        _ => e.name.clone(),
    }
}

fn mechanisms_of(m: &Element) -> Vec<String> {
    m.elements().filter(|e| e.is("mechanism", ns::SASL)).map(|e| e.text().trim().to_string()).collect()
}

fn feature_list(f: &Element) -> String {
    let all: Vec<String> = f.elements().map(feature_label).collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// The server's post-TLS features against what clients will see of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// SASL mechanisms as the server offers them.
    pub offered: Vec<String>,
    /// The mechanisms that reach clients (after `relay::filter_features`).
    pub for_clients: Vec<String>,
    /// Every other feature, labelled.
    pub others: Vec<String>,
    /// What xmpp-cm hides from clients, each with why.
    pub hidden: Vec<String>,
}

impl Features {
    /// Compare `f` with what [`crate::relay::filter_features`] leaves of it.
    pub fn of(f: &Element) -> Features {
        let mut filtered = f.clone();
        crate::relay::filter_features(&mut filtered);
        let offered = mechanisms(f);
        let for_clients = mechanisms(&filtered);
        let others = f.elements().filter(|e| !e.is("mechanisms", ns::SASL)).map(feature_label).collect();
        let mut hidden: Vec<String> = f
            .elements()
            .filter(|e| filtered.child(&e.name, &e.ns).is_none())
            .map(|e| {
                let why = match e.name.as_str() {
                    "starttls" => "the TLS hop to the server is xmpp-cm's own",
                    "compression" => "stream compression does not cross xmpp-cm; HTTP and WebSocket compress on their own",
                    _ => "channel binding cannot cross xmpp-cm",
                };
                format!("{} ({why})", feature_label(e))
            })
            .collect();
        hidden.extend(
            offered
                .iter()
                .filter(|m| !for_clients.contains(m))
                .map(|m| format!("{m} (channel binding: the client's TLS ends at xmpp-cm, not at the server)")),
        );
        Features { offered, for_clients, others, hidden }
    }

    pub fn detail(&self) -> String {
        let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
        let mut d = format!(
            "SASL mechanisms offered: {}; other features: {}; hidden from clients: {}",
            list(&self.offered),
            list(&self.others),
            list(&self.hidden)
        );
        if self.for_clients.is_empty() {
            d.push_str("; no SASL mechanism would reach clients, so none could log in");
        }
        d
    }
}
