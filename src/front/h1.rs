//! A lean HTTP/1.1 server loop for the requests BOSH clients actually send: `HTTP/1.1`,
//! a `Content-Length` body (or none), no upgrade, no `Expect`, no `Transfer-Encoding`.
//!
//! Why not hyper for these: hyper keeps an 8 KiB header write buffer and an 8 KiB (often
//! 16 KiB) read buffer for as long as a keep-alive connection lives. A browser keeps two
//! connections per BOSH session, mostly idle or holding one request, so those buffers were
//! two thirds of a BOSH session's memory (BENCHMARKS.md). Here a connection holds no buffer
//! while it waits: on plain TCP it waits for readability and allocates only when bytes
//! arrive, and the buffer is freed after every request. The routing, handlers, limits and
//! their answers are the same axum router hyper calls.
//!
//! Anything else (WebSocket upgrades, `CONNECT`, chunked or `Expect: 100-continue` uploads,
//! declared bodies over `bosh.max_body_bytes`, HTTP/1.0, heads that do not parse) is handed to
//! hyper together with every byte read so far ([`Outcome::Handoff`]); hyper then serves the
//! rest of that connection exactly as before.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use super::Edge;

/// Largest request head accepted (hyper's limit was its 64 KiB read buffer).
const MAX_HEAD: usize = 64 * 1024;
/// Headers per request.
const MAX_HEADERS: usize = 64;
/// Read granularity while a request is arriving.
const READ_CHUNK: usize = 4096;

/// How the loop ended.
pub(super) enum Outcome {
    /// The connection is finished (closed by the client, timed out, answered and closed).
    Done,
    /// Not a request for this loop: serve the connection with hyper, replaying these bytes.
    Handoff(Vec<u8>),
}

/// Waiting for the next request without holding a buffer.
pub(super) trait WaitReadable {
    /// Resolves when a read would (probably) not block. Streams that may hold decoded bytes
    /// of their own (TLS) resolve at once and the loop reads into a buffer instead.
    fn wait_readable(&self) -> impl std::future::Future<Output = ()> + Send;
}

impl WaitReadable for TcpStream {
    async fn wait_readable(&self) {
        let _ = self.readable().await;
    }
}

impl<S: Send + Sync> WaitReadable for tokio_rustls::server::TlsStream<S> {
    async fn wait_readable(&self) {}
}

/// A parsed request head, owned.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    len: usize,
    content_length: usize,
    close: bool,
}

// Lives on the stack for one parse; boxing the head would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Head(Head),
    /// Valid so far, needs more bytes.
    Partial,
    /// Something this loop does not serve: hand to hyper.
    Handoff,
    /// The head is over the limits: answer 431 and close.
    TooLarge,
}

fn parse_head(buf: &[u8], max_body: usize) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return if buf.len() >= MAX_HEAD { Parsed::TooLarge } else { Parsed::Partial },
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooLarge,
        // hyper answers malformed heads itself (400), with its own rules.
        Err(_) => return Parsed::Handoff,
    };
    if len > MAX_HEAD {
        return Parsed::TooLarge;
    }
    if req.version != Some(1) {
        return Parsed::Handoff;
    }
    let Some(method) = req.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) else { return Parsed::Handoff };
    if method == Method::CONNECT {
        return Parsed::Handoff;
    }
    let Some(uri) = req.path.and_then(|p| p.parse::<Uri>().ok()) else { return Parsed::Handoff };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut content_length: Option<usize> = None;
    let mut close = false;
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) else {
            return Parsed::Handoff;
        };
        if name == header::UPGRADE || name == header::TRANSFER_ENCODING || name == header::EXPECT {
            return Parsed::Handoff;
        }
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            match (n, content_length) {
                (Some(n), None) => content_length = Some(n),
                // Repeated or unparsable: hyper's rules decide (400).
                _ => return Parsed::Handoff,
            }
        }
        if name == header::CONNECTION && h.value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")) {
            close = true;
        }
        headers.append(name, value);
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > max_body {
        // The handler refuses it on the declared length; hyper knows how to end such a
        // connection without reading megabytes.
        return Parsed::Handoff;
    }
    Parsed::Head(Head { method, uri, headers, len, content_length, close })
}

