//! Negotiation: from a domain to an open upstream stream. [`connect`] runs under one overall
//! `upstream.connect_timeout`: it walks the targets from [`super::resolve`] in order, every
//! address of a target before the next target (after the SSRF guard), writes the PROXY header
//! when configured, negotiates direct TLS or STARTTLS, exchanges stream headers and reads the
//! features; the first socket that gets through becomes a [`Connection`] ([`super::stream`])
//! holding the server's post-TLS header and features exactly as received (filtering them is
//! `relay`'s job). What happens to a failure (BOSH condition, WebSocket error, metric label) is
//! `error.rs`'s. Every step is reported to an [`Observer`] as it is taken
//! ([`connect_observed`]); sessions pass [`Quiet`], `xmpp-cm check` prints them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::TlsMode;
use crate::error::{ConnectKind, Error};
use crate::xml::{ns, Element, Frame, Limits, StreamHeader};

use super::observe::{self, Observer, Quiet, StartTls, TlsInfo, What};
use super::resolve::{self, Resolution, Target};
use super::stream::{client_header, io_detail, BoxIo, Connection, Wire};
use super::tls::TlsConfigs;
use super::OpenParams;

/// The STARTTLS request (RFC 6120 §5.4.2.1).
const STARTTLS: &str = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// Resolve `params.domain`, connect, negotiate TLS as configured, open the stream and read the
/// first (post-TLS) features — all within `upstream.connect_timeout`.
pub async fn connect(ctx: &super::Upstream, params: &OpenParams) -> Result<Connection, Error> {
    connect_via(ctx, params, None).await
}

/// [`connect`], but to `route` (an allow-listed BOSH `route`, STARTTLS target) instead of
/// resolving the domain. The certificate is still checked against the domain.
pub async fn connect_via(ctx: &super::Upstream, params: &OpenParams, route: Option<Target>) -> Result<Connection, Error> {
    connect_observed(ctx, params, route, &Quiet).await
}

/// [`connect_via`], reporting every step to `obs` as it is taken (`xmpp-cm check`).
pub async fn connect_observed(
    ctx: &super::Upstream,
    params: &OpenParams,
    route: Option<Target>,
    obs: &dyn Observer,
) -> Result<Connection, Error> {
    let secs = ctx.config.upstream.connect_timeout.max(1);
    let overall = Duration::from_secs(secs);
    let attempt = async {
        let t0 = Instant::now();
        let resolution = match route {
            Some(t) => Resolution::given(t),
            None => resolve::explain(ctx, &params.domain).await,
        };
        obs.step(t0.elapsed(), What::Route(&resolution));
        let targets = resolution.targets?;
        connect_targets_observed(ctx, params, &targets, overall, obs).await
    };
    let started = std::time::Instant::now();
    let res = match tokio::time::timeout(overall, attempt).await {
        Ok(r) => r,
        Err(_) => Err(Error::Connect {
            kind: ConnectKind::Timeout,
            detail: format!("{}: no stream within {secs} s", params.domain),
        }),
    };
    crate::metrics::metrics().upstream_connect(started.elapsed(), &res);
    res
}

/// [`connect_targets_observed`] with nobody watching (the unit tests' entry point).
#[cfg(test)]
pub(crate) async fn connect_targets(
    ctx: &super::Upstream,
    params: &OpenParams,
    targets: &[Target],
    overall: Duration,
) -> Result<Connection, Error> {
    connect_targets_observed(ctx, params, targets, overall, &Quiet).await
}

