//! TCP connect, STARTTLS / direct TLS, stream open, and the reader/writer halves of the
//! upstream stream.
//!
//! [`connect`] runs under one overall `upstream.connect_timeout`: it walks the targets from
//! [`super::resolve`] in order, every address of a target before the next target, and on the
//! first socket that completes stream negotiation returns a [`Connection`] holding the server's
//! post-TLS header and features exactly as received (filtering them is `relay`'s job). The
//! socket is then type-erased and split: [`UpstreamReader`] owns the framer and reads through
//! a per-thread buffer (a waiting reader holds none), [`UpstreamWriter`] serializes elements. Bytes never leave this file and `xml`.
//! What happens to a failure (BOSH condition, WebSocket error, metric label) is `error.rs`'s.
//! Every step is reported to an [`Observer`] as it is taken ([`connect_observed`]); sessions
//! pass [`Quiet`], `xmpp-cm check` prints them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::TlsMode;
use crate::error::{ConnectKind, Error};
use crate::xml::{ns, stream_header, Element, Frame, Framer, Limits, StreamHeader, XmlError};

use super::observe::{self, Observer, Quiet, StartTls, TlsInfo, What};
use super::resolve::{self, Resolution, Target};
use super::tls::TlsConfigs;
use super::OpenParams;

/// Size of the read buffer each worker thread shares among all its upstream connections (see
/// [`read_frame`]): no connection keeps a read buffer of its own.
const READ_BUF_BYTES: usize = 16 * 1024;

thread_local! {
    static READ_BUF: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; READ_BUF_BYTES].into_boxed_slice());
}

/// The STARTTLS request (RFC 6120 §5.4.2.1).
const STARTTLS: &str = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";

/// The stream footer (RFC 6120 §4.4).
const STREAM_CLOSE: &str = "</stream:stream>";

/// Any byte stream the upstream runs over: plain TCP, or TLS over TCP. Boxed so that the
/// reader and writer have one concrete type whichever way the connection was made.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// An open upstream stream: the server's (post-TLS) header and first features, and the halves.
pub struct Connection {
    pub header: StreamHeader,
    pub features: Element,
    /// Whether the hop is TLS-protected.
    pub secure: bool,
    pub writer: UpstreamWriter,
    pub reader: UpstreamReader,
}

/// The writing half. Its methods are not cancel-safe (a cancelled write may leave half an
/// element on the wire); a session should finish or abandon the connection after cancelling.
pub struct UpstreamWriter {
    io: WriteHalf<BoxIo>,
    /// Elements accepted with [`UpstreamWriter::queue`] and not written yet; every other write
    /// (and [`UpstreamWriter::flush_queued`]) sends them first, so order is kept.
    queued: String,
    /// Decides whether `from` may go into a restart header (UP-19).
    secure: bool,
}

/// The reading half.
pub struct UpstreamReader {
    io: ReadHalf<BoxIo>,
    /// Carries over from negotiation: bytes after the features may already be buffered in it.
    framer: Framer,
    /// Once the stream is broken, every later call repeats why, instead of reading on.
    failed: Option<String>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("header", &self.header)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UpstreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamWriter").field("secure", &self.secure).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for UpstreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamReader").field("failed", &self.failed).finish_non_exhaustive()
    }
}

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
    let Wire { io, .. } = wire;
    let tls = tls_handshake(&ctx.tls, false, domain, io, obs).await?;
    let mut wire = Wire { io: Box::new(tls), framer: Framer::new(limits) };
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

/// The rustls error inside an IO error when there is one ("invalid peer certificate:
/// UnknownIssuer"), the IO error otherwise.
fn io_detail(e: &std::io::Error) -> String {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => tls.to_string(),
        None => e.to_string(),
    }
}