/// Serve HTTP/1.1 requests on `io` until the connection ends or a request needs hyper. `buf`
/// holds bytes already read (the protocol sniff); `first_byte_at` is when they started.
pub(super) async fn serve<S>(io: &mut S, mut buf: Vec<u8>, first_byte_at: Instant, peer: SocketAddr, secure: bool, edge: &Edge, stop: &CancellationToken) -> Outcome
where
    S: AsyncRead + AsyncWrite + WaitReadable + Unpin + Send,
{
    let cfg = edge.state.config();
    let header_timeout = Duration::from_secs(cfg.http.header_read_timeout);
    let max_body = cfg.bosh.max_body_bytes;
    let mut head_started = first_byte_at;
    loop {
        // ---- wait for the next request, holding nothing
        if buf.is_empty() {
            buf = Vec::new();
            let idle = tokio::select! {
                _ = io.wait_readable() => false,
                _ = tokio::time::sleep(header_timeout) => true,
                _ = stop.cancelled() => true,
            };
            if idle {
                debug!(%peer, "idle HTTP/1.1 connection closed (http.header_read_timeout or shutdown)");
                return Outcome::Done;
            }
            head_started = Instant::now();
        }
        // ---- the head, within header_read_timeout of its first byte
        let deadline = head_started + header_timeout;
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&buf, max_body) {
                    Parsed::Head(h) => break h,
                    Parsed::Partial => {}
                    Parsed::Handoff => return Outcome::Handoff(buf),
                    Parsed::TooLarge => {
                        // Boxed, like every rare state: the task is sized by its largest state.
                        let _ = Box::pin(write_simple(io, hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)).await;
                        return Outcome::Done;
                    }
                }
            }
            buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Done,
                Ok(Ok(_)) => {}
                Err(_) => {
                    debug!(%peer, "request head not complete within http.header_read_timeout");
                    return Outcome::Done;
                }
            }
        };
        // ---- the request, with its body as far as it has arrived
        let Prepared { req, feeder, close, head_only } = request(head, &mut buf, peer, secure, edge);
        let call = edge.router.clone().oneshot(req);
        let (response, body_complete) = match feeder {
            None => (call.await, true),
            Some((tx, missing)) => {
                let mut call = std::pin::pin!(call);
                // Boxed: only a body that did not arrive with its head takes this path.
                let mut feed = Box::pin(feed_body(io, &mut buf, tx, missing));
                let mut fed: Option<bool> = None;
                let r = loop {
                    tokio::select! {
                        r = &mut call => break r,
                        ok = &mut feed, if fed.is_none() => fed = Some(ok),
                    }
                };
                (r, fed == Some(true))
            }
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => match e {},
        };
        // ---- the answer
        let keep = !close && body_complete && !stop.is_cancelled();
        // Boxed: it lasts one write, and inline it would be the largest state of a connection
        // that spends its life waiting for a request or on a held one.
        if Box::pin(write_response(io, response, head_only, keep)).await.is_err() || !keep {
            return Outcome::Done;
        }
        if buf.is_empty() {
            buf = Vec::new();
        } else {
            // A pipelined request: its head started arriving already.
            head_started = Instant::now();
        }
    }
}

/// A request ready for the router.
struct Prepared {
    req: Request<Body>,
    /// When part of the body is still to come: the channel to feed it through, and how many
    /// bytes are missing.
    feeder: Option<(mpsc::Sender<Bytes>, usize)>,
    /// `Connection: close`.
    close: bool,
    head_only: bool,
}