/// Try the targets in order, every address of a target before the next (UP-04). The error
/// returned when all fail is the one that got furthest (a TLS failure says more than the
/// refused connection to a backup target). A `<stream:error/>` ends the attempt at once.
async fn connect_targets_observed(
    ctx: &super::Upstream,
    params: &OpenParams,
    targets: &[Target],
    overall: Duration,
    obs: &dyn Observer,
) -> Result<Connection, Error> {
    // A black-holed address must not eat the whole budget (UP-26).
    let per_address = overall / 2;
    let mut best: Option<Error> = None;
    let keep = |e: Error, best: &mut Option<Error>| {
        if best.as_ref().is_none_or(|b| progress(&e) >= progress(b)) {
            *best = Some(e);
        }
    };
    for target in targets {
        if target.direct_tls && ctx.config.upstream.tls == TlsMode::None {
            tracing::debug!(host = %target.host, port = target.port, "direct-TLS target skipped: upstream.tls = none");
            obs.step(Duration::ZERO, What::Skipped { target });
            continue;
        }
        let t0 = Instant::now();
        let found = addresses(ctx, &target.host).await;
        obs.step(t0.elapsed(), What::Addresses { target, result: found.as_deref() });
        let addrs = match found.and_then(|a| guard(ctx, target, a, obs)) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(host = %target.host, error = %e, "upstream target not resolved");
                keep(e, &mut best);
                continue;
            }
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, target.port);
            match establish(ctx, params, target, addr, per_address, obs).await {
                Ok(c) => {
                    tracing::debug!(host = %target.host, %addr, secure = c.secure, "upstream stream open");
                    return Ok(c);
                }
                Err(e @ Error::UpstreamStreamError(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(host = %target.host, %addr, error = %e, "upstream attempt failed");
                    keep(e, &mut best);
                }
            }
        }
    }
    Err(best.unwrap_or_else(|| Error::Connect {
        kind: ConnectKind::Tls,
        detail: "only direct-TLS targets, and upstream.tls = none".into(),
    }))
}

/// How far an attempt got, to choose which failure to report.
fn progress(e: &Error) -> u8 {
    match e {
        Error::Connect { kind: ConnectKind::Dns, .. } => 0,
        Error::Connect { kind: ConnectKind::Tcp, .. } => 1,
        _ => 2,
    }
}

/// A target host's addresses: an IP literal as is, otherwise A and AAAA.
async fn addresses(ctx: &super::Upstream, host: &str) -> Result<Vec<IpAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let dns = |detail: String| Error::Connect { kind: ConnectKind::Dns, detail };
    let lookup = ctx.resolver.lookup_ip(host).await.map_err(|e| dns(format!("{host}: {e}")))?;
    let addrs: Vec<IpAddr> = lookup.iter().collect();
    if addrs.is_empty() {
        return Err(dns(format!("{host}: no address")));
    }
    Ok(addrs)
}

/// The SSRF guard after resolution: a DNS-learned target keeps only its public addresses
/// (unless `upstream.allow_private_targets`); none left is a `Dns` failure saying why.
fn guard(ctx: &super::Upstream, target: &Target, addrs: Vec<IpAddr>, obs: &dyn Observer) -> Result<Vec<IpAddr>, Error> {
    let bypassed = if target.trusted {
        Some("trusted target from the configuration")
    } else if ctx.config.upstream.allow_private_targets {
        Some("upstream.allow_private_targets = true")
    } else {
        None
    };
    if bypassed.is_some() {
        obs.step(Duration::ZERO, What::Guard { target, decision: &observe::Guard { allowed: addrs.clone(), refused: Vec::new(), bypassed } });
        return Ok(addrs);
    }
    let mut refused = Vec::new();
    let allowed: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|ip| match resolve::refused_address(*ip) {
            Some(why) => {
                tracing::warn!(host = %target.host, %ip, why, "upstream target address refused (SSRF guard)");
                refused.push((*ip, why));
                false
            }
            None => true,
        })
        .collect();
    let decision = observe::Guard { allowed, refused, bypassed: None };
    obs.step(Duration::ZERO, What::Guard { target, decision: &decision });
    let observe::Guard { allowed, refused, .. } = decision;
    let refused: Vec<String> = refused.iter().map(|(ip, why)| format!("{ip} ({why})")).collect();
    if allowed.is_empty() {
        return Err(Error::Connect {
            kind: ConnectKind::Dns,
            detail: format!(
                "{}: refused, resolves only to non-public addresses: {}; set upstream.allow_private_targets \
                 or add a static route in upstream.routes to allow it",
                target.host,
                refused.join(", ")
            ),
        });
    }
    Ok(allowed)
}