fn is_rustls(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
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

/// Our header; `from` only on an encrypted stream (UP-19).
fn client_header(params: &OpenParams, secure: bool) -> String {
    let from = if secure { params.from.as_deref() } else { None };
    stream_header::client_header(&params.domain, &params.lang, &params.version, from)
}

/// Why reading a frame failed.
enum ReadFail {
    Eof,
    Io(std::io::Error),
    Xml(XmlError),
}

impl ReadFail {
    /// As a connect error while negotiating `what`.
    fn during(self, what: &str) -> Error {
        let (kind, detail) = match self {
            ReadFail::Eof => (ConnectKind::Stream, format!("connection closed during {what}")),
            ReadFail::Io(e) if is_rustls(&e) => (ConnectKind::Tls, io_detail(&e)),
            ReadFail::Io(e) => (ConnectKind::Stream, format!("reading during {what}: {e}")),
            ReadFail::Xml(e) => (ConnectKind::Stream, format!("bad XML during {what}: {e}")),
        };
        Error::Connect { kind, detail }
    }

    /// As the end of an open stream.
    fn lost(self) -> String {
        match self {
            ReadFail::Eof => "connection closed without </stream:stream>".into(),
            ReadFail::Io(e) => format!("read failed: {}", io_detail(&e)),
            ReadFail::Xml(e) => format!("bad XML from upstream: {e}"),
        }
    }
}

/// Pull the next frame: from what the framer already holds, else read more. Cancel-safe: bytes
/// are fed to the framer in the same poll that reads them.
///
/// The read goes into the worker thread's shared buffer, borrowed only for the duration of one
/// `poll_read` (a read that returns `Pending` writes nothing), and what arrived is copied into
/// the framer at once; so a waiting connection holds no read buffer, only the framer's bytes of
/// an unfinished stanza.
async fn read_frame<R: AsyncRead + Unpin>(io: &mut R, framer: &mut Framer) -> Result<Frame, ReadFail> {
    loop {
        if let Some(frame) = framer.next_frame().map_err(ReadFail::Xml)? {
            return Ok(frame);
        }
        let read = std::future::poll_fn(|cx| {
            READ_BUF.with(|b| {
                let mut b = b.borrow_mut();
                let mut rb = tokio::io::ReadBuf::new(&mut b[..]);
                match std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb) {
                    std::task::Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n > 0 {
                            crate::metrics::metrics().bytes(crate::metrics::Direction::ToClient, n);
                            framer.feed(rb.filled());
                        }
                        std::task::Poll::Ready(Ok(n))
                    }
                    std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
        })
        .await;
        match read {
            Ok(0) => return Err(ReadFail::Eof),
            Ok(_) => {}
            Err(e) => return Err(ReadFail::Io(e)),
        }
    }
}

/// The whole socket during negotiation, before it is split.
struct Wire {
    io: BoxIo,
    framer: Framer,
}

impl Wire {
    fn new(io: BoxIo, limits: Limits) -> Wire {
        Wire { io, framer: Framer::new(limits) }
    }

    async fn write(&mut self, s: &str) -> std::io::Result<()> {
        self.io.write_all(s.as_bytes()).await?;
        self.io.flush().await
    }

    async fn read_frame(&mut self) -> Result<Frame, ReadFail> {
        read_frame(&mut self.io, &mut self.framer).await
    }

    fn into_connection(self, header: StreamHeader, features: Element, secure: bool) -> Connection {
        let (r, w) = tokio::io::split(self.io);
        Connection {
            header,
            features,
            secure,
            writer: UpstreamWriter { io: w, queued: String::new(), secure },
            reader: UpstreamReader { io: r, framer: self.framer, failed: None },
        }
    }
}

impl UpstreamWriter {
    /// Serialize and write one top-level element (default namespace `jabber:client` in scope).
    pub async fn send(&mut self, el: &Element) -> Result<(), Error> {
        self.write(&el.to_xml(ns::CLIENT)).await
    }

    /// Serialize several top-level elements and write them with one write and one flush, so the
    /// server handles one read event for a batch (a BOSH body with several stanzas).
    pub async fn send_all(&mut self, els: &[Element]) -> Result<(), Error> {
        for el in els {
            self.queue(el);
        }
        self.flush_queued().await
    }

    /// Write already-serialized bytes as they are: a whitespace keepalive (UP-24), or a
    /// fragment the caller has checked. Nothing is validated here.
    pub async fn send_raw(&mut self, s: &str) -> Result<(), Error> {
        self.write(s).await
    }

    /// Write a fresh stream header on the same socket (stream restart after SASL). The reader
    /// then yields the server's new `StreamOpen` and features.
    pub async fn restart(&mut self, params: &OpenParams) -> Result<(), Error> {
        self.write(&client_header(params, self.secure)).await
    }

    /// Write `</stream:stream>` and shut down the write side. The reader stays usable to wait
    /// for the server's own close (RFC 6120 §4.4).
    pub async fn close(&mut self) -> Result<(), Error> {
        self.write(STREAM_CLOSE).await?;
        self.io.shutdown().await.map_err(|e| Error::UpstreamLost(format!("shutdown failed: {e}")))
    }

    /// End the connection *without* `</stream:stream>`, so that the server keeps a XEP-0198
    /// session resumable: the write side is shut down (TCP FIN, after a TLS close_notify when
    /// encrypted), bounded to one second, and the half is dropped. The socket is released once
    /// the reader is dropped as well.
    pub async fn abort(mut self) {
        // Stanzas the client already handed over still go out first (never the stream close).
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush_queued()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }

    /// Accept an element for a later batched write: a transport that has more client messages
    /// ready queues them all and flushes once, so the server gets one read event per batch.
    /// Returns true when the queue is big enough that the caller should flush now.
    pub fn queue(&mut self, el: &Element) -> bool {
        // Empty after every write: one allocation of a typical batch's size, not a doubling
        // from 8 bytes.
        if self.queued.capacity() == 0 {
            self.queued.reserve(1024);
        }
        el.write_xml(&mut self.queued, ns::CLIENT);
        self.queued.len() >= 16 * 1024
    }

    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// Write what [`UpstreamWriter::queue`] accepted.
    pub async fn flush_queued(&mut self) -> Result<(), Error> {
        if self.queued.is_empty() {
            return Ok(());
        }
        self.write("").await
    }

    async fn write(&mut self, s: &str) -> Result<(), Error> {
        let lost = |e: std::io::Error| Error::UpstreamLost(format!("write failed: {}", io_detail(&e)));
        // Queued elements go first, in the same write.
        let batch;
        let s = if self.queued.is_empty() {
            s
        } else {
            let mut q = std::mem::take(&mut self.queued);
            q.push_str(s);
            batch = q;
            batch.as_str()
        };
        self.io.write_all(s.as_bytes()).await.map_err(lost)?;
        crate::metrics::metrics().bytes(crate::metrics::Direction::ToUpstream, s.len());
        self.io.flush().await.map_err(lost)
    }
}

impl UpstreamReader {
    /// A frame that is already complete in the buffer, without any IO (`None`: the next one
    /// needs a read). Lets a transport batch what arrived in one read into one response.
    pub fn try_next_buffered(&mut self) -> Option<Result<Frame, Error>> {
        if self.failed.is_some() {
            return None;
        }
        match self.framer.next_frame() {
            Ok(Some(f)) => Some(Ok(f)),
            Ok(None) => None,
            Err(e) => Some(Err(self.fail(ReadFail::Xml(e)))),
        }
    }

    /// The next frame from the server. Whitespace keepalives never come out of here. A new
    /// `StreamOpen` arrives after a restart; `<stream:error/>` is an ordinary `Frame::Element`
    /// for the caller to act on. EOF without `</stream:stream>`, a read error or bad XML →
    /// `UpstreamLost`, and every later call says the same. Cancel-safe (fine in `select!`).
    pub async fn next(&mut self) -> Result<Frame, Error> {
        if let Some(why) = &self.failed {
            return Err(Error::UpstreamLost(why.clone()));
        }
        read_frame(&mut self.io, &mut self.framer).await.map_err(|e| self.fail(e))
    }

    /// Remember that the stream is broken (later calls repeat why) and say what it means for
    /// the session.
    fn fail(&mut self, e: ReadFail) -> Error {
        let too_large = matches!(e, ReadFail::Xml(XmlError::TooLarge(_)));
        let why = e.lost();
        self.failed = Some(why.clone());
        if too_large {
            // upstream.max_stanza_bytes in the server-to-client direction: a limit, so the
            // client hears policy-violation, not a connection failure; the server caused it
            // (counted once, as stanza_size, where the session ends: Error::limit).
            return Error::UpstreamTooLarge;
        }
        Error::UpstreamLost(why)
    }
}