/// The request for the router from its head and what `buf` holds of its body (taken out of
/// `buf`). Not inline in [`serve`]: a local borrowed there stays in the connection's future
/// for good, and a `Request` is 240 bytes.
fn request(head: Head, buf: &mut Vec<u8>, peer: SocketAddr, secure: bool, edge: &Edge) -> Prepared {
    let Head { method, uri, headers, len, content_length, close } = head;
    let head_only = method == Method::HEAD;
    let have = (buf.len() - len).min(content_length);
    let first = Bytes::copy_from_slice(&buf[len..len + have]);
    buf.drain(..len + have);
    if buf.is_empty() {
        // A held BOSH request waits up to `wait` seconds: hold no buffer meanwhile.
        *buf = Vec::new();
    }
    let missing = content_length - have;
    let (body, feeder) = if missing == 0 {
        (Body::from(first), None)
    } else {
        // The rest streams to the handler as it arrives, so its own limits and deadline
        // (http.body_read_timeout → 408) apply unchanged.
        let (tx, rx) = mpsc::channel(2);
        let _ = tx.try_send(first);
        (Body::new(ChannelBody { rx, missing: content_length }), Some((tx, missing)))
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    super::tag_client(&edge.state.trusted(), peer, secure, &mut req);
    Prepared { req, feeder, close, head_only }
}

/// Copy the rest of a request body from `io` (after what `buf` holds) into the handler's
/// channel. True when all of it arrived; false on EOF, a read error, or a handler that
/// stopped reading (then the connection cannot carry another request).
async fn feed_body<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>, tx: mpsc::Sender<Bytes>, mut missing: usize) -> bool {
    while missing > 0 {
        buf.clear();
        buf.reserve(READ_CHUNK.min(missing).max(1));
        let n = match io.read_buf(buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let take = n.min(missing);
        missing -= take;
        if tx.send(Bytes::copy_from_slice(&buf[..take])).await.is_err() {
            return false;
        }
        // Bytes past the body are the next (pipelined) request.
        buf.drain(..take);
    }
    true
}

/// A request body arriving through a channel; `missing` counts what is still owed.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    missing: usize,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.missing == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                self.missing = self.missing.saturating_sub(b.len());
                Poll::Ready(Some(Ok(hyper::body::Frame::data(b))))
            }
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "request body cut short")))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.missing == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.missing as u64)
    }
}

/// Write `response` (its body collected; the router's bodies are small and complete).
async fn write_response<S: AsyncWrite + Unpin>(io: &mut S, response: hyper::Response<Body>, head_only: bool, keep: bool) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(std::io::Error::other("response body failed")),
    };
    let status = parts.status.as_u16();
    let mut out = Vec::with_capacity(256 + if head_only { 0 } else { body.len() });
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // No Content-Length on 1xx, 204 and 304 (RFC 9110 §8.6).
    if !(status < 200 || status == 204 || status == 304) {
        out.extend_from_slice(b"content-length: ");
        match parts.headers.get(header::CONTENT_LENGTH) {
            // HEAD: axum drops the GET body but says how long it was.
            Some(declared) if head_only => out.extend_from_slice(declared.as_bytes()),
            _ => out.extend_from_slice(body.len().to_string().as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"date: ");
    date::with(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(&body);
    }
    io.write_all(&out).await?;
    io.flush().await
}

/// A bodiless refusal that ends the connection.
async fn write_simple<S: AsyncWrite + Unpin>(io: &mut S, status: hyper::StatusCode) -> std::io::Result<()> {
    let mut r = hyper::Response::new(Body::empty());
    *r.status_mut() = status;
    write_response(io, r, false, false).await
}

/// The `Date` header value (RFC 9110 §6.6.1), formatted once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs || c.1.is_empty() {
                *c = (secs, httpdate::fmt_http_date(now).into_bytes());
            }
            f(&c.1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Parsed {
        parse_head(s.as_bytes(), 1024)
    }

    #[test]
    fn simple_posts_are_served_here() {
        let Parsed::Head(h) = head("POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello") else { panic!() };
        assert_eq!((h.method, h.uri.path(), h.content_length, h.close), (Method::POST, "/http-bind", 5, false));
        assert_eq!(h.len, "POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n".len());
        let Parsed::Head(h) = head("GET /.well-known/host-meta HTTP/1.1\r\nConnection: Close\r\n\r\n") else { panic!() };
        assert_eq!((h.content_length, h.close), (0, true));
    }

    #[test]
    fn everything_else_goes_to_hyper_or_is_refused() {
        for s in [
            "GET /xmpp-websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "POST /http-bind HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /http-bind HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            "POST /http-bind HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST /http-bind HTTP/1.1\r\nContent-Length: five\r\n\r\n",
            "POST /http-bind HTTP/1.1\r\nContent-Length: 2048\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT x:1 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(matches!(head(s), Parsed::Handoff), "{s:?}");
        }
        assert!(matches!(head("POST /http-bind HTTP/1.1\r\nHost: x\r\n"), Parsed::Partial));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(head(&format!("GET / HTTP/1.1\r\n{many}\r\n")), Parsed::TooLarge));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(head(&long), Parsed::TooLarge));
    }
}