/// One attempt on one address: TCP, direct TLS or STARTTLS as the target and config say,
/// stream open, features.
async fn establish(
    ctx: &super::Upstream,
    params: &OpenParams,
    target: &Target,
    addr: SocketAddr,
    tcp_timeout: Duration,
    obs: &dyn Observer,
) -> Result<Connection, Error> {
    let tcp_err = |detail: String| Error::Connect { kind: ConnectKind::Tcp, detail };
    let t0 = Instant::now();
    let tcp = match tokio::time::timeout(tcp_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(tcp_err(format!("{addr}: {e}"))),
        Err(_) => Err(tcp_err(format!("{addr}: no TCP connection within {tcp_timeout:?}"))),
    };
    let local = tcp.as_ref().map(|s| s.local_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))));
    obs.step(t0.elapsed(), What::Tcp { addr, result: local });
    let tcp = tcp?;
    // Stanzas are small and interactive: no Nagle delay.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "TCP_NODELAY not set");
    }
    // The PROXY header comes first of all: before direct TLS, STARTTLS and the stream header.
    let version = ctx.config.upstream.proxy_protocol;
    let proxy = super::proxy::header(version, params.client, addr);
    let mut tcp = tcp;
    if !proxy.is_empty() {
        let t0 = Instant::now();
        let write = async {
            tcp.write_all(&proxy).await?;
            tcp.flush().await
        };
        let written = match tokio::time::timeout(tcp_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(tcp_err(format!("{addr}: writing the PROXY header: {e}"))),
            Err(_) => Err(tcp_err(format!("{addr}: PROXY header not written within {tcp_timeout:?}"))),
        };
        obs.step(t0.elapsed(), What::ProxyHeader { version, len: proxy.len(), result: written.as_ref().copied() });
        written?;
    }
    let limits = Limits { max_stanza_bytes: ctx.config.upstream.max_stanza_bytes, ..Limits::default() };
    let domain = params.domain.as_str();

    if target.direct_tls {
        // XEP-0368: TLS from the first byte, ALPN offered; never STARTTLS inside (UP-09).
        let tls = tls_handshake(&ctx.tls, true, domain, Box::new(tcp), obs).await?;
        let mut wire = Wire::new(Box::new(tls), limits);
        let (header, features) = open_stream(&mut wire, params, true, obs).await?;
        return Ok(wire.into_connection(header, features, true));
    }

    let mut wire = Wire::new(Box::new(tcp), limits);
    let (header, features) = open_stream(&mut wire, params, false, obs).await?;
    let offered = features.child("starttls", ns::TLS).is_some();
    let use_tls = match ctx.config.upstream.tls {
        TlsMode::Required if !offered => {
            let e = Error::Connect {
                kind: ConnectKind::StartTls,
                detail: "server does not offer STARTTLS".into(),
            };
            obs.step(Duration::ZERO, What::StartTls(Err(&e)));
            return Err(e);
        }
        TlsMode::Required => true,
        TlsMode::Opportunistic => offered,
        TlsMode::None => false,
    };
    if !use_tls {
        let why = if ctx.config.upstream.tls == TlsMode::None { StartTls::Disabled } else { StartTls::NotOffered };
        obs.step(Duration::ZERO, What::StartTls(Ok(why)));
        return Ok(wire.into_connection(header, features, false));
    }

    let t0 = Instant::now();
    let asked = starttls(&mut wire).await;
    obs.step(t0.elapsed(), What::StartTls(asked.as_ref().map(|()| StartTls::Proceeded)));
    asked?;
    // Everything learned before TLS is discarded (RFC 6120 §5.4.3.3): new framer, new header.
    let io = wire.into_io();
    let tls = tls_handshake(&ctx.tls, false, domain, io, obs).await?;
    let mut wire = Wire::new(Box::new(tls), limits);
    let (header, features) = open_stream(&mut wire, params, true, obs).await?;
    Ok(wire.into_connection(header, features, true))
}

/// `<starttls/>` out, `<proceed/>` expected back (RFC 6120 §5.4.2).
async fn starttls(wire: &mut Wire) -> Result<(), Error> {
    let starttls_err = |detail: String| Error::Connect { kind: ConnectKind::StartTls, detail };
    wire.write(STARTTLS).await.map_err(|e| starttls_err(format!("writing <starttls/>: {e}")))?;
    match wire.read_frame().await.map_err(|e| e.during("STARTTLS"))? {
        Frame::Element(el) if el.is("proceed", ns::TLS) => Ok(()),
        Frame::Element(el) if el.is("failure", ns::TLS) => {
            Err(starttls_err("server answered <starttls/> with <failure/>".into()))
        }
        Frame::Element(el) if is_stream_error(&el) => Err(Error::UpstreamStreamError(Box::new(el))),
        other => Err(starttls_err(format!("expected <proceed/>, got {}", describe(&other)))),
    }
}

/// TLS client handshake with the XMPP domain as server name (SNI and the RFC 6125 check), with
/// the direct-TLS config (ALPN `xmpp-client`) or the STARTTLS one.
async fn tls_handshake(
    configs: &TlsConfigs,
    direct: bool,
    domain: &str,
    io: BoxIo,
    obs: &dyn Observer,
) -> Result<tokio_rustls::client::TlsStream<BoxIo>, Error> {
    let tls_err = |detail: String| Error::Connect { kind: ConnectKind::Tls, detail };
    let config = if direct { &configs.direct } else { &configs.starttls };
    let t0 = Instant::now();
    let done = match rustls_pki_types::ServerName::try_from(domain.to_owned()) {
        Err(_) => Err(tls_err(format!("'{domain}' is not a valid TLS server name"))),
        Ok(name) => TlsConnector::from(Arc::clone(config)).connect(name, io).await.map_err(|e| {
            let detail = io_detail(&e);
            tracing::warn!(domain, error = %detail, "upstream TLS handshake failed");
            tls_err(detail)
        }),
    };
    let verification = configs.seen.as_ref().and_then(|s| s.take());
    let result = done.as_ref().map(|t| {
        let c = t.get_ref().1;
        TlsInfo {
            version: c.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
            cipher: c.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default(),
            alpn: c.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    });
    obs.step(t0.elapsed(), What::Tls { direct, result, verification });
    done
}


fn is_stream_error(el: &Element) -> bool {
    el.is("error", ns::STREAM)
}

/// A short description of an unexpected frame for error details; never echoes content.
fn describe(f: &Frame) -> String {
    match f {
        Frame::StreamOpen(_) => "a new stream header".into(),
        Frame::Element(el) => format!("<{}/>", el.name),
        Frame::StreamClose => "</stream:stream>".into(),
    }
}

/// Write our header, read and validate the server's, then read its features (RFC 6120 §4.3).
async fn open_stream(
    wire: &mut Wire,
    params: &OpenParams,
    secure: bool,
    obs: &dyn Observer,
) -> Result<(StreamHeader, Element), Error> {
    let t0 = Instant::now();
    let opened = exchange_headers(wire, params, secure).await;
    obs.step(t0.elapsed(), What::StreamOpen { secure, result: opened.as_ref().map(|(h, f)| (h, f)) });
    opened
}

async fn exchange_headers(
    wire: &mut Wire,
    params: &OpenParams,
    secure: bool,
) -> Result<(StreamHeader, Element), Error> {
    let stream_err = |detail: String| Error::Connect { kind: ConnectKind::Stream, detail };
    let header = client_header(params, secure);
    wire.write(&header).await.map_err(|e| stream_err(format!("writing stream header: {e}")))?;
    let server = match wire.read_frame().await.map_err(|e| e.during("stream open"))? {
        Frame::StreamOpen(h) => h,
        Frame::Element(el) if is_stream_error(&el) => return Err(Error::UpstreamStreamError(Box::new(el))),
        other => return Err(stream_err(format!("expected a stream header, got {}", describe(&other)))),
    };
    server.validate_server().map_err(|e| stream_err(format!("bad stream header: {e}")))?;
    match wire.read_frame().await.map_err(|e| e.during("stream open"))? {
        Frame::Element(el) if el.is("features", ns::STREAM) => Ok((server, el)),
        Frame::Element(el) if is_stream_error(&el) => Err(Error::UpstreamStreamError(Box::new(el))),
        other => Err(stream_err(format!("expected <stream:features/>, got {}", describe(&other)))),
    }
}

